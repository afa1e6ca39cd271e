"""The index publisher killed (SIGKILL) at random points while it writes a new version, for several seeds, on a
local folder and on S3: CURRENT always names a complete version that loads and verifies, and the interrupted
publish, run again, succeeds."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from fastslow.index.publish import current_version, load_version

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]

ITEMS = 40_000
PUBLISHER = """
import sys
import numpy as np
import pyarrow as pa
from fastslow.errors import FastslowError
from fastslow.index.publish import publish, read_manifest, write_version
from fastslow.index.shards import IndexSpec, build_shards

root, version = sys.argv[1], sys.argv[2]
n = int(sys.argv[3])
vectors = np.random.default_rng(len(version)).normal(size=(n, 64)).astype(np.float32)
ids = [f"{version}-{i}" for i in range(n)]
spec = IndexSpec(shards=4)
indexes, rows = build_shards(ids, vectors, spec)
meta = pa.table({"id": ids, "uri": [f"/data/{version}/{i}.jpg" for i in range(n)]})
print("writing", flush=True)
try:
    read_manifest(root, version)  # complete already (killed before CURRENT moved): as the index job, only publish
except FastslowError:
    write_version(root, version, indexes, rows, meta, spec, {"checkpoint": "c", "weights_sha256": "ab" * 32})
publish(root, version)
print("published", flush=True)
"""


def start(root: str, version: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", PUBLISHER, root, version, str(ITEMS)], stdout=subprocess.PIPE,
                            text=True, env=os.environ.copy())


def publish_whole(root: str, version: str) -> float:
    """Run the publisher to its end; seconds from its first write to its end."""
    proc = start(root, version)
    assert proc.stdout.readline().strip() == "writing"
    t0 = time.perf_counter()
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "published" in out
    return time.perf_counter() - t0


def check_live(root: str, allowed: set[str]) -> str:
    """CURRENT names a version in `allowed`, which loads whole and verified, with only its own items."""
    live = current_version(root)
    assert live in allowed
    loaded = load_version(root)
    ids = loaded.metadata.column("id").to_pylist()
    assert len(ids) == ITEMS and all(i.startswith(f"{live}-") for i in ids)
    assert sum(ix.ntotal for ix in loaded.indexes) == ITEMS
    return live


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "index")
    return f"{request.getfixturevalue('s3_bucket')}/index"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_publisher_killed_anywhere_leaves_a_complete_live_version(root, seed, fault_record):
    rng = random.Random(seed)
    writing_takes = publish_whole(root, "v1")
    assert check_live(root, {"v1"}) == "v1"
    proc = start(root, "v2")
    assert proc.stdout.readline().strip() == "writing"
    at = rng.uniform(0, writing_takes)
    time.sleep(at)  # anywhere in the write, up to just after CURRENT moves
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    live = check_live(root, {"v1", "v2"})
    # The publish that was cut short, run again, finishes (over whatever part it had written) and goes live.
    if live == "v1":
        publish_whole(root, "v2")
    assert check_live(root, {"v2"}) == "v2"
    where = "S3" if root.startswith("s3://") else "a local folder"
    fault_record("fault", f"index publisher SIGKILLed {at:.2f} s into a {writing_takes:.2f} s publish on {where} "
                          f"(seed {seed}); {live} stayed live", injected=1, items_in=ITEMS, indexed=ITEMS,
                 reported=0, foreign_ids=0)
