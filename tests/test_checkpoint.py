"""Checkpoints: round trip, frozen pretrained towers not stored, corruption and mismatch detected."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from safetensors.torch import load_file, save_file

from fastslow.errors import FastslowError
from fastslow.models import FastConfig, FastModel, TextTowerConfig, VisionTowerConfig, load_checkpoint, save_checkpoint
from fastslow.models import checkpoint as ckpt


def tiny_config(vision_kind="tiny_cnn", vision_trainable=True) -> FastConfig:
    return FastConfig(
        vision=VisionTowerConfig(kind=vision_kind, image_size=32, width=8, trainable=vision_trainable),
        text=TextTowerConfig(kind="tiny_transformer", max_length=16, width=16, depth=1, trainable=False),
        embed_dim=8,
        head_hidden=16,
    )


def outputs(model, pixels):
    with torch.no_grad():
        return model.encode_visual(pixels), model.encode_text(["a blue ball", "two dogs"])


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = FastModel(tiny_config()).eval()
    with torch.no_grad():
        model.logit_scale.fill_(3.0)
    save_checkpoint(model, str(tmp_path / "ck"), extra={"step": 7})
    return model, str(tmp_path / "ck")


def test_round_trip_same_outputs(saved):
    model, path = saved
    loaded, info = load_checkpoint(path)
    assert isinstance(loaded, FastModel) and not loaded.training
    assert loaded.config == model.config
    assert info["extra"] == {"step": 7} and info["model_type"] == "fast" and info["frozen_pretrained"] == []
    pixels = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
    for a, b in zip(outputs(model, pixels), outputs(loaded, pixels)):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert loaded.temperature == pytest.approx(model.temperature)
    # Random-init towers, even frozen ones, are stored.
    keys = load_file(os.path.join(path, "model.safetensors")).keys()
    assert any(k.startswith("text_tower.") for k in keys) and any(k.startswith("vision_tower.") for k in keys)


def test_frozen_pretrained_tower_not_stored(tmp_path):
    torch.manual_seed(0)
    model = FastModel(tiny_config(vision_kind="efficientnet_lite0", vision_trainable=False)).eval()
    path = str(tmp_path / "ck")
    save_checkpoint(model, path)
    keys = set(load_file(os.path.join(path, "model.safetensors")))
    assert keys and not any(k.startswith("vision_tower.") for k in keys)
    assert os.path.getsize(os.path.join(path, "model.safetensors")) < 1_000_000  # EfficientNet alone is ~19 MB
    info = json.loads(open(os.path.join(path, "config.json")).read())
    assert info["frozen_pretrained"] == ["vision_tower."] and info["config"]["vision"]["kind"] == "efficientnet_lite0"
    loaded, _ = load_checkpoint(path)
    pixels = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
    for a, b in zip(outputs(model, pixels), outputs(loaded, pixels)):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    # Heads trained on other pretrained weights are refused.
    info["frozen_pretrained_sha256"]["vision_tower."] = "0" * 64
    open(os.path.join(path, "config.json"), "w").write(json.dumps(info))
    with pytest.raises(FastslowError, match="pretrained weights of vision_tower differ"):
        load_checkpoint(path)


def test_visual_only_load_embeds_items_as_the_whole_model_does(tmp_path):
    torch.manual_seed(0)
    model = FastModel(tiny_config(vision_kind="efficientnet_lite0", vision_trainable=False)).eval()
    path = str(tmp_path / "ck")
    save_checkpoint(model, path)
    visual, _ = load_checkpoint(path, visual_only=True)
    assert visual.text_tower is None
    assert not any(k.startswith(FastModel.TEXT_PREFIXES) for k in visual.state_dict())
    pixels = torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(visual.encode_visual(pixels), model.encode_visual(pixels), atol=0, rtol=0)
    with pytest.raises(FastslowError, match="without its text side"):
        visual.encode_text(["a blue ball"])
    # The checks still hold for what is loaded: a corrupted visual head is refused.
    state = load_file(os.path.join(path, "model.safetensors"))
    state = {k: v for k, v in state.items() if not k.startswith("visual_head.")}
    save_file(state, os.path.join(path, "model.safetensors"))
    info = json.loads(open(os.path.join(path, "config.json")).read())
    info["weights_sha256"] = ckpt.hashlib.sha256(open(os.path.join(path, "model.safetensors"), "rb").read()).hexdigest()
    open(os.path.join(path, "config.json"), "w").write(json.dumps(info))
    with pytest.raises(FastslowError, match="missing"):
        load_checkpoint(path, visual_only=True)


@pytest.mark.faults
@pytest.mark.timeout(60)
def test_corrupted_weights_named(saved, fault_record):
    _, path = saved
    weights = os.path.join(path, "model.safetensors")
    data = bytearray(open(weights, "rb").read())
    data[-10] ^= 0xFF
    open(weights, "wb").write(bytes(data))
    with pytest.raises(FastslowError, match=r"model\.safetensors: sha256 .* does not match") as refused:
        load_checkpoint(path)
    fault_record("input", "checkpoint: one byte of the weights flipped", refused=True, message=str(refused.value))


def _rewrite_weights(path, state):
    weights = os.path.join(path, "model.safetensors")
    save_file(state, weights)
    info = json.loads(open(os.path.join(path, "config.json")).read())
    info["weights_sha256"] = ckpt.hashlib.sha256(open(weights, "rb").read()).hexdigest()
    open(os.path.join(path, "config.json"), "w").write(json.dumps(info))


def test_missing_and_unexpected_keys(saved):
    _, path = saved
    state = load_file(os.path.join(path, "model.safetensors"))
    state["intruder.weight"] = torch.zeros(1)
    del state["logit_scale"]
    _rewrite_weights(path, state)
    with pytest.raises(FastslowError, match="missing 1 keys, e.g. logit_scale; unexpected 1 keys, e.g. intruder"):
        load_checkpoint(path)


def test_shape_mismatch(saved):
    _, path = saved
    info = json.loads(open(os.path.join(path, "config.json")).read())
    info["config"]["embed_dim"] = 4
    open(os.path.join(path, "config.json"), "w").write(json.dumps(info))
    with pytest.raises(FastslowError, match="weights do not fit"):
        load_checkpoint(path)


def test_bad_manifests(saved, tmp_path):
    _, path = saved
    manifest = os.path.join(path, "config.json")
    info = json.loads(open(manifest).read())
    for change, message in [
        ({"model_type": "slow9"}, "unknown model_type 'slow9'"),
        ({"version": 99}, "version 99 unsupported"),
        ({"format": "other"}, "not a fastslow checkpoint"),
        ({"config": {**info["config"], "colour": 1}}, r"config: unknown key\(s\) colour"),
    ]:
        open(manifest, "w").write(json.dumps({**info, **change}))
        with pytest.raises(FastslowError, match=message):
            load_checkpoint(path)
    with pytest.raises(FastslowError, match="config.json"):
        load_checkpoint(str(tmp_path / "nowhere"))


def test_register_model_type(tmp_path, monkeypatch):
    class OtherModel(FastModel):
        model_type = "other"

    monkeypatch.setitem(ckpt.MODEL_TYPES, "other", (FastConfig, OtherModel))
    model = OtherModel(tiny_config()).eval()
    save_checkpoint(model, str(tmp_path / "o"))
    loaded, info = load_checkpoint(str(tmp_path / "o"))
    assert type(loaded) is OtherModel and info["model_type"] == "other"
    monkeypatch.delitem(ckpt.MODEL_TYPES, "other")
    with pytest.raises(FastslowError, match="not registered"):
        save_checkpoint(model, str(tmp_path / "p"))


def test_s3_round_trip(s3_bucket):
    torch.manual_seed(0)
    model = FastModel(tiny_config()).eval()
    uri = f"{s3_bucket}/runs/ck"
    save_checkpoint(model, uri)
    loaded, _ = load_checkpoint(uri)
    pixels = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
    for a, b in zip(outputs(model, pixels), outputs(loaded, pixels)):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
