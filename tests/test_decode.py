"""Image and video decoding: geometry, frame sampling, and a clear DecodeError for every bad input."""

from __future__ import annotations

import io

import numpy as np
import pytest
from media_fixtures import frame_level, make_image_bytes, make_mp4_bytes, random_bytes, write_file

from fastslow.data.decode import DecodeConfig, decode_image, decode_sample, decode_video, frame_indices
from fastslow.data.types import Sample
from fastslow.errors import DecodeError


def test_image_resizes_shorter_side_and_centre_crops():
    from PIL import Image

    # Left third red, middle green, right third blue: a centre crop of a wide image keeps mostly green.
    a = np.zeros((30, 90, 3), dtype=np.uint8)
    a[:, :30, 0] = 255
    a[:, 30:60, 1] = 255
    a[:, 60:, 2] = 255
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    out = decode_image(buf.getvalue(), 16)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert out[8, 8].tolist() == [0, 255, 0]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_image_formats_and_colour(fmt):
    out = decode_image(make_image_bytes(40, 20, (10, 200, 60), fmt), 8)
    assert out.shape == (8, 8, 3)
    assert np.abs(out.astype(int) - [10, 200, 60]).max() <= 8


def test_greyscale_and_palette_images_become_rgb():
    from PIL import Image

    for mode in ("L", "P", "RGBA"):
        buf = io.BytesIO()
        Image.new(mode, (10, 10)).save(buf, format="PNG")
        assert decode_image(buf.getvalue(), 4).shape == (4, 4, 3)


@pytest.mark.parametrize(
    "data, reason",
    [(b"", "empty file"), (random_bytes(), "not an image"), (make_image_bytes(fmt="PNG")[:60], "corrupt image")],
    ids=["empty", "random", "truncated"],
)
def test_bad_images_raise_decode_error(data, reason):
    with pytest.raises(DecodeError, match=reason):
        decode_image(data, 8)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("side", [12, 20], ids=["over-limit", "over-twice-limit"])
def test_decompression_bomb_is_refused(monkeypatch, side):
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(DecodeError, match="image too large"):
        decode_image(make_image_bytes(side, side), 8)


def test_frame_indices_are_segment_centres_and_repeat_when_short():
    assert frame_indices(16, 8).tolist() == [1, 3, 5, 7, 9, 11, 13, 15]
    assert frame_indices(3, 6).tolist() == [0, 0, 1, 1, 2, 2]
    assert frame_indices(1, 4).tolist() == [0, 0, 0, 0]


def _nearest_frames(video: np.ndarray, num_source: int) -> list[int]:
    levels = np.array([frame_level(i) for i in range(num_source)])
    return [int(np.abs(levels - f.mean()).argmin()) for f in video]


@pytest.mark.parametrize("codec", ["mpeg4", "libx264"])
def test_video_samples_frames_uniformly(codec):
    video = decode_video(make_mp4_bytes(16, 48, 32, codec=codec), num_frames=4, size=16)
    assert video.shape == (4, 16, 16, 3) and video.dtype == np.uint8
    assert _nearest_frames(video, 16) == [2, 6, 10, 14]


def test_short_video_repeats_frames():
    video = decode_video(make_mp4_bytes(3), num_frames=6, size=8)
    assert _nearest_frames(video, 3) == [0, 0, 1, 1, 2, 2]


def test_long_video_keeps_bounded_frames_evenly(monkeypatch):
    """Decoding every frame (the fallback where a container tells no duration) keeps a bounded, even set."""
    import fastslow.data.decode as decode

    monkeypatch.setattr(decode, "MAX_KEPT_FRAMES", 4)
    report = {}
    video = decode_video(make_mp4_bytes(16), num_frames=4, size=8, report=report, seek=False)
    # Thinned to every 4th frame (0, 4, 8, 12), then sampled evenly over those.
    assert _nearest_frames(video, 16) == [0, 4, 8, 12]
    assert report["sequential"] and report["frames_decoded"] == 16


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty file"),
        (random_bytes(5000), "corrupt video|no video stream"),
        (make_mp4_bytes()[: len(make_mp4_bytes()) // 2], "corrupt video|no video stream|no frames"),
    ],
    ids=["empty", "random", "truncated"],
)
def test_bad_videos_raise_decode_error(data, reason):
    with pytest.raises(DecodeError, match=reason):
        decode_video(data, 4, 8)


def test_huge_video_frames_are_refused(monkeypatch):
    import fastslow.data.decode as decode

    monkeypatch.setattr(decode, "MAX_FRAME_PIXELS", 100)
    with pytest.raises(DecodeError, match="video frame too large \\(32x32\\)"):
        decode_video(make_mp4_bytes(2), 2, 8)


def test_decode_sample_reads_inline_bytes_or_uri(tmp_path):
    cfg = DecodeConfig(image_size=8, num_frames=2)
    inline = Sample(id="a", media="image", uri="x#a.png", captions=["c"], data=make_image_bytes())
    assert decode_sample(inline, cfg).shape == (8, 8, 3)
    path = write_file(tmp_path / "v.mp4", make_mp4_bytes(4))
    assert decode_sample(Sample(id="v", media="video", uri=path, captions=["c"]), cfg).shape == (2, 8, 8, 3)
    with pytest.raises(DecodeError, match="^missing file$"):
        decode_sample(Sample(id="m", media="image", uri=str(tmp_path / "no.png"), captions=["c"]), cfg)
