"""The query path without Ray (fastslow.search): what the Serve deployments wrap and are compared against."""

import numpy as np
import pyarrow as pa
import pytest
import torch
from helpers import tiny_config, tiny_slow
from media_fixtures import make_png_bytes, random_bytes, write_file

from fastslow.index.publish import publish, write_version
from fastslow.index.shards import IndexSpec, build_shards
from fastslow.models.checkpoint import read_manifest, save_checkpoint
from fastslow.models.fast import FastModel
from fastslow.search.reranker import Reranker
from fastslow.search.pipeline import SearchPipeline, SearchRequest
from fastslow.search.shard import ShardSearcher
from fastslow.search.answer import apply_rerank, merge_hits
from fastslow.train.slow_training import make_slow_model
from fastslow.inference.slow_scores import slow_features, slow_score_matrix

COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200), (200, 30, 200)]


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """A random tiny Fast and Slow, 30 images (one unreadable), and a published 3-shard index of them."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("search")
    fast = FastModel(tiny_config()).eval()
    slow = make_slow_model(tiny_slow(), [f"caption {i}" for i in range(30)]).eval()
    save_checkpoint(fast, str(root / "fast"))
    save_checkpoint(slow, str(root / "slow"))
    uris = []
    for i in range(30):
        path = root / "media" / f"{i:02d}.png"
        write_file(path, make_png_bytes(24 + i, 30, COLOURS[i % 6]) if i != 7 else random_bytes(300))
        uris.append(str(path))
    ids = [f"item-{i:02d}" for i in range(30)]
    vectors = np.random.default_rng(0).standard_normal((30, fast.config.embed_dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    spec = IndexSpec(shards=3)
    indexes, rows = build_shards(ids, vectors, spec)
    meta = pa.table({"id": ids, "uri": uris, "media": ["image"] * 30, "caption": [f"caption {i}" for i in range(30)]})
    sha = read_manifest(str(root / "fast"))["weights_sha256"]
    write_version(str(root / "index"), "v1", indexes, rows, meta, spec, {"weights_sha256": sha, "num_frames": 4})
    publish(str(root / "index"), "v1")
    return {"root": str(root / "index"), "fast": str(root / "fast"), "slow": str(root / "slow"), "vectors": vectors,
            "ids": ids, "uris": uris, "slow_model": slow}


def test_shards_merged_equal_one_exact_search(collection):
    shards = [ShardSearcher(collection["root"], s) for s in range(3)]
    assert sum(len(s) for s in shards) == 30 and shards[0].num_frames == 4
    q = np.random.default_rng(1).standard_normal((1, collection["vectors"].shape[1])).astype(np.float32)
    merged = merge_hits([s.search(q, 7)[0] for s in shards], 7)
    exact = np.argsort(-(collection["vectors"] @ q[0]), kind="stable")[:7]
    assert [h["id"] for h in merged] == [collection["ids"][i] for i in exact]
    assert [h["uri"] for h in merged] == [collection["uris"][i] for i in exact]
    assert all(a["fast_score"] >= b["fast_score"] for a, b in zip(merged, merged[1:]))


def test_lookup_finds_an_item_in_the_shard_that_holds_it_only(collection):
    shards = [ShardSearcher(collection["root"], s) for s in range(3)]
    for i in (0, 13, 29):
        found = [s.lookup(collection["ids"][i]) for s in shards]
        assert [f for f in found if f] == [{"id": collection["ids"][i], "uri": collection["uris"][i], "media": "image",
                                              "offset": None, "size": None}]
    for bad in ("item-30", "", "../item-01", collection["uris"][0]):
        assert all(s.lookup(bad) is None for s in shards)


def test_apply_rerank_orders_by_slow_and_puts_unscored_last():
    hits = [{"id": c, "fast_score": f} for c, f in zip("abcd", (0.9, 0.8, 0.7, 0.6))]
    top = apply_rerank(hits, [-5.0, None, -1.0, -3.0], k=4)
    assert [h["id"] for h in top] == ["c", "d", "a", "b"] and top[-1]["slow_score"] is None
    assert [h["id"] for h in apply_rerank(hits, [-5.0, None, -1.0, -3.0], k=2)] == ["c", "d"]
    # A large Fast weight brings Fast's order back among the scored.
    assert [h["id"] for h in apply_rerank(hits, [-5.0, None, -1.0, -3.0], k=3, fast_weight=1e3)] == ["a", "c", "d"]


def test_reranker_scores_equal_the_offline_slow_scores_and_report_undecodable_items(collection):
    reranker = Reranker(collection["slow"], num_frames=4)
    picks = [[0, 7, 3], [5, 3]]
    hits = [[{"id": collection["ids"][i], "uri": collection["uris"][i], "media": "image"} for i in p] for p in picks]
    scores = reranker.score(["caption 0", "caption 5"], hits)
    assert scores[0][1] is None  # item 7's file is not an image
    # The same numbers as the table's offline path: features of the decoded pixels, then slow_score_matrix.
    from fastslow.data.decode import decode_image

    model = collection["slow_model"]
    size = model.config.vision.image_size
    pixels = np.stack([decode_image(open(collection["uris"][i], "rb").read(), size) for i in (0, 3, 5)])
    feats = slow_features(model, pixels)
    want = slow_score_matrix(model, feats, ["caption 0", "caption 5"], torch.tensor([[0, 1], [2, 1]]))
    assert scores[0][0] == pytest.approx(want[0, 0]) and scores[0][2] == pytest.approx(want[0, 1])
    assert scores[1] == pytest.approx(list(want[1]))
    assert len(reranker.features.cache) == 3  # decoded once each; the bad file is not cached


def test_pipeline_answers(collection):
    pipeline = SearchPipeline(collection["root"], collection["fast"], collection["slow"])
    fast = pipeline.search(SearchRequest("caption 3", k=5, rerank=False))
    assert [h["rank"] for h in fast["results"]] == [1, 2, 3, 4, 5] and fast["index_version"] == "v1"
    assert all(h["slow_score"] is None for h in fast["results"])
    deep = pipeline.search(SearchRequest("caption 3", k=12, rerank=False))
    reranked = pipeline.search(SearchRequest("caption 3", k=12, rerank=True, rerank_k=12))
    assert sorted(h["id"] for h in reranked["results"]) == sorted(h["id"] for h in deep["results"])
    scored = [h["slow_score"] for h in reranked["results"] if h["slow_score"] is not None]
    assert scored == sorted(scored, reverse=True)
    # rerank_k below k: the re-ranked head, then the rest in Fast order.
    short = pipeline.search(SearchRequest("caption 3", k=8, rerank=True, rerank_k=3))
    assert [h["id"] for h in short["results"][3:]] == [h["id"] for h in deep["results"][3:8]]
    assert set(fast["timings_ms"]) == {"encode", "retrieve", "rerank", "total"}
