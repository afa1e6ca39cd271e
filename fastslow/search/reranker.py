"""Slow re-scoring of each query's candidates, with the candidates' visual features decoded once and cached."""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np
import torch

from fastslow.data.decode import DecodeConfig, decode_sample
from fastslow.data.types import Sample
from fastslow.devices import autocast, best_device
from fastslow.errors import DecodeError, FastslowError
from fastslow.inference.slow_attention import attention_maps
from fastslow.inference.slow_scores import load_slow, slow_features, slow_score_matrix
from fastslow.models.slow import SlowModel


CACHE_MB = 1024  # default budget of a re-ranker's item cache


def tensor_bytes(t: torch.Tensor) -> int:
    return t.element_size() * t.nelement()


class ItemFeatures:
    """Slow's visual features of items, decoded from their URIs on first use and kept in an LRU cache of at most
    `cache_mb` MB (the features' bytes: a BLIP-base item's vision states are ~0.9 MB in float16); the least
    recently used items are evicted first. Items are decoded at the model's size and fit (decode_fit)."""

    def __init__(self, model: SlowModel, num_frames: int = DecodeConfig.num_frames, cache_mb: float = CACHE_MB):
        if cache_mb < 0:
            raise FastslowError(f"cache_mb={cache_mb}: the item cache's budget in MB must be 0 (none) or more")
        self.model = model
        self.budget = int(cache_mb * 2**20)  # bytes
        self.decode = DecodeConfig.for_model(model.config.vision, num_frames)
        self.cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self.cached_bytes = 0
        self.lock = threading.Lock()

    def _put(self, key: tuple, f: torch.Tensor) -> None:
        """Cache `f` under `key` (lock held), then evict the least recently used until the cache fits the budget."""
        old = self.cache.pop(key, None)
        if old is not None:
            self.cached_bytes -= tensor_bytes(old)
        self.cache[key] = f
        self.cached_bytes += tensor_bytes(f)
        while self.cached_bytes > self.budget and self.cache:
            self.cached_bytes -= tensor_bytes(self.cache.popitem(last=False)[1])

    def get(self, hits: list[dict]) -> tuple[torch.Tensor, list[str]]:
        """(features of the hits that decode, stacked in order; an error per hit, '' where it decoded)."""
        errors, out, missing = [""] * len(hits), [None] * len(hits), {}
        with self.lock:
            for i, h in enumerate(hits):
                key = (h["media"], h["uri"], h.get("offset"), h.get("size"))
                if key in self.cache:
                    self.cache.move_to_end(key)
                    out[i] = self.cache[key]
                else:
                    missing.setdefault(key, []).append(i)
        if missing:
            pixels, keys = [], []
            for key, where in missing.items():
                try:
                    pixels.append(decode_sample(Sample(id=hits[where[0]]["id"], media=key[0], uri=key[1],
                                                       captions=[], offset=key[2], size=key[3]), self.decode))
                    keys.append(key)
                except DecodeError as e:
                    for i in where:
                        errors[i] = f"{key[1]}: {e}"
            by_shape: dict[tuple, list[int]] = {}
            for j, p in enumerate(pixels):
                by_shape.setdefault(p.shape, []).append(j)
            for js in by_shape.values():
                feats = slow_features(self.model, np.stack([pixels[j] for j in js]))
                with self.lock:
                    for j, f in zip(js, feats):
                        f = f.clone()  # its own storage: a view would keep the whole batch alive past eviction
                        self._put(keys[j], f)
                        for i in missing[keys[j]]:
                            out[i] = f
        good = [f for f in out if f is not None]
        return (torch.stack(good) if good else torch.zeros(0)), errors



class Reranker:
    """Slow scores each query's candidates, in one pass over all queries of a batch."""

    def __init__(self, checkpoint: str, num_frames: int = DecodeConfig.num_frames, cache_mb: float = CACHE_MB,
                 threads: int | None = None):
        if threads:
            torch.set_num_threads(threads)
        self.device = best_device()
        self.model = load_slow(checkpoint).eval().to(self.device)  # SlowModel or a pretrained BLIP
        self.features = ItemFeatures(self.model, num_frames, cache_mb)

    def score(self, queries: list[str], candidates: list[list[dict]]) -> list[list[float | None]]:
        """Slow score of each candidate of each query (None for an item whose media could not be decoded)."""
        flat = [h for hits in candidates for h in hits]
        feats, errors = self.features.get(flat)
        decoded = np.array([not e for e in errors], dtype=bool)
        position = np.cumsum(decoded) - 1  # flat candidate -> row of feats
        width = max((len(h) for h in candidates), default=0)
        grid = np.zeros((len(queries), width), dtype=np.int64)
        valid = np.zeros((len(queries), width), dtype=bool)
        start = 0
        for q, hits in enumerate(candidates):
            span = slice(start, start + len(hits))
            grid[q, : len(hits)] = np.where(decoded[span], position[span], 0)
            valid[q, : len(hits)] = decoded[span]
            start += len(hits)
        scores = np.zeros(grid.shape)
        if valid.any():
            # Padding and undecodable slots score item 0 and are masked out below.
            with autocast(self.device):
                scores = slow_score_matrix(self.model, feats, list(queries), torch.from_numpy(grid))
        return [[float(scores[q, c]) if valid[q, c] else None for c in range(len(hits))]
                for q, hits in enumerate(candidates)]

    def explain(self, query: str, hits: list[dict]) -> list[dict | None]:
        """Slow's cross-attention maps of `query` over each hit (fastslow.inference.slow_attention), as lists with
        4 decimals; None for a hit whose media could not be decoded. A FastslowError for a model without maps."""
        feats, errors = self.features.get(hits)
        out, row = [], 0
        for error in errors:
            if error:
                out.append(None)
                continue
            found = attention_maps(self.model, feats[row], query)
            row += 1
            out.append({**found, "maps": found["maps"].numpy().round(4).tolist()})
        return out

