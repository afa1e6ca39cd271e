"""fastslow: language search over image and video collections (Thinking Fast and Slow, CVPR 2021).

This package is the Ray-free core: data readers, models, inference, training, evaluation, the index
build and the query flow. `actors/`, `jobs/`, `serve_app/` and `cluster/` place it on a Ray cluster;
`apps/` holds the command line and the demo. In a notebook:

    import fastslow
    searcher = fastslow.open_index("runs/demo/runs/index", "runs/demo/runs/fast/checkpoint",
                                   "runs/demo/runs/slow/checkpoint")
    searcher.search("a large red circle left of a small blue square", k=5)["results"]
    fastslow.embed_texts("runs/demo/runs/fast/checkpoint", ["a red circle"])   # (1, d) unit vectors
"""

__version__ = "0.1.0"

# Loaded on first use, so `import fastslow` stays light and the query path loads no training code.
_EXPORTS = {
    "open_index": "fastslow.api", "Searcher": "fastslow.api", "embed_texts": "fastslow.api",
    "embed_media": "fastslow.api", "read_dataset": "fastslow.api",
    "load_model": "fastslow.models.checkpoint", "FastslowError": "fastslow.errors",
    "ReadReport": "fastslow.data.types",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fastslow' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
