"""Decoding of encoded images (PIL) and videos (PyAV) into fixed-size uint8 RGB arrays.

A video's sampled frames are reached by seeking to the keyframe before each and decoding on to the exact frame,
so a long video costs a few GOPs, not every frame; a video file is read in place (storage.open_seekable: ranged
reads), never whole. Containers that tell no duration are decoded frame by frame.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import IO

import numpy as np

from fastslow import storage
from fastslow.data.types import Media, Sample
from fastslow.errors import DecodeError, FastslowError, StorageUnavailableError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v")

# A frame bigger than 8K UHD twice over is not a real video frame; refuse it before converting.
MAX_FRAME_PIXELS = 2 * 7680 * 4320
# Frames kept while decoding one video; past this the kept set is thinned to every other frame,
# so memory stays bounded on long videos and the kept frames stay evenly spread.
MAX_KEPT_FRAMES = 1024
# A sampled frame at most this many frames past the last decoded one is reached by decoding on, a farther one by
# seeking to the keyframe before it: a GOP is commonly 30-300 frames, so decoding on this far costs about what a
# seek would, and a short clip is decoded in one pass as before.
DECODE_ON_FRAMES = 60
# Where a seek lands after the frame sought, seek again this many frames before it, then twice as many, ...,
# SEEK_TRIES seeks in all before decoding the whole video instead.
SEEK_BACK_FRAMES = 16
SEEK_TRIES = 7

VideoSource = bytes | IO[bytes]


# How an image or frame is made square: "crop" resizes the shorter side to the size and keeps the centre square
# (CLIP's processor, fastslow's own towers); "squash" resizes the whole image to size x size, aspect not kept
# (SigLIP's and BLIP's processors). decode_fit says which a model wants.
FITS = ("crop", "squash")


@dataclass
class DecodeConfig:
    """Output geometry: square `image_size` pixels, `num_frames` frames per video, made square by `fit`."""

    image_size: int = 128
    num_frames: int = 8
    fit: str = "crop"  # crop | squash (FITS)

    def __post_init__(self) -> None:
        check_fit(self.fit)

    @classmethod
    def for_model(cls, vision, num_frames: int | None = None) -> DecodeConfig:
        """The geometry a model's items are decoded at (decode_geometry of its vision settings, a config object or
        a checkpoint manifest's dict), with `num_frames` frames per video (default: the class's)."""
        size, fit = decode_geometry(vision)
        return cls(image_size=size, num_frames=cls.num_frames if num_frames is None else num_frames, fit=fit)


def check_fit(fit: str) -> str:
    """`fit` if it is one of FITS, else a FastslowError naming it."""
    if fit not in FITS:
        raise FastslowError(f"decode fit {fit!r}: expected one of {', '.join(FITS)}")
    return fit


def decode_geometry(vision) -> tuple[int, str]:
    """(image size, fit) a model's items are decoded at, from its vision settings (see decode_fit)."""
    size = vision["image_size"] if isinstance(vision, dict) else vision.image_size
    return size, decode_fit(vision)


def decode_fit(vision) -> str:
    """The fit a model's vision settings want (a config object, or its dict form from a checkpoint's manifest):
    "squash" where they have a `crop` entry that is empty (a pretrained model whose processor resizes the whole
    image to a square and does not crop: SigLIP's PretrainedVisionConfig with crop [], BLIP's settings), else
    "crop" (CLIP's crop [224, 224]; fastslow's own towers, whose settings have no crop entry)."""
    crop = vision.get("crop") if isinstance(vision, dict) else getattr(vision, "crop", None)
    return "squash" if crop is not None and len(crop) == 0 else "crop"


def media_from_extension(name: str) -> Media | None:
    """`image`, `video` or None from a file name's extension."""
    ext = os.path.splitext(name.lower())[1]
    if ext in IMAGE_EXTENSIONS:
        return "image"
    if ext in VIDEO_EXTENSIONS:
        return "video"
    return None


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:120]


def _resized_size(width: int, height: int, size: int, fit: str = "crop") -> tuple[int, int]:
    """(w, h) to resize to: "crop", the shorter side equal to `size`, aspect ratio kept; "squash", size x size."""
    if fit == "squash":  # checked where it came in (DecodeConfig, decode_image, decode_video), not per frame
        return size, size
    if width <= height:
        return size, max(size, round(height * size / width))
    return max(size, round(width * size / height)), size


def _center_crop(a: np.ndarray, size: int) -> np.ndarray:
    h, w = a.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return a[top : top + size, left : left + size]


def decode_image(data: bytes, size: int, fit: str = "crop") -> np.ndarray:
    """Encoded image bytes -> (size, size, 3) uint8 RGB, resized bicubic: `fit` "crop", shorter side to `size`
    then the centre square; "squash", the whole image to size x size."""
    from PIL import Image, ImageOps

    check_fit(fit)
    if not data:
        raise DecodeError("empty file")
    try:
        img = Image.open(io.BytesIO(data))  # raises above twice MAX_IMAGE_PIXELS, only warns above it
        limit = Image.MAX_IMAGE_PIXELS
        # Checked here rather than by turning PIL's warning into an error: warning filters are
        # process-global and images are decoded in several threads.
        if limit is not None and img.width * img.height > limit:
            raise Image.DecompressionBombError(f"{img.width}x{img.height} pixels")
        img.draft("RGB", (size, size))  # JPEG: decode at a reduced scale that is still >= size
        img = ImageOps.exif_transpose(img)
        img = img.convert("RGB")
    except Image.DecompressionBombError as e:
        raise DecodeError(f"image too large ({_short(e)})") from None
    except Image.UnidentifiedImageError:
        raise DecodeError("not an image") from None
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError ... on corrupt data
        raise DecodeError(f"corrupt image ({_short(e)})") from None
    if img.width < 1 or img.height < 1:
        raise DecodeError("empty image")
    img = img.resize(_resized_size(img.width, img.height, size, fit), Image.Resampling.BICUBIC)
    return np.ascontiguousarray(_center_crop(np.asarray(img, dtype=np.uint8), size))


def frame_indices(num_decoded: int, num_frames: int) -> np.ndarray:
    """Centres of `num_frames` equal segments over `num_decoded` frames (repeats frames when too few)."""
    return np.minimum((np.arange(num_frames) + 0.5) * num_decoded / num_frames, num_decoded - 1).astype(np.int64)


def _as_file(source: VideoSource) -> IO[bytes]:
    """A binary file to open with PyAV: bytes wrapped, a file as is; DecodeError for an empty one."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        if not source:
            raise DecodeError("empty file")
        return io.BytesIO(source)
    if _seekable(source):
        at = source.tell()
        first = source.read(1)
        source.seek(at)
        if not first:
            raise DecodeError("empty file")
    return source


def _seekable(file) -> bool:
    return bool(getattr(file, "seekable", lambda: False)())


def _video_stream(container):
    if not container.streams.video:
        raise DecodeError("no video stream")
    return container.streams.video[0]


def _video_info(container, stream) -> dict:
    """Width, height and duration in seconds (None when unknown) from the headers (see media_info)."""
    duration = container.duration / 1e6 if container.duration else (
        float(stream.duration * stream.time_base) if stream.duration else None)
    return {"width": int(stream.codec_context.width), "height": int(stream.codec_context.height),
            "duration": duration}


def _frame_rgb(frame, size: int, fit: str = "crop") -> np.ndarray:
    """A decoded frame as (size, size, 3) uint8 RGB, resized bicubic: shorter side then centre crop ("crop"), or
    the whole frame to size x size ("squash")."""
    if frame.width * frame.height > MAX_FRAME_PIXELS:
        raise DecodeError(f"video frame too large ({frame.width}x{frame.height})")
    w, h = _resized_size(frame.width, frame.height, size, fit)
    rgb = frame.reformat(width=w, height=h, format="rgb24", interpolation="BICUBIC").to_ndarray()
    return np.ascontiguousarray(_center_crop(rgb, size))


def frame_clock(container, stream) -> tuple[int, Fraction] | None:
    """(the stream's frame count, one frame's length in pts): the count from its index, else duration x frame
    rate; None when the container tells neither (then every frame is decoded)."""
    rate, time_base = stream.average_rate or stream.guessed_rate, stream.time_base
    if not rate or not time_base:
        return None
    count = stream.frames
    if count <= 0:
        seconds = float(stream.duration * time_base) if stream.duration else (container.duration or 0) / 1e6
        count = round(seconds * rate)
    if count <= 0:
        return None
    return count, 1 / (Fraction(rate) * Fraction(time_base))


class _NoSeek(Exception):
    """Seeking cannot give the sampled frames of this video: decode it from start to end instead."""


def _seek(container, stream, pts: int, report: dict) -> Iterator:
    """Frames decoded on from the keyframe at or before `pts`."""
    try:
        container.seek(pts, stream=stream, backward=True, any_frame=False)
    except Exception as e:  # noqa: BLE001 - a format that cannot seek: fall back, do not fail the item
        raise _NoSeek(_short(e)) from None
    report["seeks"] += 1
    return iter(container.decode(stream))


def _next_frame(frames: Iterator, report: dict):
    """The next decoded frame; _NoSeek at the end of the stream or on a frame without a timestamp."""
    frame = next(frames, None)
    if frame is None or frame.pts is None:  # the index promised frames that are not there, or no pts to go by
        raise _NoSeek("no frame at the sampled time")
    report["frames_decoded"] += 1
    return frame


def _seek_before(container, stream, point: int, step: Fraction, origin: int, report: dict) -> tuple[Iterator, object]:
    """(frames, the first of them), the first at or before `point`: a seek lands after it where the format finds
    keyframes by decode time (B-frames) or searches packets, not keyframes (MPEG-TS), so seek again further back."""
    for attempt in range(SEEK_TRIES):
        at = point if attempt == 0 else max(origin, point - round(SEEK_BACK_FRAMES * 2 ** (attempt - 1) * step))
        frames = _seek(container, stream, at, report)
        frame = _next_frame(frames, report)
        if frame.pts <= point + step / 2 or at == origin:
            return frames, frame
    raise _NoSeek("every seek landed after the sampled time")


def _decode_by_seeking(container, stream, count: int, step: Fraction, num_frames: int, size: int,
                       report: dict, fit: str = "crop") -> list:
    """The frames frame_indices(count, num_frames) picks, found by time: frame i is the first frame at or after
    the first frame's pts + i x step (within half a frame), reached by seeking to the keyframe before it and
    decoding on (exact), or by decoding on when it lies at most DECODE_ON_FRAMES ahead."""
    half = step / 2
    frames = iter(container.decode(stream))
    frame = _next_frame(frames, report)
    origin = frame.pts  # the first frame's, not the stream's start_time: some muxers shift every frame (AVI)
    kept: list[np.ndarray] = []
    taken = None
    for index in frame_indices(count, num_frames):
        point = origin + round(int(index) * step)
        if taken is not None and taken.pts >= point - half:
            kept.append(kept[-1])  # the same frame again (a video shorter than num_frames)
            continue
        if point - frame.pts > DECODE_ON_FRAMES * step:
            frames, frame = _seek_before(container, stream, point, step, origin, report)
        while frame.pts < point - half:
            frame = _next_frame(frames, report)
        kept.append(_frame_rgb(frame, size, fit))
        taken = frame
    return kept


def _decode_sequentially(container, stream, num_frames: int, size: int, report: dict, fit: str = "crop") -> list:
    """Every frame decoded, evenly thinned past MAX_KEPT_FRAMES, then sampled with frame_indices."""
    kept: list[np.ndarray] = []
    stride = 1  # keep every `stride`-th decoded frame
    for count, frame in enumerate(container.decode(stream)):
        report["frames_decoded"] += 1
        if count % stride == 0:
            kept.append(_frame_rgb(frame, size, fit))
            if len(kept) > MAX_KEPT_FRAMES:
                kept = kept[::2]
                stride *= 2
    if not kept:
        raise DecodeError("no frames decoded")
    return [kept[i] for i in frame_indices(len(kept), num_frames)]


def _decode_frames(file: IO[bytes], num_frames: int, size: int, report: dict, seek: bool, fit: str = "crop") -> list:
    """The sampled frames of the first video stream: by seeking where the container allows, else sequentially."""
    import av

    with av.open(file, mode="r") as container:
        stream = _video_stream(container)
        report["info"] = _video_info(container, stream)
        clock = frame_clock(container, stream) if seek and _seekable(file) else None
        if clock is None:  # no frame count, duration or frame rate (raw streams, some captures): decode it all
            report["sequential"] = True
            return _decode_sequentially(container, stream, num_frames, size, report, fit)
        try:
            return _decode_by_seeking(container, stream, *clock, num_frames, size, report, fit)
        except _NoSeek:
            pass
    # Seeking failed part-way (no timestamps, or an index listing frames a truncated file lacks): decode it all,
    # from a fresh open, which samples the frames really there as before.
    report["sequential"] = True
    file.seek(0)
    with av.open(file, mode="r") as container:
        return _decode_sequentially(container, _video_stream(container), num_frames, size, report, fit)


def decode_video(source: VideoSource, num_frames: int, size: int, report: dict | None = None,
                 seek: bool = True, fit: str = "crop") -> np.ndarray:
    """Encoded video (bytes, or a binary file such as storage.open_seekable's, read in place) ->
    (num_frames, size, size, 3) uint8 RGB: the frames at the centres of `num_frames` equal segments of the first
    video stream, reached by seeking (seek=False: by decoding every frame, the fallback), each made square by
    `fit` as decode_image does. `report`, if given, gets frames_decoded, seeks, sequential and the media info
    ("info")."""
    check_fit(fit)
    report = {} if report is None else report
    report.update(frames_decoded=0, seeks=0, sequential=False)
    try:
        file = _as_file(source)
        return np.stack(_decode_frames(file, num_frames, size, report, seek, fit))
    except (DecodeError, StorageUnavailableError):
        raise
    except FastslowError as e:  # the file went missing or unreadable while being read
        raise DecodeError(f"unreadable ({_short(e)})") from None
    except Exception as e:  # av.FFmpegError and friends on corrupt or truncated data
        raise DecodeError(f"corrupt video ({_short(e)})") from None


@contextlib.contextmanager
def _reading(sample: Sample) -> Iterator[None]:
    """Storage errors as an item's: a missing or unreadable file is a DecodeError, an unreachable store is not
    (StorageUnavailableError: the item is fine, the run must stop and be resumed)."""
    try:
        yield
    except storage.MissingFileError:
        raise DecodeError("missing file") from None
    except (StorageUnavailableError, DecodeError):
        raise
    except FastslowError as e:
        raise DecodeError(f"unreadable ({str(e).removeprefix(sample.uri + ': ')})") from None
    except OSError as e:
        raise DecodeError(f"unreadable ({_short(e)})") from None


def read_sample_bytes(sample: Sample) -> bytes:
    """The sample's encoded bytes, inline or from its URI; a missing file is a DecodeError, an unreachable
    store is not (StorageUnavailableError: the item is fine, the run must stop and be resumed)."""
    if sample.data is not None:
        return sample.data
    from fastslow.data.members import read_member, split_member

    with _reading(sample):
        if split_member(sample.uri) is not None:
            return read_member(sample.uri, sample.offset, sample.size)
        return storage.read_bytes(sample.uri)


def open_sample(sample: Sample) -> VideoSource:
    """The sample's bytes where they are inline or inside a container file, else a seekable reader over its file
    (storage.open_seekable: ranged reads, so a long video is never held whole); errors as read_sample_bytes."""
    from fastslow.data.members import split_member

    if sample.data is not None or split_member(sample.uri) is not None:
        return read_sample_bytes(sample)
    with _reading(sample):
        return storage.open_seekable(sample.uri)


def decode_video_sample(sample: Sample, cfg: DecodeConfig, report: dict | None = None) -> np.ndarray:
    """A video sample decoded from its inline bytes, or streamed from its file (see decode_video for `report`)."""
    source = open_sample(sample)
    try:
        return decode_video(source, cfg.num_frames, cfg.image_size, report, fit=cfg.fit)
    finally:
        if not isinstance(source, bytes):
            source.close()


def decode_sample(sample: Sample, cfg: DecodeConfig) -> np.ndarray:
    """Decode one sample by its media type: (S,S,3) for an image, (T,S,S,3) for a video."""
    if sample.media == "image":
        return decode_image(read_sample_bytes(sample), cfg.image_size, cfg.fit)
    if sample.media == "video":
        return decode_video_sample(sample, cfg)
    raise DecodeError(f"unknown media type {sample.media!r}")


def media_info(data: bytes | IO[bytes] | dict, media: str) -> dict:
    """What an index keeps about an item beside its vector: width and height (images), or width, height
    and duration in seconds (videos), read from the headers; {} when they cannot be read (decoding
    reports the problem). `data`: the encoded bytes, a seekable binary file (only its headers are read), or
    the info decode_video already read (its report's "info", returned as a copy)."""
    if isinstance(data, dict):
        return dict(data)
    file = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    try:
        file.seek(0)
        if media == "image":
            from PIL import Image

            with Image.open(file) as img:
                return {"width": int(img.width), "height": int(img.height)}
        import av

        with av.open(file, mode="r") as container:
            return _video_info(container, container.streams.video[0])
    except Exception:  # noqa: BLE001 - a probe: decoding gives the real error
        return {}
