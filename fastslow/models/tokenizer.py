"""A byte-level tokenizer for the tiny text tower: UTF-8 bytes plus pad, bos and eos ids."""

from __future__ import annotations

import torch


class ByteTokenizer:
    """Texts to UTF-8 byte ids framed by bos/eos, padded to the longest in the batch."""

    pad_id = 256
    bos_id = 257
    eos_id = 258
    vocab_size = 259

    def __init__(self, max_length: int = 32):
        if max_length < 2:
            raise ValueError("max_length must leave room for bos and eos")
        self.max_length = max_length

    def encode(self, text: str) -> list[int]:
        """One text to ids: bos, bytes (truncated), eos, at most max_length ids."""
        body = list(text.encode("utf-8"))[: self.max_length - 2]
        return [self.bos_id, *body, self.eos_id]

    def decode(self, ids: list[int]) -> str:
        """Ids back to text, dropping special ids and invalid UTF-8."""
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="ignore")

    def __call__(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """A batch of texts to `input_ids` and `attention_mask`, both (B, L) int64."""
        encoded = [self.encode(t) for t in texts]
        length = max((len(e) for e in encoded), default=2)
        ids = torch.full((len(encoded), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(encoded), length), dtype=torch.long)
        for i, e in enumerate(encoded):
            ids[i, : len(e)] = torch.tensor(e, dtype=torch.long)
            mask[i, : len(e)] = 1
        return {"input_ids": ids, "attention_mask": mask}
