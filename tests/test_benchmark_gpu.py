"""`python -m benchmarks.gpu` on the CPU at its quick sizes, through its real entry point (no GPU, no Ray)."""

import json
import math
import subprocess
import sys

import pytest
import torch

from benchmarks import gpu

VECTORS = 12_345  # not a multiple of the quick chunk (8192): the blocks' merge and a short last block


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu") / "gpu.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu", "--out", str(out), "--device", "cpu", "--quick",
                           "--vectors", str(VECTORS)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), out.with_suffix(".md").read_text()


def positive(x) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


@pytest.mark.integration  # its fixture runs python -m benchmarks.gpu
def test_every_section_with_consistent_figures(result):
    r, markdown = result
    assert r["device"] == "cpu" and r["device_name"] and r["torch"] == torch.__version__ and r["quick"]
    assert r["ray_imported"] is False  # the whole run, models included, without Ray
    emb = r["embedding"]["rows"]
    assert [x["model"].split(":")[0].split()[0] for x in emb] == ["fast", "clip"]
    assert all(x["precision"] == "fp32" and positive(x["images_per_s"]) for x in emb)
    slow = r["slow_rerank"]
    assert slow["ks"] == [20, 50, 100] and [(x["k"], x["precision"]) for x in slow["rows"]] == [
        (20, "fp32"), (50, "fp32"), (100, "fp32")]
    assert all(positive(x[f]) for x in slow["rows"] for f in ("pairs_per_s", "ms_per_query", "single_query_ms"))
    # The figures agree with each other (one timing, three units) and time a scorer that gives the model's scores.
    for x in slow["rows"]:
        assert x["pairs_per_s"] * x["ms_per_query"] / 1000 == pytest.approx(x["k"], rel=0.01), x
        assert x["ms_per_query"] * slow["queries"] == pytest.approx(x["ms_per_batch"], rel=0.01), x
    assert slow["max_abs_diff_vs_pairwise"] < 1e-3
    assert all(x["images_per_s"] * x["ms_per_batch"] / 1000 == pytest.approx(r["embedding"]["batch"], rel=0.01)
               for x in emb)
    search = r["exact_search"]
    assert search["vectors"] == VECTORS and search["dim"] == 256 and search["topk"] == 10
    assert [x["dtype"] for x in search["rows"]] == ["float32"] and search["rows"][0]["chunk"] == 8192
    assert all(positive(x["queries_per_s"]) and positive(x["ms_per_batch"]) for x in search["rows"])
    assert "| fast: efficientnet_lite0" in markdown and "| 100 | fp32 |" in markdown and "12,345 vectors" in markdown


@pytest.mark.integration  # its fixture runs python -m benchmarks.gpu
def test_pretrained_section(result):
    r, markdown = result
    p = r["pretrained"]
    assert p["sizes"] == "tiny (--quick)" and p["weights"].startswith("random")
    # Image embedding through PretrainedFastModel.encode_visual: both families, figures consistent with the batch.
    emb = p["embedding"]
    assert emb["batch"] == 8 and [(x["family"], x["precision"]) for x in emb["rows"]] == [
        ("clip", "fp32"), ("siglip", "fp32")]
    for x in emb["rows"]:
        assert x["batch"] == emb["batch"] and x["image_size"] == 32 and 0 < x["vision_params"] < 100_000, x
        assert positive(x["images_per_s"]) and positive(x["ms_per_batch"]), x
        assert x["images_per_s"] * x["ms_per_batch"] / 1000 == pytest.approx(x["batch"], rel=0.01), x
    assert [x["embed_dim"] for x in emb["rows"]] == [16, 32]  # the tiny configs' projection sizes
    # BLIP re-ranking: every K for the caption head, the itm head at the smallest K, one query, a warm cache.
    rr = p["rerank"]
    assert rr["queries"] == 1 and rr["ks"] == [20, 50, 100] and "item cache warm" in rr["timed"]
    assert [(x["head"], x["k"], x["precision"]) for x in rr["rows"]] == [
        ("caption", 20, "fp32"), ("caption", 50, "fp32"), ("caption", 100, "fp32"), ("itm", 20, "fp32")]
    for x in rr["rows"]:
        assert positive(x["pairs_per_s"]) and positive(x["ms_per_query"]), x
        assert x["pairs_per_s"] * x["ms_per_query"] / 1000 == pytest.approx(x["k"], rel=0.01), x
    for head, m in rr["models"].items():
        assert m["scores_finite"] and m["feature_dtype"] == "float16" and m["vision_tokens"] == 17, (head, m)
        assert 0 < m["scoring_params"] < m["params"], (head, m)
    # Caption: the query's words and [SEP] after the unscored prompt; itm: one logit.
    assert rr["models"]["caption"]["query_tokens_scored"] == len(rr["query"].split()) + 1
    assert rr["models"]["itm"]["query_tokens_scored"] == 1
    # The real sizes the full run measures, counted on the meta device: the published architectures.
    real = p["real_sizes"]
    assert [(real[m]["hidden"], real[m]["layers"], real[m]["patch"], real[m]["image_size"]) for m in real] == [
        (768, 12, 32, 224), (768, 12, 16, 224), (768, 12, 16, 384), (768, 12, 16, 384)]
    assert real["clip"]["vision_params"] == pytest.approx(87.85e6, rel=1e-3)  # ViT-B/32 tower + visual projection
    assert real["clip"]["params"] == pytest.approx(151.28e6, rel=1e-3)
    assert real["siglip"]["params"] == pytest.approx(203.16e6, rel=1e-3)
    assert real["siglip"]["vision_params"] == pytest.approx(92.88e6, rel=1e-3)
    # The hub's "247M" for BLIP base captioning counts the tied 30,524 x 768 output layer twice.
    assert real["blip_caption"]["params"] + 30524 * 768 == pytest.approx(247.4e6, rel=1e-3)
    assert real["blip_caption"]["vocab"] == 30524 and real["blip_itm"]["params"] == pytest.approx(223.74e6, rel=1e-3)
    assert "| clip tiny (--quick) | 32 |" in markdown and "| blip tiny (--quick) | caption |" in markdown
    assert "| itm |" in markdown and "item cache warm" in markdown


@pytest.mark.integration  # its fixture runs python -m benchmarks.gpu
def test_exact_search_matches_numpy(result):
    search = result[0]["exact_search"]
    assert search["exact_check"] is True and search["top1_is_source_row"] is True
    assert search["rows"][0]["top1_matches_numpy"] and search["rows"][0]["topk_scores_match_numpy"]


def test_chunked_topk_equals_one_block():
    g = torch.nn.functional.normalize(torch.randn(1000, 16), dim=1)
    q = torch.randn(7, 16)
    whole_v, whole_i = (q @ g.T).topk(10, dim=1)
    for chunk in (3, 64, 999, 1000):  # blocks shorter than k, uneven, and one block
        v, i = gpu.topk_chunked(q, g, 10, chunk)
        assert torch.equal(i, whole_i) and torch.allclose(v, whole_v)


def test_fast_config_is_the_tables_default():
    from benchmarks.table_runner import DEFAULT_FAST

    assert gpu.fast_config() == DEFAULT_FAST


def test_import_needs_no_ray():
    code = "import sys, benchmarks.gpu; assert 'ray' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
