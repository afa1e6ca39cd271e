"""Train the Slow captioner as a Ray job: `ray job submit --working-dir . -- python -m jobs.train_slow ...`."""

import sys

from jobs.training import main

if __name__ == "__main__":
    sys.exit(main("slow"))
