"""Videos/s of the indexing decode stage (fastslow.data.decode, as fastslow.index.partition calls it), the decoder
before seeking and the one now side by side; no Ray, no model.

    python -m benchmarks.video_decode --out out/video_decode.json          (a .md goes beside the JSON)
    python -m benchmarks.video_decode --out /tmp/vd.json --quick           (1- and 2-minute videos: a smoke run)

Two sets of videos, each decoded to `--num-frames` (8) frames of `--image-size` (128) px:
1. The synthetic clips (`--clips`, default data/bench-quick-seed0/videos: 16 frames, 64 px, 8 fps), the first
   `--n-clips` (200) by name; made with `fastslow synth` (skipped when the folder is not there).
2. Long videos generated once into `--data` (data/bench-videos, reused by a rerun): `--minutes` (3,5,10) at
   `--width`x`--height` (640x360), 30 fps, H.264 ultrafast (MPEG-4 where libx264 is missing) with a keyframe
   every 250 frames (x264's default): a scrolling texture and a moving box, so frames are not trivial to code.

Two decoders on each video:
  whole: the file read into memory and every frame decoded, the kept set thinned past 1,024 frames (the decoder
         before seeking: `decode_video(bytes, seek=False)` after `storage.read_bytes`);
  seek:  the file streamed by ranged reads (`storage.open_seekable`) and each sampled frame reached by seeking
         to the keyframe before it and decoding on (`decode_video_sample`, what indexing runs).
The whole decoder runs once over a set, the seek one `--repeats` (3) times; videos/s is their mean.
Reported per set: videos/s, frames decoded and bytes read per video, and how many videos gave identical pixels
(the clips must all: both pick frame_indices exactly; past 1,024 frames the whole decoder picks from its thinned
set, so long videos differ by up to a few frames by design).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from benchmarks.gpu_timing import sig
from fastslow.env import apply_local_safety_env

FPS, GOP = 30, 250


def write_long_video(path: Path, minutes: float, width: int, height: int) -> None:
    """A `minutes`-long video of a scrolling texture and a moving box (written to a temp name, then renamed)."""
    import av

    from fastslow.synth.motion import video_codec

    rng = np.random.default_rng(int(minutes * 1000))
    # Smooth texture: random blobs upsampled, twice as wide as the frame so it can scroll.
    small = rng.integers(0, 256, (height // 8 + 1, width // 4 + 1, 3), dtype=np.uint8)
    texture = np.repeat(np.repeat(small, 8, axis=0), 8, axis=1)[:height, : 2 * width]
    codec = video_codec()
    tmp = path.with_suffix(".tmp.mp4")
    with av.open(str(tmp), "w", format="mp4") as container:
        stream = container.add_stream(codec, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = GOP
        stream.options = {"preset": "ultrafast"} if codec == "libx264" else {"qscale": "4"}
        for i in range(int(minutes * 60 * FPS)):
            shift = (2 * i) % width
            rgb = np.ascontiguousarray(texture[:, shift : shift + width])
            x, y = (7 * i) % (width - 64), (3 * i) % (height - 64)
            rgb[y : y + 64, x : x + 64] = (255, 255 - i % 256, i % 256)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)


def long_videos(data: Path, minutes: list[float], width: int, height: int) -> list[str]:
    """The long videos' paths, generating the ones not there yet."""
    from fastslow.log import get_logger

    log = get_logger("fastslow.benchmarks.video_decode")
    data.mkdir(parents=True, exist_ok=True)
    paths = []
    for m in minutes:
        path = data / f"long-{m:g}min-{width}x{height}-{FPS}fps.mp4"
        if not path.exists():
            started = time.perf_counter()
            write_long_video(path, m, width, height)
            log.info("wrote %s in %.0f s", path, time.perf_counter() - started)
        paths.append(str(path))
    return paths


def decode_whole(path: str, num_frames: int, size: int) -> tuple[np.ndarray, dict]:
    """The decoder before seeking: the whole file in memory, every frame decoded."""
    from fastslow import storage
    from fastslow.data.decode import decode_video

    data = storage.read_bytes(path)
    report = {}
    video = decode_video(data, num_frames, size, report, seek=False)
    return video, {**report, "bytes_read": len(data)}


def decode_seek(path: str, num_frames: int, size: int) -> tuple[np.ndarray, dict]:
    """The decoder now, as indexing calls it: streamed by ranged reads, sampled by seeking."""
    from fastslow import storage
    from fastslow.data.decode import DecodeConfig, decode_video_sample
    from fastslow.data.types import Sample

    readers = []
    opener = storage.open_seekable

    def counting(uri, *args, **kwargs):  # keep the reader to read its byte counter
        readers.append(opener(uri, *args, **kwargs))
        return readers[-1]

    storage.open_seekable = counting
    try:
        report = {}
        video = decode_video_sample(Sample(id=path, media="video", uri=path, captions=[]),
                                    DecodeConfig(image_size=size, num_frames=num_frames), report)
    finally:
        storage.open_seekable = opener
    return video, {**report, "bytes_read": readers[0].bytes_fetched}


def bench_set(name: str, paths: list[str], num_frames: int, size: int, repeats: int) -> dict:
    """Both decoders over `paths` (whole once, seek `repeats` times): videos/s, mean frames decoded and bytes read
    per video, identical outputs."""
    row = {"set": name, "videos": len(paths), "mean_file_bytes": int(np.mean([os.path.getsize(p) for p in paths]))}
    outputs = {}
    for label, decode, passes in (("whole", decode_whole, 1), ("seek", decode_seek, repeats)):
        if len(paths) > 1:  # a set of clips: warm up imports and codecs (a long video's seconds dwarf them)
            decode(paths[0], num_frames, size)
        started, reports, outputs[label] = time.perf_counter(), [], []
        for p in paths * passes:
            video, report = decode(p, num_frames, size)
            outputs[label].append(video)
            reports.append(report)
        seconds = time.perf_counter() - started
        row[label] = {"videos_per_s": sig(len(reports) / seconds), "s_per_video": sig(seconds / len(reports)),
                      "frames_decoded": sig(np.mean([r["frames_decoded"] for r in reports])),
                      "seeks": sig(np.mean([r["seeks"] for r in reports])),
                      "bytes_read": int(np.mean([r["bytes_read"] for r in reports]))}
    row["identical"] = int(sum(np.array_equal(a, b) for a, b in zip(outputs["whole"], outputs["seek"])))
    row["speedup"] = round(row["seek"]["videos_per_s"] / row["whole"]["videos_per_s"], 1)
    return row


def markdown(result: dict) -> str:
    lines = [f"Videos decoded to {result['num_frames']} frames of {result['image_size']} px, one process "
             f"({result['cpus']} CPUs); whole = read whole, decode every frame; seek = ranged reads, seek per frame.",
             "", "| videos | n | MB per file | whole videos/s | seek videos/s | speed-up | frames decoded whole / seek "
             "| MB read whole / seek | identical |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        w, s = r["whole"], r["seek"]
        lines.append(f"| {r['set']} | {r['videos']} | {r['mean_file_bytes'] / 1e6:.2f} | {w['videos_per_s']} | "
                     f"{s['videos_per_s']} | {r['speedup']}x | {w['frames_decoded']:g} / {s['frames_decoded']:g} | "
                     f"{w['bytes_read'] / 1e6:.2f} / {s['bytes_read'] / 1e6:.2f} | {r['identical']}/{r['videos']} |")
    lines += ["", "identical: videos whose 8 frames are the same pixels both ways. The clips must all be; past 1,024 "
              "frames whole picks from its thinned set (every 2nd, 4th, ... frame), so long videos differ by a few "
              "frames by design."]
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.video_decode", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="result JSON (a .md goes beside it)")
    p.add_argument("--clips", default="data/bench-quick-seed0/videos", help="folder of synthetic clips")
    p.add_argument("--n-clips", type=int, default=200, help="clips decoded (the first by name)")
    p.add_argument("--data", default="data/bench-videos", help="where the long videos are generated, once")
    p.add_argument("--minutes", help="lengths of the long videos (3,5,10; quick 1,2)")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=360)
    p.add_argument("--num-frames", type=int, default=8)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3, help="passes of the seek decoder (the whole one: one pass)")
    p.add_argument("--quick", action="store_true", help="1- and 2-minute videos, 50 clips")
    a = p.parse_args(argv)
    a.minutes = [float(m) for m in (a.minutes or ("1,2" if a.quick else "3,5,10")).split(",")]
    if a.quick:
        a.n_clips = min(a.n_clips, 50)
    return a


def main(argv=None) -> int:
    """Generate what is missing, decode both ways, write the JSON and the .md beside it."""
    apply_local_safety_env()
    a = parse_args(argv)
    from fastslow.log import get_logger, setup_logging

    setup_logging("INFO")
    log = get_logger("fastslow.benchmarks.video_decode")
    started = time.time()
    result = {"num_frames": a.num_frames, "image_size": a.image_size, "cpus": os.cpu_count(), "rows": []}
    clips = sorted(str(p) for p in Path(a.clips).glob("*.mp4"))[: a.n_clips]
    if clips:
        result["rows"].append(bench_set(f"synthetic clips ({Path(a.clips)})", clips, a.num_frames, a.image_size,
                                        a.repeats))
    else:
        log.warning("no clips under %s (make them with `fastslow synth`): skipped", a.clips)
    for path, m in zip(long_videos(Path(a.data), a.minutes, a.width, a.height), a.minutes):
        name = f"{m:g} min {a.width}x{a.height} {FPS} fps"
        result["rows"].append(bench_set(name, [path], a.num_frames, a.image_size, a.repeats))
        log.info("%s", result["rows"][-1])
    result["seconds"] = round(time.time() - started, 1)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
