"""Dataset readers (Karpathy, VATEX, webdataset, img2dataset Parquet, manifests, bare folders), media decoding
and in-memory splits."""

from fastslow.data.decode import DecodeConfig, decode_image, decode_sample, decode_video, media_from_extension
from fastslow.data.folder import FolderReader
from fastslow.data.img2dataset_parquet import Img2DatasetParquetReader
from fastslow.data.karpathy import KarpathyReader
from fastslow.data.loaded import LoadedSplit, load_split
from fastslow.data.manifest import ManifestReader
from fastslow.data.registry import FORMATS, DatasetReader, open_dataset
from fastslow.data.types import Media, Problem, ReadReport, Sample
from fastslow.data.vatex import VatexReader
from fastslow.data.webdataset import WebDatasetReader

__all__ = [
    "FORMATS",
    "DatasetReader",
    "DecodeConfig",
    "FolderReader",
    "Img2DatasetParquetReader",
    "KarpathyReader",
    "LoadedSplit",
    "ManifestReader",
    "Media",
    "Problem",
    "ReadReport",
    "Sample",
    "VatexReader",
    "WebDatasetReader",
    "decode_image",
    "decode_sample",
    "decode_video",
    "load_split",
    "media_from_extension",
    "open_dataset",
]
