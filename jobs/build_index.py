"""`python -m jobs.build_index`: the index job under its first name (see `jobs.index_job`, which it runs).

`run_build` and the build's steps stay importable from here (`from jobs.build_index import run_build`).
"""

from __future__ import annotations

import sys

from jobs.index_job import collection_root, index_rows, main, plan_partitions, run_build, version_name

__all__ = ["run_build", "main", "index_rows", "collection_root", "plan_partitions", "version_name"]

if __name__ == "__main__":
    sys.exit(main(prog="python -m jobs.build_index"))
