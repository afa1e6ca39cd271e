"""Video clips: two objects, one event each in time order (move, appear, disappear); twins, rendering, mp4 I/O."""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass, replace

import av
import numpy as np
from PIL import Image, ImageDraw

from fastslow.synth import captions as cap
from fastslow.synth.scenes import BOUND, RGB, background, draw_shape

DIAMETER = 0.24  # fraction of the frame side
VIDEO_TWINS = ("time_reverse", "colour_swap", "direction_swap")
# (kind of event 1, kind of event 2); the object of event 1 differs from that of event 2. A family holds a
# pattern and its time reversal (a twin of the same group), so a group's captions keep to one family.
PATTERN_FAMILIES = (
    (("move", "move"),),
    (("move", "appear"), ("disappear", "move")),
    (("appear", "move"), ("move", "disappear")),
)
STEP = {"up": (0.0, -1.0), "down": (0.0, 1.0), "left": (-1.0, 0.0), "right": (1.0, 0.0)}


@dataclass(frozen=True)
class Actor:
    """One object and its single event: kind ('move', 'appear', 'disappear'), direction, start and end centres."""

    colour: str
    shape: str
    kind: str
    direction: str | None
    start: tuple[float, float]
    end: tuple[float, float]


@dataclass(frozen=True)
class Clip:
    """A video recipe: actors[0] acts in the first half, actors[1] in the second; `reverse` plays it backwards."""

    actors: tuple[Actor, Actor]
    grey: int
    texture_seed: int
    reverse: bool = False

    def events(self) -> list[tuple[tuple[str, str | None], str]]:
        """The (event, object phrase) pairs in the order a viewer sees them."""
        out = []
        for a in self.actors:
            kind, direction = a.kind, a.direction
            if self.reverse:
                kind = {"move": "move", "appear": "disappear", "disappear": "appear"}[kind]
                direction = cap.OPPOSITE[direction] if direction else None
            out.append(((kind, direction), cap.object_phrase(None, a.colour, a.shape)))
        return out[::-1] if self.reverse else out

    def captions(self, slots) -> list[str]:
        """The captions of this clip for the given (template, verb style, article) slots."""
        return [cap.video_caption(s, self.events()) for s in slots]


def group_keys() -> list[tuple]:
    """Every distinct group identity: (colour pair, shape pair, pattern family); groups sharing a key could
    share captions."""
    return list(itertools.product(itertools.combinations(cap.COLOURS, 2), itertools.combinations(cap.SHAPES, 2),
                                  range(len(PATTERN_FAMILIES))))


def _seg_dist(p, q, r, s) -> float:
    """Distance between segments pq and rs (0 if they cross)."""

    def pt_seg(x, a, b):
        ax, ay = b[0] - a[0], b[1] - a[1]
        n = ax * ax + ay * ay
        t = 0.0 if n == 0 else max(0.0, min(1.0, ((x[0] - a[0]) * ax + (x[1] - a[1]) * ay) / n))
        return math.hypot(x[0] - a[0] - t * ax, x[1] - a[1] - t * ay)

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    d1, d2 = cross(r, s, p), cross(r, s, q)
    d3, d4 = cross(p, q, r), cross(p, q, s)
    if d1 * d2 < 0 and d3 * d4 < 0:
        return 0.0
    return min(pt_seg(p, r, s), pt_seg(q, r, s), pt_seg(r, p, q), pt_seg(s, p, q))


def sample_clip(rng: np.random.Generator, key: tuple) -> Clip:
    """An original clip for a group key: two distinct objects, one event each, paths kept apart."""
    colours, shapes, family = key
    colours = list(colours) if rng.random() < 0.5 else list(colours)[::-1]
    shapes = list(shapes) if rng.random() < 0.5 else list(shapes)[::-1]
    kinds = PATTERN_FAMILIES[family][int(rng.integers(len(PATTERN_FAMILIES[family])))]
    r = BOUND * DIAMETER
    lo, hi, gap = r + 0.01, 1 - r - 0.01, 0.03
    while True:
        actors = []
        for i, kind in enumerate(kinds):
            if kind == "move":
                direction = str(rng.choice(cap.DIRECTIONS))
                length = rng.uniform(0.3, 0.45)
                dx, dy = (length * v for v in STEP[direction])
                x0 = rng.uniform(max(lo, lo - dx), min(hi, hi - dx))
                y0 = rng.uniform(max(lo, lo - dy), min(hi, hi - dy))
                start, end = (float(x0), float(y0)), (float(x0 + dx), float(y0 + dy))
            else:
                direction = None
                start = end = (float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi)))
            actors.append(Actor(colours[i], shapes[i], kind, direction, start, end))
        a, b = actors
        if _seg_dist(a.start, a.end, b.start, b.end) >= 2 * r + gap:
            break
    return Clip(
        actors=(a, b), grey=int(rng.integers(55, 96)), texture_seed=int(rng.integers(2**31))
    )


def twin(clip: Clip, kind: str) -> Clip:
    """A twin of the clip: played backwards, objects' colours exchanged, or every move in the opposite direction."""
    a, b = clip.actors
    if kind == "original":
        return clip
    if kind == "time_reverse":
        return replace(clip, reverse=not clip.reverse)
    if kind == "colour_swap":
        return replace(clip, actors=(replace(a, colour=b.colour), replace(b, colour=a.colour)))
    if kind == "direction_swap":
        # Retrace the same path the other way, keeping the event order: unlike the
        # time-reversed twin, which also flips the order of the events.
        flip = [
            replace(x, direction=cap.OPPOSITE[x.direction], start=x.end, end=x.start)
            if x.kind == "move"
            else x
            for x in (a, b)
        ]
        return replace(clip, actors=tuple(flip))
    raise ValueError(f"unknown video twin kind {kind!r}")


def _state(actor: Actor, window: tuple[int, int], f: int):
    """(visible, centre) of an actor at frame f, its event happening during frames [s, e)."""
    s, e = window
    mid = s + (e - s) // 2
    if actor.kind == "appear":
        return f >= mid, actor.start
    if actor.kind == "disappear":
        return f < mid, actor.start
    t = min(1.0, max(0.0, (f - s) / max(1, e - 1 - s)))
    x = actor.start[0] + t * (actor.end[0] - actor.start[0])
    y = actor.start[1] + t * (actor.end[1] - actor.start[1])
    return True, (x, y)


def render_clip(clip: Clip, size: int, frames: int) -> np.ndarray:
    """The clip as a uint8 array [frames, size, size, 3]."""
    bg = background(size, clip.grey, clip.texture_seed)
    ss = bg.width
    half = frames // 2
    windows = ((0, half), (half, frames))
    out = np.empty((frames, size, size, 3), dtype=np.uint8)
    for f in range(frames):
        canvas = bg.copy()
        draw = ImageDraw.Draw(canvas)
        for actor, window in zip(clip.actors, windows):
            visible, (x, y) = _state(actor, window, f)
            if visible:
                draw_shape(draw, actor.shape, x * ss, y * ss, DIAMETER * ss, RGB[actor.colour])
        out[f] = np.asarray(canvas.resize((size, size), Image.BOX))
    return out[::-1].copy() if clip.reverse else out


@functools.cache
def video_codec() -> str:
    """libx264 where this PyAV build can encode it, else mpeg4."""
    try:
        av.codec.Codec("libx264", "w")
        return "libx264"
    except Exception:  # noqa: BLE001 - any failure means "not usable here"
        return "mpeg4"


def rgb_to_yuv420p(rgb: np.ndarray) -> np.ndarray:
    """BT.601 limited-range yuv420p planes stacked as [H * 3 / 2, W], as PyAV's from_ndarray expects."""
    # Exact integer arithmetic here rather than swscale's conversion inside
    # encode(), so the encoder's input cannot depend on buffer alignment or build.
    x = rgb.astype(np.int32)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    y = ((66 * r + 129 * g + 25 * b + 128) >> 8) + 16
    h, w = r.shape
    s = x.reshape(h // 2, 2, w // 2, 2, 3).sum(axis=(1, 3))  # exact 2x2 sums
    rs, gs, bs = s[..., 0], s[..., 1], s[..., 2]
    u = ((-38 * rs - 74 * gs + 112 * bs + 512) >> 10) + 128
    v = ((112 * rs - 94 * gs - 18 * bs + 512) >> 10) + 128
    chroma = np.concatenate([u.reshape(-1), v.reshape(-1)]).reshape(h // 2, w)
    return np.clip(np.concatenate([y, chroma]), 0, 255).astype(np.uint8)


def write_mp4(path: str, frames: np.ndarray, fps: int) -> None:
    """Encode RGB frames [T, H, W, 3] to an mp4 (yuv420p; lossless H.264 where libx264 is available)."""
    # Lossless because x264's lossy decisions varied between processes (a few
    # clips in a thousand): lossless, the decoded frames equal the input whatever
    # the encoder decides, so a rerun decodes identically.
    codec = video_codec()
    with av.open(path, "w", format="mp4") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = 1
        if codec == "libx264":
            stream.options = {"qp": "0", "preset": "medium"}
        else:
            stream.bit_rate = 2_000_000
        for i, arr in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb_to_yuv420p(arr), format="yuv420p")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def read_mp4(path: str) -> np.ndarray:
    """Decode every frame of a video to uint8 RGB [T, H, W, 3]."""
    with av.open(path) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
