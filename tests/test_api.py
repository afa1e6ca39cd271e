"""The public API (`import fastslow`): the README's notebook example runs as written, and its answers are the
in-process query flow's."""

import contextlib
import io
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

import fastslow
from fastslow.index.publish import load_version
from fastslow.config import IndexRunConfig, load_config
from fastslow.index.build import build_index

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def demo_layout(tmp_path_factory, tiny_corpus, tiny_fast_checkpoint, tiny_slow_checkpoint):
    """A folder laid out as `fastslow demo` leaves runs/demo (tiny models; the index built in this process)."""
    work = tmp_path_factory.mktemp("api")
    runs = work / "runs" / "demo" / "runs"
    (runs / "distill").mkdir(parents=True)
    (runs / "slow").mkdir(parents=True)
    os.symlink(tiny_fast_checkpoint, runs / "distill" / "checkpoint")
    os.symlink(tiny_slow_checkpoint, runs / "slow" / "checkpoint")
    cfg = load_config(IndexRunConfig, None, [f"data.path={tiny_corpus}/images", f"checkpoint={tiny_fast_checkpoint}",
                                             f"root={runs / 'index'}", "index.shards=2"])
    summary = build_index(cfg)
    assert summary["indexed"] == summary["read"] > 0
    return work


def readme_example() -> str:
    text = README.read_text()
    section = text[text.index("### In a notebook"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_notebook_example_runs_as_written(demo_layout, monkeypatch):
    monkeypatch.chdir(demo_layout)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(readme_example(), "README.md", "exec"), {})
    lines = out.getvalue().splitlines()
    assert len(lines) == 6, out.getvalue()  # five hits, then the shape
    hits = [line.split() for line in lines[:5]]
    assert [int(h[0]) for h in hits] == [1, 2, 3, 4, 5]
    assert all(h[3] != "None" for h in hits)  # re-ranked: every shown hit has a Slow score
    assert lines[5] == "(2, 32)"


def test_search_answers_like_the_pipeline_and_embeddings_are_unit_vectors(demo_layout, tiny_corpus):
    runs = demo_layout / "runs" / "demo" / "runs"
    fast, slow = str(runs / "distill" / "checkpoint"), str(runs / "slow" / "checkpoint")
    searcher = fastslow.open_index(str(runs / "index"), fast, slow)
    answer = searcher.search("a small red circle", k=4, rerank_k=8)
    assert answer["reranked"] and not answer["degraded"] and len(answer["results"]) == 4
    slow_scores = [h["slow_score"] for h in answer["results"]]
    assert slow_scores == sorted(slow_scores, reverse=True)
    fast_only = fastslow.open_index(str(runs / "index"), fast).search("a small red circle", k=4)
    assert not fast_only["reranked"] and fast_only["degraded_reason"] is None

    texts = fastslow.embed_texts(fast, ["a small red circle"])
    assert np.allclose(np.linalg.norm(texts, axis=1), 1, atol=1e-4)
    # The first Fast hit's score is the query vector against that item's embedded media.
    top = fast_only["results"][0]
    assert not os.path.isabs(top["location"])  # answers name items within their collection, not server paths
    uris = {r["id"]: r["uri"] for r in load_version(str(runs / "index")).metadata.to_pylist()}
    assert uris[top["id"]].endswith("/" + top["location"])
    item = fastslow.embed_media(fast, [uris[top["id"]]])
    assert np.isclose(float(texts[0] @ item[0]), top["fast_score"], atol=1e-4)


def test_embed_media_names_a_file_it_cannot_read(tmp_path, tiny_fast_checkpoint):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(fastslow.FastslowError, match="broken.jpg"):
        fastslow.embed_media(tiny_fast_checkpoint, [str(bad)])


def test_import_fastslow_loads_no_ray_and_no_training():
    import subprocess

    code = ("import sys, fastslow; fastslow.open_index; "
            "print(any(m == 'ray' or m.startswith(('ray.', 'fastslow.train')) for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
