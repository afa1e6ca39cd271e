"""Tiny random towers and the Fast model: shapes, gradients, frozen towers, video pooling."""

import pytest
import torch
from helpers import tiny_config

from fastslow.models import FastConfig, FastModel
from fastslow.models.tokenizer import ByteTokenizer


def pixels(*shape) -> torch.Tensor:
    return torch.randint(0, 256, (*shape, 3), dtype=torch.uint8)


def test_byte_tokenizer_pads_and_truncates():
    tok = ByteTokenizer(max_length=6)
    enc = tok(["ab", "abcdefgh"])
    assert enc["input_ids"].tolist() == [[257, 97, 98, 258, 256, 256], [257, 97, 98, 99, 100, 258]]
    assert enc["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0], [1] * 6]
    assert tok.decode(enc["input_ids"][1].tolist()) == "abcd"


def test_tower_shapes():
    torch.manual_seed(0)
    model = FastModel(tiny_config()).eval()
    vt = model.vision_tower
    out = vt(vt.preprocess(pixels(3, 50, 40)))  # resized to 32
    assert out.pooled.shape == (3, vt.out_dim) == (3, 32)
    assert vt.map_dims == (16, 32)
    assert [tuple(m.shape) for m in out.maps] == [(3, 16, 8, 8), (3, 32, 4, 4)]
    enc = model.text_tower.tokenize(["a red cube", "x"])
    t = model.text_tower(enc["input_ids"], enc["attention_mask"])
    assert t.tokens.shape == (2, 12, 16) and t.mask.shape == (2, 12) and t.pooled.shape == (2, 16)
    # Padding must not change a text's pooled features.
    alone = model.text_tower(**model.text_tower.tokenize(["x"])).pooled
    torch.testing.assert_close(alone[0], t.pooled[1], atol=1e-5, rtol=1e-5)


def test_embeddings_unit_norm_and_temperature():
    model = FastModel(tiny_config(head_hidden=0)).eval()
    v = model.encode_visual(pixels(4, 32, 32))
    t = model.encode_text(["one", "two", "three"])
    assert v.shape == (4, 8) and t.shape == (3, 8)
    torch.testing.assert_close(v.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(t.norm(dim=-1), torch.ones(3))
    assert model.temperature == pytest.approx(0.07, rel=1e-5)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    model.after_optimizer_step()  # what the training loop does after each step: clamped at log(100)
    assert model.temperature == pytest.approx(0.01, rel=1e-5)


def test_gradients_reach_heads_and_trainable_towers():
    model = FastModel(tiny_config()).train()
    loss = (model.scale() * model.encode_visual(pixels(2, 32, 32)) @ model.encode_text(["a", "b"]).T).sum()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_frozen_towers_get_no_gradients_and_stay_in_eval():
    model = FastModel(tiny_config(vision_trainable=False, text_trainable=False))
    model.train()
    assert not model.vision_tower.training and not model.text_tower.training
    assert model.visual_head.training
    loss = (model.encode_visual(pixels(2, 32, 32)) @ model.encode_text(["a", "b"]).T).sum()
    loss.backward()
    for name, p in model.named_parameters():
        if name.startswith(("vision_tower.", "text_tower.")):
            assert not p.requires_grad and p.grad is None, name
        elif name != "logit_scale":
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_video_pools_tower_features_over_time():
    torch.manual_seed(0)
    model = FastModel(tiny_config()).eval()
    video = pixels(2, 3, 32, 32)
    feats = model.visual_features(video)
    assert feats.shape == (2, 3, 32)
    frame0 = model.visual_features(video[:, 0])
    torch.testing.assert_close(feats[:, 0], frame0, atol=1e-5, rtol=1e-5)
    emb = model.encode_visual(video)
    torch.testing.assert_close(emb, model.embed_visual_features(feats.mean(dim=1)), atol=1e-6, rtol=1e-6)
    # A still video embeds like its frame.
    still = video[:, :1].expand(2, 4, 32, 32, 3)
    torch.testing.assert_close(model.encode_visual(still), model.encode_visual(video[:, 0]), atol=1e-5, rtol=1e-5)
    # Masked-out frames do not count.
    mask = torch.tensor([[1, 0, 0], [1, 1, 1]])
    masked = model.embed_visual_features(feats, frame_mask=mask)
    torch.testing.assert_close(masked[0], model.embed_visual_features(frame0)[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(masked[1], emb[1], atol=1e-6, rtol=1e-6)


def pooled_config(**kw) -> FastConfig:
    cfg = tiny_config()
    return FastConfig(vision=cfg.vision, text=cfg.text, embed_dim=8, head_hidden=16, token_hidden=12, **kw)


def test_mid_token_pooling_keeps_every_map_position():
    torch.manual_seed(0)
    model = FastModel(pooled_config(vision_pooling="mid_tokens")).eval()
    images = pixels(3, 32, 32)
    feats = model.visual_features(images)
    assert feats.shape == (3, 8 * 8 * 16)  # the 8x8 map of 16 channels, channel-last
    mid = model.vision_tower(model.vision_tower.preprocess(images)).maps[0]
    torch.testing.assert_close(feats.reshape(3, 8, 8, 16)[:, 2, 5], mid[:, :, 2, 5])
    emb = model.encode_visual(images)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    # Mean and max over positions: the order of positions does not matter.
    shuffled = feats.reshape(3, 64, 16)[:, torch.randperm(64)].reshape(3, -1)
    torch.testing.assert_close(model.embed_visual_features(shuffled), emb, atol=1e-5, rtol=1e-5)
    # A video's tokens are all its frames' positions; masked frames do not count.
    video = pixels(2, 3, 32, 32)
    vfeats = model.visual_features(video)
    assert vfeats.shape == (2, 3, 8 * 8 * 16)
    still = video[:, :1].expand(2, 4, 32, 32, 3)
    torch.testing.assert_close(model.encode_visual(still), model.encode_visual(video[:, 0]), atol=1e-5, rtol=1e-5)
    masked = model.embed_visual_features(vfeats, frame_mask=torch.tensor([[1, 0, 0], [1, 1, 1]]))
    torch.testing.assert_close(masked[0], model.encode_visual(video[:1, 0])[0], atol=1e-5, rtol=1e-5)


def test_attention_text_pooling_ignores_padding_and_trains():
    torch.manual_seed(0)
    model = FastModel(pooled_config(text_pooling="attention", visual_dropout=0.5))
    feats = model.text_features(["a red cube", "x"])
    assert feats.shape == (2, 16, 16)  # padded to the tower's max_length with zero rows
    assert (feats[1, 3:] == 0).all() and (feats[1, :3] != 0).any(dim=-1).all()
    model.eval()
    alone = model.encode_text(["x"])
    torch.testing.assert_close(model.encode_text(["a red cube", "x"])[1], alone[0], atol=1e-5, rtol=1e-5)
    model.train()
    (model.encode_text(["a", "b"]) @ model.encode_visual(pixels(2, 32, 32)).T).sum().backward()
    assert model.text_pool.query.grad.abs().sum() > 0


def test_pooling_options_survive_a_checkpoint(tmp_path):
    from fastslow.models import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    model = FastModel(pooled_config(vision_pooling="mid_tokens", text_pooling="attention")).eval()
    save_checkpoint(model, str(tmp_path / "ckpt"))
    loaded, _ = load_checkpoint(str(tmp_path / "ckpt"))
    assert loaded.config == model.config
    images, texts = pixels(2, 32, 32), ["a red cube", "x"]
    torch.testing.assert_close(loaded.encode_visual(images), model.encode_visual(images))
    torch.testing.assert_close(loaded.encode_text(texts), model.encode_text(texts))
