"""`python -m jobs.distill ARGS` (for `ray job submit`) is `fastslow train distill ARGS` run as a Ray Train job."""

import sys

from apps.cli import job_alias

if __name__ == "__main__":
    sys.exit(job_alias(["train", "distill"], "python -m jobs.distill"))
