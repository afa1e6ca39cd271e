"""The few calls a notebook needs: search a published index in this process, embed texts and media with a
Fast checkpoint, read a dataset. Everything here runs without Ray (`import fastslow` exports these names)."""

from __future__ import annotations

import numpy as np
import torch

from fastslow.data.decode import DecodeConfig, decode_sample
from fastslow.data.registry import DatasetReader, open_dataset
from fastslow.data.types import Media, Sample
from fastslow.devices import autocast
from fastslow.errors import DecodeError, FastslowError
from fastslow.models.checkpoint import load_model
from fastslow.models.fast import FastEncoder
from fastslow.search.pipeline import SearchPipeline
from fastslow.search.request import SearchRequest


class Searcher:
    """A published index version with its Fast model (and a Slow one to re-rank), searched in this process.

    `search(...)` answers exactly as the Serve endpoint's POST /search does (the same flow, in one process).
    """

    def __init__(self, index_root: str, fast_checkpoint: str, slow_checkpoint: str | None = None,
                 version: str | None = None, fast_weight: float = 0.0, nprobe: int | None = None,
                 ef_search: int | None = None):
        self.pipeline = SearchPipeline(index_root, fast_checkpoint, slow_checkpoint, version, fast_weight, nprobe,
                                       ef_search)

    @property
    def version(self) -> str:
        return self.pipeline.version

    def search(self, query: str, k: int = SearchRequest.k, rerank: bool | None = None,
               rerank_k: int = SearchRequest.rerank_k) -> dict:
        """The answer to `query`: `results` (id, location, media, caption, metadata, fast_score, slow_score, rank),
        timings.
        Re-ranked by Slow when a Slow checkpoint was given, unless `rerank=False`."""
        if rerank is None:
            rerank = self.pipeline.reranker is not None
        return self.pipeline.search(SearchRequest(query, k, rerank, rerank_k))


def open_index(index_root: str, fast_checkpoint: str, slow_checkpoint: str | None = None,
               version: str | None = None, **options) -> Searcher:
    """A `Searcher` over `version` of the index under `index_root` (default: the version CURRENT names)."""
    return Searcher(index_root, fast_checkpoint, slow_checkpoint, version, **options)


def _fast(model: str | FastEncoder) -> FastEncoder:
    return (load_model(model, FastEncoder) if isinstance(model, str) else model).eval()


@torch.inference_mode()
def embed_texts(model: str | FastEncoder, texts: list[str], batch_size: int = 256) -> np.ndarray:
    """Unit vectors (N, d) float32 of `texts` in Fast's space; `model` is a checkpoint path (or s3://) or a model."""
    fast = _fast(model)
    device = next(fast.parameters()).device
    out = [np.zeros((0, fast.config.embed_dim), np.float32)]
    for i in range(0, len(texts), batch_size):
        with autocast(device):
            out.append(fast.encode_text(list(texts[i : i + batch_size])).float().cpu().numpy())
    return np.concatenate(out)


@torch.inference_mode()
def embed_media(model: str | FastEncoder, uris: list[str], media: Media = "image", batch_size: int = 64,
                num_frames: int = DecodeConfig.num_frames) -> np.ndarray:
    """Unit vectors (N, d) float32 of image (or video) files, local or s3://, in Fast's space. A file that cannot
    be decoded raises a FastslowError naming it."""
    fast = _fast(model)
    cfg = DecodeConfig.for_model(fast.config.vision, num_frames)
    device = next(fast.parameters()).device
    out = [np.zeros((0, fast.config.embed_dim), np.float32)]
    for i in range(0, len(uris), batch_size):
        pixels = []
        for uri in uris[i : i + batch_size]:
            try:
                pixels.append(decode_sample(Sample(id=uri, media=media, uri=uri, captions=[]), cfg))
            except DecodeError as e:
                raise FastslowError(f"{uri}: cannot be embedded ({e})") from None
        with autocast(device):
            out.append(fast.encode_visual(torch.from_numpy(np.stack(pixels)).to(device)).float().cpu().numpy())
    return np.concatenate(out)


def read_dataset(path: str, format: str = "auto", media_root: str | None = None) -> DatasetReader:
    """A reader over a dataset (Karpathy or VATEX JSON, webdataset tars, a manifest, a bare folder; local or s3://):
    `reader.samples(split, ReadReport(path))` yields its items with their captions (the report lists what it skips)."""
    return open_dataset(path, format=format, media_root=media_root)

