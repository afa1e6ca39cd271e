"""Metadata filters and item vectors of a shard (fastslow.search.filters, ShardSearcher): what the app's `filter`
and `like` stand on. Exact indexes give the exact filtered top k; every index gives k passing items when k pass."""

import json

import numpy as np
import pyarrow as pa
import pytest

from fastslow.index.publish import write_version
from fastslow.index.shards import IndexSpec, build_shards
from fastslow.search import shard as shard_module
from fastslow.search.filters import FilterError, ItemFields, check_filter, merge_descriptions
from fastslow.search.request import combine
from fastslow.search.shard import ShardSearcher

N, DIM = 3000, 16


def _table(n: int = N) -> pa.Table:
    """Items whose fields vary: width 0..99 cycling, every 3rd a video with a duration, img2dataset-like JSON with
    original_width on the even items only (and a string and a boolean field, which are not filterable)."""
    width = [i % 100 for i in range(n)]
    meta = [json.dumps({"original_width": 10 * i, "status": "success", "nsfw": False}) if i % 2 == 0 else None
            for i in range(n)]
    return pa.table({"id": [f"{'a' if i % 10 == 0 else 'b'}/{i:05d}" for i in range(n)],
                     "uri": [f"/x/{i}.png" for i in range(n)],
                     "media": ["video" if i % 3 == 0 else "image" for i in range(n)],
                     "caption": [None] * n, "width": pa.array(width, pa.int64()),
                     "height": pa.array([None if i == 5 else 50 for i in range(n)], pa.int64()),
                     "duration": [2.0 * (i % 7) if i % 3 == 0 else None for i in range(n)], "metadata": meta})


def test_check_filter_names_what_is_wrong():
    fields = ItemFields(_table(30)).kinds()
    assert fields == {"media": "media", "id": "id", "width": "number", "height": "number", "duration": "number",
                      "original_width": "number"}
    spec = {"media": {"eq": "image"}, "width": {"gte": 3, "lte": 9.5}, "id": {"prefix": "a/"}}
    assert check_filter(spec, fields) == spec and check_filter(None, fields) == {}
    cases = [({"colour": {"eq": "red"}}, "filter.colour: no such field in this index (fields: duration, height, id"),
             ({"status": {"eq": "success"}}, "filter.status: no such field"),
             ({"width": {"gte": "big"}}, 'filter.width.gte: must be a number, got "big"'),
             ({"width": {"eq": True}}, "filter.width.eq: must be a number, got true"),
             ({"width": {"prefix": "1"}}, "filter.width.prefix: not an operator of a number field (eq, in, gte, lte)"),
             ({"media": {"gte": "image"}}, "filter.media.gte: not an operator of a media field (eq, in)"),
             ({"media": {"in": []}}, "filter.media.in: must be a list of 1 to 1000 values"),
             ({"media": {"in": ["image", 3]}}, "filter.media.in: every value must be a string (valid Unicode), got 3"),
             ({"id": "a/"}, "filter.id: must be an object of conditions"),
             ({"width": {}}, "filter.width: must be an object of conditions"),
             (["width"], "filter: must be an object")]
    for spec, needle in cases:
        with pytest.raises(FilterError) as e:
            check_filter(spec, fields)
        assert needle in str(e.value), (spec, str(e.value))


def test_masks_keep_exactly_the_items_that_pass():
    table = _table(300)
    f = ItemFields(table)
    i = np.arange(300)
    assert (f.mask({"media": {"eq": "video"}}) == (i % 3 == 0)).all()
    assert (f.mask({"media": {"in": ["image", "video"]}})).all()
    assert (f.mask({"width": {"gte": 10, "lte": 12}}) == ((i % 100 >= 10) & (i % 100 <= 12))).all()
    assert (f.mask({"width": {"in": [1, 2.0]}}) == np.isin(i % 100, [1, 2])).all()
    # Items without the field never pass: height is missing on item 5, original_width on the odd items.
    assert not f.mask({"height": {"eq": 50}})[5] and f.mask({"height": {"eq": 50}}).sum() == 299
    assert (f.mask({"original_width": {"gte": 0}}) == (i % 2 == 0)).all()
    assert (f.mask({"original_width": {"eq": 40}}) == (i == 4)).all()
    assert (f.mask({"id": {"prefix": "a/"}}) == (i % 10 == 0)).all()
    assert (f.mask({"id": {"in": ["b/00001", "b/00299", "nope"]}}) == np.isin(i, [1, 299])).all()
    both = f.mask({"media": {"eq": "video"}, "duration": {"gte": 10}})
    assert (both == ((i % 3 == 0) & (2.0 * (i % 7) >= 10))).all()
    described = f.describe()
    assert described["media"]["values"] == ["image", "video"] and described["width"]["max"] == 99
    assert described["original_width"] == {"kind": "number", "operators": ["eq", "in", "gte", "lte"], "items": 150,
                                           "min": 0.0, "max": 2980.0}
    halves = merge_descriptions([ItemFields(table.slice(0, 100)).describe(), ItemFields(table.slice(100)).describe()])
    assert halves == described
    # Over the items still held (a version's deleted ones left out): only theirs count.
    live = np.zeros(300, bool)
    live[[1, 2, 4]] = True  # all images; widths 1, 2 and 4
    assert f.describe(live)["media"]["values"] == ["image"]
    assert {k: f.describe(live)["width"][k] for k in ("items", "min", "max")} == {"items": 3, "min": 1.0, "max": 4.0}


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    """One 2-shard version of N random unit vectors per factory, with _table's metadata."""
    root = str(tmp_path_factory.mktemp("filters") / "index")
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((N, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    table = _table()
    ids = table.column("id").to_pylist()
    factories = {"flat": "Flat", "ivf": "IVF16,Flat", "hnsw": "HNSW16", "pq": "IVF16,PQ4", "idmap": "IDMap,Flat"}
    for name, factory in factories.items():
        spec = IndexSpec(factory=factory, shards=2, target_recall=0)
        indexes, rows = build_shards(ids, vectors, spec)
        write_version(root, name, indexes, rows, table, spec, {"weights_sha256": "x"})
    return {"root": root, "vectors": vectors, "ids": ids, "table": table, "queries": rng.standard_normal(
        (5, DIM)).astype(np.float32)}


def _filtered(versions, name: str, spec: dict, k: int, **setting) -> list[list[dict]]:
    """Each query's merged best k over both shards of version `name`, with `spec`."""
    from fastslow.search.answer import merge_hits

    shards = [ShardSearcher(versions["root"], s, name, **setting) for s in range(2)]
    per_shard = [s.search(versions["queries"], k, spec) for s in shards]
    return [merge_hits([p[q] for p in per_shard], k) for q in range(len(versions["queries"]))]


FILTERS = [{"width": {"lte": 4}},  # 5% of the items: scanned exactly
           {"media": {"eq": "image"}, "original_width": {"gte": 0}},  # a third: searched deeper
           {"id": {"prefix": "a/"}, "duration": {"lte": 0}}]  # 1 in 30... and 0 duration: a handful


@pytest.mark.parametrize("scan_max", [shard_module.SCAN_MAX, 10])
def test_filtered_search_on_an_exact_index_is_the_exact_filtered_top_k(versions, monkeypatch, scan_max):
    monkeypatch.setattr(shard_module, "SCAN_MAX", scan_max)  # 10: the deeper-search path for every filter
    fields = ItemFields(versions["table"])
    for spec in FILTERS:
        passing = np.flatnonzero(fields.mask(spec))
        for name in ("flat", "idmap"):
            for k in (1, 10, len(passing) + 5):
                got = _filtered(versions, name, spec, k)
                for q, hits in enumerate(got):
                    scores = versions["vectors"][passing] @ versions["queries"][q]
                    want = passing[np.argsort(-scores, kind="stable")[:k]]
                    assert [h["id"] for h in hits] == [versions["ids"][i] for i in want], (spec, name, k)
                    assert [h["fast_score"] for h in hits] == pytest.approx(np.sort(scores)[::-1][:k], abs=1e-5)


@pytest.mark.parametrize("scan_max", [shard_module.SCAN_MAX, 10])
def test_filtered_search_on_approximate_indexes_gives_k_passing_items(versions, monkeypatch, scan_max):
    monkeypatch.setattr(shard_module, "SCAN_MAX", scan_max)
    fields = ItemFields(versions["table"])
    by_id = {i: p for p, i in enumerate(versions["ids"])}
    for spec in FILTERS:
        passing = fields.mask(spec)
        for name, setting in (("ivf", {"nprobe": 1}), ("hnsw", {"ef_search": 16}), ("pq", {"nprobe": 2})):
            for k in (10, 50):
                for hits in _filtered(versions, name, spec, k, **setting):
                    assert len(hits) == min(k, passing.sum()), (spec, name, k)
                    assert all(passing[by_id[h["id"]]] for h in hits)
                    assert len({h["id"] for h in hits}) == len(hits)


def test_an_items_vector_is_the_one_indexed(versions):
    for name in ("flat", "ivf", "hnsw", "idmap", "pq"):
        shards = [ShardSearcher(versions["root"], s, name) for s in range(2)]
        for i in (0, 1234, N - 1):
            found = [v for v in (s.vector(versions["ids"][i]) for s in shards) if v is not None]
            assert len(found) == 1
            tolerance = 0.5 if name == "pq" else 1e-6  # PQ holds codes: its vector is the decoded one
            assert np.abs(found[0] - versions["vectors"][i]).max() < tolerance, name
        assert all(s.vector("nope") is None for s in shards)


def test_words_and_an_image_combine_as_the_documented_weighted_sum():
    rng = np.random.default_rng(3)
    text, image, items = rng.standard_normal(8), rng.standard_normal(8), rng.standard_normal((50, 8))
    t, v = text / np.linalg.norm(text), image / np.linalg.norm(image)
    for w in (0.0, 0.3, 0.5, 1.0):
        q = combine(text, image, w)
        assert np.linalg.norm(q) == pytest.approx(1.0, abs=1e-6)
        weighted = (1 - w) * items @ t + w * items @ v
        assert np.argsort(-(items @ q)).tolist() == np.argsort(-weighted).tolist()
    assert combine(text, None, 0.5) is text and combine(None, image, 0.5) is image
