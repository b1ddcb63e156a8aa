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
        --controller rate_p0 [--out benchmarks/results/selection_overlap.md]

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
    args = parser.parse_args(argv)

    import keras

    import acsl_tf  # noqa: F401  (registers the wrapper for loading)
    from acsl_tf import _io

    root = os.path.join(args.work_dir, "ranked", args.task)
    rows = []
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
        sets = {k: removed_set(keras.models.load_model(p), t) for k, p in paths.items()}
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
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        _io.atomic_write_text(args.out, text, overwrite=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
