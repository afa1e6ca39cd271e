"""What a benchmark writes: its figures as JSON, a Markdown table beside it (also printed) and a plot."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path


def pyplot():
    """matplotlib's pyplot, drawing to files only (no display here or on a cluster node)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_report(out: str | Path, result: dict, markdown: Callable[[dict], str],
                 plot: Callable[[dict, Path], None]) -> None:
    """`out` (JSON), its .md and its .png; the Markdown on stdout."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    out.with_suffix(".md").write_text(text)
    plot(result, out.with_suffix(".png"))
    print(text)
