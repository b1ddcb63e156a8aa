"""keras.applications coverage of acsl_tf.shrink.

For every model that builds with ``weights=None``: randomise BN statistics,
shrink at ``ratio=0.3`` (timed), check that the result builds, runs, keeps
the output shape and has strictly fewer params and FLOPs; then run the
zero-channel equivalence check (gamma = beta = 0 on the removed channels,
outputs must match within 1e-4 relative to the output scale).

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

from acsl_tf.pruning.profile import profile  # noqa: E402
from acsl_tf.pruning.shrink import plan_shrink, shrink  # noqa: E402

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


def zero_removed(model, plan):
    layers = {x.name: x for x in model._flatten_layers(include_self=False)}
    for unit, keep in plan.bn_keep.items():
        layer = layers[unit]
        ws = layer.get_weights()
        mask = np.ones(ws[0].shape[0], bool)
        mask[list(keep)] = False
        if not mask.any():
            continue
        if layer.scale:
            ws[0][mask] = 0.0  # gamma
            if layer.center:
                ws[1][mask] = 0.0  # beta
        else:
            # scale=False (InceptionV3, ...): no gamma to zero; make the channel
            # output ~0 with beta = mean = 0 and a huge variance.
            if layer.center:
                ws[0][mask] = 0.0
            ws[-2][mask] = 0.0
            ws[-1][mask] = 1e30
        layer.set_weights(ws)


def run_one(name, fn, size):
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
    plan = plan_shrink(m, ratio=0.3)
    row["plan_s"] = time.perf_counter() - t
    t = time.perf_counter()
    small = shrink(m, plan=plan)
    row["shrink_s"] = time.perf_counter() - t + row["plan_s"]
    p1 = profile(small)
    row.update(params_after=p1.total_params, flops_after=p1.total_flops)
    x = np.random.default_rng(1).standard_normal((2, size, size, 3)).astype(keras.config.floatx())
    y1 = np.asarray(small(x, training=False))
    row["shape_ok"] = y1.shape == tuple(np.asarray(m(x, training=False)).shape)
    # zero-channel equivalence
    zero_removed(m, plan)
    y0 = np.asarray(m(x, training=False))
    small2 = shrink(m, keep=dict(plan.bn_keep))
    y2 = np.asarray(small2(x, training=False))
    p2 = profile(small2)
    # folding may add biases (not in the analytic count); with gamma = beta = 0
    # nothing is folded, so the built model must match the plan exactly.
    row["analytic_ok"] = p2.total_params == plan.params_after and p2.total_flops == plan.flops_after
    err = float(np.abs(y0 - y2).max())
    row["max_err"] = err
    row["y_scale"] = float(np.abs(y0).max())
    row["equivalent"] = err <= 1e-4 * max(1.0, float(np.abs(y0).max()))
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
    if args.float64:
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
        "| model | px | params before | params after | FLOPs before | FLOPs after | "
        "output shape | analytic = built | equivalent (max err of max abs y) | shrink s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['size']} | FAILED: {r['error']} ||||||||")
            continue
        lines.append(
            f"| {r['model']} | {r['size']} | {r['params_before']:,} | {r['params_after']:,} | "
            f"{r['flops_before'] / 1e6:.1f}M | {r['flops_after'] / 1e6:.1f}M | "
            f"{'ok' if r['shape_ok'] else 'WRONG'} | {'yes' if r['analytic_ok'] else 'no'} | "
            f"{'yes' if r['equivalent'] else 'NO'} ({r['max_err']:.1e}"
            + (f" of {r['y_scale']:.1e}" if "y_scale" in r else "")
            + f") | {r['shrink_s']:.2f} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.out:
        from acsl_tf._io import atomic_write_text

        atomic_write_text(args.out, table + "\n")
    return 0 if all("error" not in r and r["equivalent"] and r["fewer"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
