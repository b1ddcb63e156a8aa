"""Training-step time of the same ACSL-wrapped model on JAX (jit) and on
TensorFlow, side by side.

Each measurement is a fresh process (``KERAS_BACKEND`` is fixed when Keras is
first imported) that builds ``acsl_tf.models.vgg_small`` on 28x28x1 inputs,
wraps it with ``prune_low_correlation`` (default settings: affinity every 8
steps), compiles it with SGD and trains one epoch of NumPy batches. A
callback waits for each step's loss (JAX dispatches steps asynchronously) and
records the time between consecutive step ends; the first ``--warmup`` steps
(tracing, compilation, the first-batch stall) are dropped and the median of
the rest is the process's step time. The backends alternate process by
process, so load on the machine hits both alike; the result is the median
over the processes of each backend and the ratio JAX / TensorFlow.

TensorFlow runs with Keras' default ``jit_compile="auto"`` (no XLA on CPU,
oneDNN kernels on); JAX always compiles the step with XLA.

Usage::

    .venv/bin/python benchmarks/backend_speed.py                # 3 processes each
    .venv/bin/python benchmarks/backend_speed.py --runs 5 --steps 40
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULT = os.path.join(HERE, "results", "backend_speed.md")
BACKENDS = ("tensorflow", "jax")


def worker(args) -> None:
    """One process: train and print ``RESULT {json}`` with the step times."""
    import keras
    import numpy as np

    import acsl_tf

    class StepEnds(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.ends = []

        def on_train_batch_end(self, batch, logs=None):
            float(logs["loss"])  # wait for the step (JAX dispatches asynchronously)
            self.ends.append(time.perf_counter())

    keras.utils.set_random_seed(0)
    model = acsl_tf.models.vgg_small((28, 28, 1), 10)
    wrapped = acsl_tf.prune_low_correlation(model, penalty=1e-4)
    wrapped.compile(
        optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    rng = np.random.default_rng(0)
    n = (args.warmup + args.steps + 1) * args.batch
    x = rng.normal(size=(n, 28, 28, 1)).astype("float32")
    y = rng.integers(0, 10, n).astype("int32")
    timer = StepEnds()
    start = time.perf_counter()
    wrapped.fit(x, y, batch_size=args.batch, epochs=1, shuffle=False, verbose=0, callbacks=[timer])
    total = time.perf_counter() - start
    steps = np.diff(np.asarray(timer.ends))[args.warmup :]
    print(
        "RESULT "
        + json.dumps(
            {
                "backend": keras.backend.backend(),
                "jit_compile": bool(wrapped.jit_compile),
                "median_ms": float(np.median(steps) * 1e3),
                "steps": len(steps),
                "fit_s": total,
            }
        )
    )


def run_one(backend: str, args) -> dict:
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--batch",
        str(args.batch),
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"{backend} worker failed:\n{proc.stderr[-3000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    result = json.loads(line[len("RESULT ") :])
    result["process_s"] = time.perf_counter() - start
    return result


def versions() -> dict:
    from importlib import metadata

    out = {}
    for name in ("keras", "tensorflow-cpu", "tensorflow", "jax", "jaxlib", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def report(results: dict, args, load_before, load_after, wall) -> str:
    med = {b: statistics.median(r["median_ms"] for r in results[b]) for b in BACKENDS}
    ratio = med["jax"] / med["tensorflow"]
    lines = [
        "# Training-step time: JAX (jit) vs TensorFlow",
        "",
        "Written by `benchmarks/backend_speed.py`. Model: `acsl_tf.models.vgg_small` "
        f"(28x28x1, 10 classes) wrapped by `prune_low_correlation` (defaults), SGD, "
        f"batch {args.batch}; per process the median of {args.steps} step times after "
        f"{args.warmup} warm-up steps; {args.runs} fresh processes per backend, "
        "alternating.",
        "",
        f"Machine: {os.cpu_count()} CPU cores ({platform.machine()}), no GPU. "
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()) + ".",
        "",
        "**The machine was shared with other work while this ran** (load average "
        f"{load_before[0]:.1f} before, {load_after[0]:.1f} after, on "
        f"{os.cpu_count()} cores): absolute times are inflated and noisy; the "
        "alternation makes the ratio the more reliable figure.",
        "",
        "| backend | jit_compile | step time per process (ms) | median (ms) |",
        "|---|---|---|---:|",
    ]
    for b in BACKENDS:
        per = ", ".join(f"{r['median_ms']:.0f}" for r in results[b])
        jit = results[b][0]["jit_compile"]
        lines.append(f"| {b} | {jit} | {per} | {med[b]:.0f} |")
    lines += [
        "",
        f"**Ratio JAX / TensorFlow: {ratio:.2f}** "
        f"({'JAX slower' if ratio > 1 else 'JAX faster'} per training step).",
        "",
        "Process wall time including start-up and compilation (s): "
        + "; ".join(
            f"{b} " + ", ".join(f"{r['process_s']:.0f}" for r in results[b]) for b in BACKENDS
        )
        + f". Whole run: {wall:.0f} s.",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="processes per backend")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per process")
    parser.add_argument("--warmup", type=int, default=5, help="steps dropped per process")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--out", default=RESULT)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return
    results = {b: [] for b in BACKENDS}
    load_before = os.getloadavg()
    start = time.perf_counter()
    for i in range(args.runs):
        order = BACKENDS if i % 2 == 0 else BACKENDS[::-1]
        for b in order:
            r = run_one(b, args)
            results[b].append(r)
            print(f"run {i + 1}/{args.runs} {b}: {r['median_ms']:.1f} ms/step", flush=True)
    wall = time.perf_counter() - start
    text = report(results, args, load_before, os.getloadavg(), wall)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
