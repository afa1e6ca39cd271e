"""Retrieval evaluation: metrics from ranks (`metrics`) and checkpoints evaluated on a split (`retrieval`)."""

from fastslow.eval.metrics import (RetrievalResult, chance_metrics, evaluate_embeddings, metrics_from_ranks,
                                   ranks_of_true)

__all__ = ["RetrievalResult", "chance_metrics", "evaluate_embeddings", "metrics_from_ranks", "ranks_of_true"]
