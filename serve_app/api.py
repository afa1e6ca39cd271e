"""The HTTP API's request and answer shapes (they are also what /docs shows)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from fastslow.search.request import SearchRequest


class SearchBody(BaseModel):
    """A search. Limits (query length, k, rerank_k) are the app's `limits`; /healthz lists them."""

    model_config = ConfigDict(extra="forbid")

    query: str = Field(description="what to look for, in words")
    k: int = Field(SearchRequest.k, description="results to answer with")
    rerank: bool = Field(SearchRequest.rerank, description="re-rank Fast's top rerank_k with Slow")
    rerank_k: int = Field(SearchRequest.rerank_k, description="how many of Fast's best Slow re-scores")


class Hit(BaseModel):
    rank: int
    id: str
    location: str = Field(description="the item's reference in its collection: its original url where the "
                                      "collection has one, else its path (or shard#member) under the collection")
    media: str | None
    caption: str | None
    metadata: dict = Field(description="the item's metadata as the collection gave it (img2dataset's .json "
                                       "fields: url, width, height, sha256, ...), less those the index leaves out")
    fast_score: float
    slow_score: float | None = Field(description="null when not re-ranked")
    shard: int


class ShardsAnswered(BaseModel):
    answered: list[int]
    failed: dict[str, str] = Field(description="shard -> why it is missing from the answer")


class SearchAnswer(BaseModel):
    query: str
    results: list[Hit]
    reranked: bool
    degraded: bool = Field(description="re-ranking was asked for but the answer is in Fast order")
    degraded_reason: str | None
    partial: bool = Field(description="some index shards did not answer")
    shards: ShardsAnswered
    index_version: str
    timings_ms: dict[str, float]


class ErrorAnswer(BaseModel):
    detail: str
