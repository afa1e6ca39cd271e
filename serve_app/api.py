"""The HTTP API's request and answer shapes (they are also what /docs shows)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from fastslow.search.request import IMAGE_WEIGHT, SearchRequest


class SearchBody(BaseModel):
    """A search: words (`query`), an image (`image`) or an indexed item (`like`), or words with either. Limits
    (query length, k, rerank_k, image bytes) are the app's `limits`; /healthz lists them."""

    model_config = ConfigDict(extra="forbid")

    query: str = Field("", description="what to look for, in words (re-ranked by Slow where given)")
    image: str | None = Field(None, description="an image to search with: its file's bytes (JPEG, PNG, WebP, ...) "
                                                "in base64; at most limits.max_image_bytes (413 beyond)")
    like: str | None = Field(None, description="the id of an indexed item: search with its vector "
                                               "(404 if the live version lacks it)")
    image_weight: float = Field(IMAGE_WEIGHT, ge=0.0, le=1.0,
                                description="with words and an image (or like): the query vector is the unit "
                                            "vector along (1 - w) * words + w * image, so each item's Fast score "
                                            "orders as (1 - w) * its words' score + w * its image's")
    explain: bool = Field(False, description="with each re-ranked result, Slow's cross-attention from each query "
                                             "token to the item's fine-grained grid (a video's: each frame's)")
    filter: dict[str, dict] | None = Field(
        None, description="conditions on the items' fields, all of which must hold, e.g. {\"media\": {\"eq\": "
                          "\"image\"}, \"width\": {\"gte\": 512}, \"id\": {\"prefix\": \"2024/\"}}; "
                          "GET /filters lists the live index's fields and operators")
    k: int = Field(SearchRequest.k, description="results to answer with")
    rerank: bool = Field(SearchRequest.rerank, description="re-rank Fast's top rerank_k with Slow")
    rerank_k: int = Field(SearchRequest.rerank_k, description="how many of Fast's best Slow re-scores")


class Explanation(BaseModel):
    tokens: list[str] = Field(description="the query's tokens as Slow reads them (words unknown to Slow left out)")
    grid: list[int] = Field(description="[rows, cols] of the item's fine-grained grid")
    frames: int | None = Field(description="a video's frames; null for an image")
    maps: list = Field(description="per token, the attention over [frames,] rows x cols: it sums to 1 per token")


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
    fast_rank: int | None = Field(None, description="its rank in Fast's order, before re-ranking")
    shard: int
    explain: Explanation | None = Field(None, description="with `explain`, for a re-ranked result")


class ShardsAnswered(BaseModel):
    answered: list[int]
    failed: dict[str, str] = Field(description="shard -> why it is missing from the answer")


class SearchAnswer(BaseModel):
    query: str
    query_by: str = Field(description="what the query was made of: text, image, like, text+image or text+like")
    like: str | None
    results: list[Hit]
    reranked: bool = Field(description="Slow re-ranked the head (asked for, and the query has words)")
    degraded: bool = Field(description="re-ranking was asked for but the answer is in Fast order")
    degraded_reason: str | None
    partial: bool = Field(description="some index shards did not answer")
    explain_reason: str | None = Field(None, description="with `explain`: why the results carry no maps")
    shards: ShardsAnswered
    index_version: str
    timings_ms: dict[str, float]


class ErrorAnswer(BaseModel):
    detail: str


class FilterField(BaseModel):
    kind: str = Field(description="number, media or id")
    operators: list[str]
    values: list[str] | None = Field(None, description="media: the types the index holds")
    items: int | None = Field(None, description="numbers: how many items have the field")
    min: float | None = None
    max: float | None = None


class FiltersAnswer(BaseModel):
    index_version: str | None
    fields: dict[str, FilterField]
