"""Train the Fast dual encoder as a Ray job: `ray job submit --working-dir . -- python -m jobs.train_fast ...`."""

import sys

from jobs.training import main

if __name__ == "__main__":
    sys.exit(main("fast"))
