"""What one query asks for, with the defaults every entry point uses (HTTP body, client, CLI, notebook)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# How much an image (uploaded, or `like` an item) weighs beside a text query: the query vector is the unit vector
# along (1 - w) * text + w * image, both unit vectors, so each item's Fast score is (1 - w) * its text score +
# w * its image score, divided by the same length for every item (the order of the weighted sum).
IMAGE_WEIGHT = 0.5


@dataclass
class SearchRequest:
    """One query: words (`query`), an image (`image`: decoded pixels) or an indexed item (`like`: its id), or words
    with either; the k results wanted, of the items passing `filter` (checked: fastslow.search.filters), and
    whether Fast's first rerank_k are re-ranked by Slow (only where there are words to re-rank by)."""

    query: str = ""
    k: int = 10
    rerank: bool = True
    rerank_k: int = 20
    image: np.ndarray | None = None
    like: str | None = None
    image_weight: float = IMAGE_WEIGHT
    filter: dict | None = None
    explain: bool = False  # Slow's attention maps of the words over each re-ranked result shown

    @property
    def query_by(self) -> str:
        """What the query is made of: text, image, like, text+image or text+like."""
        parts = (["text"] if self.query else []) + (["image"] if self.image is not None else []) + \
            (["like"] if self.like is not None else [])
        return "+".join(parts)


def combine(text: np.ndarray | None, visual: np.ndarray | None, image_weight: float) -> np.ndarray:
    """The query vector of a text vector, a visual one (either as given), or both (see IMAGE_WEIGHT)."""
    if text is None or visual is None:
        return text if visual is None else visual
    t, v = (np.asarray(x, np.float32) / max(float(np.linalg.norm(x)), 1e-12) for x in (text, visual))
    both = (1.0 - image_weight) * t + image_weight * v
    return (both / max(float(np.linalg.norm(both)), 1e-12)).astype(np.float32)
