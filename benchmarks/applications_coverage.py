"""keras.applications coverage of acsl_tf.shrink.

For every model that builds with ``weights=None``: randomise BN statistics,
plan ``ratio=0.3`` with the gamma criterion where BatchNormalization gammas
cover prunable groups, and with the ``l1`` weight criterion otherwise (VGG,
ConvNeXt's LayerNorm, InceptionV3's ``BatchNormalization(scale=False)``);
set gamma = beta = 0 on the removed channels of covered groups; shrink
(timed) and record: output shape, the plan's analytic counts against the
built model, and the deviation ``shrink`` measures against the original with
the removed channels silenced (exact within 1e-4 of the output scale, or the
approximations it reports).

Usage:
    python benchmarks/applications_coverage.py [--size 64] [--only ResNet50,VGG16]
        [--out table.md] [--float64]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from acsl_tf.graph import DependencyGraph  # noqa: E402
from acsl_tf.pruning import apply_plan, plan_shrink, profile  # noqa: E402

A = keras.applications
MODELS = [
    ("VGG16", A.VGG16, 64), ("VGG19", A.VGG19, 64),
    ("ResNet50", A.ResNet50, 64), ("ResNet101", A.ResNet101, 64), ("ResNet152", A.ResNet152, 64),
    ("ResNet50V2", A.ResNet50V2, 64), ("ResNet101V2", A.ResNet101V2, 64),
    ("ResNet152V2", A.ResNet152V2, 64),
    ("MobileNet", A.MobileNet, 64), ("MobileNetV2", A.MobileNetV2, 64),
    ("MobileNetV3Small", A.MobileNetV3Small, 64), ("MobileNetV3Large", A.MobileNetV3Large, 64),
    ("EfficientNetB0", A.EfficientNetB0, 64), ("EfficientNetB1", A.EfficientNetB1, 64),
    ("EfficientNetB2", A.EfficientNetB2, 64), ("EfficientNetB3", A.EfficientNetB3, 64),
    ("EfficientNetB4", A.EfficientNetB4, 64), ("EfficientNetB5", A.EfficientNetB5, 64),
    ("EfficientNetB6", A.EfficientNetB6, 64), ("EfficientNetB7", A.EfficientNetB7, 64),
    ("EfficientNetV2B0", A.EfficientNetV2B0, 64), ("EfficientNetV2B1", A.EfficientNetV2B1, 64),
    ("EfficientNetV2B2", A.EfficientNetV2B2, 64), ("EfficientNetV2B3", A.EfficientNetV2B3, 64),
    ("EfficientNetV2S", A.EfficientNetV2S, 64), ("EfficientNetV2M", A.EfficientNetV2M, 64),
    ("EfficientNetV2L", A.EfficientNetV2L, 64),
    ("DenseNet121", A.DenseNet121, 64), ("DenseNet169", A.DenseNet169, 64),
    ("DenseNet201", A.DenseNet201, 64),
    ("InceptionV3", A.InceptionV3, 96), ("InceptionResNetV2", A.InceptionResNetV2, 96),
    ("Xception", A.Xception, 96),
    ("NASNetMobile", A.NASNetMobile, 64),
    ("ConvNeXtTiny", A.ConvNeXtTiny, 64),
]  # fmt: skip
if hasattr(A, "RegNetX002"):
    MODELS += [("RegNetX002", A.RegNetX002, 64), ("RegNetY002", A.RegNetY002, 64)]


def randomize_bn(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.BatchNormalization):
            new = []
            for v in layer.weights:
                n = v.shape[0]
                nm = v.path.split("/")[-1]
                if "variance" in nm:
                    new.append(rng.uniform(0.5, 2.0, n))
                elif "gamma" in nm:
                    new.append(rng.uniform(0.5, 1.5, n))
                else:
                    new.append(rng.normal(0, 0.2, n))
            layer.set_weights([w.astype("float32") for w in new])


def zero_removed(plan):
    """gamma = beta = 0 on the removed channels of gamma-covered groups."""
    graph = plan._graph
    covered = {r for r, g in graph.groups.items() if g.covered}
    keep = {r: k for r, k in plan._keep.items() if r in covered}
    for unit in graph.units.values():
        f = graph.keep_features(unit.map, keep)
        if f is None:
            continue
        layer = unit.layer
        ws = layer.get_weights()
        mask = np.ones(ws[0].shape[0], bool)
        mask[f] = False
        ws[0][mask] = 0.0  # gamma
        if layer.center:
            ws[1][mask] = 0.0  # beta
        layer.set_weights(ws)


def run_one(name, fn, size, ratio=0.3):
    row = {"model": name, "size": size}
    keras.utils.clear_session()
    try:
        m = fn(weights=None, input_shape=(size, size, 3), classes=10, classifier_activation=None)
    except TypeError:
        m = fn(weights=None, input_shape=(size, size, 3), classes=10)
    randomize_bn(m)
    p0 = profile(m)
    row.update(params_before=p0.total_params, flops_before=p0.total_flops)
    t = time.perf_counter()
    graph = DependencyGraph(m)
    covered = sum(g.covered for g in graph.groups.values() if g.prunable)
    criterion = "gamma" if covered else "l1"
    plan = plan_shrink(m, ratio=ratio, criterion=criterion, graph=graph)
    row["plan_s"] = time.perf_counter() - t
    row["criterion"] = criterion
    row["groups"] = f"{sum(g.prunable for g in plan.groups)}/{len(plan.groups)}"
    zero_removed(plan)
    t = time.perf_counter()
    res = apply_plan(m, plan, verify="warn")
    row["shrink_s"] = time.perf_counter() - t + row["plan_s"]
    small = res.model
    p1 = profile(small)
    row.update(params_after=p1.total_params, flops_after=p1.total_flops)
    x = np.random.default_rng(1).standard_normal((2, size, size, 3)).astype(keras.config.floatx())
    y1 = np.asarray(small(x, training=False))
    row["shape_ok"] = y1.shape == tuple(np.asarray(m(x, training=False)).shape)
    row["analytic_ok"] = p1.total_params == plan.params_after and p1.total_flops == plan.flops_after
    row["max_err"] = res.max_abs_error
    row["rel_err"] = res.rel_error
    row["exact"] = res.exact
    row["approximations"] = list(res.approximations)
    row["equivalent"] = res.exact or bool(res.approximations)
    row["fewer"] = (
        row["params_after"] < row["params_before"] and row["flops_after"] < row["flops_before"]
    )
    return row


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="")
    ap.add_argument("--out", default="")
    ap.add_argument(
        "--float64",
        action="store_true",
        help="build in float64: separates round-off (amplified by deep random "
        "networks in float32) from real differences",
    )
    args = ap.parse_args(argv)
    if args.float64:  # noqa: SIM102
        keras.config.set_floatx("float64")
    only = set(filter(None, args.only.split(",")))
    rows = []
    for name, fn, size in MODELS:
        if only and name not in only:
            continue
        try:
            row = run_one(name, fn, size)
        except Exception as e:  # record and continue
            row = {"model": name, "size": size, "error": f"{type(e).__name__}: {str(e)[:200]}"}
            traceback.print_exc()
        rows.append(row)
        print(row, flush=True)
    lines = [
        "| model | px | criterion | prunable groups | params before | params after | "
        "FLOPs before | FLOPs after | analytic = built | exactness (relative deviation) | "
        "plan + shrink s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['size']} | FAILED: {r['error']} ||||||||")
            continue
        kind = "exact" if r["exact"] else "approximate, reported"
        lines.append(
            f"| {r['model']} | {r['size']} | {r['criterion']} | {r['groups']} | "
            f"{r['params_before']:,} | {r['params_after']:,} | "
            f"{r['flops_before'] / 1e6:.1f}M | {r['flops_after'] / 1e6:.1f}M | "
            f"{'yes' if r['analytic_ok'] else 'no'} | {kind} ({r['rel_err']:.1e}) | "
            f"{r['shrink_s']:.2f} |"
        )
    notes = sorted({n.split(":")[0] for r in rows for n in r.get("approximations", [])})
    if notes:
        lines.append("")
        lines.append(
            f"Approximations reported ({len(notes)} places), e.g.: " + "; ".join(notes[:6])
        )
    table = "\n".join(lines)
    print(table)
    if args.out:
        from acsl_tf._io import atomic_write_text

        atomic_write_text(args.out, table + "\n", overwrite=True)
    return 0 if all("error" not in r and r["equivalent"] and r["fewer"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
