"""What the benchmark table prints beside its rows: the notes under it and the plot of R@1 and time against K."""

from __future__ import annotations

from pathlib import Path

from benchmarks.table_spec import TableSpec
from fastslow.models.config import FastConfig


def table_notes(spec: TableSpec, split: str = "test") -> list[str]:
    """The notes printed under the table: what its rows measure and with which models."""
    image, video = spec.image, spec.video
    two_fasts = video.fast != image.fast
    timing = spec.timing
    notes = [
        f"Every caption of the {split} split is a query; the gallery is the {split} split's items, each scene with "
        "its swapped-attribute and swapped-relation twins (videos: time-reversed, colour- and direction-swapped "
        "twins). Ranks count ties against the query.",
        f"Timings, the same for every method: latency_ms is the median time of one query answered alone (batch 1; "
        f"{timing.latency_queries} queries): what a user waits; queries_per_s is the throughput answering "
        f"{timing.throughput_queries} queries in batches of {timing.batch}, every stage batched alike (the median "
        f"of {timing.repeats} passes). Both time "
        "Slow's queries (one caption per item), with the same scoring functions as the results. A query's answer: "
        "fast = encode its text, the top 10 of the gallery by dot product; slow = Slow's decoder over every "
        "(query, item) pair, the gallery ordered by it; fast+slow = Fast's top K, Slow's decoder over those K, "
        "ordered by it (fast_distilled+slow: the distilled Fast as the first stage, the paper's full system). The "
        "gallery's Fast embeddings and Slow's visual features are computed beforehand, as an index holds them; "
        "Slow's cross-attention keys and values are computed in each call. speedup_latency and speedup_throughput: "
        "Slow over all's latency over the row's, the row's queries/s over Slow over all's.",
        f"The slow row ranks the first caption of each {split} item only (Q x N decoder passes); same_queries gives "
        "the other rows' metrics on exactly those queries.",
        f"Fast{' (images)' if two_fasts else ''}: {describe_fast(image.fast)}; batches with "
        f"{image.fast_train.neighbours} nearest neighbours per anchor."
        + (f" Videos' Fast: {describe_fast(video.fast)}." if two_fasts else ""),
        f"Slow: caption likelihood read in both directions ({image.slow.directions}), decoder {image.slow.layers}x"
        f"{image.slow.dim}, fine-grained map {'on' if image.slow.fine_grained else 'off'}, vision "
        f"{image.slow.vision.kind}.",
        f"Soft targets: Fast's batches and schedule plus the soft-target term (weight {spec.distill.weight}, "
        f"temperature {spec.distill.temperature}) over each caption's batch items among its item's "
        f"{image.fast_train.neighbour_pool} nearest neighbours, scored by Slow once before training: the "
        f"fast_distilled row of videos" + (", fast_soft_targets of images." if spec.uncaptioned else " and images."),
    ]
    if spec.uncaptioned:
        notes.append(
            f"fast_distilled (images): Fast's schedule over the captioned train images plus {spec.uncaptioned} "
            f"uncaptioned ones, each captioned by Slow (the transfer set): Fast shortlists "
            f"{spec.teacher_captions.shortlist} of the training captions, the image keeps those within "
            f"{spec.teacher_captions.within} nat per token of Slow's best (at most {spec.teacher_captions.most}).")
    return notes


def describe_fast(cfg: FastConfig) -> str:
    frozen = lambda t: "trained" if t.trainable else "frozen"  # noqa: E731
    layers = f", first {cfg.text.layers} layer(s)" if cfg.text.layers else ""
    return (f"vision {cfg.vision.kind} ({frozen(cfg.vision)}, {cfg.vision.image_size}px), text {cfg.text.kind} "
            f"({frozen(cfg.text)}{layers}), {cfg.vision_pooling} / {cfg.text_pooling} pooling, "
            f"{'MLP' if cfg.head_hidden else 'linear'} heads to {cfg.embed_dim}-d")


PLOTTED = (("r1", "R@1 (%)"), ("latency_ms", "ms per query, batch 1"), ("queries_per_s", "queries/s, batched"))


def plot_table(rows: list[dict], path: Path) -> None:
    """R@1, latency and throughput against K for Fast then Slow, with Fast, distilled Fast and Slow as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    modalities = sorted({r["modality"] for r in rows})
    fig, axes = plt.subplots(len(PLOTTED), len(modalities), figsize=(5 * len(modalities), 10), squeeze=False)
    for col, modality in enumerate(modalities):
        mine = [r for r in rows if r["modality"] == modality]
        ref = {r["method"]: r for r in mine if r["k"] is None}
        for ax, (key, label) in zip(axes[:, col], PLOTTED):
            for method, style, name in (("fast+slow", "o-", "Fast then Slow (top K)"),
                                        ("fast_distilled+slow", "s--", "distilled Fast then Slow")):
                reranked = sorted((r for r in mine if r["method"] == method), key=lambda r: r["k"])
                ks = [r["k"] for r in reranked]
                if reranked:
                    ax.plot(ks, [r[key] for r in reranked], style, label=name)
            for method, style in (("slow", "r--"), ("fast", "k:"), ("fast_distilled", "g-."),
                                  ("fast_soft_targets", "b-.")):
                if ref.get(method, {}).get(key) is not None:
                    ax.axhline(ref[method][key], color=style[0], linestyle=style[1:], label=method)
            ax.set_xscale("log")
            ax.set_xticks(ks, [str(k) for k in ks])
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("K (candidates re-ranked by Slow)")
            ax.set_ylabel(label)
            if key != "r1":
                ax.set_yscale("log")
            ax.set_title(f"{modality}: {label}")
            ax.grid(alpha=0.3)
        axes[0, col].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
