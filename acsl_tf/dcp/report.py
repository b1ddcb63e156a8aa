"""Reports and plots of DCP/DKP selections."""

from __future__ import annotations

__all__ = ["dcp_report", "dkp_report", "plot_widths"]


def dcp_report(result) -> str:
    """A per-group table of a :class:`~acsl_tf.dcp.DCPResult`: channels
    before and kept, the loss with no channel and at the end, the loss that
    drove the selection, seconds; then the plan's params and FLOPs."""
    rows = [("group", "consumers", "before", "kept", "L(0)", "L(end)", "loss", "s")]
    for sel in result.layers:
        rows.append(
            (
                sel.name,
                ", ".join(sel.consumers),
                str(sel.size),
                str(len(sel.kept)),
                f"{sel.losses[0]:.4g}",
                f"{sel.losses[-1]:.4g}",
                sel.loss_head or "reconstruction",
                f"{sel.seconds:.1f}",
            )
        )
    lines = _table(rows)
    p = result.plan
    lines.append(
        f"params {p.params_before:,} -> {p.params_after:,} "
        f"({100 * p.params_reduction:.1f}% removed); FLOPs {p.flops_before:,} -> "
        f"{p.flops_after:,} ({100 * p.flops_reduction:.1f}% removed); {result.seconds:.1f} s"
    )
    for st in getattr(result, "stages", None) or []:
        lines.append(
            f"stage {st.index + 1} ({st.head}): fine-tuned {st.epochs} epoch(s) in "
            f"{st.fit_seconds:.1f} s, then {len(st.groups)} group(s) selected in "
            f"{st.select_seconds:.1f} s; FLOPs {100 * st.flops_reduction:.1f}% removed so far"
        )
    for name, why in result.skipped.items():
        lines.append(f"not selected: {name}: {why}")
    lines += _rejected_line(result)
    return "\n".join(lines)


def _rejected_line(result) -> list:
    n = sum(s.rejected for s in result.layers)
    if not n:
        return []
    total = sum(len(s.order) for s in result.layers)
    return [
        f"re-fits discarded: {n} of {total} additions (the SGD steps raised the loss; "
        "the warm-started kernels were kept; a smaller learning_rate avoids this)"
    ]


def dkp_report(result) -> str:
    """A per-layer table of a :class:`~acsl_tf.dcp.DKPResult` and the sizes."""
    rows = [("layer", "kernels", "kept", "L(0)", "L(end)", "loss", "s")]
    for sel in result.layers:
        rows.append(
            (
                sel.name,
                str(sel.size),
                str(len(sel.kept)),
                f"{sel.losses[0]:.4g}",
                f"{sel.losses[-1]:.4g}",
                sel.loss_head or "reconstruction",
                f"{sel.seconds:.1f}",
            )
        )
    lines = _table(rows)
    lines.append(
        f"kernel sparsity {100 * result.sparsity:.1f}% of the selected layers' weights, "
        f"{100 * result.model_sparsity:.1f}% of all trainable weights; size "
        f"{result.dense_bytes:,} B dense, {result.sparse_bytes:,} B with sparse kernels "
        "(same FLOPs and run time on dense runtimes)"
    )
    lines += _rejected_line(result)
    return "\n".join(lines)


def _table(rows) -> list:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for j, r in enumerate(rows):
        out.append(
            "  ".join(
                c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))
            )
        )
        if j == 0:
            out.append("  ".join("-" * w for w in widths))
    return out


def plot_widths(result, path=None, *, ax=None, title=None):
    """Bar chart of the channels per group before and after DCP (or kernels
    per layer for DKP).

    Args:
        result: A :class:`~acsl_tf.dcp.DCPResult` or
            :class:`~acsl_tf.dcp.DKPResult`.
        path: Where to save the figure (PNG, SVG, ...), or None.
        ax: A matplotlib Axes to draw on (default: a new figure).
        title: Figure title.

    Returns:
        The matplotlib Figure.

    Raises:
        ImportError: Without matplotlib (``pip install "acsl_tf[plots]"``).
    """
    try:
        import matplotlib

        if ax is None and path is not None:
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError('plot_widths needs matplotlib: pip install "acsl_tf[plots]"') from e
    names = [s.name for s in result.layers]
    before = [s.size for s in result.layers]
    after = [len(s.kept) for s in result.layers]
    if ax is None:
        fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(names) + 2), 3.5))
    else:
        fig = ax.figure
    xs = range(len(names))
    ax.bar(xs, before, color="#cccccc", label="before")
    ax.bar(xs, after, color="#1f77b4", label="kept")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("channels" if hasattr(result, "plan") else "kernels")
    ax.legend()
    ax.set_title(
        title
        or (
            "DCP: kept channels per group"
            if hasattr(result, "plan")
            else "DKP: kept kernels per layer"
        )
    )
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
