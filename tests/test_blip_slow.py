"""A pretrained BLIP as the Slow model: tiny random BLIP models saved with save_pretrained, scored through fastslow's
Slow paths and checked against transformers' own forward passes."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image

from fastslow.errors import FastslowError
from pretrained_models import blip_tokenizer, save_tiny_blip

REPO = Path(__file__).resolve().parents[1]
SIZE, MEAN, STD = 32, [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
QUERIES = ["a dog", "a red car parked beside a small house", "two cats sleeping on a very old couch in the sun", ""]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """{"caption": dir, "retrieval": dir}: tiny BLIP captioning and retrieval models with their processor."""
    return {kind: save_tiny_blip(tmp_path_factory.mktemp(f"blip_{kind}"), kind, SIZE, MEAN, STD)
            for kind in ("caption", "retrieval")}


@pytest.fixture(scope="module")
def checkpoints(folders, tmp_path_factory):
    from fastslow.models.blip_slow_build import save_blip_slow_checkpoint

    root = tmp_path_factory.mktemp("blip_ckpts")
    out = {}
    for head, folder in (("caption", "caption"), ("itm", "retrieval"), ("itm+itc", "retrieval")):
        out[head] = str(root / head.replace("+", "_"))
        save_blip_slow_checkpoint(folders[folder], out[head], head, {"kind": "folder", "name": "tiny"})
    return out


def _hf(folder, cls_name):
    import transformers

    return getattr(transformers, cls_name).from_pretrained(folder).eval()


def _pixel_values(images):
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    proc = BlipImageProcessorPil(size={"height": SIZE, "width": SIZE}, image_mean=MEAN, image_std=STD)
    return proc(images=list(images), return_tensors="pt")["pixel_values"]


def _images(n, seed=0, size=SIZE):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _caption_inputs(tok, query, bos, prompt="a picture of "):
    """BLIP's captioning inputs, built here from the tokenizer alone: [DEC] prompt query [SEP], prompt unscored."""
    enc = tok(prompt + query, return_tensors="pt", return_token_type_ids=False)
    ids = enc["input_ids"].clone()
    ids[:, 0] = bos
    labels = ids.clone()
    labels[:, : len(tok(prompt)["input_ids"]) - 1] = -100
    assert int((labels[:, 1:] != -100).sum()) == len(tok(query, add_special_tokens=False)["input_ids"]) + 1
    return ids, enc["attention_mask"], labels


def _direct_caption(hf, tok, pixel_values, query, states=None):
    """The caption log-likelihood from transformers' own loss: -mean loss x number of label tokens."""
    ids, mask, labels = _caption_inputs(tok, query, hf.config.text_config.bos_token_id)
    with torch.no_grad():
        if states is None:
            loss = hf(pixel_values=pixel_values, input_ids=ids, attention_mask=mask, labels=labels).loss
        else:
            loss = hf.text_decoder(input_ids=ids, attention_mask=mask, encoder_hidden_states=states, labels=labels).loss
    return -float(loss) * int((labels[:, 1:] != -100).sum())


def test_caption_score_is_the_models_caption_log_likelihood(folders, checkpoints):
    from fastslow.inference.slow_scores import slow_score_matrix
    from fastslow.models.checkpoint import load_checkpoint

    model, manifest = load_checkpoint(checkpoints["caption"])
    assert manifest["model_type"] == "blip_slow" and manifest["extra"]["source"] == {"kind": "folder", "name": "tiny"}
    assert model.config.prompt == "a picture of " and model.config.vision.mean == MEAN
    hf, tok = _hf(folders["caption"], "BlipForConditionalGeneration"), blip_tokenizer()
    images = _images(3)
    with torch.no_grad():
        feats = model.visual_features(torch.from_numpy(images))
    # Every query against every image in one call: queries of different lengths share padded passes.
    got = slow_score_matrix(model, feats, QUERIES, torch.arange(3).expand(len(QUERIES), 3))
    pv = _pixel_values(images)
    want = np.array([[_direct_caption(hf, tok, pv[i : i + 1], q) for i in range(3)] for q in QUERIES])
    assert got.dtype == np.float64
    print("caption: max abs diff", np.abs(got - want).max())
    assert np.abs(got - want).max() < 1e-4, np.abs(got - want).max()
    assert np.ptp(want, axis=1).min() > 1e-2  # the images do change the score
    # A sum over tokens: a longer query has a much lower log-likelihood.
    assert want[2].max() < want[0].min() < 0
    counts = model.scored_token_counts(QUERIES).tolist()
    assert counts == [len(tok(q, add_special_tokens=False)["input_ids"]) + 1 for q in QUERIES]


def test_itm_and_itm_plus_itc_scores_are_blips(folders, checkpoints):
    from fastslow.inference.slow_scores import slow_score_matrix
    from fastslow.models.checkpoint import load_checkpoint

    hf, tok = _hf(folders["retrieval"], "BlipForImageTextRetrieval"), blip_tokenizer()
    itm, _ = load_checkpoint(checkpoints["itm"])
    both, _ = load_checkpoint(checkpoints["itm+itc"])
    enc_id = tok.convert_tokens_to_ids("[ENC]")
    assert itm.config.itm_first_token_id == enc_id == 30523 and itm.config.max_length == 35
    images = _images(2, seed=1)
    pv = _pixel_values(images)
    with torch.no_grad():
        feats = itm.visual_features(torch.from_numpy(images))
    cand = torch.tensor([[0, 1], [1, 0], [0, 0]])
    texts = QUERIES[:3]
    got_itm = slow_score_matrix(itm, feats, texts, cand)
    got_both = slow_score_matrix(both, feats, texts, cand)
    worst = 0.0
    for q, text in enumerate(texts):
        for k, item in enumerate(cand[q].tolist()):
            ids = tok(text, return_tensors="pt", return_token_type_ids=False)["input_ids"]
            itm_ids = ids.clone()
            itm_ids[:, 0] = enc_id  # BLIP's retrieval evaluation reads [ENC] first for matching, [CLS] for ITC
            with torch.no_grad():
                logit = hf(input_ids=itm_ids, pixel_values=pv[item : item + 1], use_itm_head=True).itm_score[0, 1]
                cosine = hf(input_ids=ids, pixel_values=pv[item : item + 1], use_itm_head=False).itm_score[0, 0]
            worst = max(worst, abs(got_itm[q, k] - float(logit)), abs(got_both[q, k] - float(logit + cosine)))
    print("itm, itm+itc: max abs diff", worst)
    assert worst < 1e-5, worst
    assert np.abs(got_both - got_itm).max() > 1e-3  # the cosine is really added


@pytest.mark.parametrize("shape", [(32, 32), (50, 70), (17, 90), (120, 40), (9, 9), (64, 64)])
def test_preprocessing_matches_blips_image_processor(shape):
    from fastslow.models.blip_slow import BlipVisionSettings, blip_preprocess

    img = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    # Smooth areas as well as noise: real photos are mostly smooth, noise is the hard case for resampling.
    img[: shape[0] // 2] = np.linspace(0, 255, shape[1], dtype=np.uint8)[None, :, None]
    vision = BlipVisionSettings(image_size=SIZE, mean=MEAN, std=STD)
    got = blip_preprocess(torch.from_numpy(img)[None], vision)[0]
    want = _pixel_values([img])[0]
    grey = ((got - want).abs() * torch.tensor(STD).view(3, 1, 1) * 255).max().item()
    print("preprocessing", shape, "max grey-level diff", grey)
    assert grey <= 1.0 + 1e-3, grey


def _write_images(tmp_path):
    hits = []
    for i, (w, h, fmt) in enumerate([(32, 32, "PNG"), (48, 40, "JPEG"), (20, 60, "PNG")]):
        arr = np.random.default_rng(10 + i).integers(0, 256, (h, w, 3), dtype=np.uint8)
        path = tmp_path / f"item{i}.{fmt.lower()}"
        Image.fromarray(arr).save(path, format=fmt)
        hits.append({"id": f"item{i}", "media": "image", "uri": str(path), "offset": None, "size": None})
    return hits


def test_reranker_scores_blip_candidates_with_cached_features(folders, checkpoints, tmp_path, monkeypatch):
    from fastslow.data.decode import DecodeConfig, decode_sample
    from fastslow.data.types import Sample
    from fastslow.models.blip_slow import BlipSlowModel
    from fastslow.search import reranker as reranker_module

    computed = []
    real = reranker_module.slow_features
    monkeypatch.setattr(reranker_module, "slow_features",
                        lambda model, pixels, *a, **k: computed.append(len(pixels)) or real(model, pixels, *a, **k))
    rr = reranker_module.Reranker(checkpoints["caption"])
    assert isinstance(rr.model, BlipSlowModel)
    hits = _write_images(tmp_path)
    queries = ["a dog on grass", "a red car"]
    got = rr.score(queries, [hits, hits[::-1][:2]])
    assert computed == [3]  # each item's vision states once, even where two queries share it
    again = rr.score(["a dog on grass"], [hits])
    assert computed == [3] and again[0] == got[0]  # a later query: every item from the cache

    hf, tok = _hf(folders["caption"], "BlipForConditionalGeneration"), blip_tokenizer()
    worst_cached, worst_full = 0.0, 0.0
    for q, row in zip(queries, [hits, hits[::-1][:2]]):
        for h, score in zip(row, got[queries.index(q)]):
            # Decoded as the re-ranker decodes for BLIP: the whole image squashed to a square (decode_fit).
            pixels = decode_sample(Sample(id=h["id"], media="image", uri=h["uri"], captions=[]),
                                   DecodeConfig(SIZE, fit="squash"))
            pv = _pixel_values([pixels])
            with torch.no_grad():
                states = hf.vision_model(pixel_values=pv).last_hidden_state
            # The cache keeps float16 states: equal to the model fed those states, close to the full-precision one.
            worst_cached = max(worst_cached, abs(score - _direct_caption(hf, tok, pv, q, states.half().float())))
            worst_full = max(worst_full, abs(score - _direct_caption(hf, tok, pv, q)))
    print("reranker: worst abs diff, float16-cached states", worst_cached, "full precision", worst_full)
    assert worst_cached < 1e-5 * np.abs(np.concatenate(got)).max(), worst_cached  # float32 rounding of ~-50
    assert worst_full < 2e-2, worst_full
    broken = dict(hits[0], id="bad", uri=str(tmp_path / "missing.png"))
    assert rr.score(["a dog"], [[broken, hits[1]]])[0][0] is None


def test_video_frames_are_one_sequence(checkpoints):
    """A video's frames' states are concatenated, as BLIP's zero-shot video retrieval does."""
    from fastslow.models.checkpoint import load_checkpoint

    model, _ = load_checkpoint(checkpoints["caption"])
    video = torch.from_numpy(_images(3, seed=5)).unsqueeze(0)  # (1, T=3, S, S, 3)
    with torch.no_grad():
        feats = model.visual_features(video)
        assert feats.shape == (1, 3, (SIZE // 8) ** 2 + 1, 32)
        got = float(model.score_pairs(feats, ["a dog"])[0])
        ids, mask, labels = model.caption_inputs(["a dog"])
        loss = model.hf.text_decoder(input_ids=ids, attention_mask=mask, encoder_hidden_states=feats.reshape(1, -1, 32),
                                     labels=labels).loss
        framewise = model.score_pairs(feats[0], ["a dog"] * 3)
    assert abs(got + float(loss) * int((labels[:, 1:] != -100).sum())) < 1e-4
    assert np.abs(framewise.numpy() - got).min() > 1e-2  # not any one frame's score


SCRIPT = """
import json, sys
import numpy as np, torch
from fastslow.inference.slow_scores import load_slow
model = load_slow(sys.argv[1])
pixels = torch.from_numpy(np.random.default_rng(3).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8))
with torch.no_grad():
    print(json.dumps(float(model.score_pairs(model.visual_features(pixels), ["a dog"])[0])))
"""


def _fresh(ckpt, cwd):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-c", SCRIPT, ckpt], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_checkpoint_is_self_contained_and_checked(folders, tmp_path):
    from fastslow.inference.slow_scores import load_slow
    from fastslow.models.blip_slow_build import save_blip_slow_checkpoint

    source = tmp_path / "source"
    shutil.copytree(folders["caption"], source)
    ckpt = str(tmp_path / "ckpt")
    save_blip_slow_checkpoint(str(source), ckpt, "caption", {"kind": "folder"})
    local = load_slow(ckpt)
    pixels = torch.from_numpy(np.random.default_rng(3).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8))
    with torch.no_grad():
        want = float(local.score_pairs(local.visual_features(pixels), ["a dog"])[0])
    shutil.rmtree(source)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = _fresh(ckpt, elsewhere)
    assert run.returncode == 0, run.stderr[-2000:]
    assert abs(json.loads(run.stdout.strip().splitlines()[-1]) - want) < 1e-6
    manifest = json.loads((Path(ckpt) / "config.json").read_text())
    assert any(name.startswith("tokenizer/") for name in manifest["files"])

    weights = Path(ckpt) / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    run = _fresh(ckpt, elsewhere)
    assert run.returncode != 0
    with pytest.raises(FastslowError, match="model.safetensors: sha256 .* does not match") as e:
        load_slow(ckpt)
    assert "\n" not in str(e.value)
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    load_slow(ckpt)  # restored: loads again
    tok_file = Path(ckpt) / "tokenizer" / "tokenizer_config.json"
    tok_file.write_text(tok_file.read_text().replace('"[PAD]"', '"[UNK]"'))
    with pytest.raises(FastslowError, match="tokenizer_config.json: sha256 .* does not match"):
        load_slow(ckpt)


def test_a_folder_of_the_other_blip_model_is_refused(folders, tmp_path):
    from fastslow.models.blip_slow_build import save_blip_slow_checkpoint

    with pytest.raises(FastslowError, match=f"{folders['caption']}: holds a BlipForConditionalGeneration"):
        save_blip_slow_checkpoint(folders["caption"], str(tmp_path / "a"), "itm", {})
    with pytest.raises(FastslowError, match=f"{folders['retrieval']}: holds a BlipForImageTextRetrieval"):
        save_blip_slow_checkpoint(folders["retrieval"], str(tmp_path / "b"), "caption", {})
    with pytest.raises(FastslowError, match="--head 'lm'"):
        save_blip_slow_checkpoint(folders["caption"], str(tmp_path / "c"), "lm", {})
    bare = tmp_path / "bare"
    shutil.copytree(folders["caption"], bare)
    os.remove(bare / "processor_config.json")
    with pytest.raises(FastslowError, match=f"{bare}: no image preprocessing settings"):
        save_blip_slow_checkpoint(str(bare), str(tmp_path / "d"), "caption", {})


def test_fine_tuning_lowers_the_caption_loss_and_reloads(checkpoints, tmp_path):
    from fastslow.config import SlowRunConfig
    from fastslow.data.source import DataConfig
    from fastslow.inference.slow_scores import load_slow
    from fastslow.models.blip_slow import BlipSlowModel
    from fastslow.train.run import run_training
    from fastslow.train.slow_training import SlowTrainConfig

    data = tmp_path / "data"
    data.mkdir()
    captions = ["a red square", "a green field", "a blue sky over the sea", "a black cat"]
    for i, (arr, text) in enumerate(zip(_images(4, seed=7), captions)):
        Image.fromarray(arr).save(data / f"{i}.png")
        (data / f"{i}.txt").write_text(text)
    cfg = SlowRunConfig(data=DataConfig(path=str(data), val_fraction=0.0), init=checkpoints["caption"],
                        train=SlowTrainConfig(epochs=4, batch_size=4, lr=1e-3, warmup_steps=0), out=str(tmp_path / "run"))
    summary = run_training("slow", cfg, progress=False)
    losses = [r["loss"] for r in json.loads((tmp_path / "run" / "history.json").read_text())]
    assert len(losses) == 4 and losses[-1] < losses[0] - 0.1, losses  # the same batch every step

    def loss_of(model):
        from fastslow.data.decode import DecodeConfig, decode_sample
        from fastslow.data.types import Sample

        pixels = np.stack([decode_sample(Sample(id=str(i), media="image", uri=str(data / f"{i}.png"), captions=[]),
                                         DecodeConfig(SIZE)) for i in range(4)])
        with torch.no_grad():
            return float(model.loss(model.visual_features(torch.from_numpy(pixels)), captions))

    tuned, start = load_slow(summary["checkpoint"]), load_slow(checkpoints["caption"])
    assert isinstance(tuned, BlipSlowModel) and tuned.tokenizer is not None
    assert loss_of(tuned) < loss_of(start) - 0.1


def test_fine_tuning_a_matching_head_is_refused(checkpoints, tmp_path):
    from fastslow.config import SlowRunConfig
    from fastslow.data.source import DataConfig
    from fastslow.train.run import run_training

    cfg = SlowRunConfig(data=DataConfig(path=str(tmp_path)), init=checkpoints["itm"], out=str(tmp_path / "run"))
    with pytest.raises(FastslowError, match="only the caption head fine-tunes"):
        run_training("slow", cfg, progress=False)
