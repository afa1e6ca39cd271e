"""`python -m jobs.build_index ARGS` (for `ray job submit`) is `fastslow index ARGS` run as a Ray Data job
(jobs/index_job.py)."""

import sys

from apps.cli import job_alias

if __name__ == "__main__":
    sys.exit(job_alias(["index"], "python -m jobs.build_index"))
