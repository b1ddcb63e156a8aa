"""Time plan_shrink and shrink on large keras.applications models.

Reports the median of ``--repeats`` runs of ``plan_shrink(ratio=0.3)`` and of
``shrink`` (plan + rebuild + weight copy, with and without folding) and the
time per 100 operations, to show how the rewriter grows with model size.

Usage:
    python benchmarks/shrink_speed.py [--repeats 3] [--size 64] [--only ResNet152]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402

from acsl_tf.pruning.shrink import plan_shrink, shrink  # noqa: E402

MODELS = {
    "MobileNetV2": keras.applications.MobileNetV2,
    "ResNet50": keras.applications.ResNet50,
    "ResNet152": keras.applications.ResNet152,
    "DenseNet201": keras.applications.DenseNet201,
    "EfficientNetB7": keras.applications.EfficientNetB7,
}


def timed(fn, *args, **kwargs):
    """Wall seconds (and, in ``CPU``, process CPU seconds) of one call."""
    t, c = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    CPU.append(time.process_time() - c)
    return time.perf_counter() - t, out


CPU: list = []


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--only", default="ResNet152,EfficientNetB7,DenseNet201")
    args = ap.parse_args(argv)
    lines = [
        "| model | operations | params | plan s | shrink s (fold) | shrink s (no fold) | "
        "shrink ms / op | shrink CPU s (fold) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in args.only.split(","):
        keras.utils.clear_session()
        m = MODELS[name](weights=None, input_shape=(args.size, args.size, 3), classes=10)
        n_ops = len(m.operations)
        plan_t, fold_t, nofold_t, cpu_t = [], [], [], []
        for _ in range(args.repeats):
            t, _ = timed(plan_shrink, m, ratio=0.3)
            plan_t.append(t)
            t, _ = timed(shrink, m, ratio=0.3)
            fold_t.append(t)
            cpu_t.append(CPU[-1])
            t, _ = timed(shrink, m, ratio=0.3, fold_removed=False)
            nofold_t.append(t)
        p, f, nf = (statistics.median(v) for v in (plan_t, fold_t, nofold_t))
        lines.append(
            f"| {name} | {n_ops} | {m.count_params():,} | {p:.2f} | {f:.2f} | {nf:.2f} | "
            f"{1000 * f / n_ops:.1f} | {statistics.median(cpu_t):.2f} |"
        )
        print(lines[-1], flush=True)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
