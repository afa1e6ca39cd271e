"""What the benchmark table prints beside its rows: the notes under it and the plot of R@1 and time against K."""

from __future__ import annotations

from pathlib import Path

from benchmarks.table_spec import TableSpec
from fastslow.models.config import FastConfig


def table_notes(spec: TableSpec) -> list[str]:
    """The notes printed under the table: what its rows measure and with which models."""
    image, video = spec.image, spec.video
    two_fasts = video.fast != image.fast
    notes = [
        "Every caption of the test split is a query; the gallery is the test split's items, each scene with its "
        "swapped-attribute and swapped-relation twins (videos: time-reversed, colour- and direction-swapped twins).",
        "Ranks count ties against the query. ms_per_query on CPU: Fast = text encoding + scoring the gallery; "
        "Slow = its decoder over every (query, item) pair, with each item's visual features computed offline like "
        "Fast's gallery embeddings; fast+slow = Fast plus the decoder over the top K (fast_distilled+slow: the "
        "distilled Fast as the first stage, the paper's full system).",
        "The slow row ranks the first caption of each test item only (Q x N decoder passes); r1_same_queries gives "
        "the other rows' R@1 on exactly those queries.",
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
            f"{spec.teacher_captions.within} nat of Slow's best (at most {spec.teacher_captions.most}).")
    return notes


def describe_fast(cfg: FastConfig) -> str:
    frozen = lambda t: "trained" if t.trainable else "frozen"  # noqa: E731
    layers = f", first {cfg.text.layers} layer(s)" if cfg.text.layers else ""
    return (f"vision {cfg.vision.kind} ({frozen(cfg.vision)}, {cfg.vision.image_size}px), text {cfg.text.kind} "
            f"({frozen(cfg.text)}{layers}), {cfg.vision_pooling} / {cfg.text_pooling} pooling, "
            f"{'MLP' if cfg.head_hidden else 'linear'} heads to {cfg.embed_dim}-d")


def plot_table(rows: list[dict], path: Path) -> None:
    """R@1 and ms per query against K for Fast then Slow, with Fast, distilled Fast and Slow as reference lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    modalities = sorted({r["modality"] for r in rows})
    fig, axes = plt.subplots(2, len(modalities), figsize=(5 * len(modalities), 7), squeeze=False)
    for col, modality in enumerate(modalities):
        mine = [r for r in rows if r["modality"] == modality]
        ref = {r["method"]: r for r in mine if r["k"] is None}
        for ax, key, label in ((axes[0, col], "r1", "R@1 (%)"), (axes[1, col], "ms_per_query", "ms per query")):
            for method, style, name in (("fast+slow", "o-", "Fast then Slow (top K)"),
                                        ("fast_distilled+slow", "s--", "distilled Fast then Slow")):
                reranked = sorted((r for r in mine if r["method"] == method), key=lambda r: r["k"])
                ks = [r["k"] for r in reranked]
                if reranked:
                    ax.plot(ks, [r[key] for r in reranked], style, label=name)
            for method, style in (("slow", "r--"), ("fast", "k:"), ("fast_distilled", "g-."),
                                  ("fast_soft_targets", "b-.")):
                if method in ref and ref[method][key] is not None:
                    ax.axhline(ref[method][key], color=style[0], linestyle=style[1:], label=method)
            ax.set_xscale("log")
            ax.set_xticks(ks, [str(k) for k in ks])
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("K (candidates re-ranked by Slow)")
            ax.set_ylabel(label)
            if key == "ms_per_query":
                ax.set_yscale("log")
            ax.set_title(f"{modality}: {label}")
            ax.grid(alpha=0.3)
        axes[0, col].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
