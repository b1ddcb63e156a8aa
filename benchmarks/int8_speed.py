"""Why does channel pruning speed int8 TFLite models up less than float32 ones?

The speed-up of a pruned model over the unpruned one is compared with its MACs
ratio (``MACs(unpruned) / MACs(pruned)``, the speed-up a runtime whose time is
proportional to MACs would give). ``speed-up / MACs ratio`` is the share of
the theoretical gain that the runtime delivers (1.0 is the physical limit).

Parts (all with the LiteRT interpreter, 1 thread, batch 1):

1. **Kernel steps.** A single 3x3 convolution at 64x64, int8 and float32,
   sweeping the output channels (input 32) and the input channels (output
   32). Its time is flat within blocks of channels: the kernels pad the
   channel counts to their tile sizes. The largest block size that explains
   the sweep (:func:`plateau_step`) is reported per format and side.
2. **Pruned models.** Each model (128x128x3 by default) is pruned by
   ``acsl_tf.shrink(target_flops=t, round_to=r)`` for every target and
   ``round_to``, exported with ``acsl_tf.export.to_tflite`` (int8 for every
   variant, float32 for the ``--float-round-to`` ones) and timed against the
   unpruned model of the same format, all variants interleaved. Next to the
   MACs ratio the table gives the *tile MACs ratio*: MACs counted from the
   TFLite file with the channel counts rounded up to the steps of part 1
   (:func:`tile_macs`), the gain the padded kernels can deliver.
3. **Runtime and converter options** on one model: XNNPACK off (the builtin
   kernels), per-tensor instead of per-channel weights, float32 input/output,
   and a trace without acsl_tf's oneDNN workaround (no STRIDED_SLICE ops).
4. **Breakdown** (``--breakdown``, comma-separated models): every Conv2D /
   DepthwiseConv2D / Dense is timed alone (a one-layer model of the same
   shapes, less the time of an empty invoke) next to the whole model; the sum
   gives the share of time in those layers and the speed-up of the layers
   alone versus the rest.

**Timing.** Every measurement is a ratio taken side by side in one process:
each round times ``--runs`` invokes of every model of a group, the order
reversed every other round; per round the median of each model, the ratio to
the unpruned model's median, and the median of those ratios over
``--rounds``. The clock is the thread's CPU time
(``time.thread_time``): with 1 interpreter thread the whole invoke runs on
the calling thread (XNNPACK gets no thread pool), and on a loaded machine
the wall clock also counts the time the thread waits for a core, which
inflates long invokes more than short ones (the wall-clock speed-up is
reported too).

Models: ``acsl_tf.models`` vgg_small, unet (width 0.25), cifar_resnet(20),
vgg16_decoder (width 0.25, linear output), and ``keras.applications``
MobileNetV2 and ResNet50 with random weights. BatchNorm gammas are spread log-uniformly (as
after sparsity training) so that the gamma criterion has something to rank;
latency does not depend on weight values. Targets that ``round_to`` makes
unreachable are listed as such.

Results: benchmarks/results/int8_speed.md and int8_speed.json, written
atomically. Each model's measurements are kept in ``--work-dir`` as they
finish, so an interrupted run resumes where it stopped (``--fresh`` starts
over).

Usage:
    .venv/bin/python benchmarks/int8_speed.py            # ~35 min on 2 loaded cores
    .venv/bin/python benchmarks/int8_speed.py --quick    # smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
WORK = os.path.join(os.path.dirname(HERE), ".bench_work", "int8_speed")

MAC_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
SWEEP = (8, 9, 12, 16, 17, 20, 24, 25, 28, 32, 33, 40, 48)
AIM = 0.7  # the aim: int8 speed-up >= AIM x MACs ratio


# ---------------------------------------------------------------------------
# Pure helpers (tested in tests/test_int8_speed.py)
# ---------------------------------------------------------------------------


def round_up(n: int, step: int) -> int:
    """``n`` rounded up to a multiple of ``step`` (``step`` >= 1)."""
    if step < 1:
        raise ValueError(f"`step` must be >= 1. Received: step={step!r}")
    return -(-int(n) // int(step)) * int(step)


def tile_macs(info: dict, cin_step: int = 1, cout_step: int = 1) -> int:
    """MACs of the CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED ops of a
    TFLite model, with input channels rounded up to ``cin_step`` and output
    channels to ``cout_step`` (steps of 1: the plain MACs).

    ``info`` is what :func:`acsl_tf.export.inspect_tflite` returns (only
    ``op_details`` and the ``shape`` of ``tensors`` are read). Weight layouts
    are TFLite's: CONV_2D ``[cout, kh, kw, cin]``, DEPTHWISE_CONV_2D
    ``[1, kh, kw, channels]`` (its channels count as output channels),
    FULLY_CONNECTED ``[cout, cin]``.
    """
    tensors = info["tensors"]
    total = 0
    for op in info["op_details"]:
        name = op["op"]
        if name not in MAC_OPS:
            continue
        w = tensors[op["inputs"][1]]["shape"]
        out = tensors[op["outputs"][0]]["shape"]
        if name == "CONV_2D":
            cout, kh, kw, cin = w
            total += (
                int(np.prod(out[1:-1]))
                * kh
                * kw
                * round_up(cout, cout_step)
                * round_up(cin, cin_step)
            )
        elif name == "DEPTHWISE_CONV_2D":
            _, kh, kw, c = w
            total += int(np.prod(out[1:-1])) * kh * kw * round_up(c, cout_step)
        else:
            cout, cin = w
            rows = int(np.prod(out[:-1]))
            total += rows * round_up(cout, cout_step) * round_up(cin, cin_step)
    return int(total)


def plateau_step(channels, times, *, tol: float = 0.1, candidates=(32, 16, 8, 4, 2)) -> int:
    """The largest block size ``s`` such that channel counts in the same block
    (equal ``ceil(c / s)``) take the same time within ``tol`` (relative to the
    block's fastest), and at least one block holds two measured counts.

    A kernel that pads channels to multiples of ``s`` shows such plateaus;
    1 means no padding is visible.
    """
    channels = [int(c) for c in channels]
    times = [float(t) for t in times]
    if len(channels) != len(times):
        raise ValueError(
            f"`channels` and `times` differ in length. Received: {len(channels)} and {len(times)}"
        )
    for s in candidates:
        blocks: dict = {}
        for c, t in zip(channels, times):
            blocks.setdefault(-(-c // s), []).append(t)
        shared = [b for b in blocks.values() if len(b) > 1]
        if shared and all(max(b) <= min(b) * (1 + tol) for b in shared):
            return int(s)
    return 1


def round_ratios(base_rounds, variant_rounds) -> np.ndarray:
    """Per-round ``base / variant`` (how many times faster the variant is)."""
    a = np.asarray(base_rounds, dtype=np.float64)
    b = np.asarray(variant_rounds, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or not a.size:
        raise ValueError(
            "Per-round times must be two 1-D arrays of one length. "
            f"Received: shapes {a.shape} and {b.shape}"
        )
    if np.any(b <= 0) or np.any(a <= 0):
        raise ValueError("Per-round times must be positive.")
    return a / b


def speedup_stats(base_rounds, variant_rounds) -> dict:
    """Median and quartiles over rounds of the per-round speed-up."""
    r = round_ratios(base_rounds, variant_rounds)
    q1, med, q3 = np.percentile(r, [25, 50, 75])
    return {"median": float(med), "q1": float(q1), "q3": float(q3), "rounds": int(r.size)}


def efficiency(speedup: float, macs_ratio: float) -> float:
    """``speedup / macs_ratio``: the share of the MACs gain delivered."""
    if not macs_ratio > 0:
        raise ValueError(f"`macs_ratio` must be positive. Received: {macs_ratio!r}")
    return float(speedup) / float(macs_ratio)


def aim_summary(effs, aim: float = AIM) -> dict:
    """How many of ``effs`` (speed-up / MACs ratio) reach ``aim``; min/median."""
    e = np.asarray([x for x in effs if x is not None and math.isfinite(x)], dtype=np.float64)
    if not e.size:
        return {
            "n": 0,
            "reached": 0,
            "min": float("nan"),
            "median": float("nan"),
            "max": float("nan"),
        }
    return {
        "n": int(e.size),
        "reached": int((e >= aim).sum()),
        "min": float(e.min()),
        "median": float(np.median(e)),
        "max": float(e.max()),
    }


def unreachable_note(message: str) -> str:
    """A short note from the ValueError of an unreachable ``target_flops``."""
    m = re.search(r"reduces it by ([0-9]+(?:\.[0-9]+)?)", message)
    if m:
        return f"unreachable (at most {float(m.group(1)):.1%} of the FLOPs can be removed)"
    return "unreachable (" + message.split(". ")[0] + ")"


def markdown_table(headers, rows) -> str:
    """A GitHub markdown table; numbers right-aligned."""
    for r in rows:
        if len(r) != len(headers):
            raise ValueError(f"Row has {len(r)} cells for {len(headers)} headers: {r!r}")
    lines = ["| " + " | ".join(headers) + " |"]
    align = []
    for k in range(len(headers)):
        col = [r[k] for r in rows]
        filled = [v for v in col if v != ""]
        numeric = bool(filled) and sum(map(_looks_numeric, filled)) > len(filled) / 2
        align.append("---:" if numeric else "---")
    lines.append("|" + "|".join(align) + "|")
    for r in rows:
        lines.append("| " + " | ".join(str(v) for v in r) + " |")
    return "\n".join(lines)


def _looks_numeric(v) -> bool:
    s = str(v).rstrip("x%").replace(",", "").strip()
    try:
        float(s)
    except ValueError:
        return False
    return True


def _f(x, fmt="{:.2f}"):
    return "" if x is None or (isinstance(x, float) and not math.isfinite(x)) else fmt.format(x)


# ---------------------------------------------------------------------------
# Models, conversion, timing
# ---------------------------------------------------------------------------


def build_model(name: str, size: int):
    import keras

    import acsl_tf

    shape = (size, size, 3)
    builders = {
        "vgg_small": lambda: acsl_tf.models.vgg_small(shape, 10),
        "unet": lambda: acsl_tf.models.unet(shape, 11, width=0.25),
        "resnet20": lambda: acsl_tf.models.cifar_resnet(20, 10, shape),
        # linear output: with random weights the ReLU density map is all zeros on the
        # calibration data, its int8 scale becomes ~1e-8, and XNNPACK refuses the
        # resulting requantization scale (> 256) when it creates its runtime
        "vgg16_decoder": lambda: acsl_tf.models.vgg16_decoder(
            shape, width=0.25, output_activation="linear"
        ),
        "mobilenet_v2": lambda: keras.applications.MobileNetV2(shape, weights=None),
        "resnet50": lambda: keras.applications.ResNet50(input_shape=shape, weights=None),
    }
    if name not in builders:
        raise ValueError(f"Unknown model {name!r}. Choose from {sorted(builders)}.")
    return randomize_bn(builders[name](), seed=1)


MODEL_NAMES = ("vgg_small", "unet", "resnet20", "vgg16_decoder", "mobilenet_v2", "resnet50")


def randomize_bn(model, seed=0):
    """Spread BN gammas log-uniformly (1e-3..1), like a model after sparsity
    training, and give the statistics some spread; returns the model."""
    import keras

    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.moving_mean.shape[0]
            values = []
            if layer.scale:
                values.append(10 ** rng.uniform(-3, 0, c))
            if layer.center:
                values.append(rng.normal(0, 0.05, c))
            values += [rng.normal(0, 0.1, c), rng.uniform(0.5, 1.5, c)]
            layer.set_weights(values)
    return model


@contextlib.contextmanager
def without_onednn_workaround():
    """Trace with Keras' own convolution: ``import acsl_tf`` computes strided
    1x1 convolutions as a strided slice + stride-1 convolution (acsl_tf.onednn),
    which a trace carries into the TFLite graph as STRIDED_SLICE ops."""
    from acsl_tf import onednn

    installed = onednn.workaround_installed()
    if installed:
        onednn.uninstall_workaround()
    try:
        yield installed
    finally:
        if installed:
            onednn.install_workaround()


def convert_fast(
    model, quantization: str, rep, *, per_tensor=False, int8_io=True, plain_conv=False
) -> bytes:
    """Convert a small Keras model from a frozen concrete function (no
    SavedModel on disk: much faster than ``to_tflite`` for the one-layer models
    of parts 1 and 4, same converter settings). ``plain_conv``: trace without
    acsl_tf's oneDNN workaround (:func:`without_onednn_workaround`)."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    spec = tf.TensorSpec((1,) + tuple(model.input_shape[1:]), tf.float32)
    with without_onednn_workaround() if plain_conv else contextlib.nullcontext():
        fn = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [convert_variables_to_constants_v2(fn)]
    )
    if quantization == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([rep[k : k + 1]] for k in range(len(rep)))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
        if per_tensor:
            converter._experimental_disable_per_channel = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return converter.convert()


def export(model, quantization, rep, tmp) -> tuple[bytes, float]:
    """``to_tflite`` (parity checked with a loose tolerance: random-weight
    models quantize poorly, and speed is the subject); returns the bytes and the
    relative error."""
    from acsl_tf.export import to_tflite

    path = os.path.join(tmp, "model.tflite")
    report = to_tflite(
        model,
        path,
        quantization="int8" if quantization == "int8" else "none",
        representative_data=rep,
        num_calibration_samples=len(rep),
        num_verify_samples=4,
        check_batchnorm=False,
        tolerance=1.0,
        overwrite=True,
    )
    with open(path, "rb") as f:
        return f.read(), float(report.relative_error)


class Runner:
    """An allocated 1-thread interpreter with fixed random inputs; a call times
    ``n`` invokes and returns (wall seconds, thread CPU seconds) arrays."""

    def __init__(self, content: bytes, *, xnnpack: bool = True):
        from ai_edge_litert import interpreter as lite

        kwargs = {"model_content": content, "num_threads": 1}
        if not xnnpack:
            kwargs["experimental_op_resolver_type"] = (
                lite.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
            )
        it = lite.Interpreter(**kwargs)
        for d in it.get_input_details():
            shape = [1 if s < 0 else int(s) for s in d.get("shape_signature", d["shape"])]
            if list(d["shape"]) != shape:
                it.resize_tensor_input(d["index"], shape)
        it.allocate_tensors()
        rng = np.random.default_rng(0)
        for d in it.get_input_details():
            dtype = np.dtype(d["dtype"])
            if np.issubdtype(dtype, np.integer):
                x = rng.integers(-128, 128, size=d["shape"]).astype(dtype)
            else:
                x = rng.random(d["shape"]).astype(dtype)
            it.set_tensor(d["index"], x)
        self.interpreter = it
        ops = [o["op_name"] for o in it._get_ops_details()]
        # delegated subgraphs, and the ops the delegate left to the builtin kernels
        self.partitions = ops.count("DELEGATE")
        self.op_names = ops

    def __call__(self, n):
        invoke = self.interpreter.invoke
        wall_clock, cpu_clock = time.perf_counter, time.thread_time
        wall, cpu = np.empty(n), np.empty(n)
        for k in range(n):
            w0, c0 = wall_clock(), cpu_clock()
            invoke()
            cpu[k] = cpu_clock() - c0
            wall[k] = wall_clock() - w0
        return wall, cpu


def interleaved(runners: dict, *, rounds: int, runs: int, warmup: int = 3) -> dict:
    """``{name: {"cpu": [per-round medians], "wall": [...]}}``; every round
    runs each model ``runs`` times, the order reversed every other round."""
    for r in runners.values():
        r(warmup)
    names = list(runners)
    out = {n: {"cpu": [], "wall": []} for n in names}
    for k in range(rounds):
        for n in names if k % 2 == 0 else names[::-1]:
            wall, cpu = runners[n](runs)
            out[n]["wall"].append(float(np.median(wall)))
            out[n]["cpu"].append(float(np.median(cpu)))
    return out


# ---------------------------------------------------------------------------
# Parts
# ---------------------------------------------------------------------------


def _conv_model(h, cin, cout):
    import keras

    x = keras.Input((h, h, cin))
    y = keras.layers.Conv2D(cout, 3, padding="same", activation="relu")(x)
    return keras.Model(x, y)


def part_kernel_steps(args) -> dict:
    """Part 1: 3x3 conv at 64x64, output-channel and input-channel sweeps."""
    h = 64
    rng = np.random.default_rng(0)
    runners = {}
    for side in ("cout", "cin"):
        for c in SWEEP:
            cin, cout = (32, c) if side == "cout" else (c, 32)
            model = _conv_model(h, cin, cout)
            rep = rng.random((8, h, h, cin), dtype=np.float32)
            for fmt in ("int8", "float32"):
                runners[fmt, side, c] = Runner(
                    convert_fast(model, "int8" if fmt == "int8" else "none", rep)
                )
    times = interleaved(
        {f"{k[0]}/{k[1]}/{k[2]}": v for k, v in runners.items()}, rounds=args.rounds, runs=args.runs
    )
    result = {"size": h, "channels": list(SWEEP), "relative": {}, "ms_at_32": {}, "steps": {}}
    for fmt in ("int8", "float32"):
        for side in ("cout", "cin"):
            ref = times[f"{fmt}/{side}/32"]["cpu"]
            rel = [
                1.0 / speedup_stats(ref, times[f"{fmt}/{side}/{c}"]["cpu"])["median"] for c in SWEEP
            ]
            key = f"{fmt}/{side}"
            result["relative"][key] = rel
            result["ms_at_32"][key] = float(np.median(ref) * 1e3)
            result["steps"][key] = plateau_step(SWEEP, rel)
    return result


def _variants(base, targets, round_tos):
    import acsl_tf

    out, notes = {}, []
    for t in targets:
        for r in round_tos:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    out[t, r] = acsl_tf.shrink(base, target_flops=t, round_to=r, verify=False)
            except ValueError as e:
                notes.append(f"target {t:.0%}, round_to={r}: {unreachable_note(str(e))}")
                out[t, r] = None
    return out, notes


def part_model(name, args, steps) -> dict:
    """Part 2 for one model: every (target, round_to) variant in int8 (and
    float32 for ``--float-round-to``), timed against the unpruned model."""
    import keras

    import acsl_tf
    from acsl_tf.export import inspect_tflite

    keras.utils.set_random_seed(0)
    t0 = time.time()
    base = build_model(name, args.size)
    rep = np.random.default_rng(0).random(
        (args.calibration, args.size, args.size, 3), dtype=np.float32
    )
    variants, notes = _variants(base, args.targets, args.round_to)
    tmp = tempfile.mkdtemp(prefix="int8_speed-")
    rows = []
    try:
        models = {"base": base}
        models.update({f"t{t}_r{r}": m for (t, r), m in variants.items() if m is not None})
        record = {}
        for key, m in models.items():
            rec = {
                "macs_profile": int(acsl_tf.profile(m).total_macs),
                "params": int(m.count_params()),
            }
            for fmt in ("int8", "float32"):
                if (
                    fmt == "float32"
                    and key != "base"
                    and int(key.split("_r")[1]) not in args.float_round_to
                ):
                    continue
                content, err = export(m, fmt, rep, tmp)
                info = inspect_tflite(content)
                rec[fmt] = {
                    "content": content,
                    "relative_error": err,
                    "macs": tile_macs(info),
                    "tile_macs": tile_macs(info, steps[f"{fmt}/cin"], steps[f"{fmt}/cout"]),
                    "size_kib": len(content) / 1024,
                }
            rec["conv_channels"] = [
                int(layer.filters)
                for layer in m.layers
                if isinstance(layer, keras.layers.Conv2D)
                and not isinstance(layer, keras.layers.DepthwiseConv2D)
            ]
            record[key] = rec
        export_s = time.time() - t0
        timings = {}
        for fmt in ("int8", "float32"):
            runners = {k: Runner(r[fmt]["content"]) for k, r in record.items() if fmt in r}
            timings[fmt] = interleaved(runners, rounds=args.rounds, runs=args.runs)
        b = record["base"]
        for (t, r), m in variants.items():
            key = f"t{t}_r{r}"
            row = {"model": name, "target": t, "round_to": r}
            if m is None:
                row["unreachable"] = True
                rows.append(row)
                continue
            rec = record[key]
            ch = rec["conv_channels"]
            row.update(
                params=rec["params"],
                macs_ratio=b["macs_profile"] / rec["macs_profile"],
                channels_mult16=sum(c % 16 == 0 for c in ch) / max(len(ch), 1),
            )
            for fmt in ("int8", "float32"):
                if fmt not in rec:
                    continue
                cpu = speedup_stats(timings[fmt]["base"]["cpu"], timings[fmt][key]["cpu"])
                wall = speedup_stats(timings[fmt]["base"]["wall"], timings[fmt][key]["wall"])
                macs_ratio = b[fmt]["macs"] / rec[fmt]["macs"]
                tile_ratio = b[fmt]["tile_macs"] / rec[fmt]["tile_macs"]
                row[fmt] = {
                    "speedup": cpu["median"],
                    "speedup_q1": cpu["q1"],
                    "speedup_q3": cpu["q3"],
                    "wall_speedup": wall["median"],
                    "tflite_macs_ratio": macs_ratio,
                    "tile_macs_ratio": tile_ratio,
                    "efficiency": efficiency(cpu["median"], row["macs_ratio"]),
                    "tile_efficiency": efficiency(cpu["median"], tile_ratio),
                    "relative_error": rec[fmt]["relative_error"],
                    "base_cpu_ms": float(np.median(timings[fmt]["base"]["cpu"]) * 1e3),
                    "base_wall_ms": float(np.median(timings[fmt]["base"]["wall"]) * 1e3),
                    "cpu_ms": float(np.median(timings[fmt][key]["cpu"]) * 1e3),
                }
            rows.append(row)
        base_info = {
            "macs": b["macs_profile"],
            "params": b["params"],
            "int8_cpu_ms": float(np.median(timings["int8"]["base"]["cpu"]) * 1e3),
            "int8_wall_ms": float(np.median(timings["int8"]["base"]["wall"]) * 1e3),
            "float32_cpu_ms": float(np.median(timings["float32"]["base"]["cpu"]) * 1e3),
            "int8_relative_error": b["int8"]["relative_error"],
            "conv_channels": b["conv_channels"],
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "model": name,
        "rows": rows,
        "base": base_info,
        "notes": notes,
        "export_seconds": round(export_s, 1),
        "seconds": round(time.time() - t0, 1),
    }


def part_options(name, target, args) -> dict:
    """Part 3: the unpruned and one pruned model under runtime/converter options."""
    import keras

    import acsl_tf

    keras.utils.set_random_seed(0)
    base = build_model(name, args.size)
    pruned = acsl_tf.shrink(base, target_flops=target, round_to=1, verify=False)
    rep = np.random.default_rng(0).random(
        (args.calibration, args.size, args.size, 3), dtype=np.float32
    )
    settings = {
        "default (XNNPACK, per-channel, int8 I/O)": ({}, True),
        "XNNPACK off (builtin kernels)": ({}, False),
        "per-tensor weights": ({"per_tensor": True}, True),
        "float32 I/O": ({"int8_io": False}, True),
        "traced without acsl_tf's oneDNN workaround (no STRIDED_SLICE)": (
            {"plain_conv": True},
            True,
        ),
    }
    runners = {}
    for label, (conv_kw, xnnpack) in settings.items():
        for which, m in (("base", base), ("pruned", pruned)):
            runners[label, which] = Runner(convert_fast(m, "int8", rep, **conv_kw), xnnpack=xnnpack)
    times = interleaved(
        {f"{a}|{b}": v for (a, b), v in runners.items()}, rounds=args.rounds, runs=args.runs
    )
    macs_ratio = acsl_tf.profile(base).total_macs / acsl_tf.profile(pruned).total_macs
    default = next(iter(settings))
    rows = []
    for label in settings:
        sp = speedup_stats(times[f"{label}|base"]["cpu"], times[f"{label}|pruned"]["cpu"])
        rel = (
            1.0
            / speedup_stats(times[f"{default}|base"]["cpu"], times[f"{label}|base"]["cpu"])[
                "median"
            ]
        )
        rows.append(
            {
                "setting": label,
                "base_time_vs_default": rel,
                "speedup": sp["median"],
                "efficiency": efficiency(sp["median"], macs_ratio),
                "partitions": runners[label, "base"].partitions,
                "strided_slices": runners[label, "base"].op_names.count("STRIDED_SLICE"),
            }
        )
    return {"model": name, "target": target, "macs_ratio": macs_ratio, "rows": rows}


def _layer_models(model):
    """``{signature: one-layer keras.Model}`` and the per-layer signatures in order."""
    import keras

    kinds = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)
    order, models = [], {}
    for layer in model.layers:
        if not isinstance(layer, kinds):
            continue
        cfg = layer.get_config()
        cfg.pop("name", None)
        shape = tuple(int(d) for d in layer.input.shape[1:])
        key = f"{type(layer).__name__}{shape}{sorted(cfg.items())!r}"
        order.append(key)
        if key not in models:
            x = keras.Input(shape)
            models[key] = keras.Model(x, type(layer).from_config(cfg)(x))
    return models, order


def part_breakdown(name, args) -> dict:
    """Part 4: share of time in the MAC layers, timed one by one."""
    import keras

    import acsl_tf

    keras.utils.set_random_seed(0)
    base = build_model(name, args.size)
    rep = np.random.default_rng(0).random(
        (args.calibration, args.size, args.size, 3), dtype=np.float32
    )
    variants = {"unpruned": base}
    for t, r in args.breakdown_variants:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                variants[f"{t:.0%}, round_to={r}"] = acsl_tf.shrink(
                    base, target_flops=t, round_to=r, verify=False
                )
        except ValueError:
            continue
    result = {"model": name, "rows": []}
    tiny = _conv_model(1, 8, 8)
    tiny_rep = np.random.default_rng(0).random((4, 1, 1, 8), dtype=np.float32)
    for fmt, q in (("int8", "int8"), ("float32", "none")):
        # the fixed cost of one invoke (a 3x3 convolution on a 1x1x8 input), taken off every
        # layer's time
        runners, orders = {"overhead": Runner(convert_fast(tiny, q, tiny_rep))}, {}
        for label, m in variants.items():
            runners["whole|" + label] = Runner(convert_fast(m, q, rep))
            layers, orders[label] = _layer_models(m)
            for key, lm in layers.items():
                if "layer|" + key not in runners:
                    lrep = np.random.default_rng(0).random(
                        (4,) + lm.input_shape[1:], dtype=np.float32
                    )
                    runners["layer|" + key] = Runner(convert_fast(lm, q, lrep))
        times = interleaved(runners, rounds=args.rounds, runs=args.runs, warmup=2)
        cpu = {k: np.asarray(v["cpu"]) for k, v in times.items()}
        overhead = cpu["overhead"]
        whole = {label: cpu["whole|" + label] for label in variants}
        layer_sum = {
            label: sum(np.maximum(cpu["layer|" + key] - overhead, 0.0) for key in orders[label])
            for label in variants
        }
        result.setdefault("invoke_overhead_us", {})[fmt] = float(np.median(overhead) * 1e6)
        for label in variants:
            # medians first: the rest is a small difference of two noisy times
            rest_base = float(np.median(whole["unpruned"] - layer_sum["unpruned"]))
            rest = float(np.median(whole[label] - layer_sum[label]))
            result["rows"].append(
                {
                    "format": fmt,
                    "variant": label,
                    "whole_ms": float(np.median(whole[label]) * 1e3),
                    "rest_ms": rest * 1e3,
                    "layer_share": float(np.median(layer_sum[label] / whole[label])),
                    "speedup": float(np.median(whole["unpruned"] / whole[label])),
                    "layer_speedup": float(np.median(layer_sum["unpruned"] / layer_sum[label])),
                    "rest_speedup": rest_base / rest if rest > 0 and rest_base > 0 else None,
                    "layers_timed": len(orders[label]),
                }
            )
    return result


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


def render(record) -> str:
    s = record["settings"]
    info = record["machine"]
    md = ["# int8 speed of pruned models (TFLite, LiteRT interpreter)", ""]
    md.append(
        f"Machine: {info['cpu']}, {info['cores']} cores; TF {info['tensorflow']}, Keras "
        f"{info['keras']}, ai-edge-litert {info['ai_edge_litert']}. 1 interpreter thread, batch 1. "
        f"Every ratio is the median over {s['rounds']} interleaved rounds of the per-round ratio "
        f"of median thread CPU times ({s['runs']} invokes per model per round); 1-minute load "
        f"average at the end: {record['load_average_1min']:.1f}. Total time "
        f"{record['seconds'] / 60:.1f} min."
    )
    md.append("")
    k = record.get("kernel_steps")
    if k:
        md += [
            f"## 1. Kernel steps: one 3x3 convolution at {k['size']}x{k['size']}",
            "",
            "Time relative to 32 channels (the other side fixed at 32).",
            "",
        ]
        keys = ["int8/cout", "int8/cin", "float32/cout", "float32/cin"]
        rows = [
            [c] + [_f(k["relative"][key][i]) for key in keys] + [_f(c / 32)]
            for i, c in enumerate(k["channels"])
        ]
        md.append(
            markdown_table(
                [
                    "channels",
                    "int8, output sweep",
                    "int8, input sweep",
                    "float32, output sweep",
                    "float32, input sweep",
                    "MACs",
                ],
                rows,
            )
        )
        md.append("")
        md.append(
            "Detected steps (largest block of channel counts with equal time): "
            + ", ".join(f"{key} {k['steps'][key]}" for key in keys)
            + "; time at 32 -> 32 channels: "
            + ", ".join(
                f"{fmt} {k['ms_at_32'][fmt + '/cout']:.3f} ms" for fmt in ("int8", "float32")
            )
            + "."
        )
        md.append("")
    md += ["## 2. Pruned models", ""]
    md.append(
        "speed-up: CPU-time speed-up over the unpruned model of the same format (quartiles over "
        "rounds in brackets). eff: speed-up / MACs ratio (the aim is >= "
        f"{AIM}). tile ratio: the MACs ratio with channel counts rounded up to the kernel steps of "
        "part 1; tile eff: speed-up / tile ratio. wall: the wall-clock speed-up (inflated by "
        "waiting for a core on a loaded machine)."
    )
    md.append("")
    rows = []
    for m in record["models"]:
        for r in m["rows"]:
            if r.get("unreachable"):
                rows.append(
                    [m["model"], f"{r['target']:.0%}", r["round_to"]] + ["unreachable"] + [""] * 10
                )
                continue
            i8 = r["int8"]
            f32 = r.get("float32")
            rows.append(
                [
                    m["model"],
                    f"{r['target']:.0%}",
                    r["round_to"],
                    _f(r["macs_ratio"]),
                    f"{r['channels_mult16']:.0%}",
                    _f(i8["tile_macs_ratio"]),
                    f"{i8['speedup']:.2f} ({i8['speedup_q1']:.2f}-{i8['speedup_q3']:.2f})",
                    _f(i8["efficiency"]),
                    _f(i8["tile_efficiency"]),
                    _f(i8["wall_speedup"]),
                    _f(f32["speedup"]) if f32 else "",
                    _f(f32["efficiency"]) if f32 else "",
                    _f(f32["tile_macs_ratio"]) if f32 else "",
                    _f(f32["wall_speedup"]) if f32 else "",
                ]
            )
    md.append(
        markdown_table(
            [
                "model",
                "FLOPs target",
                "round_to",
                "MACs ratio",
                "convs with x16 channels",
                "int8 tile ratio",
                "int8 speed-up",
                "int8 eff",
                "int8 tile eff",
                "int8 wall",
                "float32 speed-up",
                "float32 eff",
                "float32 tile ratio",
                "float32 wall",
            ],
            rows,
        )
    )
    md.append("")
    md.append(
        markdown_table(
            [
                "model",
                "MMACs",
                "params",
                "int8 CPU ms",
                "int8 wall ms",
                "float32 CPU ms",
                "int8 relative error",
                "conv channels (first 12)",
            ],
            [
                [
                    m["model"],
                    _f(m["base"]["macs"] / 1e6, "{:.0f}"),
                    f"{m['base']['params']:,}",
                    _f(m["base"]["int8_cpu_ms"], "{:.3f}"),
                    _f(m["base"]["int8_wall_ms"], "{:.3f}"),
                    _f(m["base"]["float32_cpu_ms"], "{:.3f}"),
                    _f(m["base"]["int8_relative_error"], "{:.3f}"),
                    " ".join(str(c) for c in m["base"]["conv_channels"][:12]),
                ]
                for m in record["models"]
            ],
        )
    )
    md.append("")
    md.append(
        "Unpruned models (the relative error is the int8 file against Keras, random weights)."
    )
    md.append("")
    summ = record["summary"]
    md += ["### Against the aim (int8 speed-up >= 0.7 x MACs ratio)", ""]
    srows = []
    for r_to, s_ in summ["by_round_to"].items():
        srows.append([r_to, s_["n"], s_["reached"], _f(s_["min"]), _f(s_["median"]), _f(s_["max"])])
    md.append(
        markdown_table(
            ["round_to", "variants", ">= 0.7", "min eff", "median eff", "max eff"], srows
        )
    )
    md.append("")
    if summ.get("float32_round_to_1"):
        f = summ["float32_round_to_1"]
        md.append(
            f"float32, round_to=1: eff {f['min']:.2f}-{f['max']:.2f} (median {f['median']:.2f}) over "
            f"{f['n']} variants."
        )
        md.append("")
    notes = [f"{m['model']}: {n}" for m in record["models"] for n in m["notes"]]
    if notes:
        md += ["Unreachable targets:", ""] + [f"- {n}" for n in notes] + [""]
    o = record.get("options")
    if o:
        md += [
            f"## 3. Runtime and converter options ({o['model']}, pruned to {o['target']:.0%} "
            f"FLOPs, round_to=1; MACs ratio {o['macs_ratio']:.2f})",
            "",
            markdown_table(
                [
                    "setting",
                    "unpruned time / default",
                    "speed-up of the pruned model",
                    "eff",
                    "XNNPACK partitions",
                    "STRIDED_SLICE ops",
                ],
                [
                    [
                        r["setting"],
                        _f(r["base_time_vs_default"]),
                        _f(r["speedup"]),
                        _f(r["efficiency"]),
                        r.get("partitions", ""),
                        r.get("strided_slices", ""),
                    ]
                    for r in o["rows"]
                ],
            ),
            "",
        ]
    for b in record.get("breakdown") or []:
        md += [
            f"## 4. Where the time goes ({b['model']})",
            "",
            "Every Conv2D / DepthwiseConv2D / Dense timed alone as a one-layer model next to the "
            "whole model, less the time of one invoke of a trivial model ("
            + ", ".join(f"{k} {v:.1f} us" for k, v in b.get("invoke_overhead_us", {}).items())
            + "); layer share: their summed time / the whole model's; layers alone: the speed-up "
            "of that sum; rest: whole - layers (pooling, additions, concatenations, resizing, "
            "quantization, the ops outside the delegate), and its speed-up.",
            "",
            markdown_table(
                [
                    "format",
                    "variant",
                    "CPU ms",
                    "layer share",
                    "speed-up",
                    "layers alone",
                    "rest ms",
                    "rest",
                ],
                [
                    [
                        r["format"],
                        r["variant"],
                        _f(r["whole_ms"], "{:.3f}"),
                        _f(r["layer_share"]),
                        _f(r["speedup"]),
                        _f(r["layer_speedup"]),
                        _f(r["rest_ms"], "{:.3f}"),
                        _f(r["rest_speedup"]),
                    ]
                    for r in b["rows"]
                ],
            ),
            "",
        ]
    return "\n".join(md)


def summarize(models) -> dict:
    by_round_to: dict = {}
    f32 = []
    for m in models:
        for r in m["rows"]:
            if r.get("unreachable"):
                continue
            by_round_to.setdefault(str(r["round_to"]), []).append(r["int8"]["efficiency"])
            if r["round_to"] == 1 and "float32" in r:
                f32.append(r["float32"]["efficiency"])
    return {
        "by_round_to": {
            k: aim_summary(v) for k, v in sorted(by_round_to.items(), key=lambda t: int(t[0]))
        },
        "float32_round_to_1": aim_summary(f32) if f32 else None,
    }


def machine():
    """The machine and versions (the same record as benchmarks/latency.py)."""
    from latency import machine as latency_machine  # imported late: it loads Keras

    return latency_machine()


def _cached(work_dir, key, settings, fn):
    """Run ``fn()`` unless ``work_dir/key.json`` holds a result for the same settings."""
    from acsl_tf import _io

    path = os.path.join(work_dir, f"{key}.json")
    if os.path.isfile(path):
        with open(path) as f:
            saved = json.load(f)
        if saved.get("settings") == settings:
            print(f"[{key}] reused from {path}", flush=True)
            return saved["result"]
    t0 = time.time()
    result = fn()
    result["seconds"] = round(time.time() - t0, 1)
    _io.atomic_write_text(
        path, json.dumps({"settings": settings, "result": result}, indent=1), overwrite=True
    )
    print(f"[{key}] done in {time.time() - t0:.0f} s", flush=True)
    return result


def _floats(text):
    return [float(x) for x in text.split(",") if x]


def _ints(text):
    return [int(x) for x in text.split(",") if x]


def main(argv=None):
    parser = argparse.ArgumentParser(description="int8 speed of pruned models.")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--models", default=",".join(MODEL_NAMES))
    parser.add_argument("--targets", type=_floats, default=[0.5, 0.85])
    parser.add_argument("--round-to", type=_ints, default=[1, 4, 8, 16])
    parser.add_argument("--float-round-to", type=_ints, default=[1, 16])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--calibration", type=int, default=16, help="int8 calibration samples")
    parser.add_argument("--options-model", default="resnet20", help="'' to skip part 3")
    parser.add_argument(
        "--breakdown", default="resnet20,unet,mobilenet_v2", help="models; '' to skip part 4"
    )
    parser.add_argument("--quick", action="store_true", help="vgg_small, 64 px, 3 rounds")
    parser.add_argument("--fresh", action="store_true", help="ignore saved partial results")
    parser.add_argument("--work-dir", default=WORK)
    parser.add_argument("--out-dir", default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.models, args.rounds, args.runs = 64, "vgg_small", 3, 5
        args.round_to, args.float_round_to = [1, 16], [1]
        args.options_model = args.breakdown = "vgg_small"
        args.work_dir = os.path.join(args.work_dir, "quick")
    args.breakdown_variants = [[max(args.targets), 1], [max(args.targets), 8]]  # JSON-stable
    names = [n for n in args.models.split(",") if n]
    breakdown_names = [n for n in args.breakdown.split(",") if n]
    for n in names + breakdown_names + ([args.options_model] if args.options_model else []):
        if n not in MODEL_NAMES:
            parser.error(f"unknown model {n!r}; choose from {', '.join(MODEL_NAMES)}")

    import keras  # noqa: F401

    import acsl_tf  # noqa: F401
    from acsl_tf import _io

    if args.fresh:
        shutil.rmtree(args.work_dir, ignore_errors=True)
    os.makedirs(args.work_dir, exist_ok=True)
    os.makedirs(args.out_dir, exist_ok=True)
    common = {
        "size": args.size,
        "rounds": args.rounds,
        "runs": args.runs,
        "calibration": args.calibration,
    }
    kernel = _cached(args.work_dir, "kernel_steps", common, lambda: part_kernel_steps(args))
    steps = kernel["steps"]
    models = []
    for name in names:
        settings = dict(
            common,
            targets=args.targets,
            round_to=args.round_to,
            float_round_to=args.float_round_to,
            steps=steps,
        )
        models.append(
            _cached(
                args.work_dir, f"model_{name}", settings, lambda n=name: part_model(n, args, steps)
            )
        )
    options = None
    if args.options_model:
        options = _cached(
            args.work_dir,
            f"options_{args.options_model}",
            dict(common, target=max(args.targets), version=2),
            lambda: part_options(args.options_model, max(args.targets), args),
        )
    breakdown = [
        _cached(
            args.work_dir,
            f"breakdown_{name}",
            dict(common, variants=args.breakdown_variants),
            lambda n=name: part_breakdown(n, args),
        )
        for name in breakdown_names
    ]
    record = {
        "machine": machine(),
        "settings": {k: v for k, v in vars(args).items()},
        "kernel_steps": kernel,
        "models": models,
        "summary": summarize(models),
        "options": options,
        "breakdown": breakdown,
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"),
        # measurement time of all parts (also when some were reused from --work-dir)
        "seconds": round(
            sum(p.get("seconds", 0) for p in [kernel, options, *breakdown, *models] if p), 1
        ),
    }
    md = render(record) + "\n"
    print(md)
    stem = "int8_speed_quick" if args.quick else "int8_speed"
    _io.atomic_write_text(os.path.join(args.out_dir, f"{stem}.md"), md, overwrite=True)
    _io.atomic_write_text(
        os.path.join(args.out_dir, f"{stem}.json"),
        json.dumps(record, indent=1, default=str),
        overwrite=True,
    )
    return record


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
