"""fastslow: language search over image and video collections (Thinking Fast and Slow, CVPR 2021).

This package is the Ray-free core (data, models, losses, training, evaluation);
`actors/`, `jobs/` and `serve_app/` place it on a Ray cluster.
"""

__version__ = "0.1.0"
