"""The packaged pretrained towers load offline and are the real thing."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastslow.errors import FastslowError
from fastslow.models import TextTowerConfig, VisionTowerConfig, build_text_tower, build_vision_tower
from fastslow.models import efficientnet_lite

MILITARY_UNIFORM = 652  # ImageNet class of the Grace Hopper portrait


@pytest.fixture(scope="module")
def effnet():
    return build_vision_tower(VisionTowerConfig(kind="efficientnet_lite0", image_size=224))


def grace_hopper() -> np.ndarray:
    # matplotlib is a dependency of the project; its sample data ships with it.
    from matplotlib import cbook
    from PIL import Image

    path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    return np.array(Image.open(path).convert("RGB"))


def test_efficientnet_predicts_imagenet_class(effnet):
    x = effnet.preprocess(torch.from_numpy(grace_hopper())[None])
    with torch.no_grad():
        probs = effnet.net(x).softmax(-1)[0]
    assert int(probs.argmax()) == MILITARY_UNIFORM and probs.max() > 0.3


def test_efficientnet_outputs_and_frozen_state(effnet):
    out = effnet(effnet.preprocess(torch.randint(0, 256, (2, 128, 128, 3), dtype=torch.uint8)))
    assert effnet.out_dim == 1280 and effnet.map_dims == (112, 1280)
    assert out.pooled.shape == (2, 1280) and torch.isfinite(out.pooled).all()
    assert [tuple(m.shape) for m in out.maps] == [(2, 112, 14, 14), (2, 1280, 7, 7)]
    effnet.train()
    bns = [m for m in effnet.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    assert not any(p.requires_grad for p in effnet.parameters())
    random_init = efficientnet_lite.EfficientNetLite0().eval()
    with torch.no_grad():
        x = effnet.preprocess(torch.full((1, 64, 64, 3), 200, dtype=torch.uint8))
        assert not torch.allclose(random_init(x), effnet.net(x))


def test_efficientnet_sha_mismatch(monkeypatch):
    monkeypatch.setattr(efficientnet_lite, "WEIGHTS_SHA256", "0" * 64)
    with pytest.raises(FastslowError, match="efficientnet-lite0-57934424.pth has sha256"):
        efficientnet_lite.load_pretrained()


def test_minilm_paraphrases_closer_than_unrelated():
    tower = build_text_tower(TextTowerConfig(kind="minilm", max_length=32))
    assert tower.out_dim == 384 and tower.vocab_size > 30000
    assert (tower.pad_id, tower.bos_id, tower.eos_id) == (0, 101, 102)
    texts = [
        "A man is riding a bicycle down the street.",
        "Someone cycles along the road.",
        "Two cats are sleeping on a sofa.",
    ]
    out = tower(**tower.tokenize(texts))
    emb = F.normalize(out.pooled, dim=-1)
    para, unrelated = float(emb[0] @ emb[1]), float(emb[0] @ emb[2])
    assert para > unrelated + 0.3, (para, unrelated)
    long = tower.tokenize(["word " * 100])
    assert long["input_ids"].shape == (1, 32)


def test_minilm_cut_to_its_first_layers(tmp_path):
    full = build_text_tower(TextTowerConfig(kind="minilm"))
    one = build_text_tower(TextTowerConfig(kind="minilm", layers=1, trainable=True))
    assert len(full.model.encoder.layer) == 6 and len(one.model.encoder.layer) == 1
    assert one.trainable and all(p.requires_grad for p in one.parameters())
    # The kept layer is the pretrained first layer: same embeddings and first block as the full tower.
    torch.testing.assert_close(one.model.encoder.layer[0].state_dict(), full.model.encoder.layer[0].state_dict())
    enc = one.tokenize(["a red circle left of a blue square"])
    assert one(**enc).tokens.shape[-1] == 384
    with pytest.raises(FastslowError, match="more than the 6 layers"):
        build_text_tower(TextTowerConfig(kind="minilm", layers=7))
    with pytest.raises(FastslowError, match="text.layers"):
        TextTowerConfig(kind="minilm", layers=-1)


def test_a_fast_model_with_a_cut_text_tower_round_trips_its_checkpoint(tmp_path):
    from fastslow.models import FastConfig, FastModel, load_checkpoint, save_checkpoint

    cfg = FastConfig(vision=VisionTowerConfig(kind="tiny_cnn", image_size=32, trainable=True),
                     text=TextTowerConfig(kind="minilm", layers=1, trainable=True), embed_dim=16, head_hidden=0)
    model = FastModel(cfg).eval()
    with torch.no_grad():  # a fine-tuned layer differs from the package's: the checkpoint must carry it
        model.text_tower.model.encoder.layer[0].output.dense.weight.add_(0.01)
        before = model.encode_text(["two blue squares"])
    save_checkpoint(model, str(tmp_path / "ckpt"))
    loaded, _ = load_checkpoint(str(tmp_path / "ckpt"))
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_text(["two blue squares"]), before)
