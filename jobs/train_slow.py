"""`python -m jobs.train_slow ARGS` (for `ray job submit`) is `fastslow train slow ARGS` run as a Ray Train job."""

import sys

from apps.cli import job_alias

if __name__ == "__main__":
    sys.exit(job_alias(["train", "slow"], "python -m jobs.train_slow"))
