"""`python -m fastslow` is the `fastslow` command."""

import sys

from fastslow.cli import main

sys.exit(main())
