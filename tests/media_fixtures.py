"""Builders of small media fixtures made on the fly (no binary fixtures are committed)."""

from __future__ import annotations

import io
import tarfile

import numpy as np


def make_image_bytes(width: int = 32, height: int = 32, color=(200, 30, 30), fmt: str = "PNG") -> bytes:
    """A solid-colour image encoded as `fmt` (PNG, JPEG, WEBP ...)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), tuple(color)).save(buf, format=fmt)
    return buf.getvalue()


def make_png_bytes(width: int = 32, height: int = 32, color=(200, 30, 30)) -> bytes:
    return make_image_bytes(width, height, color, "PNG")


def make_jpeg_bytes(width: int = 32, height: int = 32, color=(200, 30, 30)) -> bytes:
    return make_image_bytes(width, height, color, "JPEG")


def frame_level(i: int) -> int:
    """Grey level of frame i in `make_mp4_bytes` videos, so tests can tell which frames were sampled."""
    return 16 + 12 * i


def make_mp4_bytes(num_frames: int = 16, width: int = 32, height: int = 32, codec: str = "mpeg4", fps: int = 8) -> bytes:
    """A tiny mp4 whose frame i is uniform grey at `frame_level(i)` (num_frames <= 19 keeps levels < 256)."""
    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec == "mpeg4":
            stream.options = {"qscale": "1"}  # near-lossless, so grey levels survive
        for i in range(num_frames):
            level = min(frame_level(i), 255)
            rgb = np.full((height, width, 3), level, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def random_bytes(n: int = 2000, seed: int = 0) -> bytes:
    """Bytes that no decoder accepts (for 'corrupt file' cases)."""
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def make_tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    """An uncompressed tar holding `members` (name, bytes) in order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write_file(path, data: bytes) -> str:
    """Write bytes to a local path (a str or Path), making folders; returns the path as str."""
    import os

    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


def write_mixed_collection(root) -> str:
    """A bare folder to index under `root`: 24 images and 4 videos, plus a corrupt jpg, a truncated mp4, a pdf and a
    sidecar caption: 31 items read, 28 indexable."""
    for i in range(24):  # every photo its own colour: no two items tie
        write_file(root / f"photos/p{i:02d}.jpg", make_jpeg_bytes(40 + i, 32, (10 * i, 250 - 10 * i, 37 * i % 256)))
    write_file(root / "photos/p00.txt", b"a red photo")
    for i in range(4):
        write_file(root / f"clips/c{i}.mp4", make_mp4_bytes(num_frames=8 + i))
    write_file(root / "photos/broken.jpg", random_bytes(500))
    write_file(root / "clips/truncated.mp4", make_mp4_bytes(num_frames=12)[:300])
    write_file(root / "notes.pdf", b"%PDF-1.4")
    return str(root)
