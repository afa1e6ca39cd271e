"""Settings of the Serve application: the `args:` of its entry in a Serve config YAML (configs/serve_*.yaml).

Replica counts, autoscaling and queue bounds are Serve's own deployment options and live in the
YAML's `deployments:` list only (the retriever shards and the optional encoder, which the YAML cannot
name ahead of time, keep theirs on their classes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fastslow.devices import check_setting
from fastslow.errors import FastslowError
from fastslow.models.config import dataclass_from_dict

# The app's HTTP port unless its Serve YAML's http_options or --port say otherwise (Serve's own default too).
DEFAULT_PORT = 8000


@dataclass
class Limits:
    """What one request may ask for; larger asks get a 422 that says which limit."""

    max_query_chars: int = 512
    max_k: int = 100
    max_rerank_k: int = 100
    max_image_bytes: int = 4 * 1024 * 1024  # an image given as the query (its file's bytes); 0 = no image queries


@dataclass
class ServeAppConfig:
    index_root: str = "runs/index"  # versions/ and CURRENT (local or s3://)
    fast_checkpoint: str = ""  # must be the model the index was built with (checked against the manifest)
    slow_checkpoint: str = ""  # "" = no re-ranker; requests asking for re-ranking are answered degraded
    shards: int = 0  # 0 = as many as the index version has; otherwise must match it
    # IVF indexes: lists searched per query; HNSW: search breadth. 0 = the version's own, chosen when it was built
    # (the smallest reaching index.target_recall, in its manifest's `search`); more = better recall, slower.
    nprobe: int = 0
    ef_search: int = 0
    fast_weight: float = 0.0  # fusion: final = slow + fast_weight * fast (0 = the Slow order)
    encoder_in_ingress: bool = True  # encode queries in the ingress: one hop fewer on every request
    rerank_timeout_s: float = 5.0  # past this the answer is the Fast order, marked degraded
    retrieve_timeout_s: float = 5.0  # a shard slower than this is left out of the answer, which says so
    cache_mb: float = 1024  # MB of Slow item features kept per re-ranker replica (least recently used evicted)
    torch_threads: int = 1  # per replica: replicas scale out, not up
    reranker_gpus: float | str = "auto"  # per re-ranker replica; auto: 1 where the cluster has GPUs, else 0
    limits: Limits = field(default_factory=Limits)
    # The API key is read from this environment variable of the replicas (never put the key in `args`: `serve
    # status` shows them); unset or empty = no key (the local demo). Set it on every cluster.
    api_key_env: str = "FASTSLOW_API_KEY"
    max_body_bytes: int = 16 * 1024  # larger request bodies get a 413 (beyond the room for an image's base64)

    def __post_init__(self) -> None:
        if not self.index_root:
            raise FastslowError("serve: index_root is not set (where the index versions and CURRENT live)")
        if not self.fast_checkpoint:
            raise FastslowError("serve: fast_checkpoint is not set (the Fast model the index was built with)")
        if self.nprobe < 0 or self.ef_search < 0:
            raise FastslowError(f"serve: nprobe and ef_search must be 0 (default) or more, got {self.nprobe}, "
                                f"{self.ef_search}")
        check_setting("serve: reranker_gpus", self.reranker_gpus)
        if self.cache_mb < 0:
            raise FastslowError(f"serve: cache_mb must be 0 (no cache) or more, got {self.cache_mb}")
        if self.shards < 0:
            raise FastslowError(f"serve: shards must be 0 (all) or more, got {self.shards}")
        if self.limits.max_image_bytes < 0:
            raise FastslowError(f"serve: limits.max_image_bytes must be 0 (no image queries) or more, got "
                                f"{self.limits.max_image_bytes}")
        if self.max_body_bytes < 1024:
            raise FastslowError(f"serve: max_body_bytes must be at least 1024, got {self.max_body_bytes}")
        for name in ("rerank_timeout_s", "retrieve_timeout_s"):
            if getattr(self, name) <= 0:
                raise FastslowError(f"serve: {name} must be positive, got {getattr(self, name)}")


def body_limit(cfg: ServeAppConfig) -> int:
    """The largest request body: max_body_bytes, plus the base64 of an image of limits.max_image_bytes."""
    return cfg.max_body_bytes + 4 * -(-cfg.limits.max_image_bytes // 3)


def app_config(args: dict | None) -> ServeAppConfig:
    """The application's settings from the Serve YAML's `args` (unknown keys refused)."""
    return dataclass_from_dict(ServeAppConfig, dict(args or {}), where="serve args")
