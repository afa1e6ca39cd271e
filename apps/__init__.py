"""Applications on top of the core and the Ray layers: the `fastslow` command line and the demo."""
