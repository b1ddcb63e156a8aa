"""Which channels do the sparsity-trained methods remove, compared with the
baseline's own |gamma| order?

For each seed and FLOPs target of a ranked benchmark task (``--task``), it
plans ``shrink(target_flops=t)`` (the ``gamma`` criterion, as the benchmark
prunes) on the unpruned baseline and on the ACSL and Network Slimming
sparsity-trained models cached by ``benchmarks/compression.py --mode ranked``,
and reports the Jaccard overlap of the removed channel sets: 1 means the same
channels. A method whose penalty shape decides the selection removes channels
the baseline's |gamma| order would keep.

Usage::

    .venv/bin/python benchmarks/selection_overlap.py --work-dir .bench_work \\
        --controller rate_p0 [--widths] [--out benchmarks/results/selection_overlap.md]

``--widths`` adds, per target, the channels each order keeps in every layer
(mean over the seeds): where the methods put the FLOPs they remove.

The cached models are not committed (``--work-dir`` of the ranked run); the
controller tag is the part of their file names after ``_sparse_``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def removed_set(model, target: float) -> set:
    """``{(group index, channel)}`` that ``shrink(target_flops=target)`` removes."""
    import acsl_tf

    plan = acsl_tf.plan_shrink(model, target_flops=target)
    out = set()
    for gi, g in enumerate(plan.groups):
        keep = set(g.keep)
        out.update((gi, c) for c in range(g.size) if c not in keep)
    return out


def kept_widths(model, target: float) -> dict:
    """``{layer: (channels kept, channels)}`` of every prunable group of the
    plan of ``shrink(target_flops=target)``, named by its first BatchNorm
    (else its first member)."""
    import acsl_tf

    plan = acsl_tf.plan_shrink(model, target_flops=target)
    return {
        (g.units[0] if g.units else g.members[0][0]): (len(g.keep), g.size)
        for g in plan.groups
        if g.prunable
    }


def widths_markdown(widths: dict, extra: tuple = ()) -> str:
    """One table per target: per layer, the mean channels kept over seeds by
    the baseline's |gamma| order, ACSL, NS and the ``extra`` methods (their
    cached sparse models' names, e.g. ``"acsl_galloc"``).
    ``widths[(seed, target)][kind]`` is a :func:`kept_widths` result; a kind
    missing in a run is left out of that run's mean."""
    kinds = ("baseline", "acsl", "ns") + tuple(extra)
    heads = ("baseline order", "ACSL", "NS") + tuple(f"`{m}`" for m in extra)
    lines = []
    for t in sorted({t for _, t in widths}):
        runs = [w for (_, tt), w in sorted(widths.items()) if tt == t]
        layers = list(runs[0]["baseline"])
        lines += [
            "",
            f"### Channels kept per layer at {t:.0%} fewer FLOPs (mean over {len(runs)} seeds)",
            "",
            "| layer | channels | " + " | ".join(heads) + " |",
            "|---|---:|" + "---:|" * len(heads),
        ]
        for layer in layers:
            cells = []
            for kind in kinds:
                vals = [w[kind][layer][0] for w in runs if layer in w.get(kind, {})]
                cells.append(f"{sum(vals) / len(vals):.1f}" if vals else "")
            lines.append(
                f"| {layer} | {runs[0]['baseline'][layer][1]} | " + " | ".join(cells) + " |"
            )
    return "\n".join(lines)


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", default=".bench_work")
    parser.add_argument(
        "--task", default="classification", choices=("classification", "segmentation", "counting")
    )
    parser.add_argument("--controller", default="rate_p0", help="cache tag, e.g. rate_p0")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--targets", default="0.5,0.85")
    parser.add_argument("--out", default=None, help="markdown file to write (atomically)")
    parser.add_argument(
        "--widths", action="store_true", help="also tabulate the channels kept per layer"
    )
    parser.add_argument(
        "--extra",
        default="",
        help="comma-separated further methods whose cached sparse models join the width "
        "table and the overlap with the baseline order (e.g. acsl_galloc)",
    )
    args = parser.parse_args(argv)
    extra = tuple(m for m in args.extra.split(",") if m)

    import keras

    import acsl_tf  # noqa: F401  (registers the wrapper for loading)
    from acsl_tf import _io

    root = os.path.join(args.work_dir, "ranked", args.task)
    rows = []
    extra_rows = []
    widths: dict = {}
    for seed, t in itertools.product(
        [int(s) for s in args.seeds.split(",")], [float(t) for t in args.targets.split(",")]
    ):
        d = os.path.join(root, f"seed{seed}")
        tag = f"_t{round(t * 100)}"
        paths = {
            "baseline": os.path.join(d, "baseline.keras"),
            "acsl": os.path.join(d, f"acsl_sparse_{args.controller}{tag}.keras"),
            "ns": os.path.join(d, f"ns_sparse_{args.controller}{tag}.keras"),
        }
        missing = [p for p in paths.values() if not os.path.isfile(p)]
        if missing:
            print(f"seed {seed}, target {t:.0%}: missing {missing}; skipped", flush=True)
            continue
        for m in extra:
            p = os.path.join(d, f"{m}_sparse_{args.controller}{tag}.keras")
            if os.path.isfile(p):
                paths[m] = p
            else:
                print(f"seed {seed}, target {t:.0%}: no {p}; {m} left out", flush=True)
        models = {k: keras.models.load_model(p) for k, p in paths.items()}
        sets = {k: removed_set(m, t) for k, m in models.items()}
        for m in extra:
            if m in sets:
                extra_rows.append((seed, t, m, jaccard(sets[m], sets["baseline"])))
        if args.widths:
            widths[(seed, t)] = {k: kept_widths(m, t) for k, m in models.items()}
        rows.append(
            (
                seed,
                t,
                jaccard(sets["acsl"], sets["baseline"]),
                jaccard(sets["ns"], sets["baseline"]),
                jaccard(sets["acsl"], sets["ns"]),
                len(sets["acsl"]),
                len(sets["ns"]),
            )
        )
        print(rows[-1], flush=True)
    lines = [
        "# Channels removed by the sparsity-trained models vs the baseline's |gamma| order",
        "",
        f"Ranked {args.task} benchmark, cached sparse models `*_sparse_{args.controller}_t*`;",
        "Jaccard overlap of the channel sets that `shrink(target_flops=t)` removes",
        "(1: the same channels). Produced by `benchmarks/selection_overlap.py`.",
        "",
        "| seed | target FLOPs | ACSL vs baseline order | NS vs baseline order | ACSL vs NS |"
        " channels removed (ACSL / NS) |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for seed, t, a_b, n_b, a_n, na, nn in rows:
        lines.append(f"| {seed} | {t:.0%} | {a_b:.2f} | {n_b:.2f} | {a_n:.2f} | {na} / {nn} |")
    if extra_rows:
        lines += ["", "| seed | target FLOPs | method | overlap with the baseline order |"]
        lines.append("|---:|---:|---|---:|")
        lines += [f"| {sd} | {t:.0%} | `{m}` | {j:.2f} |" for sd, t, m, j in extra_rows]
    if widths:
        lines.append(widths_markdown(widths, extra))
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        _io.atomic_write_text(args.out, text, overwrite=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
