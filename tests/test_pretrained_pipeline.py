"""Day one with pretrained models, through the command line only: a (tiny, random) CLIP folder becomes a Fast
checkpoint and a BLIP captioner folder a Slow one (`fastslow pretrained`), the folders are then deleted, the photos
are indexed with no training (`fastslow index`), and the app serves them with BLIP re-ranking (`fastslow serve
--address <dashboard>`, run outside the repository: a deploy job with the project's tree): /search answers re-ranked
hits whose Slow scores are BLIP's own caption log-likelihoods of the query."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from cluster.connect import free_port
from pretrained_models import save_tiny_blip, save_tiny_clip
from serve_app.launch import get_json

pytestmark = pytest.mark.timeout(600)
QUERY = "a red square on a blue ground"


def fastslow(*args: str, cwd, timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "fastslow", *args, "--no-progress"], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, f"fastslow {' '.join(args[:2])}: {done.stderr[-3000:]}"
    return done


def write_photos(folder, n: int = 10) -> None:
    """Photos of several sizes and aspect ratios, each a coloured block on another colour."""
    from PIL import Image

    rng = np.random.default_rng(3)
    folder.mkdir()
    for i in range(n):
        h, w = int(rng.integers(30, 90)), int(rng.integers(30, 90))
        image = np.empty((h, w, 3), np.uint8)
        image[:] = rng.integers(0, 256, 3)
        image[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = rng.integers(0, 256, 3)
        Image.fromarray(image).save(folder / f"photo{i}.{'png' if i % 2 else 'jpg'}")


def test_pretrained_fast_index_and_serve_with_blip_reranking(ray_head, no_serve, tmp_path):
    from serve_helpers import post

    from fastslow.search.reranker import Reranker

    sources, work = tmp_path / "sources", tmp_path / "work"
    sources.mkdir()
    work.mkdir()
    fast, slow = str(tmp_path / "ckpt" / "fast"), str(tmp_path / "ckpt" / "slow")
    fastslow("pretrained", "fast", "--model", save_tiny_clip(sources / "clip"), "--out", fast, cwd=work)
    fastslow("pretrained", "slow", "--model", save_tiny_blip(sources / "blip"), "--out", slow, "--head", "caption",
             cwd=work)
    shutil.rmtree(sources)  # the checkpoints hold everything they need

    photos, root = tmp_path / "photos", str(tmp_path / "index")
    write_photos(photos)
    built = fastslow("index", "--data", str(photos), "--checkpoint", fast, "--root", root, "--address", ray_head.gcs,
                     "index.shards=2", "embed.concurrency=1", cwd=work)
    summary = json.loads(built.stdout[built.stdout.index("{"):])
    assert summary["read"] == summary["indexed"] == 10 and summary["errors"] == 0, summary

    # Deployed as from a machine outside the cluster: `--address` is the dashboard, the command runs outside the
    # repository, submits the deploy as a Ray job with the project's tree, and returns with the endpoint. The
    # cluster's Python is named: the test cluster's nodes have no `python` with Ray on their PATH.
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    served = fastslow("serve", "--address", ray_head, "--index-root", root, "--fast", fast, "--slow", slow, "--port",
                      str(port), "--cluster-python", sys.executable, cwd=work, timeout=240)
    endpoint = json.loads(served.stdout[served.stdout.index("{\n"):])
    assert endpoint["url"] == url and f"{url}/" in served.stdout  # the head's proxy (this machine here), printed
    assert endpoint["index_version"] == summary["version"]
    assert "--remote-port" in served.stdout  # loopback on the head: how to forward it is printed too
    # The replicas run the job's uploaded package: the app's runtime_env names it, as Ray stored it.
    _, apps = get_json(f"{ray_head}/api/serve/applications/")
    runtime_env = apps["applications"]["fastslow"]["deployed_app_config"]["runtime_env"]
    assert runtime_env["working_dir"] == endpoint["code"] and endpoint["code"].startswith("gcs://_ray_pkg_")
    assert os.listdir(work) == []  # nothing written where the commands ran

    status, answer = post(url, {"query": QUERY, "k": 5, "rerank": True, "rerank_k": 8})
    assert status == 200 and answer["reranked"] and not answer["degraded"], answer
    hits = answer["results"]
    assert len(hits) == 5 and all(h["slow_score"] is not None for h in hits)
    slow_scores = [h["slow_score"] for h in hits]
    assert slow_scores == sorted(slow_scores, reverse=True)  # the BLIP order (Slow's score alone ranks by default)

    # The replicas' scores are BLIP's: the same checkpoint scoring the same files here gives them.
    here = Reranker(slow).score([QUERY], [[{"id": h["id"], "media": "image", "uri": str(photos / h["id"]),
                                            "offset": None, "size": None} for h in hits]])[0]
    assert np.allclose(slow_scores, here, rtol=1e-4, atol=1e-3), (slow_scores, here)
    assert len(set(np.round(here, 3))) > 1  # scores that tell the photos apart
