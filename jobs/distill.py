"""Distil a Slow teacher into a Fast student as a Ray job: `ray job submit --working-dir . -- python -m jobs.distill teacher=PATH ...`."""

import sys

from jobs.training import main

if __name__ == "__main__":
    sys.exit(main("distill"))
