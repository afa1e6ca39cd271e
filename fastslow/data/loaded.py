"""A split decoded into memory: pixel arrays, ids and captions, with the report of what was skipped."""

from __future__ import annotations

import os
import sys
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from fastslow.data.decode import DecodeConfig, decode_sample
from fastslow.data.registry import DatasetReader
from fastslow.data.types import Media, ReadReport, Sample
from fastslow.errors import DecodeError, FastslowError


@dataclass
class LoadedSplit:
    """Decoded items of one split, all of one media type, in reader order."""

    media: Media
    ids: list[str]
    uris: list[str]
    pixels: np.ndarray  # (N,S,S,3) images or (N,T,S,S,3) videos, uint8 RGB
    captions: list[list[str]]
    report: ReadReport

    def __len__(self) -> int:
        return len(self.ids)

    def caption_pairs(self) -> tuple[list[str], np.ndarray]:
        """Every caption as a query, with the index of its item: (texts, item_index int64 array)."""
        texts = [c for caps in self.captions for c in caps]
        item_index = np.repeat(np.arange(len(self.captions), dtype=np.int64), [len(c) for c in self.captions])
        return texts, item_index


def _decode(sample: Sample, cfg: DecodeConfig) -> np.ndarray | DecodeError:
    try:
        return decode_sample(sample, cfg)
    except DecodeError as e:
        return e


def _decoded_in_order(samples: Iterator[Sample], cfg: DecodeConfig, workers: int):
    """(sample, array or DecodeError) in input order; a bounded window of decodes runs in threads."""
    if workers <= 1:
        for s in samples:
            yield s, _decode(s, cfg)
        return
    window: deque[tuple[Sample, Future]] = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        for s in samples:
            window.append((s, pool.submit(_decode, s, cfg)))
            if len(window) >= 2 * workers:
                head, fut = window.popleft()
                yield head, fut.result()
        while window:
            head, fut = window.popleft()
            yield head, fut.result()


class MediaFilter:
    """Iterates the samples of one media type: `media`, or (None) the first sample's, refusing a mix.

    With `media` given, items of the other type are reported ("not an image" / "not a video").
    `.media` is the type chosen once iteration has started.
    """

    def __init__(self, samples: Iterator[Sample], media: Media | None, report: ReadReport, name: str):
        self.samples, self.media, self.report, self.name = samples, media, report, name
        self.chosen = media is not None

    def __iter__(self) -> Iterator[Sample]:
        for s in self.samples:
            if self.media is None:
                self.media = s.media
            if s.media != self.media:
                if not self.chosen:
                    raise FastslowError(f"{self.name}: mixes images and videos; choose one with media='image' or 'video'")
                self.report.skip(s.id, s.uri, "not an image" if self.media == "image" else "not a video")
                continue
            yield s


def load_split(
    reader: DatasetReader,
    split: str | None,
    cfg: DecodeConfig,
    media: Media | None = None,
    progress: bool = True,
    workers: int | None = None,
) -> LoadedSplit:
    """Decode every sample of `split` (None: all), skipping and reporting failures.

    With `media` None the split must be all images or all videos; with `media` set, items of the
    other type are reported "not an image" / "not a video". `workers` decode threads (PIL and PyAV release the GIL).
    """
    from tqdm import tqdm

    if media not in (None, "image", "video"):
        raise FastslowError(f"{media!r}: media must be image or video")
    if workers is None:
        workers = min(4, os.cpu_count() or 1)
    name = f"{reader.source} [{split or 'all'}]"
    report = ReadReport(source=name)
    ids: list[str] = []
    uris: list[str] = []
    arrays: list[np.ndarray] = []
    captions: list[list[str]] = []

    bar = tqdm(desc=f"decode {name}", unit="item", file=sys.stderr, disable=not progress, leave=False)
    try:
        chosen = MediaFilter(reader.samples(split, report), media, report, name)
        for sample, result in _decoded_in_order(chosen, cfg, workers):
            bar.update(1)
            if isinstance(result, DecodeError):
                report.skip(sample.id, sample.uri, str(result))
                continue
            report.used += 1
            ids.append(sample.id)
            uris.append(sample.uri)
            arrays.append(result)
            captions.append(sample.captions)
    finally:
        bar.close()
    if not report.balanced:
        raise RuntimeError(f"read report does not balance: {report.summary()}")
    media = chosen.media or "image"
    pixels = np.stack(arrays) if arrays else np.zeros(empty_shape(media, cfg), dtype=np.uint8)
    return LoadedSplit(media=media, ids=ids, uris=uris, pixels=pixels, captions=captions, report=report)


def empty_shape(media: Media, cfg: DecodeConfig) -> tuple[int, ...]:
    """Shape of zero decoded items of `media` (drop the leading 0 for one item's shape)."""
    s = cfg.image_size
    return (0, s, s, 3) if media == "image" else (0, cfg.num_frames, s, s, 3)
