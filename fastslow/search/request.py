"""What one query asks for, with the defaults every entry point uses (HTTP body, client, CLI, notebook)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SearchRequest:
    """One query: the k results wanted, and whether Fast's first rerank_k are re-ranked by Slow."""

    query: str
    k: int = 10
    rerank: bool = True
    rerank_k: int = 20
