"""Fast from a pretrained CLIP, SigLIP or SigLIP 2, zero-shot: tiny random transformers models saved with
save_pretrained (the real code path, random weights). Embeddings equal the model's own on its processor's inputs,
preprocessing equals its processor's, and the checkpoint travels (another process, folder, node, or s3://)."""

import hashlib
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
import torch.nn.functional as F

from fastslow.errors import FastslowError
from fastslow.models.checkpoint import load_checkpoint, save_checkpoint
from fastslow.models.pretrained_fast import from_pretrained_folder
from fastslow.models.pretrained_preprocess import preprocess
from pretrained_models import clip_tokenizer, gemma_tokenizer

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("clip", "siglip", "siglip2")
TEXTS = ["a photo of a dog", "two red squares on the left of a blue circle", "x"]
SCALE, BIAS = 12.0, -3.5  # set on each model: score_params must give them back


def _build(family: str):
    """A tiny random model of the family, its tokenizer and its (PIL backend) image processor."""
    import transformers as tf

    layers = dict(intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    tok = clip_tokenizer() if family == "clip" else gemma_tokenizer()
    ids = dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
               pad_token_id=tok.pad_token_id)
    if family == "clip":
        cfg = tf.CLIPConfig(text_config=dict(hidden_size=32, max_position_embeddings=77, **ids, **layers),
                            vision_config=dict(hidden_size=32, image_size=32, patch_size=8, **layers), projection_dim=16)
        # Shorter side to 36, then a 32 centre crop: the crop is exercised too.
        return tf.CLIPModel(cfg), tok, tf.CLIPImageProcessorPil(size={"shortest_edge": 36},
                                                               crop_size={"height": 32, "width": 32})
    text = dict(hidden_size=24, max_position_embeddings=64, projection_size=32, **ids, **layers)
    if family == "siglip":
        cfg = tf.SiglipConfig(text_config=text, vision_config=dict(hidden_size=32, image_size=32, patch_size=8,
                                                                   **layers))
        return tf.SiglipModel(cfg), tok, tf.SiglipImageProcessorPil(size={"height": 32, "width": 32})
    cfg = tf.Siglip2Config(text_config=text, vision_config=dict(hidden_size=32, patch_size=8, num_patches=16, **layers))
    return tf.Siglip2Model(cfg), tok, tf.Siglip2ImageProcessorPil(patch_size=8, max_num_patches=16)


def _processor(family: str, folder):
    import transformers as tf
    from transformers import AutoImageProcessor, AutoTokenizer

    cls = {"clip": tf.CLIPProcessor, "siglip": tf.SiglipProcessor, "siglip2": tf.Siglip2Processor}[family]
    return cls(image_processor=AutoImageProcessor.from_pretrained(folder, backend="pil"),
               tokenizer=AutoTokenizer.from_pretrained(folder))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """{family: (folder, reference model)} saved as a transformers folder is (weights, config, tokenizer, processor)."""
    out = {}
    for family in FAMILIES:
        torch.manual_seed(0)
        model, tok, proc = _build(family)
        with torch.no_grad():
            model.logit_scale.fill_(float(np.log(SCALE)))
            if hasattr(model, "logit_bias"):
                model.logit_bias.fill_(BIAS)
        folder = tmp_path_factory.mktemp(family) / "model"
        model.eval().save_pretrained(folder)
        tok.save_pretrained(folder)
        proc.save_pretrained(folder)
        out[family] = (str(folder), model.eval())
    return out


def _reference(family, folder, model, images=(), texts=()):
    """The model's own unit embeddings of its processor's inputs."""
    proc = _processor(family, folder)
    with torch.no_grad():
        # The image processor itself: Siglip2Processor's class defaults would override a tiny model's patch budget.
        img = [F.normalize(model.get_image_features(**proc.image_processor(images=[i], return_tensors="pt"))
                           .pooler_output, dim=-1) for i in images]
        txt = model.get_text_features(**proc(text=list(texts), padding="max_length", truncation=True,
                                             return_tensors="pt")).pooler_output if texts else None
    return (torch.cat(img) if img else None), (F.normalize(txt, dim=-1) if texts else None)


def _images(*sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


@pytest.mark.parametrize("family", FAMILIES)
def test_embeddings_equal_the_models_own(folders, family):
    folder, ref = folders[family]
    fast = from_pretrained_folder(folder)
    side = fast.config.vision.image_size  # what the decoder makes: the processor's resize is then exact
    images = _images((side, side), (64, 64), (side, side), seed=1)
    want_img, want_txt = _reference(family, folder, ref, images, TEXTS)
    with torch.no_grad():
        got_img = torch.cat([fast.encode_visual(torch.from_numpy(i)[None]) for i in images])
        batch = fast.encode_visual(torch.from_numpy(np.stack([images[0], images[2]])))
        got_txt = fast.encode_text(TEXTS)
        video = fast.encode_visual(torch.from_numpy(np.stack([images[0], images[2]]))[None])
    print(f"{family}: max abs diff images {(got_img - want_img).abs().max():.2e}, texts {(got_txt - want_txt).abs().max():.2e}")
    assert (got_img - want_img).abs().max() < 1e-5
    assert (batch - want_img[[0, 2]]).abs().max() < 1e-5
    assert (got_txt - want_txt).abs().max() < 1e-5
    assert got_txt.shape == (3, fast.config.embed_dim) and not torch.allclose(got_txt[0], got_txt[1])
    # A video: its frames' unit embeddings averaged, renormalised.
    torch.testing.assert_close(video[0], F.normalize(want_img[[0, 2]].mean(0), dim=0), atol=1e-5, rtol=0)
    params = fast.score_params()
    assert params["logit_scale"] == pytest.approx(SCALE, rel=1e-5)
    assert params["logit_bias"] == pytest.approx(BIAS if family != "clip" else 0.0)
    with torch.no_grad():  # the model's own logits are scale * cosine + bias
        proc = _processor(family, folder)
        inputs = {**proc(text=TEXTS, padding="max_length", truncation=True, return_tensors="pt"),
                  **proc.image_processor(images=[images[0]], return_tensors="pt")}
        logits = ref(**inputs).logits_per_text[:, 0]
    torch.testing.assert_close(params["logit_scale"] * got_txt @ got_img[0] + params["logit_bias"], logits,
                               atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_preprocessing_matches_the_processor(folders, family):
    folder, _ = folders[family]
    cfg = from_pretrained_folder(folder).config.vision
    proc = _processor(family, folder).image_processor
    # One grey level after rescaling and normalising: rescale / std.
    grey = torch.tensor(cfg.rescale / np.array(cfg.std), dtype=torch.float32)
    for image in _images((40, 60), (97, 33), (64, 64), (20, 25), seed=2):
        want = proc(images=[image], return_tensors="pt")
        got = preprocess(torch.from_numpy(image)[None], cfg)
        assert set(got) == set(want)
        a, b = got["pixel_values"], want["pixel_values"]
        assert a.shape == b.shape, image.shape
        per_channel = grey.view(1, 3, 1, 1) if a.dim() == 4 else grey.repeat(a.shape[-1] // 3).view(1, 1, -1)
        print(f"{family} {image.shape[:2]}: max {float(((a - b).abs() / per_channel).max()):.3f} grey levels")
        assert ((a - b).abs() / per_channel).max() <= 1.0 + 1e-3, image.shape
        for key in set(want) - {"pixel_values"}:  # SigLIP 2: its patch mask and grid
            assert torch.equal(got[key].long(), want[key].long()), key


def _run(args, cwd, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


EMBED = """
import sys, numpy as np, torch
from fastslow.api import embed_texts
from fastslow.models.checkpoint import load_model
from fastslow.models.fast import FastEncoder
m = load_model(sys.argv[1], FastEncoder)
with torch.no_grad():
    img = m.encode_visual(torch.from_numpy(np.load(sys.argv[2]))).numpy()
np.savez(sys.argv[3], img=img, txt=embed_texts(sys.argv[1], sys.argv[4:]))
"""


def test_cli_checkpoint_loads_elsewhere_without_the_source(folders, tmp_path):
    folder, ref = folders["clip"]
    source = tmp_path / "clip-src"
    shutil.copytree(folder, source)
    ckpt = tmp_path / "ckpt"
    made = _run(["-m", "fastslow", "pretrained", "fast", "--model", str(source), "--out", str(ckpt)], cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    summary = json.loads(made.stdout[made.stdout.index("{"):])
    assert summary["family"] == "clip" and summary["image_size"] == 36 and summary["embed_dim"] == 16
    manifest = json.loads((ckpt / "config.json").read_text())
    weights = manifest["config"]["source"]["weights_sha256"]
    assert manifest["config"]["source"]["kind"] == "folder" and manifest["config"]["source"]["name"] == "clip-src"
    assert weights == {"model.safetensors": hashlib.sha256((source / "model.safetensors").read_bytes()).hexdigest()}
    assert {"processor/tokenizer.json", "processor/preprocessor_config.json"} <= set(manifest["files"])
    shutil.rmtree(source)  # the checkpoint must not need it
    images = np.stack(_images((36, 36), (36, 36), seed=3))
    np.save(tmp_path / "images.npy", images)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = _run(["-c", EMBED, str(ckpt), str(tmp_path / "images.npy"), str(tmp_path / "emb.npz"), *TEXTS],
               cwd=elsewhere)
    assert out.returncode == 0, out.stderr
    got = np.load(tmp_path / "emb.npz")
    want_img, want_txt = _reference("clip", folder, ref, list(images), TEXTS)
    assert np.abs(got["img"] - want_img.numpy()).max() < 1e-5
    assert np.abs(got["txt"] - want_txt.numpy()).max() < 1e-5


def test_changed_checkpoint_files_are_refused(folders, tmp_path, capsys):
    from apps.cli import main

    ckpt = tmp_path / "ckpt"
    save_checkpoint(from_pretrained_folder(folders["siglip"][0]), str(ckpt))
    tokenizer = ckpt / "processor" / "tokenizer.json"
    tokenizer.write_text(tokenizer.read_text() + " ")
    with pytest.raises(FastslowError, match=r"tokenizer\.json: sha256 .* does not match the manifest"):
        load_checkpoint(str(ckpt))
    save_checkpoint(from_pretrained_folder(folders["siglip"][0]), str(ckpt))
    data = bytearray((ckpt / "model.safetensors").read_bytes())
    data[-10] ^= 0xFF  # one weight changed
    (ckpt / "model.safetensors").write_bytes(bytes(data))
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "model.safetensors: sha256" in err and "does not match the manifest" in err


def test_s3_reference_downloads_once_and_travels(folders, s3_bucket, tmp_path, monkeypatch):
    from apps.cli import main
    from fastslow import storage
    from fastslow.models import VisionTowerConfig, build_vision_tower
    from fastslow.models.pretrained_ref import resolve

    monkeypatch.setenv("FASTSLOW_CACHE", str(tmp_path / "cache"))
    folder, ref = folders["siglip2"]
    prefix = f"{s3_bucket}/models/siglip2"
    for path in sorted(Path(folder).iterdir()):
        storage.upload_file(str(path), f"{prefix}/{path.name}")
    downloads = []
    real = storage.download_file
    monkeypatch.setattr(storage, "download_file", lambda uri, local: (downloads.append(uri), real(uri, local)))
    first = resolve(prefix)
    assert first.source == {"kind": "s3", "uri": prefix} and len(downloads) == len(os.listdir(folder))
    assert (first.path / "model.safetensors").read_bytes() == (Path(folder) / "model.safetensors").read_bytes()
    assert resolve(prefix + "/").path == first.path and len(downloads) == len(os.listdir(folder))  # cached
    storage.write_text(f"{prefix}/preprocessor_config.json", (Path(folder) / "preprocessor_config.json").read_text()
                       + "\n")  # the prefix changed: fetched again
    assert resolve(prefix).path == first.path and len(downloads) == 2 * len(os.listdir(folder))
    ckpt = f"{s3_bucket}/checkpoints/siglip2"
    assert main(["pretrained", "fast", "--model", prefix, "--out", ckpt]) == 0
    model, manifest = load_checkpoint(ckpt)
    assert manifest["config"]["source"]["uri"] == prefix
    images = _images((32, 32), seed=4)
    want_img, want_txt = _reference("siglip2", folder, ref, images, TEXTS)
    with torch.no_grad():
        assert (model.encode_visual(torch.from_numpy(images[0])[None]) - want_img).abs().max() < 1e-5
        assert (model.encode_text(TEXTS) - want_txt).abs().max() < 1e-5
    # An `hf` tower may name a prefix too: its checkpoint then holds no local path.
    clip_folder, clip = folders["clip"]
    for path in sorted(Path(clip_folder).iterdir()):
        storage.upload_file(str(path), f"{s3_bucket}/models/clip/{path.name}")
    tower = build_vision_tower(VisionTowerConfig(kind="hf", name_or_path=f"{s3_bucket}/models/clip"))
    x = tower.preprocess(torch.from_numpy(np.stack(_images((32, 32), (32, 32), seed=6))))
    with torch.no_grad():
        torch.testing.assert_close(tower(x).pooled, clip.vision_model(pixel_values=x).pooler_output)


def test_hub_reference_comes_from_the_local_cache(folders, tmp_path, monkeypatch):
    from huggingface_hub import constants

    from fastslow.models.pretrained_ref import resolve

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(FastslowError, match="tiny-org/tiny-clip: not a local folder, and not found as a hub id in "
                                            "the local Hugging Face cache"):
        resolve("tiny-org/tiny-clip")
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--tiny-org--tiny-clip"
    shutil.copytree(folders["clip"][0], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    found = resolve("tiny-org/tiny-clip")
    assert found.path == repo / "snapshots" / commit
    assert found.source == {"kind": "hub", "id": "tiny-org/tiny-clip", "revision": "main", "commit": commit}
    assert resolve("tiny-org/tiny-clip", revision=commit).path == found.path
    with pytest.raises(FastslowError, match="--revision applies to hub ids only"):
        resolve(folders["clip"][0], revision="main")
    with pytest.raises(FastslowError, match="no such folder"):
        resolve(str(tmp_path / "missing" / "model"))


def _karpathy(folder: Path, n: int = 8) -> str:
    """A small Karpathy-format dataset of random images: 6 train, 2 val."""
    from PIL import Image

    folder.mkdir()
    entries = []
    for i, image in enumerate(_images(*[(40, 48)] * n, seed=5)):
        Image.fromarray(image).save(folder / f"{i}.png")
        entries.append({"filename": f"{i}.png", "split": "train" if i < 6 else "val",
                        "sentences": [{"raw": f"picture number {i} {'abcdefgh'[i]}"}]})
    (folder / "dataset_flickr30k.json").write_text(json.dumps({"images": entries}))
    return str(folder / "dataset_flickr30k.json")


@pytest.mark.parametrize("family,trainable,changed", [
    ("clip", "projections", {"visual_projection", "text_projection", "logit_scale"}),
    ("siglip", "text", {"text_model", "logit_scale"}),
])
def test_fine_tuning_trains_only_the_chosen_parameters(folders, tmp_path, family, trainable, changed):
    from fastslow.config import FastRunConfig, load_config
    from fastslow.train.run import run_training

    init = tmp_path / "zero_shot"
    save_checkpoint(from_pretrained_folder(folders[family][0]), str(init))
    out = tmp_path / "run"
    cfg = load_config(FastRunConfig, None, [f"init={init}", f"trainable={trainable}", f"out={out}",
                                            f"data.path={_karpathy(tmp_path / 'data')}", "train.epochs=1",
                                            "train.batch_size=6", "train.lr=0.01", "train.warmup_steps=1"])
    summary = run_training("fast", cfg, progress=False)
    assert summary["steps"] == 1 and "val" in summary
    before, _ = load_checkpoint(str(init))
    after, manifest = load_checkpoint(summary["checkpoint"])
    assert manifest["config"]["trainable"] == trainable and manifest["files"]  # reloads with its tokenizer
    moved = {name.split(".")[1] for name, p in after.state_dict().items()
             if not torch.equal(p, before.state_dict()[name])}
    assert moved == changed
    with torch.no_grad():  # the saved model is the trained one
        assert not torch.allclose(after.encode_text(TEXTS), before.encode_text(TEXTS))


def test_index_and_search_with_a_pretrained_checkpoint(folders, tmp_path):
    from PIL import Image

    from fastslow.api import open_index
    from fastslow.data.decode import decode_image
    from fastslow.index.build import build_index
    from helpers import index_config, index_vectors

    ckpt = str(tmp_path / "ckpt")
    save_checkpoint(from_pretrained_folder(folders["clip"][0]), ckpt)
    collection = tmp_path / "photos"
    collection.mkdir()
    for i, image in enumerate(_images((50, 40), (30, 60), (64, 64), (45, 45), seed=7)):
        Image.fromarray(image).save(collection / f"p{i}.png")
    root = str(tmp_path / "index")
    summary = build_index(index_config(str(collection), ckpt, root))
    assert summary["indexed"] == 4 and summary["errors"] == 0
    ids, vectors = index_vectors(root)
    model, _ = load_checkpoint(ckpt)
    pixels = np.stack([decode_image((collection / i).read_bytes(), 36) for i in ids])  # the checkpoint's size
    with torch.no_grad():
        want = model.encode_visual(torch.from_numpy(pixels)).numpy()
        query = model.encode_text(["a photo of a dog"]).numpy()[0]
    assert np.abs(vectors - want).max() < 1e-5
    answer = open_index(root, ckpt).search("a photo of a dog", k=4, rerank=False)
    scores = {r["id"]: r["fast_score"] for r in answer["results"]}
    assert set(scores) == set(ids)
    for i, item in enumerate(ids):
        assert scores[item] == pytest.approx(float(vectors[i] @ query), abs=1e-5)


def test_pretrained_slow_resolves_the_reference_and_hands_it_on(folders, tmp_path, monkeypatch, capsys):
    from apps.cli import main
    from fastslow.models import blip_slow_build

    calls = []  # the builder itself is tested in test_blip_slow.py; here, what the command hands it
    monkeypatch.setattr(blip_slow_build, "save_blip_slow_checkpoint", lambda *a: calls.append(a))
    folder = folders["clip"][0]
    assert main(["pretrained", "slow", "--model", folder, "--out", str(tmp_path / "slow"), "--head", "itm"]) == 0
    ((local_dir, out, head, source),) = calls
    assert (local_dir, out, head) == (folder, str(tmp_path / "slow"), "itm")
    digest = hashlib.sha256((Path(folder) / "model.safetensors").read_bytes()).hexdigest()
    assert source == {"kind": "folder", "name": "model", "weights_sha256": {"model.safetensors": digest}}
    assert main(["pretrained", "slow", "--model", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2
    assert "nowhere: no such folder" in capsys.readouterr().err and len(calls) == 1
