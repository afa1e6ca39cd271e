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


# --- fit: "crop" (shorter side, centre square) or "squash" (the whole image to a square) ---

def _banded(width: int = 60, height: int = 30) -> np.ndarray:
    """Left quarter red, middle half green, right quarter blue."""
    a = np.zeros((height, width, 3), dtype=np.uint8)
    a[:, : width // 4, 0] = 255
    a[:, width // 4 : 3 * width // 4, 1] = 255
    a[:, 3 * width // 4 :, 2] = 255
    return a


def _png(a: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


RED, GREEN, BLUE = [255, 0, 0], [0, 255, 0], [0, 0, 255]


def _near(pixel, colour, tol=40) -> bool:
    return bool(np.abs(np.asarray(pixel, dtype=int) - colour).max() <= tol)


def _assert_squashed(out: np.ndarray) -> None:
    """Both side bands kept (the whole width), the middle green."""
    s = out.shape[1]
    for row in (0, s // 2, s - 1):
        assert _near(out[row, 0], RED) and _near(out[row, s - 1], BLUE), out[row].tolist()
        assert _near(out[row, s // 2], GREEN), out[row].tolist()


def _assert_cropped(out: np.ndarray) -> None:
    """The centre square only: green across (the side bands cut off; the columns next to the cut blend)."""
    s = out.shape[1]
    for row in (0, s // 2, s - 1):
        assert all(_near(out[row, x], GREEN) for x in range(2, s - 2)), out[row].tolist()
        assert not _near(out[row, 0], RED) and not _near(out[row, s - 1], BLUE), out[row].tolist()


@pytest.mark.parametrize("shape", [(30, 60), (60, 30)], ids=["wide", "tall"])
def test_image_fit_squash_keeps_the_whole_image_crop_the_centre(shape):
    h, w = shape
    a = _banded(max(h, w), min(h, w))
    a = a if w > h else np.ascontiguousarray(a.transpose(1, 0, 2))  # tall: bands top to bottom
    data = _png(a)
    squashed, cropped = decode_image(data, 16, fit="squash"), decode_image(data, 16)
    assert squashed.shape == cropped.shape == (16, 16, 3)
    assert np.array_equal(cropped, decode_image(data, 16, fit="crop"))  # crop is the default
    if w < h:  # back to bands left to right
        squashed, cropped = squashed.transpose(1, 0, 2), cropped.transpose(1, 0, 2)
    _assert_squashed(squashed)
    _assert_cropped(cropped)
    # squash is the whole image resized to a square, exactly as PIL resizes it (what SigLIP's and BLIP's do)
    from PIL import Image

    want = np.asarray(Image.fromarray(a).resize((16, 16), Image.Resampling.BICUBIC))
    assert np.array_equal(decode_image(data, 16, fit="squash"), want)


def _banded_mp4(path, num_frames: int = 6, width: int = 64, height: int = 32) -> str:
    import av

    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv444p"  # no chroma subsampling
        stream.options = {"crf": "0"}
        for _ in range(num_frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(_banded(width, height), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return str(path)


@pytest.mark.parametrize("seek", [True, False], ids=["seeking", "sequential"])
def test_video_frames_fit_squash_or_crop(tmp_path, seek):
    data = open(_banded_mp4(tmp_path / "v.mp4"), "rb").read()
    squashed = decode_video(data, 3, 16, seek=seek, fit="squash")
    cropped = decode_video(data, 3, 16, seek=seek)
    assert squashed.shape == cropped.shape == (3, 16, 16, 3)
    assert np.array_equal(cropped, decode_video(data, 3, 16, seek=seek, fit="crop"))
    for frame in squashed:
        _assert_squashed(frame)
    for frame in cropped:
        _assert_cropped(frame)


def test_decode_sample_passes_the_fit_down(tmp_path):
    video = _banded_mp4(tmp_path / "v.mp4")
    image = write_file(tmp_path / "i.png", _png(_banded()))
    for fit, check in (("squash", _assert_squashed), ("crop", _assert_cropped)):
        cfg = DecodeConfig(image_size=16, num_frames=2, fit=fit)
        check(decode_sample(Sample(id="i", media="image", uri=image, captions=["c"]), cfg))
        for frame in decode_sample(Sample(id="v", media="video", uri=video, captions=["c"]), cfg):
            check(frame)


def test_unknown_fit_is_refused_by_name(tmp_path):
    from fastslow.errors import FastslowError

    with pytest.raises(FastslowError, match="'stretch'"):
        DecodeConfig(image_size=8, fit="stretch")
    with pytest.raises(FastslowError, match="'stretch'"):
        decode_image(_png(_banded()), 8, fit="stretch")
    with pytest.raises(FastslowError, match="'pad'"):
        decode_video(make_mp4_bytes(2), 2, 8, fit="pad")


def test_decode_fit_follows_the_models_crop_setting():
    import dataclasses

    from fastslow.data.decode import decode_fit
    from fastslow.models.blip_slow import BlipVisionSettings
    from fastslow.models.config import FastConfig
    from fastslow.models.slow_config import SlowConfig
    from fastslow.models.pretrained_preprocess import PretrainedVisionConfig

    clip = PretrainedVisionConfig(image_size=224, resize="shortest_edge", size=[224], crop=[224, 224])
    siglip = PretrainedVisionConfig(image_size=224, resize="fixed", size=[224, 224], crop=[])
    cases = [(clip, "crop"), (siglip, "squash"), (BlipVisionSettings(), "squash"), (FastConfig().vision, "crop"),
             (SlowConfig().vision, "crop")]
    for vision, want in cases:
        assert decode_fit(vision) == want, vision
        assert decode_fit(dataclasses.asdict(vision)) == want, vision  # a checkpoint manifest's dict form
    assert decode_fit({"image_size": 64}) == "crop"  # a manifest with no crop entry (fastslow's own towers)


def test_pretrained_siglip_embeds_a_non_square_image_as_its_processor_does(tmp_path):
    """End to end: a tiny SigLIP checkpoint embeds a non-square photo (fastslow.api.embed_media, and the index
    build's partition path) as the model's own get_image_features does on its processor's (squashed) output."""
    import torch
    import torch.nn.functional as F
    from PIL import Image
    from helpers import index_config, index_vectors
    from test_pretrained_fast import _build, _processor

    from fastslow.api import embed_media
    from fastslow.index.build import build_index
    from fastslow.models.checkpoint import save_checkpoint
    from fastslow.models.pretrained_fast import from_pretrained_folder

    torch.manual_seed(0)
    model, tok, proc = _build("siglip")
    folder = tmp_path / "siglip"
    model.eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    proc.save_pretrained(folder)
    fast = from_pretrained_folder(folder)
    assert fast.config.vision.crop == [] and fast.config.vision.image_size == 32
    ckpt = str(tmp_path / "ckpt")
    save_checkpoint(fast, ckpt)

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(3)
    images = {"wide.png": _banded(60, 30), "tall.png": rng.integers(0, 256, (70, 40, 3), dtype=np.uint8)}
    for name, a in images.items():
        Image.fromarray(a).save(photos / name)
    processor = _processor("siglip", str(folder)).image_processor
    with torch.no_grad():
        want = {name: F.normalize(model.get_image_features(**processor(images=[a], return_tensors="pt"))
                                  .pooler_output, dim=-1)[0].numpy() for name, a in images.items()}
    names = sorted(images)
    got = embed_media(ckpt, [str(photos / n) for n in names])
    for name, vector in zip(names, got):
        assert np.abs(vector - want[name]).max() < 1e-3, name
    # The centre crop would differ: the fit matters on these images.
    with torch.no_grad():
        centre = fast.encode_visual(torch.from_numpy(decode_image((photos / "wide.png").read_bytes(), 32))[None])
    assert np.abs(centre[0].numpy() - want["wide.png"]).max() > 1e-2

    root = str(tmp_path / "index")
    assert build_index(index_config(str(photos), ckpt, root))["indexed"] == 2
    ids, vectors = index_vectors(root)
    for item, vector in zip(ids, vectors):
        assert np.abs(vector - want[item]).max() < 1e-3, item
