"""A pretrained Slow: BLIP (transformers) as the cross-attention re-ranker, scored with one of its heads.

Heads (what `score` returns for a query and an item; a re-ranker compares candidates of the same query):
- "caption": sum over the query's tokens (and the closing [SEP]) of log p(token | earlier tokens, item) under
  BLIP's captioning decoder, read left to right after BLIP's caption prompt (its fine-tuning prompt, "a picture
  of "; the prompt tokens are context, not scored), exactly as BlipForConditionalGeneration's loss counts
  labels: the paper's Slow score. A sum, not a per-token mean: both give the same order over one query's
  candidates, and the sum is the log-likelihood that fastslow's own SlowModel scores with.
- "itm": the image-text matching head's raw "match" logit, as BLIP's own retrieval evaluation ranks with.
- "itm+itc": that logit plus the contrastive (ITC) cosine similarity, the sum BLIP's evaluation
  (train_retrieval.py, eval_retrieval_video.py) re-ranks its top k with.
Videos: the frames' vision-encoder states are concatenated into one sequence the text attends to, and the ITC
embedding is the mean of the frames' projected [CLS] states, as BLIP's zero-shot video retrieval does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fastslow.errors import FastslowError
from fastslow.models.checkpoint import register_model_type
from fastslow.models.text import tokenizer_files, tokenizer_from_files

HEADS = ("caption", "itm", "itm+itc")
RESAMPLES = ("bicubic", "bilinear")
CAPTION_PROMPT = "a picture of "  # BLIP's captioning fine-tune prompt (configs/caption_coco.yaml)
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
TOKENIZER_PREFIX = "tokenizer/"  # where the tokenizer's files sit in a checkpoint directory


@dataclass
class BlipVisionSettings:
    """BLIP's image preprocessing (its preprocessor_config.json): resize to a square, rescale, normalise."""

    image_size: int = 384
    resample: str = "bicubic"
    rescale_factor: float = 1 / 255
    mean: list[float] = field(default_factory=lambda: list(CLIP_MEAN))
    std: list[float] = field(default_factory=lambda: list(CLIP_STD))
    trainable: bool = False  # fine-tuning: False caches the vision states and trains the text side only
    # BLIP's processor does not crop: [] = the whole image, squashed (fastslow.data.decode.decode_fit: items are
    # decoded with fit "squash" for BLIP, as for SigLIP's crop []).
    crop: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.image_size <= 0:
            raise FastslowError(f"blip_slow.vision.image_size: must be positive, got {self.image_size}")
        if self.resample not in RESAMPLES:
            raise FastslowError(f"blip_slow.vision.resample: {self.resample!r} is not one of {', '.join(RESAMPLES)}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise FastslowError("blip_slow.vision: mean and std need 3 values each, std positive")


@dataclass
class BlipSlowConfig:
    """A BLIP model (its transformers config as a dict), the head that scores, and BLIP's text settings."""

    head: str = "caption"
    hf_config: dict = field(default_factory=dict)  # BlipConfig.to_dict()
    vision: BlipVisionSettings = field(default_factory=BlipVisionSettings)
    prompt: str = CAPTION_PROMPT  # caption head only
    max_length: int = 40  # tokens, specials included: BLIP's 40 for captions, 35 for matching
    itm_first_token_id: int | None = None  # [ENC]: BLIP's ITM replaces [CLS] with it; None keeps [CLS]

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise FastslowError(f"blip_slow.head: {self.head!r} is not one of {', '.join(HEADS)}")
        if self.max_length < 3:
            raise FastslowError(f"blip_slow.max_length: must be at least 3, got {self.max_length}")


def _hf_class(head: str):
    from transformers import BlipForConditionalGeneration, BlipForImageTextRetrieval

    return BlipForConditionalGeneration if head == "caption" else BlipForImageTextRetrieval


def blip_preprocess(pixels: torch.Tensor, vision: BlipVisionSettings) -> torch.Tensor:
    """uint8 images (B,H,W,3) of any size -> BLIP's pixel_values (B,3,S,S) float32, as its image processor makes:
    resized to S x S (no crop), rescaled, normalised."""
    if pixels.dtype != torch.uint8 or pixels.dim() != 4 or pixels.shape[-1] != 3:
        raise FastslowError(f"blip_slow: expected uint8 pixels (B,H,W,3), got {pixels.dtype} {tuple(pixels.shape)}")
    s = vision.image_size
    if tuple(pixels.shape[1:3]) != (s, s):
        pixels = _pil_resize(pixels, s, vision.resample)
    x = pixels.permute(0, 3, 1, 2).float()
    mean = torch.tensor(vision.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(vision.std, device=x.device).view(1, 3, 1, 1)
    return (x * vision.rescale_factor - mean) / std


def _pil_resize(pixels: torch.Tensor, size: int, resample: str) -> torch.Tensor:
    """uint8 (B,H,W,3) resized to (B,size,size,3) by PIL, as BLIP's image processor resizes.

    Not torch: its antialiased interpolation matches each of PIL's two passes, but Pillow rounds to uint8 between
    them and picks their order by a rule of its own, which moves results by up to ~20 grey levels. fastslow decodes
    items at image_size already, so this runs only for other inputs.
    """
    from PIL import Image

    filt = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}[resample]
    out = [np.asarray(Image.fromarray(a).resize((size, size), filt)) for a in pixels.cpu().numpy()]
    return torch.from_numpy(np.stack(out)).to(pixels.device)


class BlipSlowModel(nn.Module):
    """BLIP as a Slow model: vision-encoder states per item (cached), a head's score per (text, item) pair."""

    model_type = "blip_slow"
    max_pairs = 64  # pairs per forward pass: each pair carries a whole item's vision states

    def __init__(self, cfg: BlipSlowConfig, files: dict[str, bytes] | None = None):
        super().__init__()
        from transformers import BlipConfig

        from fastslow.models.vision import quiet_transformers

        self.config = cfg
        try:
            with quiet_transformers():
                hf_config = BlipConfig.from_dict(dict(cfg.hf_config))
        except (TypeError, ValueError, KeyError) as e:
            raise FastslowError(f"blip_slow.hf_config: not a BLIP config ({e})") from e
        if hf_config.vision_config.image_size != cfg.vision.image_size:
            raise FastslowError(f"blip_slow: the vision encoder takes {hf_config.vision_config.image_size}px images "
                                f"but preprocessing makes {cfg.vision.image_size}px")
        self.hf = _hf_class(cfg.head)(hf_config)
        # The tokenizer comes from the checkpoint's own files (load_checkpoint passes them as `files`).
        self.tokenizer = self._load_tokenizer(files) if files else None
        if not cfg.vision.trainable:
            self.hf.vision_model.requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ---- checkpoint files: the tokenizer travels inside the checkpoint directory -------------------------

    def checkpoint_files(self) -> dict[str, bytes]:
        """The tokenizer's files, saved beside the weights (and sha256-checked on load) by save_checkpoint."""
        return tokenizer_files(self._tok(), TOKENIZER_PREFIX)

    def _load_tokenizer(self, files: dict[str, bytes], where: str = "blip_slow"):
        """The tokenizer from its files (a local load that runs no remote code), checked against the embeddings."""
        tok = tokenizer_from_files(files, TOKENIZER_PREFIX, where)
        vocab = self.hf.config.text_config.vocab_size
        if len(tok) > vocab:
            raise FastslowError(f"{where}: the tokenizer has {len(tok)} tokens; the model embeds {vocab}")
        return tok

    def _tok(self):
        if self.tokenizer is None:
            raise FastslowError("blip_slow: no tokenizer attached (load the model with load_checkpoint)")
        return self.tokenizer

    # ---- visual side ---------------------------------------------------------------------------------

    def visual_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 images (B,H,W,3) -> vision-encoder states (B,N,D); videos (B,T,H,W,3) -> (B,T,N,D)."""
        pixels = torch.as_tensor(pixels)
        if pixels.dim() == 5:
            b, t = pixels.shape[:2]
            states = self.visual_features(pixels.reshape(b * t, *pixels.shape[2:]))
            return states.reshape(b, t, *states.shape[1:])
        x = blip_preprocess(pixels.to(self.device), self.config.vision)
        return self.hf.vision_model(pixel_values=x).last_hidden_state

    def visual_tokens(self, features: torch.Tensor) -> torch.Tensor:
        """Cached states (float16 when frozen) as the float32 states the text side attends to."""
        return features.to(self.device, torch.float32)

    def _memory(self, states: torch.Tensor) -> torch.Tensor:
        """(P,N,D) images or (P,T,N,D) videos -> one sequence per item (frames concatenated), float32."""
        s = self.visual_tokens(states)
        return s.flatten(1, 2) if s.dim() == 4 else s

    # ---- text side -----------------------------------------------------------------------------------

    def _encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self._tok()(list(texts), padding="longest", truncation=True, max_length=self.config.max_length,
                          return_tensors="pt", return_token_type_ids=False)
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)

    def caption_inputs(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decoder (input_ids, attention_mask, labels) as BLIP's captioner builds them: prompt + text, [CLS]
        replaced by BOS ([DEC]), labels -100 on the prompt and the padding."""
        ids, mask = self._encode([self.config.prompt + t for t in texts])
        ids[:, 0] = self.hf.config.text_config.bos_token_id
        # As BLIP: the prompt's length is its tokens with [CLS], without [SEP] (no merge across the space).
        prompt_len = len(self._tok()(self.config.prompt, return_token_type_ids=False)["input_ids"]) - 1
        labels = ids.masked_fill(mask == 0, -100)
        labels[:, :prompt_len] = -100
        return ids, mask, labels

    def scored_token_counts(self, texts: list[str]) -> torch.Tensor:
        """(B,) the tokens a caption score sums over (ones for the matching heads, whose score is no sum)."""
        if self.config.head != "caption":
            return torch.ones(len(texts), dtype=torch.long)
        return (self.caption_inputs(texts)[2][:, 1:] != -100).sum(dim=1).cpu()

    # ---- scores --------------------------------------------------------------------------------------

    def score_pairs(self, features: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """Score (P,) float64 of texts[p] against the item whose cached states are features[p]."""
        if len(texts) != len(features):
            raise FastslowError(f"blip_slow: {len(features)} items but {len(texts)} texts")
        memory = self._memory(features)
        if self.config.head == "caption":
            ids, mask, labels = self.caption_inputs(texts)
            logits = self.hf.text_decoder(input_ids=ids, attention_mask=mask, encoder_hidden_states=memory).logits
            return _label_log_probs(logits, labels).sum(dim=1).double()
        ids, mask = self._encode(texts)
        score = self._itm_logit(ids, mask, memory)
        if self.config.head == "itm+itc":
            score = score + self._itc_cosine(ids, mask, features)
        return score.double()

    def _itm_logit(self, ids: torch.Tensor, mask: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        if self.config.itm_first_token_id is not None:
            ids = ids.clone()
            ids[:, 0] = self.config.itm_first_token_id
        ones = torch.ones(memory.shape[:-1], dtype=torch.long, device=memory.device)
        out = self.hf.text_encoder(input_ids=ids, attention_mask=mask, encoder_hidden_states=memory,
                                   encoder_attention_mask=ones).last_hidden_state
        return self.hf.itm_head(out[:, 0, :]).float()[:, 1]

    def _itc_cosine(self, ids: torch.Tensor, mask: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        text = self.hf.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0, :]
        cls = self.visual_tokens(features)[..., 0, :]  # (P,D) or (P,T,D): a video averages its frames' embeddings
        image = self.hf.vision_proj(cls)
        image = image.mean(dim=1) if image.dim() == 3 else image
        return (F.normalize(image.float(), dim=-1) * F.normalize(self.hf.text_proj(text).float(), dim=-1)).sum(-1)

    def loss(self, features: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """BLIP's captioning loss (mean token cross-entropy, its label smoothing) of texts given items."""
        if self.config.head != "caption":
            raise FastslowError(f"blip_slow: fine-tuning the {self.config.head!r} head is not supported; "
                                "fine-tune a caption-head BLIP, or use the matching head as it is")
        ids, mask, labels = self.caption_inputs(texts)
        return self.hf.text_decoder(input_ids=ids, attention_mask=mask, encoder_hidden_states=self._memory(features),
                                    labels=labels).loss


def _label_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, L-1) log p of each next-token label (0 where the label is -100), the decoder's shift applied."""
    targets = labels[:, 1:]
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return picked.masked_fill(targets == -100, 0.0)


register_model_type("blip_slow", BlipSlowConfig, BlipSlowModel)
