"""load_split: decode order with threads, accounting, empty splits, caption pairs."""

from __future__ import annotations

import numpy as np
import pytest
from media_fixtures import make_png_bytes, random_bytes

from fastslow.data import DatasetReader, DecodeConfig, ReadReport, Sample, load_split
from fastslow.errors import FastslowError

CFG = DecodeConfig(image_size=4, num_frames=2)


class ListReader(DatasetReader):
    """Samples from a list; `lose` items are counted as read but neither yielded nor reported (a bug)."""

    def __init__(self, samples, lose: int = 0):
        self.items, self.lose, self.source = samples, lose, "list"

    def samples(self, split, report: ReadReport):
        report.read += self.lose
        for s in self.items:
            report.read += 1
            yield s


def _images(n: int, bad: set[int]) -> list[Sample]:
    out = []
    for i in range(n):
        data = random_bytes(100, seed=i) if i in bad else make_png_bytes(4, 4, (i * 10, 0, 0))
        out.append(Sample(id=f"i{i}", media="image", uri=f"mem://{i}", captions=[f"c{i}"] * (1 + i % 2), data=data))
    return out


def test_threaded_decode_keeps_reader_order():
    samples = _images(20, bad={3, 11})
    one = load_split(ListReader(samples), None, CFG, progress=False, workers=1)
    many = load_split(ListReader(samples), None, CFG, progress=False, workers=3)
    expected = [f"i{i}" for i in range(20) if i not in (3, 11)]
    assert one.ids == many.ids == expected
    assert np.array_equal(one.pixels, many.pixels)
    assert many.pixels[:, 0, 0, 0].tolist() == [int(i[1:]) * 10 for i in expected]
    assert [(p.id, p.reason) for p in many.report.problems] == [("i3", "not an image"), ("i11", "not an image")]
    assert many.report.used == 18 and many.report.balanced


def test_caption_pairs_index_every_caption():
    loaded = load_split(ListReader(_images(3, bad=set())), None, CFG, progress=False)
    texts, index = loaded.caption_pairs()
    assert texts == ["c0", "c1", "c1", "c2"]
    assert index.tolist() == [0, 1, 1, 2] and index.dtype == np.int64


def test_empty_split_has_the_right_shape():
    assert load_split(ListReader([]), None, CFG, progress=False).pixels.shape == (0, 4, 4, 3)
    videos = load_split(ListReader(_images(1, bad=set())), None, CFG, media="video", progress=False)
    assert videos.pixels.shape == (0, 2, 4, 4, 3) and videos.report.problems[0].reason == "not a video"


def test_unbalanced_report_is_refused():
    with pytest.raises(RuntimeError, match="does not balance"):
        load_split(ListReader(_images(2, bad=set()), lose=1), None, CFG, progress=False)


def test_bad_media_argument():
    with pytest.raises(FastslowError, match="'audio': media must be image or video"):
        load_split(ListReader([]), None, CFG, media="audio", progress=False)


def test_progress_bar_goes_to_stderr(capsys):
    load_split(ListReader(_images(2, bad=set())), None, CFG, progress=True)
    out, err = capsys.readouterr()
    assert out == "" and "decode list [all]" in err
