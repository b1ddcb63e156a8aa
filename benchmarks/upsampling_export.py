"""Latency of a U-Net exported with and without the nearest-upsampling lowering.

``acsl_tf.export.to_tflite(..., lower_upsampling=True)`` (the default) traces
nearest ``UpSampling2D`` layers as concatenations and a reshape, which the
XNNPACK delegate takes, instead of Keras' repeat (``EXPAND_DIMS``, ``TILE``,
``SHAPE``, ``STRIDED_SLICE``, ``CONCATENATION``, ``RESHAPE``), which it does
not take. This script exports ``acsl_tf.models.unet`` (random weights,
BatchNorm statistics spread as in ``benchmarks/int8_speed.py``) in float32
and int8 (int8 I/O) both ways and reports, per artifact:

- the operators, the number of XNNPACK partitions and the operators left to
  the reference kernels (``acsl_tf.export.inspect_delegation``);
- the relative parity error against Keras (``to_tflite``'s check) and the
  largest difference between the two artifacts' outputs (0 expected: the
  lowering is exact);
- the latency of one ``invoke()`` (batch 1, 1 interpreter thread, XNNPACK).

A second part times one ``UpSampling2D(2)`` between two 1x1 convolutions
(``--layer-shapes``, ``HxC`` of the upsampled input) the same way, to show
the per-layer saving without the rest of a network around it.

**Timing.** The four interpreters live in one process. Each round times
``--runs`` invokes of every artifact, the order reversed every other round;
the clock is the thread's CPU time (``time.thread_time``: with 1 thread the
whole invoke runs on the calling thread, and on a loaded machine the wall
clock also counts waiting for a core). Per round the median of each artifact
is taken; the table gives the median over rounds, and the speed-up is the
median over rounds of ``median(off) / median(on)``.

Results: benchmarks/results/upsampling_export.md.

Usage:
    .venv/bin/python benchmarks/upsampling_export.py              # ~1-2 min
    .venv/bin/python benchmarks/upsampling_export.py --size 64 --rounds 4 --runs 5
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
sys.path.insert(0, HERE)

FORMATS = ("float32", "int8")
MODES = {"off": False, "on": True}


def build_unet(size: int, width: float):
    """``acsl_tf.models.unet((size, size, 3), 11, width=width)`` with spread BN statistics."""
    from int8_speed import randomize_bn

    import acsl_tf

    return randomize_bn(acsl_tf.models.unet((size, size, 3), 11, width=width), seed=1)


def export_variants(model, rep, tmp) -> dict:
    """``{(format, mode): {"content", "report", "delegation"}}`` for the 4 artifacts."""
    from acsl_tf.export import inspect_delegation, to_tflite

    out = {}
    for fmt in FORMATS:
        for mode, lower in MODES.items():
            path = os.path.join(tmp, f"{fmt}_{mode}.tflite")
            report = to_tflite(
                model,
                path,
                quantization="int8" if fmt == "int8" else "none",
                representative_data=rep,
                num_calibration_samples=len(rep),
                num_verify_samples=8,
                check_batchnorm=False,
                # random weights quantize poorly; the subject is speed, and the
                # off/on outputs are compared exactly below
                tolerance=1.0 if fmt == "int8" else None,
                lower_upsampling=lower,
            )
            with open(path, "rb") as f:
                content = f.read()
            out[(fmt, mode)] = {
                "content": content,
                "report": report,
                "delegation": inspect_delegation(content),
            }
    return out


def output_differences(variants, x) -> dict:
    """Per format, ``max |y_on - y_off|`` of the artifacts on ``x`` (dequantized)."""
    from acsl_tf.export import run_tflite

    diffs = {}
    for fmt in FORMATS:
        off = run_tflite(variants[(fmt, "off")]["content"], x)
        on = run_tflite(variants[(fmt, "on")]["content"], x)
        diffs[fmt] = max(float(np.max(np.abs(a - b))) for a, b in zip(off, on))
    return diffs


def time_variants(variants, *, rounds: int, runs: int) -> dict:
    """``{(format, mode): {"cpu": [per-round medians], "wall": [...]}}`` (seconds)."""
    from int8_speed import Runner, interleaved

    runners = {key: Runner(v["content"]) for key, v in variants.items()}
    return interleaved(runners, rounds=rounds, runs=runs, warmup=5)


def layer_model(side: int, channels: int):
    """Conv1x1 -> ``UpSampling2D(2)`` -> Conv1x1 on a ``side x side x channels`` input."""
    import keras

    x = keras.Input((side, side, channels))
    y = keras.layers.Conv2D(channels, 1, name="before")(x)
    y = keras.layers.UpSampling2D(2, name="up")(y)
    y = keras.layers.Conv2D(channels, 1, name="after")(y)
    return keras.Model(x, y, name=f"up_{side}x{channels}")


def layer_part(shapes, *, rounds: int, runs: int, tmp) -> list[dict]:
    """Per ``(side, channels)`` and format: median latency off/on (us) and the speed-up."""
    rows = []
    for side, channels in shapes:
        model = layer_model(side, channels)
        rng = np.random.default_rng(0)
        rep = rng.random((16, side, side, channels), dtype=np.float32)
        variants = export_variants(model, rep, tmp)
        timings = time_variants(variants, rounds=rounds, runs=runs)
        for fmt in FORMATS:
            off = np.asarray(timings[(fmt, "off")]["cpu"])
            on = np.asarray(timings[(fmt, "on")]["cpu"])
            rows.append(
                {
                    "shape": f"{side}x{side}x{channels}",
                    "format": fmt,
                    "off_us": float(np.median(off) * 1e6),
                    "on_us": float(np.median(on) * 1e6),
                    "saved_us": float(np.median(off - on) * 1e6),
                    "speedup": float(np.median(off / on)),
                    "partitions": [variants[(fmt, m)]["delegation"]["partitions"] for m in MODES],
                }
            )
            print(rows[-1], flush=True)
    return rows


def summarize(variants, timings, diffs) -> list[dict]:
    rows = []
    for fmt in FORMATS:
        off = np.asarray(timings[(fmt, "off")]["cpu"])
        for mode in MODES:
            v = variants[(fmt, mode)]
            cpu = np.asarray(timings[(fmt, mode)]["cpu"])
            wall = np.asarray(timings[(fmt, mode)]["wall"])
            ratios = off / cpu
            rows.append(
                {
                    "format": fmt,
                    "lower_upsampling": mode,
                    "ops": v["report"].op_counts,
                    "partitions": v["delegation"]["partitions"],
                    "not_delegated": v["delegation"]["not_delegated"],
                    "relative_error": float(v["report"].relative_error),
                    "lowered_layers": v["report"].extra.get("upsampling_lowered", []),
                    "size_bytes": int(v["report"].size_bytes),
                    "cpu_ms_median": float(np.median(cpu) * 1e3),
                    "cpu_ms_min_round": float(cpu.min() * 1e3),
                    "wall_ms_median": float(np.median(wall) * 1e3),
                    "speedup_vs_off": float(np.median(ratios)),
                    "saved_ms": float(np.median(off - cpu) * 1e3),
                    "speedup_range": [float(ratios.min()), float(ratios.max())],
                    "max_output_diff_on_vs_off": diffs[fmt],
                }
            )
    return rows


def render(record) -> str:
    s = record["settings"]
    m = record["machine"]
    lines = [
        "# Nearest `UpSampling2D` in TFLite: Keras' repeat vs the concatenation lowering",
        "",
        "Generated by `benchmarks/upsampling_export.py`. Model: `acsl_tf.models.unet("
        f"({s['size']}, {s['size']}, 3), 11, width={s['width']})` (4 nearest "
        "`UpSampling2D(2)`), random weights, spread BatchNorm statistics. "
        "Exported with `acsl_tf.export.to_tflite(..., lower_upsampling=False/True)`; "
        "int8 is full-integer with int8 I/O, calibrated on "
        f"{s['calibration']} uniform random inputs.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores; TF {m['tensorflow']}, Keras "
        f"{m['keras']}, ai-edge-litert {m['ai_edge_litert']}. Batch 1, 1 interpreter "
        f"thread, XNNPACK; {s['rounds']} interleaved rounds x {s['runs']} invokes per "
        "artifact; thread CPU time. Latency: median over rounds of the per-round "
        "median. Speed-up: median over rounds of off/on (range over rounds). "
        f"1-minute load average at the end: {record['load_average']:.1f}.",
        "",
        "| format | lowering | XNNPACK partitions | ops not delegated | latency (ms) "
        "| speed-up | saved (ms) | max \\|on - off\\| | parity (rel. error vs Keras) |",
        "|---|---|---:|---|---:|---|---:|---:|---:|",
    ]
    for r in record["rows"]:
        left = ", ".join(f"{k} x{v}" for k, v in r["not_delegated"].items()) or "none"
        if r["lower_upsampling"] == "on":
            lo, hi = r["speedup_range"]
            speed = f"{r['speedup_vs_off']:.2f}x ({lo:.2f}-{hi:.2f})"
            saved = f"{r['saved_ms']:.3f}"
        else:
            speed, saved = "1 (baseline)", "-"
        lines.append(
            f"| {r['format']} | {r['lower_upsampling']} | {r['partitions']} | {left} "
            f"| {r['cpu_ms_median']:.3f} | {speed} | {saved} "
            f"| {r['max_output_diff_on_vs_off']:.3g} "
            f"| {r['relative_error']:.3g} |"
        )
    lines += ["", "Operators of each artifact:", ""]
    for r in record["rows"]:
        ops = ", ".join(f"{k} x{v}" for k, v in r["ops"].items())
        lines.append(f"- {r['format']}, lowering {r['lower_upsampling']}: {ops}")
    if record.get("layers"):
        lines += [
            "",
            "One `UpSampling2D(2)` between two 1x1 convolutions (input `HxWxC` of the "
            "upsampling), same timing; partitions off -> on:",
            "",
            "| input | format | off (us) | on (us) | saved (us) | speed-up | partitions |",
            "|---|---|---:|---:|---:|---:|---|",
        ]
        for r in record["layers"]:
            p_off, p_on = r["partitions"]
            lines.append(
                f"| {r['shape']} | {r['format']} | {r['off_us']:.1f} | {r['on_us']:.1f} "
                f"| {r['saved_us']:.1f} | {r['speedup']:.2f}x | {p_off} -> {p_on} |"
            )
    lines.append("")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=128, help="input side (pixels)")
    parser.add_argument("--width", type=float, default=0.25, help="unet width multiplier")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--calibration", type=int, default=32, help="int8 calibration inputs")
    parser.add_argument(
        "--layer-shapes",
        default="16x64,32x32,64x16",
        help="comma-separated SIDExCHANNELS of the single-layer part; '' to skip it",
    )
    parser.add_argument("--out", default=os.path.join(RESULTS, "upsampling_export.md"))
    args = parser.parse_args(argv)

    from latency import machine

    from acsl_tf import _io

    model = build_unet(args.size, args.width)
    rng = np.random.default_rng(0)
    rep = rng.random((args.calibration, args.size, args.size, 3), dtype=np.float32)
    t0 = time.time()
    shapes = [
        tuple(int(v) for v in item.split("x")) for item in args.layer_shapes.split(",") if item
    ]
    with tempfile.TemporaryDirectory() as tmp:
        variants = export_variants(model, rep, tmp)
        print(f"exported 4 artifacts in {time.time() - t0:.0f} s", flush=True)
        diffs = output_differences(variants, rep[:8])
        timings = time_variants(variants, rounds=args.rounds, runs=args.runs)
        layers = layer_part(shapes, rounds=args.rounds, runs=args.runs * 2, tmp=tmp)
    record = {
        "settings": {
            k: getattr(args, k) for k in ("size", "width", "rounds", "runs", "calibration")
        },
        "machine": machine(),
        "load_average": os.getloadavg()[0],
        "rows": summarize(variants, timings, diffs),
        "layers": layers,
    }
    text = render(record)
    _io.atomic_write_text(args.out, text, overwrite=True)
    print(text)
    print(json.dumps(record["rows"], indent=1))


if __name__ == "__main__":
    main()
