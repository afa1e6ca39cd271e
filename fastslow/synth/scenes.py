"""Image scenes: two bound objects in a spatial relation (plus an optional distractor), their twins, and rendering."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

from fastslow.synth import captions as cap

RGB = {
    "red": (215, 35, 35),
    "green": (35, 170, 55),
    "blue": (40, 80, 225),
    "yellow": (240, 215, 35),
    "purple": (150, 55, 195),
    "white": (240, 240, 240),
    "orange": (245, 135, 30),
}
DIAMETER = {"small": 0.16, "large": 0.32}  # fraction of the image side
BOUND = 0.58  # every shape fits in a circle of radius BOUND * diameter
SCALE_JITTER = 0.06
SUPERSAMPLE = 4  # drawn larger then box-filtered: PIL polygons have no antialiasing
IMAGE_TWINS = ("colour_swap", "shape_swap", "size_swap", "position_swap")


@dataclass(frozen=True)
class Obj:
    """One object: attributes, centre (fractions of the side, y down) and a size jitter factor."""

    colour: str
    shape: str
    size: str
    x: float
    y: float
    scale: float = 1.0

    @property
    def diameter(self) -> float:
        return DIAMETER[self.size] * self.scale


@dataclass(frozen=True)
class Scene:
    """A rendered-image recipe: the two mentioned objects, an optional distractor, the axis and the background."""

    a: Obj
    b: Obj
    distractor: Obj | None
    axis: str  # "h": a and b side by side; "v": one above the other
    grey: int
    texture_seed: int

    def ordered(self) -> tuple[Obj, Obj]:
        """The mentioned objects as (left, right) or (top, bottom)."""
        if self.axis == "h":
            return (self.a, self.b) if self.a.x < self.b.x else (self.b, self.a)
        return (self.a, self.b) if self.a.y < self.b.y else (self.b, self.a)

    def captions(self, slots: list[int]) -> list[str]:
        """The captions of this scene for the given template slots."""
        first, second = (cap.object_phrase(o.size, o.colour, o.shape) for o in self.ordered())
        return [cap.image_caption(s, self.axis, first, second) for s in slots]


def group_keys() -> list[tuple]:
    """Every distinct group identity: (axis, colour pair, shape pair); groups sharing a key could share captions."""
    colour_pairs = list(itertools.combinations(cap.COLOURS, 2))
    shape_pairs = list(itertools.combinations(cap.SHAPES, 2))
    return [(ax, c, s) for ax in ("h", "v") for c in colour_pairs for s in shape_pairs]


def _far(p, q, d: float) -> bool:
    return math.hypot(p[0] - q[0], p[1] - q[1]) >= d


def sample_scene(rng: np.random.Generator, key: tuple, distractor_prob: float) -> Scene:
    """An original scene for a group key, with every attribute differing between the two objects."""
    axis, colours, shapes = key
    colours = list(colours) if rng.random() < 0.5 else list(colours)[::-1]
    shapes = list(shapes) if rng.random() < 0.5 else list(shapes)[::-1]
    sizes = list(cap.SIZES) if rng.random() < 0.5 else list(cap.SIZES)[::-1]
    # Place as if every object were large and maximally jittered, so every twin
    # (size swap, position swap) stays non-overlapping at the same centres.
    r = BOUND * DIAMETER["large"] * (1 + SCALE_JITTER)
    lo, hi, gap = r + 0.01, 1 - r - 0.01, 0.02
    while True:
        u1, u2 = rng.uniform(lo, 0.45), rng.uniform(0.55, hi)
        v1, v2 = rng.uniform(lo, hi, size=2)
        if abs(v1 - v2) > 0.5 * (u2 - u1):
            continue
        p1, p2 = ((u1, v1), (u2, v2)) if axis == "h" else ((v1, u1), (v2, u2))
        if _far(p1, p2, 2 * r + gap):
            break
    if rng.random() < 0.5:  # which object is first (left/top) in the original
        p1, p2 = p2, p1
    jit = rng.uniform(1 - SCALE_JITTER, 1 + SCALE_JITTER, size=3)
    a = Obj(colours[0], shapes[0], sizes[0], *p1, scale=float(jit[0]))
    b = Obj(colours[1], shapes[1], sizes[1], *p2, scale=float(jit[1]))
    distractor = None
    if rng.random() < distractor_prob:
        # A colour and shape no twin mentions, so it can never satisfy a twin's caption.
        colour = str(rng.choice([c for c in cap.COLOURS if c not in colours]))
        shape = str(rng.choice([s for s in cap.SHAPES if s not in shapes]))
        size = str(rng.choice(cap.SIZES))
        rd = BOUND * DIAMETER[size] * float(jit[2])
        for _ in range(50):
            p = (rng.uniform(rd + 0.01, 1 - rd - 0.01), rng.uniform(rd + 0.01, 1 - rd - 0.01))
            if _far(p, p1, r + rd + gap) and _far(p, p2, r + rd + gap):
                distractor = Obj(colour, shape, size, *p, scale=float(jit[2]))
                break
    return Scene(
        a=a,
        b=b,
        distractor=distractor,
        axis=axis,
        grey=int(rng.integers(55, 96)),
        texture_seed=int(rng.integers(2**31)),
    )


def twin(scene: Scene, kind: str) -> Scene:
    """The scene with one binding swapped between the two mentioned objects; same words, different meaning."""
    a, b = scene.a, scene.b
    if kind == "original":
        return scene
    if kind == "colour_swap":
        a, b = replace(a, colour=b.colour), replace(b, colour=a.colour)
    elif kind == "shape_swap":
        a, b = replace(a, shape=b.shape), replace(b, shape=a.shape)
    elif kind == "size_swap":
        a, b = replace(a, size=b.size), replace(b, size=a.size)
    elif kind == "position_swap":
        a, b = replace(a, x=b.x, y=b.y), replace(b, x=a.x, y=a.y)
    else:
        raise ValueError(f"unknown image twin kind {kind!r}")
    return replace(scene, a=a, b=b)


def background(size: int, grey: int, texture_seed: int) -> Image.Image:
    """A plain grey canvas with a faint smooth texture, at the supersampled resolution."""
    rng = np.random.default_rng(texture_seed)
    coarse = max(2, size // 8)
    noise = rng.normal(0.0, 5.0, size=(coarse, coarse))
    img = Image.fromarray(np.clip(grey + noise, 0, 255).astype(np.uint8), mode="L")
    ss = size * SUPERSAMPLE
    return img.resize((ss, ss), Image.BILINEAR).convert("RGB")


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, d: float, fill) -> None:
    """Draw one filled shape of nominal diameter d (pixels) centred at (cx, cy)."""
    r = d / 2
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        h = 0.82 * r
        draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=fill)
    elif shape == "triangle":
        R = 1.12 * r  # equilateral, centroid at the centre, pointing up
        pts = [(cx + R * math.sin(t), cy - R * math.cos(t)) for t in (0, 2 * math.pi / 3, 4 * math.pi / 3)]
        draw.polygon(pts, fill=fill)
    elif shape == "diamond":
        R = 1.05 * r  # a square standing on a corner
        draw.polygon([(cx, cy - R), (cx + R, cy), (cx, cy + R), (cx - R, cy)], fill=fill)
    elif shape == "cross":
        w = 0.36 * r
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)
    elif shape == "star":
        R, q = 1.12 * r, 0.5 * r
        pts = []
        for i in range(10):
            t = i * math.pi / 5
            rr = R if i % 2 == 0 else q
            pts.append((cx + rr * math.sin(t), cy - rr * math.cos(t)))
        draw.polygon(pts, fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def draw_objects(canvas: Image.Image, objects) -> None:
    """Draw objects onto a supersampled canvas (in place)."""
    side = canvas.width
    draw = ImageDraw.Draw(canvas)
    for o in objects:
        draw_shape(draw, o.shape, o.x * side, o.y * side, o.diameter * side, RGB[o.colour])


def render_scene(scene: Scene, size: int) -> Image.Image:
    """The scene as a size x size RGB image."""
    canvas = background(size, scene.grey, scene.texture_seed)
    objs = [o for o in (scene.distractor, scene.a, scene.b) if o is not None]
    draw_objects(canvas, objs)
    return canvas.resize((size, size), Image.BOX)
