"""Adding to and deleting from a served index without a rebuild, the way users do it: the index job with `append=true`
(`ray job submit`), `fastslow index --delete` and `--compact`, each new version swapped into the running app while
queries keep coming. The end state answers as a fresh build of the final items does. In process:
tests/test_index_changes.py."""

import json
import shutil
import threading
import time

import pytest
from helpers import fastslow_cli, job_id, job_submitter, job_summary, wait_for
from serve_helpers import QUERIES, ids, post, serve, serve_config, serve_shutdown

from fastslow.search.pipeline import SearchPipeline, SearchRequest
from serve_app.launch import deploy, with_settings


def _index(submit, images, stack: dict, root: str, *extra: str) -> dict:
    job = job_id("changes-index")
    client = submit(job, "jobs.build_index", "--data", str(images), "--checkpoint", stack["fast"], "--root", root,
                    "index.shards=2", *extra)
    status, logs = wait_for(client, job)
    assert status == "SUCCEEDED", logs[-3000:]
    return job_summary(logs)


def _with_images(images, dataset: dict, keep) -> None:
    """Rewrite the collection's dataset file with the entries `keep` (the others are no longer in it)."""
    next(images.glob("dataset_*.json")).write_text(json.dumps({**dataset, "images": keep}))


@pytest.mark.timeout(900)
def test_append_delete_compact_while_serving_answer_as_a_fresh_build(serve_stack, ray_head, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(serve_stack["images"], images, symlinks=True)
    dataset_file = next(images.glob("dataset_*.json"))
    dataset = json.loads(dataset_file.read_text())
    entries = dataset["images"]
    root, fresh_root = str(tmp_path / "index"), str(tmp_path / "fresh")
    submit, stop_all = job_submitter(ray_head)
    try:
        _with_images(images, dataset, entries[:50])
        first = _index(submit, images, serve_stack, root)
        config = serve_config({**serve_stack, "root": root},
                              deployments={"Ingress": {"user_config": {"index_version": first["version"]}}})
        url = serve("changes", config, ray_head, first["version"])

        def swap(version: str) -> None:
            deploy(with_settings(config, deployments={"Ingress": {"user_config": {"index_version": version}}}),
                   ray_head)
            deadline = time.time() + 120
            while post(url, {"query": QUERIES[0], "k": 3})[1].get("index_version") != version:
                assert time.time() < deadline, f"version {version} never went live"

        answers, failures, stop = [], [], threading.Event()

        def stream():
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    status, got = post(url, {"query": QUERIES[n % 3], "k": 8, "rerank": n % 2 == 0})
                    if status != 200 or got["partial"] or got["degraded"]:
                        failures.append((status, got))
                    else:
                        answers.append(got["index_version"])
                except Exception as e:  # noqa: BLE001 - a lost request is what this test looks for
                    failures.append(repr(e))

        threads = [threading.Thread(target=stream) for _ in range(2)]
        for t in threads:
            t.start()
        try:
            # The collection grows by 20 items: the job embeds those alone, in one actor beside the app (which
            # holds 1.25 of the cluster's 2 CPUs).
            _with_images(images, dataset, entries)
            appended = _index(submit, images, serve_stack, root, "append=true", "embed.concurrency=1",
                              "embed.cpus_per_actor=0.5")
            assert appended["indexed"] == 20 and appended["appended_to"] == first["version"], appended
            swap(appended["version"])
            gone = [entries[3], entries[30], entries[55], entries[66]]
            gone_ids = [e["filename"].rsplit(".", 1)[0] if not e.get("filepath") else
                        f"{e['filepath']}/{e['filename'].rsplit('.', 1)[0]}" for e in gone]
            out = fastslow_cli("index", "--root", root, "--delete", ",".join(gone_ids) + ",no-such-id").stdout
            deleted = json.loads(out[out.index("{"):])
            assert deleted["deleted"] == 4 and deleted["not_found"] == ["no-such-id"], deleted
            swap(deleted["version"])
            for query in QUERIES:
                assert not set(ids(post(url, {"query": query, "k": 66, "rerank": False})[1])) & set(gone_ids)
            out = fastslow_cli("index", "--root", root, "--compact").stdout
            compacted = json.loads(out[out.index("{"):])
            assert compacted["shards_rebuilt"] >= 1 and compacted["items"] == 66, compacted
            swap(compacted["version"])
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert not failures, failures[:3]
        assert {first["version"], appended["version"], deleted["version"], compacted["version"]} <= set(answers)
        served = {query: post(url, {"query": query, "k": 20, "rerank": False}) for query in QUERIES}
        serve_shutdown()  # the fresh build's shard tasks need the CPUs the app holds

        # A fresh build of the final items answers the same: same ids per query, scores within 1e-6 (Flat).
        _with_images(images, dataset, [e for e in entries if e not in gone])
        fresh = _index(submit, images, serve_stack, fresh_root)
    finally:
        stop_all()
    want = SearchPipeline(fresh_root, serve_stack["fast"], None, version=fresh["version"])
    for query, (status, got) in served.items():
        expected = want.search(SearchRequest(query, k=20, rerank=False))
        assert status == 200 and ids(got) == ids(expected)
        for g, w in zip(got["results"], expected["results"]):
            assert g["fast_score"] == pytest.approx(w["fast_score"], abs=1e-6)
