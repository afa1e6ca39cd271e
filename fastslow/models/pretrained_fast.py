"""Fast from a pretrained image-text model used as it was trained: CLIP, SigLIP or SigLIP 2 (transformers).

Embeddings are the model's own `get_image_features` / `get_text_features` (its pooling and projections),
L2-normalised; images go through its processor's steps redone in torch (pretrained_preprocess.py), texts through
its own tokenizer padded as its processor pads them. The checkpoint holds everything: the full weights, the
transformers config, the preprocessing settings, and the tokenizer's files (`processor/` beside the weights).
Loading builds the model from that config and the tokenizer from those files; no code is ever run from them.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from fastslow.errors import FastslowError
from fastslow.models.checkpoint import register_model_type
from fastslow.models.fast import MAX_LOGIT_SCALE, FastEncoder, pool_frames
from fastslow.models.pretrained_preprocess import PretrainedVisionConfig, preprocess, vision_settings
from fastslow.models.text import tokenizer_files, tokenizer_from_files
from fastslow.models.vision import load_hf_model, quiet_transformers

FAMILIES = {"clip": "CLIPModel", "siglip": "SiglipModel", "siglip2": "Siglip2Model"}
TRAINABLE = ("projections", "text", "all")
FILES_DIR = "processor"


@dataclass
class PretrainedTextConfig:
    """How texts are tokenized: the model's tokenizer, truncated at max_length, padded as its processor pads."""

    max_length: int = 77
    padding: str = "longest"  # longest (CLIP: causal, padding changes nothing) | max_length (SigLIP: trained so)
    trainable: bool = False  # set from the model's `trainable`


@dataclass
class PretrainedFastConfig:
    """A pretrained image-text model as Fast: its family, its transformers config, how its inputs are made."""

    family: str = "clip"
    hf_config: dict = field(default_factory=dict)  # the transformers model config (`to_dict()`)
    vision: PretrainedVisionConfig = field(default_factory=PretrainedVisionConfig)
    text: PretrainedTextConfig = field(default_factory=PretrainedTextConfig)
    embed_dim: int = 512
    # What fine-tuning trains: projections (CLIP's two projections; SigLIP's text head, whose image side has no
    # projection outside its attention-pooling head), text (and the whole text tower), all; and the logit scale.
    trainable: str = "projections"
    source: dict = field(default_factory=dict)  # where the weights came from, with their sha256

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise FastslowError(f"pretrained.family: unknown value {self.family!r} (expected {', '.join(FAMILIES)})")
        if self.trainable not in TRAINABLE:
            raise FastslowError(f"trainable: unknown value {self.trainable!r} (expected {', '.join(TRAINABLE)})")
        if self.text.padding not in ("longest", "max_length"):
            raise FastslowError(f"text.padding: unknown value {self.text.padding!r} (expected longest, max_length)")
        self.vision.trainable = self.trainable == "all"
        self.text.trainable = self.trainable in ("text", "all")


def _model_class(family: str):
    import transformers

    return getattr(transformers, FAMILIES[family])


def _empty_weights():
    """No random initialisation: the weights come from the checkpoint right after (transformers 5, else 4.x)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4
        from transformers.modeling_utils import no_init_weights
    return no_init_weights()


class PretrainedFastModel(FastEncoder):
    """A CLIP/SigLIP/SigLIP 2 model behind Fast's interface; cosine ranks as its logits do (scale > 0)."""

    model_type = "pretrained_fast"

    def __init__(self, cfg: PretrainedFastConfig, files: dict[str, bytes] | None = None, model=None):
        super().__init__()
        self.config = cfg
        if model is None:  # rebuilt by load_checkpoint, which fills the weights next
            cls = _model_class(cfg.family)
            with _empty_weights(), quiet_transformers():
                model = cls(cls.config_class.from_dict(dict(cfg.hf_config)))
        self.model = model.eval()
        self.files = dict(files or {})
        self.tokenizer = tokenizer_from_files(self.files, FILES_DIR + "/", f"pretrained {cfg.family} model")
        rows = getattr(self.model.config.text_config, "vocab_size", None)
        if rows is not None and len(self.tokenizer) > rows:
            raise FastslowError(f"pretrained {cfg.family} model: tokenizer has {len(self.tokenizer)} tokens but the "
                                f"model embeds only {rows}")
        self.apply_trainable()

    @property
    def logit_scale(self) -> torch.nn.Parameter:
        return self.model.logit_scale

    def checkpoint_files(self) -> dict[str, bytes]:
        return dict(self.files)

    def _trainable_prefixes(self) -> tuple[str, ...]:
        scale = ("logit_scale", "logit_bias")
        if self.config.trainable == "all":
            return ("",)
        text = ("text_model.",) if self.config.trainable == "text" else ()
        if self.config.family == "clip":
            return (*scale, "visual_projection.", "text_projection.", *text)
        return (*scale, "text_model.head.", *text)

    def apply_trainable(self) -> None:
        """requires_grad as `config.trainable` says; frozen towers stay in eval mode."""
        prefixes = self._trainable_prefixes()
        for name, p in self.model.named_parameters():
            p.requires_grad_(name.startswith(prefixes))
        self.train(self.training)

    def train(self, mode: bool = True) -> PretrainedFastModel:
        super().train(mode)
        for tower, trainable in ((self.model.vision_model, self.config.vision.trainable),
                                 (self.model.text_model, self.config.text.trainable)):
            tower.train(mode and trainable)
        return self

    def _grad(self, trainable: bool):
        return contextlib.nullcontext() if trainable else torch.no_grad()

    @property
    def _visual_head(self) -> torch.nn.Module | None:
        # SigLIP's image side ends in its attention-pooling head, part of the vision tower: nothing to split off.
        return self.model.visual_projection if self.config.family == "clip" else None

    @property
    def _text_head(self) -> torch.nn.Module:
        return self.model.text_projection if self.config.family == "clip" else self.model.text_model.head

    def visual_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 images (B,H,W,3) -> (B,F), videos (B,T,H,W,3) -> (B,T,F): CLIP's pooled vision output before
        its projection, SigLIP's image features."""
        if pixels.dim() == 5:
            b, t = pixels.shape[:2]
            return self.visual_features(pixels.reshape(b * t, *pixels.shape[2:])).reshape(b, t, -1)
        inputs = preprocess(pixels.to(self.device), self.config.vision)
        with self._grad(self.config.vision.trainable):
            if self.config.family == "clip":  # get_image_features = visual_projection(this)
                return self.model.vision_model(**inputs).pooler_output
            out = self.model.get_image_features(**inputs)
            return getattr(out, "pooler_output", out)  # transformers 5 returns outputs, 4 the tensor

    def embed_visual_features(self, feats: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Features (B,F) or (B,T,F) to unit embeddings (B,E); a video's frames are embedded, averaged, renormalised."""
        feats = feats.to(self.device)
        if self._visual_head is not None:
            feats = self._visual_head(feats)
        emb = F.normalize(feats.float(), dim=-1)
        if emb.dim() == 3:
            emb = F.normalize(pool_frames(emb, "mean", frame_mask), dim=-1)
        return emb

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """The model's tokenizer, padded and truncated as its processor does."""
        t = self.config.text
        enc = self.tokenizer(list(texts), padding=t.padding, truncation=True, max_length=t.max_length,
                             return_tensors="pt")
        return {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}

    def text_features(self, texts: list[str]) -> torch.Tensor:
        """Texts to the pooled text features before the model's last projection (B,D)."""
        enc = self.tokenize(texts)
        with self._grad(self.config.text.trainable):
            out = self.model.text_model(**enc)
            if self.config.family == "clip":  # get_text_features = text_projection(this), the end token's state
                return out.pooler_output
            # SigLIP's text model pools its last position (after its final norm), then applies its head.
            return out.last_hidden_state[:, -1]

    def embed_text_features(self, feats: torch.Tensor) -> torch.Tensor:
        """Pooled text features to unit embeddings (B,E)."""
        return F.normalize(self._text_head(feats.to(self.device)).float(), dim=-1)

    def score_params(self) -> dict[str, float]:
        """The model's logit = scale * cosine + bias (SigLIP: its sigmoid is the match probability; CLIP: bias 0)."""
        bias = getattr(self.model, "logit_bias", None)
        return {"logit_scale": float(self.scale().detach().reshape(-1)[0]),
                "logit_bias": float(bias.detach().reshape(-1)[0]) if bias is not None else 0.0}

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """CLIP's scale is clamped at 100 as in its training; SigLIP trained its scale unclamped (above 100)."""
        if self.config.family == "clip":
            self.logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)

    def set_trainable(self, trainable: str) -> None:
        """Choose what fine-tuning trains (projections, text, all); kept in the config, so in the checkpoint."""
        self.config.trainable = trainable
        self.config.__post_init__()
        self.apply_trainable()


def _processor_files(folder: Path, tokenizer) -> dict[str, bytes]:
    """The tokenizer's files as save_pretrained writes them, and the image processor's config (for reference)."""
    files = tokenizer_files(tokenizer, FILES_DIR + "/")
    config = folder / "preprocessor_config.json"
    if config.is_file():
        files[f"{FILES_DIR}/preprocessor_config.json"] = config.read_bytes()
    return files


def _text_settings(family: str, tokenizer, hf_config) -> PretrainedTextConfig:
    positions = getattr(hf_config.text_config, "max_position_embeddings", None) or 10**9
    declared = getattr(tokenizer, "model_max_length", None) or 10**9
    # SigLIP trained on texts padded to 64 (its tokenizers declare it; SigLIP 2's processor pads to 64).
    length = min(declared if declared < 10**6 else (64 if family != "clip" else 77), positions)
    return PretrainedTextConfig(max_length=int(length), padding="longest" if family == "clip" else "max_length")


def from_pretrained_folder(folder: str | Path, source: dict | None = None) -> PretrainedFastModel:
    """A PretrainedFastModel from a local transformers folder (config, weights, tokenizer, image processor)."""
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer

    folder = Path(folder)
    where = f"pretrained model {folder}"
    try:
        with quiet_transformers():
            hf_config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
            tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
            processor = AutoImageProcessor.from_pretrained(folder, backend="pil", trust_remote_code=False)
    except (OSError, ValueError, KeyError, ImportError) as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise FastslowError(f"{where}: cannot read its config, tokenizer or image processor ({first})") from e
    family = hf_config.model_type
    if family not in FAMILIES:
        raise FastslowError(f"{where}: model type {family!r} is not supported (expected {', '.join(FAMILIES)})")
    # float32 whatever the folder's dtype: the checkpoint rebuilds the model in float32 (GPUs use autocast).
    model = load_hf_model(_model_class(family), str(folder), "pretrained model").float()
    hf_dict = {k: v for k, v in model.config.to_dict().items() if k != "_name_or_path"}
    embed_dim = int(getattr(hf_config, "projection_dim", 0) or 0) if family == "clip" else int(
        getattr(hf_config.text_config, "projection_size", 0) or hf_config.text_config.hidden_size)
    cfg = PretrainedFastConfig(family=family, hf_config=hf_dict, vision=vision_settings(processor),
                               text=_text_settings(family, tokenizer, hf_config), embed_dim=embed_dim,
                               source=dict(source or {}))
    return PretrainedFastModel(cfg, files=_processor_files(folder, tokenizer), model=model)


register_model_type(PretrainedFastModel.model_type, PretrainedFastConfig, PretrainedFastModel)
