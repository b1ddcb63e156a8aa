"""Is quantization-aware training worth it after aggressive channel pruning?

A small, CPU-sized experiment on Fashion-MNIST (``vgg_small(width=0.5)``,
a few thousand training images, a couple of epochs per stage), per seed:

1. train the unpruned model (float32);
2. ``acsl_tf.shrink(model, target_flops=...)`` (the gamma criterion, no
   sparsity training) and fine-tune the pruned model (float32);
3. **PTQ**: ``acsl_tf.export.to_tflite(..., quantization="int8")``, calibrated
   on 200 training images;
4. **PTQ after as many extra float epochs as QAT gets** (the fair control:
   QAT also trains longer);
5. **QAT**: ``acsl_tf.interop.quantize_aware`` for ``--qat-epochs`` epochs
   (tfmot default 8-bit scheme, activation ranges initialized from data);
6. **QAT without the range initialization** (tfmot's own [-6, 6] start).

Every int8 file is a full-integer model (int8 I/O, int8 builtin ops only); its
accuracy is measured with the LiteRT interpreter on the held-out test images.

Output: a markdown table on stdout and benchmarks/results/qat.md /
benchmarks/results/qat.json (written atomically).

Usage:
    .venv/bin/python benchmarks/qat.py                 # 1 seed, a few minutes on 2 cores
    .venv/bin/python benchmarks/qat.py --seeds 0 1 2   # more seeds
    .venv/bin/python benchmarks/qat.py --quick         # smoke run (tiny subset)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import acsl_tf  # noqa: E402
from acsl_tf import _io, export, interop  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")


def _loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _accuracy_keras(model, x, y):
    logits = model.predict(x, batch_size=256, verbose=0)
    return float((np.asarray(logits).argmax(-1) == y).mean())


def _accuracy_tflite(path, x, y):
    logits = export.run_tflite(path, x)[0]
    return float((logits.argmax(-1) == y).mean())


def _fit(model, x, y, epochs, lr, batch_size):
    model.compile(keras.optimizers.Adam(lr), _loss(), metrics=["accuracy"])
    model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0)
    # A few hundred steps leave the BN moving statistics behind the weights.
    acsl_tf.recalibrate_batchnorm(model, x[:2048], steps=16)


def _clone(model):
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def run_seed(seed, args, data, workdir):
    (x, y), (xt, yt) = data
    keras.utils.set_random_seed(seed)
    rows = []
    timings = {}

    def row(stage, float_acc, int8_acc, path=None, model=None, **extra):
        prof = acsl_tf.profile(model) if model is not None else None
        rows.append(
            {
                "seed": seed,
                "stage": stage,
                "float_accuracy": float_acc,
                "int8_accuracy": int8_acc,
                "int8_size_bytes": os.path.getsize(path) if path else None,
                "int8_latency_ms": (
                    acsl_tf.benchmark_tflite(path, threads=1, runs=50).median_ms if path else None
                ),
                "params": prof.total_params if prof else None,
                "mflops": prof.total_flops / 1e6 if prof else None,
                **extra,
            }
        )
        print(
            f"  seed {seed} | {stage:<42} float {float_acc if float_acc is None else f'{float_acc:.4f}'}"
            f" | int8 {int8_acc if int8_acc is None else f'{int8_acc:.4f}'}",
            flush=True,
        )

    t = time.perf_counter()
    base = acsl_tf.models.vgg_small((28, 28, 1), 10, width=args.width)
    _fit(base, x, y, args.epochs, 1e-3, args.batch_size)
    timings["train_unpruned_s"] = time.perf_counter() - t
    row("unpruned, float32", _accuracy_keras(base, xt, yt), None, model=base)

    t = time.perf_counter()
    pruned = acsl_tf.shrink(base, target_flops=args.target_flops)
    acsl_tf.recalibrate_batchnorm(pruned, x[:2048], steps=16)
    acc_shrunk = _accuracy_keras(pruned, xt, yt)
    _fit(pruned, x, y, args.epochs, 1e-3, args.batch_size)
    timings["finetune_pruned_s"] = time.perf_counter() - t
    row(
        f"pruned {args.target_flops:.0%} FLOPs, fine-tuned, float32",
        _accuracy_keras(pruned, xt, yt),
        None,
        model=pruned,
        after_shrink_accuracy=acc_shrunk,
    )

    calib = x[:200]
    ptq_path = os.path.join(workdir, f"ptq_{seed}.tflite")
    export.to_tflite(
        pruned, ptq_path, quantization="int8", representative_data=calib, overwrite=True
    )
    row(
        "PTQ int8",
        _accuracy_keras(pruned, xt, yt),
        _accuracy_tflite(ptq_path, xt, yt),
        ptq_path,
        pruned,
    )

    longer = _clone(pruned)
    t = time.perf_counter()
    _fit(longer, x, y, args.qat_epochs, args.qat_lr, args.batch_size)
    timings["float_extra_s"] = time.perf_counter() - t
    longer_path = os.path.join(workdir, f"ptq_longer_{seed}.tflite")
    export.to_tflite(
        longer, longer_path, quantization="int8", representative_data=calib, overwrite=True
    )
    row(
        f"+{args.qat_epochs} float epoch(s), then PTQ int8",
        _accuracy_keras(longer, xt, yt),
        _accuracy_tflite(longer_path, xt, yt),
        longer_path,
        longer,
    )

    for init in (True, False):
        path = os.path.join(workdir, f"qat_{seed}_{int(init)}.tflite")
        t = time.perf_counter()
        result = interop.quantize_aware(
            pruned,
            path,
            x,
            y,
            loss=_loss(),
            optimizer=keras.optimizers.Adam(args.qat_lr),
            epochs=args.qat_epochs,
            batch_size=args.batch_size,
            representative_data=calib,
            init_ranges=init,
            tolerance=1.0 if args.quick else None,  # a 1-epoch smoke model has ~0 logits
            verbose=0,
            overwrite=True,
        )
        timings[f"qat_init{int(init)}_s"] = time.perf_counter() - t
        qat_float = float(
            (result.model.predict(xt, batch_size=256, verbose=0).argmax(-1) == yt).mean()
        )
        row(
            f"QAT {args.qat_epochs} epoch(s){'' if init else ', no range init'}, int8",
            qat_float,
            _accuracy_tflite(path, xt, yt),
            path,
            pruned,
            parity_relative_error=result.report.relative_error,
            parity_output_steps=result.report.extra.get("max_abs_error_in_output_steps"),
        )
    return rows, timings


def _fmt(v, spec):
    return "" if v is None else format(v, spec)


def _notes(rs):
    notes = []
    after = [r["after_shrink_accuracy"] for r in rs if r.get("after_shrink_accuracy") is not None]
    if after:
        notes.append(f"right after shrink, before fine-tuning: {np.mean(after) * 100:.1f}")
    rel = [r["parity_relative_error"] for r in rs if r.get("parity_relative_error") is not None]
    if rel:
        steps = [r["parity_output_steps"] for r in rs if r.get("parity_output_steps") is not None]
        notes.append(
            f"file vs QAT model: relative error <= {max(rel):.3g}"
            + (f" (<= {max(steps):g} output steps)" if steps else "")
        )
    return "; ".join(notes)


def summarize(rows, args, meta):
    stages = list(dict.fromkeys(r["stage"] for r in rows))
    seeds = sorted({r["seed"] for r in rows})
    lines = [
        f"Fashion-MNIST, {args.train} training / {args.test} test images, "
        f"vgg_small(width={args.width}); {args.epochs} epochs unpruned + {args.epochs} "
        f"epochs after shrink(target_flops={args.target_flops}); QAT {args.qat_epochs} "
        f"epoch(s) at Adam({args.qat_lr}); seeds {seeds}. {meta}",
        "",
        "Accuracy in % on the test images. model acc.: the Keras model (QAT rows: the tfmot QAT "
        "model, int8 simulated in float); int8 acc.: the full-integer .tflite file.",
        "",
        "| stage | model acc. | int8 acc. | int8 - float | int8 KiB | int8 median ms | params | MFLOPs | notes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for stage in stages:
        rs = [r for r in rows if r["stage"] == stage]

        def mean(key, rs=rs):
            vals = [r[key] for r in rs if r[key] is not None]
            if not vals:
                return None
            return float(np.mean(vals))

        def cell(key, scale=100.0, rs=rs):
            vals = [r[key] * scale for r in rs if r[key] is not None]
            if not vals:
                return ""
            if len(vals) == 1:
                return f"{vals[0]:.1f}"
            return f"{np.mean(vals):.1f} ± {np.std(vals, ddof=1):.1f}"

        diffs = [
            (r["int8_accuracy"] - r["float_accuracy"]) * 100
            for r in rs
            if r["int8_accuracy"] is not None
        ]
        diff = "" if not diffs else f"{np.mean(diffs):+.1f}"
        size = mean("int8_size_bytes")
        lines.append(
            f"| {stage} | {cell('float_accuracy')} | {cell('int8_accuracy')} | {diff} | "
            f"{_fmt(None if size is None else size / 1024, '.0f')} | "
            f"{_fmt(mean('int8_latency_ms'), '.3f')} | {_fmt(mean('params'), ',.0f')} | "
            f"{_fmt(mean('mflops'), '.2f')} | {_notes(rs)} |"
        )
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--train", type=int, default=4000, help="training images")
    p.add_argument("--test", type=int, default=2000, help="test images")
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--epochs", type=int, default=2, help="epochs before and after shrink")
    p.add_argument("--target-flops", type=float, default=0.85)
    p.add_argument("--qat-epochs", type=int, default=1)
    p.add_argument("--qat-lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--tag", default="", help="suffix of the result files (qat_<tag>.md)")
    p.add_argument("--quick", action="store_true", help="tiny smoke run")
    p.add_argument("--no-write", action="store_true", help="do not write benchmarks/results")
    args = p.parse_args(argv)
    if args.quick:
        args.train, args.test, args.epochs, args.seeds = 512, 256, 1, args.seeds[:1]

    (x, y), (xt, yt) = acsl_tf.datasets.load_fashion_mnist(normalize=True)
    data = ((x[: args.train], y[: args.train].astype("int32")), (xt[: args.test], yt[: args.test]))
    all_rows, all_timings = [], {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="acsl_tf-qat-") as workdir:
        for seed in args.seeds:
            rows, timings = run_seed(seed, args, data, workdir)
            all_rows += rows
            all_timings[seed] = {k: round(v, 1) for k, v in timings.items()}
    meta = (
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, CPU "
        f"only; TF {__import__('tensorflow').__version__}, Keras {keras.__version__}; "
        f"total {time.perf_counter() - start:.0f} s."
    )
    table = summarize(all_rows, args, meta)
    print()
    print(table)
    if not args.no_write and not args.quick:
        os.makedirs(RESULTS, exist_ok=True)
        _io.atomic_write_text(
            os.path.join(RESULTS, f"qat{'_' + args.tag if args.tag else ''}.md"),
            table + "\n",
            overwrite=True,
        )
        _io.atomic_write_text(
            os.path.join(RESULTS, f"qat{'_' + args.tag if args.tag else ''}.json"),
            json.dumps(
                {"args": vars(args), "rows": all_rows, "timings_s": all_timings, "meta": meta},
                indent=2,
            )
            + "\n",
            overwrite=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
