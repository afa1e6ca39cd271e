"""Caption grammar of the synthetic benchmark: paraphrase templates over a small plain-English vocabulary."""

from __future__ import annotations

COLOURS = ("red", "green", "blue", "yellow", "purple", "white", "orange")
SHAPES = ("circle", "square", "triangle", "cross", "star", "diamond")
SIZES = ("small", "large")
DIRECTIONS = ("up", "down", "left", "right")
OPPOSITE = {"up": "down", "down": "up", "left": "right", "right": "left"}

# Slot 0 of every list is the canonical caption. Twins of one group use the same
# slots, so attribute-swapped twins get captions with the same multiset of words.
# {a}/{b}: first/second object of the pair (left/right or top/bottom).
HORIZONTAL = (
    "a {a} to the left of a {b}",
    "a {b} to the right of a {a}",
    "a {b} is right of a {a}",
    "there is a {a}, and a {b} on its right",
    "a {a} on the left and a {b} on the right",
    "the {a} is left of the {b}",
    "a {b} with a {a} on its left",
    "on the right a {b}, on the left a {a}",
    "the {b} is to the right of the {a}",
    "there is a {b}, and a {a} on its left",
)
VERTICAL = (
    "a {a} above a {b}",
    "a {b} below a {a}",
    "a {b} is under a {a}",
    "there is a {a}, and a {b} below it",
    "a {a} at the top and a {b} at the bottom",
    "the {a} is above the {b}",
    "a {b} with a {a} above it",
    "at the bottom a {b}, at the top a {a}",
    "the {b} is below the {a}",
    "there is a {b}, and a {a} above it",
)
MAX_IMAGE_CAPTIONS = len(HORIZONTAL)

# Two events in time order: {e1} happens first, {e2} second.
SEQUENCE = (
    "{e1}, then {e2}",
    "first {e1}, and then {e2}",
    "{e2} after {e1}",
    "{e1} before {e2}",
    "{e1} and then {e2}",
    "{e1}, after that {e2}",
    "at first {e1}, later {e2}",
)
FROM_TO = {
    "up": "from bottom to top",
    "down": "from top to bottom",
    "left": "from right to left",
    "right": "from left to right",
}
# Verb styles for one event clause; the canonical caption uses style 0.
N_VERB_STYLES = 3
ARTICLES = ("a", "the")
VIDEO_SLOTS = tuple(
    (t, v, art) for t in range(len(SEQUENCE)) for v in range(N_VERB_STYLES) for art in ARTICLES
)
MAX_VIDEO_CAPTIONS = len(VIDEO_SLOTS)


def tokenize(raw: str) -> list[str]:
    """Karpathy-style tokens: lowercase words without punctuation."""
    return raw.lower().replace(",", " ").split()


def object_phrase(size: str | None, colour: str, shape: str) -> str:
    """'large red circle' (size omitted for videos)."""
    return " ".join(w for w in (size, colour, shape) if w)


def image_caption(slot: int, axis: str, first: str, second: str) -> str:
    """One image caption: template `slot` of the axis ('h' or 'v') over the first/second object phrases."""
    templates = HORIZONTAL if axis == "h" else VERTICAL
    return templates[slot].format(a=first, b=second)


def event_clause(event: tuple[str, str | None], obj: str, style: int, article: str) -> str:
    """One event clause, e.g. 'a red circle moves up' or 'the blue square appears'."""
    kind, direction = event
    subject = f"{article} {obj}"
    if kind == "appear":
        return f"{subject} {('appears', 'shows up', 'appears')[style]}"
    if kind == "disappear":
        return f"{subject} {('disappears', 'vanishes', 'disappears')[style]}"
    if style == 0:
        return f"{subject} moves {direction}"
    if style == 1:
        return f"{subject} slides {direction}"
    return f"{subject} moves {FROM_TO[direction]}"


def video_caption(slot: tuple[int, int, str], clauses: list[tuple[tuple[str, str | None], str]]) -> str:
    """One video caption from a (template, verb style, article) slot and the two (event, object) pairs in time order."""
    template, style, article = slot
    (ev1, o1), (ev2, o2) = clauses
    return SEQUENCE[template].format(
        e1=event_clause(ev1, o1, style, article), e2=event_clause(ev2, o2, style, article)
    )


def vocabulary() -> set[str]:
    """Every word any caption may use."""
    words: set[str] = set(COLOURS) | set(SHAPES) | set(SIZES) | set(DIRECTIONS)
    texts = list(HORIZONTAL) + list(VERTICAL) + list(SEQUENCE) + list(FROM_TO.values())
    texts += ["moves slides appears shows up disappears vanishes", " ".join(ARTICLES)]
    for t in texts:
        words |= {w for w in tokenize(t) if not w.startswith("{")}
    return words
