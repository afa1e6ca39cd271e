"""Decoding of encoded images (PIL) and videos (PyAV) into fixed-size uint8 RGB arrays."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

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


@dataclass
class DecodeConfig:
    """Output geometry: square `image_size` pixels, `num_frames` frames per video."""

    image_size: int = 128
    num_frames: int = 8


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


def _resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(w, h) with the shorter side equal to `size`, aspect ratio kept."""
    if width <= height:
        return size, max(size, round(height * size / width))
    return max(size, round(width * size / height)), size


def _center_crop(a: np.ndarray, size: int) -> np.ndarray:
    h, w = a.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return a[top : top + size, left : left + size]


def decode_image(data: bytes, size: int) -> np.ndarray:
    """Encoded image bytes -> (size, size, 3) uint8 RGB: shorter side resized to `size` (bicubic), centre crop."""
    from PIL import Image, ImageOps

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
    img = img.resize(_resized_size(img.width, img.height, size), Image.Resampling.BICUBIC)
    return np.ascontiguousarray(_center_crop(np.asarray(img, dtype=np.uint8), size))


def frame_indices(num_decoded: int, num_frames: int) -> np.ndarray:
    """Centres of `num_frames` equal segments over `num_decoded` frames (repeats frames when too few)."""
    return np.minimum((np.arange(num_frames) + 0.5) * num_decoded / num_frames, num_decoded - 1).astype(np.int64)


def decode_video(data: bytes, num_frames: int, size: int) -> np.ndarray:
    """Encoded video bytes -> (num_frames, size, size, 3) uint8 RGB, frames sampled uniformly over the first video stream."""
    import av

    if not data:
        raise DecodeError("empty file")
    kept: list[np.ndarray] = []
    stride = 1  # keep every `stride`-th decoded frame
    count = 0
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise DecodeError("no video stream")
            stream = container.streams.video[0]
            for frame in container.decode(stream):
                if frame.width * frame.height > MAX_FRAME_PIXELS:
                    raise DecodeError(f"video frame too large ({frame.width}x{frame.height})")
                if count % stride == 0:
                    w, h = _resized_size(frame.width, frame.height, size)
                    rgb = frame.reformat(width=w, height=h, format="rgb24", interpolation="BICUBIC").to_ndarray()
                    kept.append(np.ascontiguousarray(_center_crop(rgb, size)))
                    if len(kept) > MAX_KEPT_FRAMES:
                        kept = kept[::2]
                        stride *= 2
                count += 1
    except DecodeError:
        raise
    except Exception as e:  # av.FFmpegError and friends on corrupt or truncated data
        raise DecodeError(f"corrupt video ({_short(e)})") from None
    if not kept:
        raise DecodeError("no frames decoded")
    return np.stack([kept[i] for i in frame_indices(len(kept), num_frames)])


def read_sample_bytes(sample: Sample) -> bytes:
    """The sample's encoded bytes, inline or from its URI; a missing file is a DecodeError, an unreachable
    store is not (StorageUnavailableError: the item is fine, the run must stop and be resumed)."""
    if sample.data is not None:
        return sample.data
    from fastslow.data.members import read_member, split_member

    try:
        if split_member(sample.uri) is not None:
            return read_member(sample.uri, sample.offset, sample.size)
        return storage.read_bytes(sample.uri)
    except storage.MissingFileError:
        raise DecodeError("missing file") from None
    except (StorageUnavailableError, DecodeError):
        raise
    except FastslowError as e:
        raise DecodeError(f"unreadable ({str(e).removeprefix(sample.uri + ': ')})") from None
    except OSError as e:
        raise DecodeError(f"unreadable ({_short(e)})") from None


def decode_sample(sample: Sample, cfg: DecodeConfig) -> np.ndarray:
    """Decode one sample by its media type: (S,S,3) for an image, (T,S,S,3) for a video."""
    data = read_sample_bytes(sample)
    if sample.media == "image":
        return decode_image(data, cfg.image_size)
    if sample.media == "video":
        return decode_video(data, cfg.num_frames, cfg.image_size)
    raise DecodeError(f"unknown media type {sample.media!r}")


def media_info(data: bytes, media: str) -> dict:
    """What an index keeps about an item beside its vector: width and height (images), or width, height
    and duration in seconds (videos), read from the headers; {} when they cannot be read (decoding
    reports the problem)."""
    try:
        if media == "image":
            from PIL import Image

            with Image.open(io.BytesIO(data)) as img:
                return {"width": int(img.width), "height": int(img.height)}
        import av

        with av.open(io.BytesIO(data), mode="r") as container:
            stream = container.streams.video[0]
            duration = container.duration / 1e6 if container.duration else (
                float(stream.duration * stream.time_base) if stream.duration else None)
            return {"width": int(stream.codec_context.width), "height": int(stream.codec_context.height),
                    "duration": duration}
    except Exception:  # noqa: BLE001 - a probe: decoding gives the real error
        return {}
