"""Video frames sampled by seeking: exact frames, few frames decoded, few bytes read (local and S3), and the
fallback to decoding every frame where a container cannot seek."""

from __future__ import annotations

import io

import numpy as np
import pytest
from media_fixtures import make_mp4_bytes, write_file

from fastslow import storage
from fastslow.data.decode import (
    DecodeConfig,
    decode_video,
    decode_video_sample,
    frame_indices,
    media_info,
)
from fastslow.data.types import Sample
from fastslow.errors import DecodeError, FastslowError, StorageUnavailableError

W, H, FPS, GOP = 64, 48, 30, 60
LONG = 3 * 60 * FPS  # a 3-minute video: 5,400 frames
BLOCK, BITS = 8, 13  # frame i carries i in binary: 13 black or white 8x8 blocks (up to 8,191)
SIZE = H  # decoded at 48 px: the centre crop drops the 8 outer columns each side


def frame_pixels(i: int, noise: np.ndarray | None = None) -> np.ndarray:
    """Frame i: its number's bits as blocks in the top rows (inside the centre crop), noise or grey below."""
    a = np.full((H, W, 3), 128, np.uint8)
    for b in range(BITS):
        r, c = divmod(b, 6)
        a[r * BLOCK : (r + 1) * BLOCK, (c + 1) * BLOCK : (c + 2) * BLOCK] = 255 if (i >> b) & 1 else 0
    if noise is not None:
        a[H // 2 :] = noise  # incompressible: a file big enough that reading a few parts of it shows
    return a


def frame_number(frame: np.ndarray) -> int:
    """The number a decoded (SIZE, SIZE, 3) frame carries (each block's centre, far from block edges)."""
    n = 0
    for b in range(BITS):
        r, c = divmod(b, 6)
        y, x = r * BLOCK, c * BLOCK
        n |= int(frame[y + 2 : y + 6, x + 2 : x + 6].mean() > 128) << b
    return n


def write_video(path, frames: int, fmt: str = "mp4", noise: bool = False, codec: str | None = None) -> str:
    """A video of numbered frames at FPS, a keyframe every GOP frames (H.264 ultrafast, else MPEG-4)."""
    import av

    from fastslow.synth.motion import video_codec

    codec = codec or video_codec()
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.codec_context.gop_size = GOP
        stream.options = {"preset": "ultrafast"} if codec == "libx264" else {"qscale": "2"}
        for i in range(frames):
            pixels = frame_pixels(i, rng.integers(0, 256, (H // 2, W, 3), dtype=np.uint8) if noise else None)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return str(path)


@pytest.fixture(scope="session")
def long_mp4(tmp_path_factory) -> str:
    """A 3-minute mp4 of numbered frames (about 7 MB: the lower half is noise), made once per session."""
    return write_video(tmp_path_factory.mktemp("long") / "long.mp4", LONG, noise=True)


def _numbers(video: np.ndarray) -> list[int]:
    return [frame_number(f) for f in video]


def test_long_video_decodes_only_frames_near_the_sampled_ones(long_mp4):
    report = {}
    with storage.open_seekable(long_mp4, read_ahead=64 << 10) as f:
        video = decode_video(f, 8, SIZE, report)
        fetched, size = f.bytes_fetched, f.size
    assert video.shape == (8, SIZE, SIZE, 3)
    assert _numbers(video) == frame_indices(LONG, 8).tolist()  # exact: the frames decoding them all would pick
    assert not report["sequential"] and report["seeks"] == 8
    assert report["frames_decoded"] < 8 * (GOP + 1)  # at most a GOP per sampled frame, of 5,400
    assert fetched < size / 4  # the index and a few GOPs, not the file
    assert report["info"] == {"width": W, "height": H, "duration": 180.0}


@pytest.mark.parametrize("num_frames", [1, 3, 8, 32])
def test_seeking_picks_the_frames_decoding_everything_picks(tmp_path, num_frames):
    """Below MAX_KEPT_FRAMES decoding every frame picks frame_indices exactly: seeking must give the same pixels."""
    path = write_video(tmp_path / "v.mp4", 15 * GOP + 7)
    data = open(path, "rb").read()
    seek, whole = {}, {}
    by_seeking = decode_video(data, num_frames, SIZE, seek)
    assert np.array_equal(by_seeking, decode_video(data, num_frames, SIZE, whole, seek=False))
    assert _numbers(by_seeking) == frame_indices(15 * GOP + 7, num_frames).tolist()
    assert not seek["sequential"] and whole["sequential"]
    assert seek["frames_decoded"] < whole["frames_decoded"] or num_frames == 32


@pytest.mark.parametrize("codec", ["mpeg4", "libx264"])
@pytest.mark.parametrize("frames, num_frames", [(16, 4), (16, 8), (3, 6), (16, 1)])
def test_short_clips_decode_as_before(codec, frames, num_frames):
    """The synthetic clips: the same pixels as decoding every frame, in one pass (no seek back)."""
    data = make_mp4_bytes(frames, 48, 32, codec=codec)
    report = {}
    video = decode_video(data, num_frames, 16, report)
    assert np.array_equal(video, decode_video(data, num_frames, 16, seek=False))
    assert report["seeks"] == 0 and report["frames_decoded"] <= frames


@pytest.mark.parametrize("fmt", ["matroska", "mpegts", "avi"])
def test_other_containers_seek_exactly(tmp_path, fmt):
    """Matroska (no frame count: duration x rate), MPEG-TS (seeks land anywhere: seek again further back), AVI."""
    frames = 60 * FPS
    report = {}
    video = decode_video(open(write_video(tmp_path / "v", frames, fmt), "rb").read(), 8, SIZE, report)
    assert _numbers(video) == frame_indices(frames, 8).tolist()
    assert not report["sequential"] and report["frames_decoded"] < 8 * (GOP + 1)


def test_no_duration_falls_back_to_decoding_everything(tmp_path):
    """A raw H.264 stream tells no duration: every frame is decoded, the same frames picked."""
    pytest.importorskip("av").codec.Codec("libx264", "w")
    frames = 10 * FPS
    report = {}
    video = decode_video(open(write_video(tmp_path / "v.h264", frames, "h264", codec="libx264"), "rb").read(),
                         8, SIZE, report)
    assert _numbers(video) == frame_indices(frames, 8).tolist()
    assert report["sequential"] and report["frames_decoded"] == frames and report["seeks"] == 0


def test_non_seekable_file_is_decoded_in_one_pass(tmp_path):
    class Stream(io.RawIOBase):  # a pipe: read only
        def __init__(self, data):
            self.inner = io.BytesIO(data)

        def readable(self):
            return True

        def read(self, n=-1):
            return self.inner.read(n)

    frames = 4 * GOP
    data = open(write_video(tmp_path / "v.mkv", frames, "matroska"), "rb").read()
    report = {}
    assert _numbers(decode_video(Stream(data), 4, SIZE, report)) == frame_indices(frames, 4).tolist()
    assert report["sequential"]


def test_index_promising_missing_frames_falls_back(tmp_path):
    """A cut mp4 whose index (at the front) lists frames its data lacks: decoded as far as it goes, not failed."""
    import av

    path = tmp_path / "cut.mp4"
    with av.open(str(path), "w", format="mp4", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("mpeg4", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.codec_context.gop_size = GOP
        stream.options = {"qscale": "2"}
        for i in range(10 * GOP):
            frame = av.VideoFrame.from_ndarray(frame_pixels(i), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    data = path.read_bytes()
    report = {}
    video = decode_video(data[: len(data) // 2], 4, SIZE, report)
    assert report["sequential"] and report["seeks"] > 0 and max(_numbers(video)) < 6 * GOP


def test_video_sample_is_streamed_from_s3(long_mp4, s3_bucket, monkeypatch):
    """A video at an s3:// URI: decoded from ranged GETs (a small part of the file), the same frames and info as
    from the whole file's bytes."""
    uri = storage.join(s3_bucket, "videos", "long.mp4")
    storage.upload_file(long_mp4, uri)
    readers = []

    def opener(u, read_ahead=storage.DEFAULT_READ_AHEAD):
        readers.append(storage.RangedReader(u, 64 << 10))
        return readers[-1]

    monkeypatch.setattr(storage, "open_seekable", opener)
    report = {}
    cfg = DecodeConfig(image_size=SIZE, num_frames=8)
    video = decode_video_sample(Sample(id="v", media="video", uri=uri, captions=[]), cfg, report)
    assert _numbers(video) == frame_indices(LONG, 8).tolist()
    (reader,) = readers
    assert reader.closed and reader.bytes_fetched < reader.size / 4 and reader.fetches < 30
    data = open(long_mp4, "rb").read()
    assert np.array_equal(video, decode_video(data, 8, SIZE))
    assert media_info(report["info"], "video") == media_info(data, "video") == report["info"]


def test_index_partition_streams_videos_with_the_same_info(long_mp4, tmp_path):
    from fastslow.index.partition import decode_partition

    clip = write_file(tmp_path / "clip.mp4", make_mp4_bytes(16))
    items = [{"id": k, "media": "video", "uri": u, "captions": []} for k, u in (("long", long_mp4), ("clip", clip))]
    out = decode_partition(0, items, DecodeConfig(image_size=SIZE, num_frames=8))
    assert not out.errors and out.pixels.shape == (2, 8, SIZE, SIZE, 3)
    for item, path in zip(out.items, (long_mp4, clip)):
        info = media_info(open(path, "rb").read(), "video")
        assert {k: item[k] for k in info} == info and info["duration"] > 0


def test_missing_and_unreachable_videos(tmp_path, monkeypatch):
    cfg = DecodeConfig(image_size=8, num_frames=2)
    with pytest.raises(DecodeError, match="^missing file$"):
        decode_video_sample(Sample(id="m", media="video", uri=str(tmp_path / "no.mp4"), captions=[]), cfg)
    path = write_file(tmp_path / "v.mp4", make_mp4_bytes(8))
    read_range = storage.read_range
    for error, expected in ((StorageUnavailableError("s3://b/v.mp4: S3 endpoint x unreachable"),
                             StorageUnavailableError),
                            (FastslowError("s3://b/v.mp4: access denied"), DecodeError)):
        calls = []

        def failing(uri, offset, size, error=error):  # the store fails after the first block
            calls.append(offset)
            if len(calls) > 1:
                raise error
            return read_range(uri, offset, size)

        monkeypatch.setattr(storage, "read_range", failing)
        # Raised inside PyAV's read callback, it comes back out as itself: an unreachable store stops the run.
        with pytest.raises(expected, match="unreachable|unreadable .*access denied"):
            decode_video(storage.open_seekable(path, read_ahead=64), 2, 8)
        assert len(calls) == 2


def test_empty_file_is_an_empty_file(tmp_path):
    with storage.open_seekable(write_file(tmp_path / "e.mp4", b"")) as f:
        with pytest.raises(DecodeError, match="^empty file$"):
            decode_video(f, 2, 8)
