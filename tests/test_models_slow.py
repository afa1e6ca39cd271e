"""The Slow captioner: shapes, gradients, both reading directions, float64 scores, time order, checkpoints."""

import pytest
import torch

from fastslow.errors import FastslowError
from fastslow.models import SlowConfig, SlowModel, TextTowerConfig, VisionTowerConfig, load_checkpoint, save_checkpoint
from fastslow.models.slow import build_output_vocab

TEXTS = ["a red circle left of a blue square", "a blue circle", "x", "the green star moves up, then vanishes"]


def tiny_slow(**overrides) -> SlowConfig:
    fields = dict(
        vision=VisionTowerConfig(kind="tiny_cnn", image_size=32, width=8, depth=2, trainable=True),
        text=TextTowerConfig(kind="tiny_transformer", max_length=16),
        dim=32, layers=2, heads=2, ffn=64, dropout=0.0, video_grid=2, max_frames=4, max_length=48,
    )
    return SlowConfig(**(fields | overrides))


def pixels(*shape) -> torch.Tensor:
    return torch.randint(0, 256, (*shape, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_shapes_and_fine_grained_grid():
    torch.manual_seed(0)
    model = SlowModel(tiny_slow()).eval()
    feats = model.visual_features(pixels(4, 40, 40))  # resized to 32: maps (16, 8, 8) and (32, 4, 4)
    assert feats.shape == (4, 16 * 64 + 32 * 16)
    assert model.visual_tokens(feats).shape == (4, 64, 32)  # the deep map upsampled to the mid map's 8x8 grid
    coarse = SlowModel(tiny_slow(fine_grained=False)).eval()
    assert coarse.visual_tokens(coarse.visual_features(pixels(4, 32, 32))).shape == (4, 16, 32)
    video = model.visual_features(pixels(2, 3, 32, 32))
    # The mid map pooled to the 2x2 video grid, the deepest to half of it (1x1): the fusion upsamples it.
    assert video.shape == (2, 3, 16 * 4 + 32 * 1)
    assert model.visual_tokens(video).shape == (2, 3 * 4, 32)
    coarse_video = coarse.visual_features(pixels(2, 3, 32, 32))
    assert coarse_video.shape == (2, 3, 32 * 4)  # without fusion the deepest map gives the 2x2 grid


def test_gradients_reach_tower_fusion_and_decoder():
    torch.manual_seed(0)
    model = SlowModel(tiny_slow())
    model.train()
    loss = model.loss(model.visual_tokens(model.visual_features(pixels(4, 32, 32))), TEXTS)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    for name in ("vision_tower.stem.0.weight", "deep_proj.weight", "mid_proj.weight", "row_embed",
                 "layers.1.cross_kv.weight", "dir_embed", "head.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_score_is_float64_mean_of_directions():
    torch.manual_seed(0)
    model = SlowModel(tiny_slow()).eval()
    with torch.no_grad():
        tokens = model.visual_tokens(model.visual_features(pixels(4, 32, 32)))
        l2r = model.log_likelihood(tokens, TEXTS, "l2r")
        r2l = model.log_likelihood(tokens, TEXTS, "r2l")
        both = model.score(tokens, TEXTS)
    assert both.dtype == l2r.dtype == torch.float64 and both.shape == (4,)
    assert torch.equal(both, (l2r + r2l) / 2)
    assert not torch.allclose(l2r, r2l)  # the direction embedding makes the two readings differ
    assert (l2r < 0).all()
    model.config.directions = "r2l"
    with torch.no_grad():
        assert torch.equal(model.score(tokens, TEXTS), r2l)


@pytest.mark.parametrize("direction", ["l2r", "r2l"])
def test_no_token_sees_the_tokens_it_has_yet_to_predict(direction):
    """Change input token j + 1: the log-probabilities of targets 0..j stay exactly as they were, in both directions."""
    torch.manual_seed(0)
    model = SlowModel(tiny_slow()).eval()
    with torch.no_grad():
        kv = model.memory_kv(model.visual_tokens(model.visual_features(pixels(1, 32, 32))))
        inp, tgt = model.text_inputs(["a red circle"], direction)
        base = model.token_log_probs(model.decode(inp, kv, direction), tgt)
        for j in range(inp.shape[1] - 1):
            changed = inp.clone()
            changed[0, j + 1] = 4 + (int(changed[0, j + 1]) - 4 + 7) % (model.vocab_size - 4)
            lp = model.token_log_probs(model.decode(changed, kv, direction), tgt)
            assert torch.equal(lp[0, : j + 1], base[0, : j + 1]), j
            assert not torch.equal(lp[0, j + 1 :], base[0, j + 1 :]), j  # the change is seen from there on


def test_the_score_is_a_plain_log_softmax_of_the_decoder_logits():
    """Independent of token_log_probs: a float64 log_softmax over the head's logits, gathered at each target."""
    torch.manual_seed(0)
    model = SlowModel(tiny_slow()).eval()
    with torch.no_grad():
        tokens = model.visual_tokens(model.visual_features(pixels(4, 32, 32)))
        kv = model.memory_kv(tokens)
        expected = 0
        for direction in ("l2r", "r2l"):
            inp, tgt = model.text_inputs(TEXTS, direction)
            logits = model.head(model.out_norm(model.decode(inp, kv, direction))).double()
            lp = torch.log_softmax(logits, dim=-1).gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
            expected = expected + (lp * (tgt != 0)).sum(1) / 2
        torch.testing.assert_close(model.score(tokens, TEXTS), expected, rtol=1e-9, atol=1e-5)


def test_padding_does_not_change_a_caption_likelihood():
    torch.manual_seed(0)
    model = SlowModel(tiny_slow()).eval()
    with torch.no_grad():
        tokens = model.visual_tokens(model.visual_features(pixels(4, 32, 32)))
        batch = model.score(tokens, TEXTS)
        alone = model.score(tokens[2:3], TEXTS[2:3])
    torch.testing.assert_close(alone[0], batch[2], rtol=1e-5, atol=1e-5)


def test_time_reversed_video_reads_differently():
    torch.manual_seed(0)
    model = SlowModel(tiny_slow()).eval()
    clip = pixels(1, 4, 32, 32)
    with torch.no_grad():
        fwd = model.visual_tokens(model.visual_features(clip))
        rev = model.visual_tokens(model.visual_features(clip.flip(1)))
        assert not torch.allclose(fwd, rev)
        # Same frames, other order: only the temporal embeddings tell them apart.
        torch.testing.assert_close((fwd - model.time_embed.repeat_interleave(4, 0)).sort(1).values,
                                   (rev - model.time_embed.repeat_interleave(4, 0)).sort(1).values)
        s_fwd, s_rev = model.score(fwd, TEXTS[3:]), model.score(rev, TEXTS[3:])
    assert s_fwd.item() != s_rev.item()


def test_checkpoint_round_trip_gives_same_scores(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_slow(output_vocab=build_output_vocab(TEXTS[:2], TextTowerConfig(kind="tiny_transformer")))
    model = SlowModel(cfg).eval()
    feats = model.visual_features(pixels(4, 32, 32)).detach()
    save_checkpoint(model, str(tmp_path / "ckpt"))
    loaded, manifest = load_checkpoint(str(tmp_path / "ckpt"))
    assert manifest["model_type"] == "slow" and isinstance(loaded, SlowModel)
    assert loaded.config.output_vocab == cfg.output_vocab
    with torch.no_grad():
        expected = model.score(model.visual_tokens(feats), TEXTS)
        got = loaded.score(loaded.visual_tokens(feats), TEXTS)
    assert torch.equal(expected, got)


def test_words_outside_the_output_vocab_are_left_out_and_unk_targets_unscored():
    vocab = build_output_vocab(["ab", "ba"], TextTowerConfig(kind="tiny_transformer"))
    assert vocab == [ord("a"), ord("b")]
    model = SlowModel(tiny_slow(output_vocab=vocab)).eval()
    assert model.head.out_features == 4 + 2
    # "z" and "abz" hold a token the decoder cannot predict: the words go, the rest reads as without them.
    assert model.token_ids(["ab z", "abz b", "z"]) == [[ord("a"), ord("b")], [ord("b")], []]
    inp, tgt = model.text_inputs(["ab z", "b"], "r2l")
    # BOS, then the tokens reversed; a = 4, b = 5; EOS = 2, PAD = 0.
    assert inp.tolist() == [[1, 5, 4], [1, 5, 0]]
    assert tgt.tolist() == [[5, 4, 2], [5, 2, 0]]
    # A target UNK (3) adds nothing, as padding does; the others are real log-probabilities.
    hidden = torch.randn(1, 4, model.config.dim)
    lp = model.token_log_probs(hidden, torch.tensor([[4, 3, 5, 0]]))
    assert lp[0, 1] == 0 and lp[0, 3] == 0 and (lp[0, [0, 2]] < 0).all()


def test_pretrained_default_layout_and_frozen_tower():
    model = SlowModel(SlowConfig())
    assert model.frozen_pretrained_prefixes() == ["vision_tower."]
    assert model.image_layout.grid == (8, 8) and model.video_layout.grid == (4, 4)
    vocab = build_output_vocab(["a red circle"])  # MiniLM WordPiece ids
    assert len(vocab) == 3 and all(i > 999 for i in vocab)


@pytest.mark.parametrize("bad", [dict(dim=30, heads=4), dict(directions="up"), dict(output_vocab=[1, 1]),
                                 dict(output_vocab=[-1]), dict(dropout=1.0), dict(video_grid=0)])
def test_bad_config_is_a_one_line_error(bad):
    with pytest.raises(FastslowError):
        tiny_slow(**bad)


def test_bad_inputs_are_errors():
    model = SlowModel(tiny_slow()).eval()
    with pytest.raises(FastslowError, match="outside"):
        SlowModel(tiny_slow(output_vocab=[300]))
    with pytest.raises(FastslowError, match="max_frames"):
        model.visual_features(pixels(1, 5, 32, 32))
    with pytest.raises(FastslowError, match="values per item"):
        model.visual_tokens(torch.zeros(2, 7))
    with pytest.raises(FastslowError, match="direction"):
        model.log_likelihood(torch.zeros(1, 64, 32), ["x"], "up")


def test_deep_mean_is_the_towers_pooled_output():
    model = SlowModel(tiny_slow()).eval()
    images = pixels(3, 32, 32)
    with torch.no_grad():
        pooled = model.vision_tower(model.vision_tower.preprocess(images)).pooled
        torch.testing.assert_close(model.deep_mean(model.visual_features(images)), pooled)
        assert model.deep_mean(model.visual_features(pixels(2, 3, 32, 32))).shape == (2, 3, 32)
