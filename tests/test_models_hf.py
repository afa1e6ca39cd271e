"""`hf` towers from a tiny random CLIP checkpoint saved with save_pretrained and loaded back."""

import json
import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from fastslow.errors import FastslowError
from fastslow.models import FastConfig, FastModel, TextTowerConfig, VisionTowerConfig
from fastslow.models import build_text_tower, build_vision_tower
from fastslow.models.text import minilm_path

MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
TOKENIZER_FILES = ["vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(
            vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=24, bos_token_id=101, eos_token_id=102, pad_token_id=0,
        ),
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2,
            image_size=32, patch_size=8,
        ),
        projection_dim=16,
    )
    model = CLIPModel(cfg).eval()
    path = tmp_path_factory.mktemp("tiny_clip")
    model.save_pretrained(path)
    # A BERT WordPiece tokenizer stands in for CLIP's BPE: any tokenizer the model can embed will do.
    for name in TOKENIZER_FILES:
        shutil.copy(minilm_path() / name, path / name)
    (path / "preprocessor_config.json").write_text(json.dumps({"image_mean": MEAN, "image_std": STD}))
    return str(path), model


def test_hf_vision_tower_from_full_clip(tiny_clip):
    path, ref = tiny_clip
    tower = build_vision_tower(VisionTowerConfig(kind="hf", name_or_path=path, image_size=128))
    assert tower.image_size == 32  # the model's own input size wins
    assert tower.out_dim == 32 and tower.map_dims == (32, 32)
    pixels = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
    x = tower.preprocess(pixels)
    expected_x = (pixels.permute(0, 3, 1, 2).float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(
        STD
    ).view(1, 3, 1, 1)
    torch.testing.assert_close(x, expected_x)
    out = tower(x)
    with torch.no_grad():
        ref_out = ref.vision_model(pixel_values=x, output_hidden_states=True)
    torch.testing.assert_close(out.pooled, ref_out.pooler_output)
    assert [tuple(m.shape) for m in out.maps] == [(2, 32, 4, 4), (2, 32, 4, 4)]
    # The deepest map is the last hidden state's patch tokens (CLS dropped), laid out row-major.
    torch.testing.assert_close(out.maps[1][:, :, 0, 1], ref_out.last_hidden_state[:, 2])
    torch.testing.assert_close(out.maps[0][:, :, 1, 0], ref_out.hidden_states[3][:, 5])


def test_hf_text_tower_from_full_clip(tiny_clip):
    path, ref = tiny_clip
    tower = build_text_tower(TextTowerConfig(kind="hf", name_or_path=path, max_length=64))
    assert tower.max_length == 24  # clamped to the model's positions
    assert tower.out_dim == 32 and tower.vocab_size == 30522
    enc = tower.tokenize(["a photo of a dog", "hi"])
    out = tower(enc["input_ids"], enc["attention_mask"])
    with torch.no_grad():
        ref_tokens = ref.text_model(**enc).last_hidden_state
    torch.testing.assert_close(out.tokens, ref_tokens)
    n = int(enc["attention_mask"][1].sum())
    torch.testing.assert_close(out.pooled[1], ref_tokens[1, :n].mean(0))


def test_fast_model_with_trainable_hf_towers(tiny_clip):
    path, _ = tiny_clip
    cfg = FastConfig(
        vision=VisionTowerConfig(kind="hf", name_or_path=path, trainable=True),
        text=TextTowerConfig(kind="hf", name_or_path=path, trainable=True),
        embed_dim=8,
        head_hidden=0,
    )
    model = FastModel(cfg).train()
    assert model.frozen_pretrained_prefixes() == []
    loss = (model.encode_visual(torch.zeros(2, 40, 40, 3, dtype=torch.uint8)) @ model.encode_text(["a", "b"]).T).sum()
    loss.backward()
    patch = model.vision_tower.model.embeddings.patch_embedding.weight
    assert patch.grad is not None and patch.grad.abs().sum() > 0


def test_tiny_vocabulary_is_rejected(tiny_clip, tmp_path):
    path, _ = tiny_clip
    for name in ("config.json", "model.safetensors"):
        shutil.copy(os.path.join(path, name), tmp_path / name)
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer"}))
    with pytest.raises(FastslowError, match="vocabulary of 5 tokens"):
        build_text_tower(TextTowerConfig(kind="hf", name_or_path=str(tmp_path)))


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(FastslowError, match="vision tower"):
        build_vision_tower(VisionTowerConfig(kind="hf", name_or_path=str(tmp_path / "nope")))
