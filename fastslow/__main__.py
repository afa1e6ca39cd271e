"""`python -m fastslow` is the `fastslow` command."""

import sys

from apps.cli import main

sys.exit(main())
