"""Fault suite, indexing: the index job killed at random points and resubmitted, and the S3 endpoint going away
mid-job, with `ray job submit` on a local cluster. Each time the final index equals an uninterrupted build's
(every item once, the same vectors), items read = indexed + reported, and no half-built version is ever live.
"""

import json
import os
import random
import re
import signal
import time
import uuid

import numpy as np
import pytest
from tcp_outage import OutageProxy
from helpers import build, built_by_job, job_id, job_status, job_summary, wait_for

from fastslow import storage
from fastslow.index.publish import load_version, version_dir

pytestmark = [pytest.mark.faults, pytest.mark.timeout(600)]

PARTITIONS = 9  # mixed_collection's 25 images and 5 videos, by 4 (its pdf is reported at read)
ITEMS_IN, INDEXED, REPORTED = 31, 28, 3


def _written(root: str, version: str) -> int:
    """Partitions whose embeddings are written (a partition's last file) under `root`'s build of `version`."""
    return len(storage.list_files(storage.join(root, "builds", version, "embeddings"), suffixes=(".parquet",)))


def _same_index(a_root: str, b_root: str) -> list[str]:
    """Assert the live versions of two roots hold the same items, once each, with the same vectors; their ids."""
    a, b = load_version(a_root), load_version(b_root)
    ids = b.metadata.column("id").to_pylist()
    assert a.metadata.column("id").to_pylist() == ids and len(set(ids)) == len(ids) == INDEXED
    for s in range(len(a.indexes)):
        assert a.rows[s].tolist() == b.rows[s].tolist()
        np.testing.assert_allclose(a.indexes[s].reconstruct_n(0, a.indexes[s].ntotal),
                                   b.indexes[s].reconstruct_n(0, b.indexes[s].ntotal), rtol=1e-5, atol=1e-6)
    errors = lambda root, v: sorted(json.loads(line)["id"] for line in  # noqa: E731
                                    storage.read_text(storage.join(version_dir(root, v), "errors.jsonl")).splitlines())
    assert errors(a_root, a.version) == errors(b_root, b.version) and len(errors(b_root, b.version)) == REPORTED
    return ids


def _finish(client, job: str, reference: str, root: str) -> dict:
    """Wait for a resubmitted build to succeed; check it against `reference`; its summary."""
    status, logs = wait_for(client, job)
    assert status == "SUCCEEDED", logs[-4000:]
    summary = job_summary(logs)
    assert (summary["read"], summary["indexed"], summary["errors"]) == (ITEMS_IN, INDEXED, REPORTED)
    _same_index(reference, root)
    return summary


def _driver_pids(root: str) -> list[int]:
    """The python processes running `jobs.build_index ... --root root` (the job's driver, not its shell)."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"jobs.build_index" in argv and root.encode() in argv and b"python" in os.path.basename(argv[0]):
            pids.append(int(pid))
    return pids


@pytest.fixture(scope="module")
def reference(mixed_collection, tiny_fast_checkpoint, tmp_path_factory, submit_module_job):
    """An uninterrupted build: (root, version)."""
    root = str(tmp_path_factory.mktemp("reference") / "index")
    return root, built_by_job(submit_module_job, "reference", mixed_collection, tiny_fast_checkpoint, root)[1]["version"]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_index_job_killed_at_a_random_point_resumes_to_the_same_index(
        seed, reference, mixed_collection, tiny_fast_checkpoint, tmp_path, submit_job, fault_record):
    """Killed once `n` of the 9 partitions are written (n random in 0..8) plus a random 0-0.3 s: by SIGKILL of the
    driver (odd seeds: a crash) or by `ray job stop` (even seeds); then the same job submitted again. The kill
    may land while partitions are embedded, while the shards are built, or while the version is written."""
    rng = random.Random(seed)
    after, extra_s = rng.randint(0, PARTITIONS - 1), rng.uniform(0, 0.3)
    how = "SIGKILL of the driver" if seed % 2 else "ray job stop"
    ref_root, version = reference
    root, first = str(tmp_path / "index"), job_id(f"killed{seed}")
    # One embedding actor: partitions are written one after another, so the kill lands between any two.
    client = build(submit_job, first, mixed_collection, tiny_fast_checkpoint, root, "embed.concurrency=1")
    deadline = time.time() + 300
    while not (_driver_pids(root) and (after == 0 or _written(root, version) >= after)):
        status = job_status(client, first)
        assert time.time() < deadline and status in ("PENDING", "RUNNING"), client.get_job_logs(first)[-3000:]
        time.sleep(0.05)
    time.sleep(extra_s)
    if how == "ray job stop":
        client.stop_job(first)
    else:
        for pid in _driver_pids(root):
            os.kill(pid, signal.SIGKILL)
    status, _ = wait_for(client, first, timeout=120)
    assert status == ("STOPPED" if how == "ray job stop" else "FAILED")
    written = _written(root, version)
    published = storage.exists(storage.join(version_dir(root, version), "manifest.json"))
    if storage.exists(storage.join(root, "CURRENT")):  # killed after the publish: live, and whole
        _same_index(ref_root, root)

    second = job_id(f"resumed{seed}")
    build(submit_job, second, mixed_collection, tiny_fast_checkpoint, root, "embed.concurrency=1")
    _finish(client, second, ref_root, root)
    if not published:  # the resubmitted job embedded only the partitions the killed one had not written
        assert f"{PARTITIONS} partitions, {PARTITIONS - written} to do" in client.get_job_logs(second)
    stage = (f"after {written} of {PARTITIONS} partitions" if written < PARTITIONS else
             "after the version was written" if published else "while the shards were built")
    fault_record("fault", f"index job: {how} {stage} (seed {seed})",
                 injected=1, items_in=ITEMS_IN, indexed=INDEXED, reported=REPORTED, foreign_ids=0)


# --- the S3 endpoint going away mid-job -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def s3_setup(mixed_collection, moto_endpoint):
    """The collection in a bucket, and a proxy the jobs reach S3 through: {'bucket', 'data', 'proxy', 'env'}."""
    bucket = f"s3://faults-{uuid.uuid4().hex[:8]}"
    storage.s3_client().create_bucket(Bucket=bucket[5:])
    data = f"{bucket}/collection"
    for dirpath, _, files in os.walk(mixed_collection):
        for name in files:
            path = os.path.join(dirpath, name)
            storage.upload_file(path, f"{data}/{os.path.relpath(path, mixed_collection)}")
    host, port = moto_endpoint.removeprefix("http://").split(":")
    proxy = OutageProxy(host, int(port))
    yield {"bucket": bucket, "data": data, "proxy": proxy, "env": {"AWS_ENDPOINT_URL": proxy.url}}
    proxy.close()


def _outage_once_written(s3, client, job: str, root: str, partitions: int = 2) -> str:
    """Take S3 down once `partitions` partitions of the job are written; the job's version."""
    deadline, version = time.time() + 300, None
    while version is None or _written(root, version) < partitions:
        status = job_status(client, job)
        assert time.time() < deadline and status in ("PENDING", "RUNNING"), client.get_job_logs(job)[-3000:]
        found = re.search(r"version (v-[0-9a-f]+): \d+ partitions", client.get_job_logs(job))
        version = found and found.group(1)
        time.sleep(0.1)
    s3["proxy"].down()
    return version


def test_short_s3_outage_is_ridden_out_by_retries(s3_setup, reference, tiny_fast_checkpoint, submit_job,
                                                  fault_record):
    s3, root, job = s3_setup, f"{s3_setup['bucket']}/short", job_id("s3-short")
    client = build(submit_job, job, s3["data"], tiny_fast_checkpoint, root, "embed.concurrency=1",
                   runtime_env=json.dumps({"env_vars": s3["env"]}))
    refused_before = s3["proxy"].refused
    _outage_once_written(s3, client, job, root)
    # Down until requests have met the outage (they are retried meanwhile), then 2 s more: a few seconds of
    # refusals, well inside the default 10 tries' backoff. Until the job next reaches S3 (it may be embedding a
    # partition for a while on a busy machine) the outage costs it nothing, so that wait may be long.
    down_at, deadline = time.monotonic(), time.monotonic() + 240
    while s3["proxy"].refused == refused_before and time.monotonic() < deadline \
            and job_status(client, job) in ("PENDING", "RUNNING"):
        time.sleep(0.1)
    time.sleep(2)
    s3["proxy"].up()
    down_s, refused = time.monotonic() - down_at, s3["proxy"].refused - refused_before
    # The outage did meet requests, and they were retried.
    assert refused > 0, f"no request met the outage in {down_s:.0f} s (job {job_status(client, job)})"
    summary = _finish(client, job, reference[0], root)  # the same items and vectors as the local build's
    fault_record("fault", f"S3 endpoint down {down_s:.0f} s mid-job (retried)", injected=1,
                 refused_connections=refused, items_in=summary["read"], indexed=summary["indexed"],
                 reported=summary["errors"], foreign_ids=0)


def test_long_s3_outage_fails_in_one_line_and_resumes(s3_setup, reference, tiny_fast_checkpoint, submit_job,
                                                      fault_record):
    s3, root, job = s3_setup, f"{s3_setup['bucket']}/long", job_id("s3-long")
    # Few tries: the outage outlasts them (the default, 10 tries, rides out about a minute).
    env = {**s3["env"], "FASTSLOW_S3_MAX_ATTEMPTS": "2"}
    client = build(submit_job, job, s3["data"], tiny_fast_checkpoint, root, "embed.concurrency=1",
                   runtime_env=json.dumps({"env_vars": env}))
    try:
        version = _outage_once_written(s3, client, job, root)
        status, logs = wait_for(client, job, timeout=180)
    finally:
        s3["proxy"].up()
    assert status == "FAILED"
    last = logs.strip().splitlines()[-1]
    assert last.startswith("python -m jobs.build_index: error: s3://") and "unreachable" in last, logs[-3000:]
    assert s3["proxy"].url in last and "submit the same job again to resume" in last
    assert not storage.exists(f"{root}/CURRENT")  # nothing half-built is live
    written = _written(root, version)
    assert 2 <= written < PARTITIONS

    again = job_id("s3-again")
    build(submit_job, again, s3["data"], tiny_fast_checkpoint, root, "embed.concurrency=1",
          runtime_env=json.dumps({"env_vars": s3["env"]}))
    summary = _finish(client, again, reference[0], root)
    assert f"{PARTITIONS} partitions, {PARTITIONS - written} to do" in client.get_job_logs(again)
    fault_record("fault", "S3 endpoint down past the retries, then back; job resubmitted", injected=1,
                 items_in=summary["read"], indexed=summary["indexed"], reported=summary["errors"], foreign_ids=0)
