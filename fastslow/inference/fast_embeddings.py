"""Fast embeddings of items and texts in mini-batches, and of a whole split (queries and gallery)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from fastslow.data.loaded import LoadedSplit


@torch.no_grad()
def visual_features(model, pixels: np.ndarray, batch_size: int, progress: bool = False, desc: str = "visual") -> torch.Tensor:
    """Tower features of every item, in order (frozen or not, no gradient)."""
    out = []
    for start in tqdm(range(0, len(pixels), batch_size), desc=desc, disable=not progress, leave=False):
        out.append(model.visual_features(torch.from_numpy(pixels[start : start + batch_size])))
    return torch.cat(out)



@torch.no_grad()
def text_features(model, texts: list[str], batch_size: int, progress: bool = False, desc: str = "text") -> torch.Tensor:
    """Tower features of every text, in order (no gradient)."""
    out = []
    for start in tqdm(range(0, len(texts), batch_size), desc=desc, disable=not progress, leave=False):
        out.append(model.text_features(texts[start : start + batch_size]))
    return torch.cat(out)



@dataclass
class FastRetrieval:
    """A split embedded by the Fast model: every caption a query, every item in the gallery."""

    queries: torch.Tensor  # (Q, E)
    gallery: torch.Tensor  # (N, E)
    true_index: np.ndarray  # (Q,) gallery index of each query's item
    texts: list[str]
    encode_ms_per_query: float  # text encoding, what each query pays at serving time



@torch.no_grad()
def embed_items(model, pixels: np.ndarray, batch_size: int = 64, progress: bool = False) -> torch.Tensor:
    """Fast's embeddings of the items (images or videos), in order."""
    feats = visual_features(model, pixels, batch_size, progress, desc="embedding gallery")
    return torch.cat([model.embed_visual_features(f) for f in feats.split(batch_size)])


@torch.no_grad()
def embed_split(model, split: LoadedSplit, batch_size: int = 64, progress: bool = False) -> FastRetrieval:
    """Embed a split's gallery (offline) and its captions (timed: a query pays this)."""
    model.eval()
    texts, true_index = split.caption_pairs()
    gallery = embed_items(model, split.pixels, batch_size, progress)
    t0 = time.perf_counter()
    queries = torch.cat([model.encode_text(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)])
    encode_ms = 1000.0 * (time.perf_counter() - t0) / len(texts)
    return FastRetrieval(queries, gallery, true_index, texts, encode_ms)

