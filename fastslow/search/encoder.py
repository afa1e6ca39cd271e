"""Fast as a query encoder: its text tower for words, its visual tower for an image given as the query."""

from __future__ import annotations

import numpy as np
import torch

from fastslow.devices import autocast, best_device
from fastslow.models.checkpoint import load_model
from fastslow.models.checkpoint import read_manifest as read_checkpoint
from fastslow.models.fast import FastEncoder


class QueryEncoder:
    """Fast's towers: query strings, or decoded images (as `decode` gives them), to unit vectors."""

    def __init__(self, checkpoint: str, threads: int | None = None):
        if threads:
            torch.set_num_threads(threads)
        self.device = best_device()
        self.model = load_model(checkpoint, FastEncoder).eval().to(self.device)
        self.weights_sha256 = read_checkpoint(checkpoint)["weights_sha256"]
        self.dim = self.model.config.embed_dim

    @torch.inference_mode()  # a millisecond less than no_grad per query here
    def encode(self, texts: list[str]) -> np.ndarray:
        with autocast(self.device):
            return self.model.encode_text(list(texts)).float().cpu().numpy()

    @torch.inference_mode()
    def encode_images(self, pixels: np.ndarray) -> np.ndarray:
        """(B, S, S, 3) uint8 images, decoded as the index decodes its items, to (B, E) unit vectors."""
        with autocast(self.device):
            return self.model.encode_visual(torch.from_numpy(np.ascontiguousarray(pixels))).float().cpu().numpy()
