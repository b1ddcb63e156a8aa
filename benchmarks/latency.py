"""Does channel pruning make TFLite models faster? Unstructured sparsity?

For a VGG-style and a ResNet-style CNN (64x64x3, a few hundred k parameters):

1. the unpruned model;
2. the same model shrunk by ``acsl_tf.shrink(model, target_flops=0.75)``
   (channels physically removed, about 4x fewer FLOPs), once with any channel
   count and once with ``round_to=8`` (counts rounded to multiples of 8, which
   SIMD kernels prefer);
3. the same architecture pruned by tensorflow-model-optimization
   ``prune_low_magnitude`` to 80% unstructured sparsity (tf_keras, in a
   subprocess: benchmarks/_tfmot_worker.py), exported as float32 TFLite, plain
   and with ``Optimize.EXPERIMENTAL_SPARSITY``.

Each variant is exported with :func:`acsl_tf.export.to_tflite` (float32 and
int8; parity checked) and timed against the unpruned model of the same format
with :func:`acsl_tf.compare_tflite` (1 thread, interleaved rounds, XNNPACK).
The speed-up is reported next to the FLOPs ratio; ``speed-up / FLOPs ratio``
says how much of the theoretical gain the runtime delivers.

The BN gammas of the random-weight models are drawn from a wide distribution
so that the gamma criterion has something to rank; latency does not depend on
the weight values.

Output: a markdown table on stdout, benchmarks/results/latency.md and
benchmarks/results/latency.json (written atomically).

Usage:
    .venv/bin/python benchmarks/latency.py            # ~5-10 min on 2 cores
    .venv/bin/python benchmarks/latency.py --quick    # fewer rounds, smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import acsl_tf  # noqa: E402
from acsl_tf import _io  # noqa: E402
from acsl_tf.export import to_tflite  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from _tfmot_worker import BUILDERS  # noqa: E402

RESULTS = os.path.join(HERE, "results")


def randomize_bn(model, seed=0):
    """Spread BN gammas (log-uniform 1e-3..1) and statistics, like a model after
    sparsity training; returns the model."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            gamma = 10 ** rng.uniform(-3, 0, c)
            layer.set_weights(
                [gamma, rng.normal(0, 0.05, c), rng.normal(0, 0.1, c), rng.uniform(0.5, 1.5, c)]
            )
    return model


def flops(model):
    return int(acsl_tf.profile(model).total_flops)


def hand_thin(arch, size):
    """Fallback when acsl_tf.shrink is unavailable: the same architecture at half width."""
    return BUILDERS[arch](keras, size, widths=tuple(w // 2 for w in (32, 64, 128)))


def machine():
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import ai_edge_litert
    import tensorflow as tf

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "ai_edge_litert": getattr(ai_edge_litert, "__version__", "unknown"),
    }


def run_tfmot(arch, size, sparsity, out_path):
    """Run the tf_keras/tfmot worker; returns its JSON record or {'error': ...}."""
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1")
    cmd = [
        sys.executable,
        os.path.join(HERE, "_tfmot_worker.py"),
        "--arch",
        arch,
        "--size",
        str(size),
        "--sparsity",
        str(sparsity),
        "--out",
        out_path,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or "").strip().splitlines()[-3:]
        return {"error": " | ".join(tail) or f"exit code {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description="TFLite latency: channel pruning vs sparsity.")
    parser.add_argument("--size", type=int, default=64, help="input height/width")
    parser.add_argument("--runs", type=int, default=50, help="invokes per model per round")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds")
    parser.add_argument("--target-flops", type=float, default=0.75)
    parser.add_argument("--sparsity", type=float, default=0.8)
    parser.add_argument("--archs", default="vgg,resnet")
    parser.add_argument("--no-tfmot", action="store_true", help="skip the tfmot subprocess")
    parser.add_argument("--quick", action="store_true", help="runs=10, rounds=3")
    parser.add_argument("--out-dir", default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.rounds = 10, 3
    os.makedirs(args.out_dir, exist_ok=True)
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    rep = rng.random((64, args.size, args.size, 3), dtype=np.float32)
    rows, notes = [], []
    tmp = tempfile.mkdtemp(prefix="acsl_tf-latency-")
    t_start = time.time()

    def compare(arch, fmt, variant, base_path, path, base_flops, var_flops, params, extra=None):
        cmp = acsl_tf.compare_tflite(base_path, path, threads=1, runs=args.runs, rounds=args.rounds)
        ratio = base_flops / var_flops
        row = {
            "model": arch,
            "format": fmt,
            "variant": variant,
            "params": int(params),
            "mflops": var_flops / 1e6,
            "flops_ratio": ratio,
            "size_kib": os.path.getsize(path) / 1024,
            "base_median_ms": cmp.a.median_ms,
            "median_ms": cmp.b.median_ms,
            "speedup": cmp.speedup,
            "speedup_per_flops_ratio": cmp.speedup / ratio,
            "min_ratio": cmp.min_ratio,
            "round_ratios": cmp.round_ratios,
        }
        row.update(extra or {})
        rows.append(row)
        print(
            f"  {arch:6s} {fmt:7s} {variant:28s} {cmp.b.median_ms:7.3f} ms vs "
            f"{cmp.a.median_ms:7.3f} ms  speed-up {cmp.speedup:5.2f}x  FLOPs ratio {ratio:5.2f}x",
            flush=True,
        )

    for arch in args.archs.split(","):
        base = randomize_bn(BUILDERS[arch](keras, args.size), seed=1)
        base_flops = flops(base)
        if hasattr(acsl_tf, "shrink"):
            shrunk = {}
            for round_to in (1, 8):
                how = f"acsl_tf.shrink(target_flops={args.target_flops}, round_to={round_to})"
                shrunk[how] = acsl_tf.shrink(
                    base, target_flops=args.target_flops, round_to=round_to
                )
        else:
            how = "hand-thinned (half width)"
            shrunk = {how: randomize_bn(hand_thin(arch, args.size), seed=2)}
            notes.append(f"{arch}: acsl_tf.shrink unavailable, used a half-width model.")
        paths = {}
        for fmt, q in (("float32", "none"), ("int8", "int8")):
            p = os.path.join(tmp, f"{arch}_base_{q}.tflite")
            to_tflite(base, p, quantization=q, representative_data=rep, overwrite=True)
            paths["base", fmt] = p
            rows.append(
                {
                    "model": arch,
                    "format": fmt,
                    "variant": "unpruned",
                    "params": int(base.count_params()),
                    "mflops": base_flops / 1e6,
                    "flops_ratio": 1.0,
                    "size_kib": os.path.getsize(p) / 1024,
                    "base_median_ms": None,
                    "median_ms": acsl_tf.benchmark_tflite(
                        p, threads=1, runs=args.runs * 2
                    ).median_ms,
                    "speedup": 1.0,
                    "speedup_per_flops_ratio": 1.0,
                }
            )
            for k, (how, small) in enumerate(shrunk.items()):
                p = os.path.join(tmp, f"{arch}_shrunk{k}_{q}.tflite")
                to_tflite(small, p, quantization=q, representative_data=rep, overwrite=True)
                widths = [
                    layer.filters
                    for layer in small.layers
                    if isinstance(layer, keras.layers.Conv2D)
                ]
                compare(
                    arch,
                    fmt,
                    how,
                    paths["base", fmt],
                    p,
                    base_flops,
                    flops(small),
                    small.count_params(),
                    {"conv_filters": widths},
                )
        if args.no_tfmot:
            continue
        out = os.path.join(tmp, f"{arch}_tfmot.tflite")
        rec = run_tfmot(arch, args.size, args.sparsity, out)
        if "error" in rec:
            notes.append(f"{arch}: tfmot worker failed: {rec['error']}")
            continue
        for variant, p in (
            (f"tfmot {args.sparsity:.0%} unstructured", rec["path"]),
            (f"tfmot {args.sparsity:.0%} + EXPERIMENTAL_SPARSITY", rec["sparse_path"]),
        ):
            # Unstructured zeros do not change the dense FLOP count.
            compare(
                arch,
                "float32",
                variant,
                paths["base", "float32"],
                p,
                base_flops,
                base_flops,
                rec["params"],
                {"kernel_sparsity": rec["kernel_sparsity"]},
            )

    info = machine()
    lines = [
        "| model | format | variant | params | MFLOPs | FLOPs ratio | size KiB | median ms | "
        "unpruned median ms | speed-up | speed-up / FLOPs ratio | ratio of min latencies |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        base_ms = "" if r["base_median_ms"] is None else f"{r['base_median_ms']:.3f}"
        min_ratio = f"{r['min_ratio']:.2f}x" if "min_ratio" in r else ""
        variant = r["variant"]
        if "kernel_sparsity" in r:
            variant += f" (measured {r['kernel_sparsity']:.1%} zeros)"
        lines.append(
            f"| {r['model']} | {r['format']} | {variant} | {r['params']:,} | {r['mflops']:.1f} | "
            f"{r['flops_ratio']:.2f}x | {r['size_kib']:.0f} | {r['median_ms']:.3f} | {base_ms} | "
            f"{r['speedup']:.2f}x | {r['speedup_per_flops_ratio']:.2f} | {min_ratio} |"
        )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    header = (
        f"Machine: {info['cpu']}, {info['cores']} cores, CPU only; TF {info['tensorflow']}, "
        f"Keras {info['keras']}, ai-edge-litert {info['ai_edge_litert']}. "
        f"{args.size}x{args.size}x3 input, batch 1, 1 thread (XNNPACK), "
        f"{args.rounds} interleaved rounds x {args.runs} invokes per model; "
        "speed-up = median over rounds of (unpruned median / variant median); "
        f"1-minute load average at the end: {load:.1f}."
    )
    table = "\n".join(lines)
    md = "# TFLite latency: channel pruning vs unstructured sparsity\n\n" + header + "\n\n" + table
    if notes:
        md += "\n\nNotes:\n" + "\n".join(f"- {n}" for n in notes)
    md += "\n"
    print()
    print(md)
    _io.atomic_write_text(os.path.join(args.out_dir, "latency.md"), md, overwrite=True)
    record = {
        "machine": info,
        "settings": vars(args),
        "rows": rows,
        "notes": notes,
        "load_average_1min": load,
        "seconds": round(time.time() - t_start, 1),
    }
    _io.atomic_write_text(
        os.path.join(args.out_dir, "latency.json"), json.dumps(record, indent=2), overwrite=True
    )
    return record


if __name__ == "__main__":
    main()
