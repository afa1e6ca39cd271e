"""`python -m jobs.train_fast ARGS` (for `ray job submit`) is `fastslow train fast ARGS` run as a Ray Train job."""

import sys

from apps.cli import job_alias

if __name__ == "__main__":
    sys.exit(job_alias(["train", "fast"], "python -m jobs.train_fast"))
