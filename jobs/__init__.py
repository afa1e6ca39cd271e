"""Ray job entry points (`python -m jobs.<name>`). Filled in by the training and indexing issues."""
