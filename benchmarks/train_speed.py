"""Training-step speed on this machine: oneDNN, XLA, tf.data caching, batch size.

Each configuration runs in a fresh process (oneDNN is chosen at TensorFlow
import), trains ``vgg_small`` on Fashion-MNIST-sized inputs (28x28x1, 10
classes) for ``--warmup`` steps, then times ``--steps`` steps. Configurations
are interleaved over ``--repeats`` rounds and the median ms/step is reported,
with ratios against the reference (oneDNN on, no XLA, plain pipeline, batch
128), all from the same run.

    python benchmarks/train_speed.py --out benchmarks/results/train_speed.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

CONFIGS = {
    "reference (oneDNN on, batch 128)": dict(onednn="1", jit=False, cache=False, batch=128),
    "oneDNN off": dict(onednn="0", jit=False, cache=False, batch=128),
    "XLA (jit_compile=True)": dict(onednn="1", jit=True, cache=False, batch=128),
    "tf.data cache + prefetch": dict(onednn="1", jit=False, cache=True, batch=128),
    "batch 256 (per sample)": dict(onednn="1", jit=False, cache=False, batch=256),
    "batch 64 (per sample)": dict(onednn="1", jit=False, cache=False, batch=64),
}


def _worker(cfg: dict, width: float, steps: int, warmup: int) -> float:
    import keras
    import numpy as np
    import tensorflow as tf

    import acsl_tf  # noqa: F401  (the oneDNN workaround)
    from acsl_tf.models import vgg_small

    keras.utils.set_random_seed(0)
    bs = cfg["batch"]
    n = bs * 32
    rng = np.random.default_rng(0)
    x = rng.random((n, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, n)
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if cfg["cache"]:
        ds = ds.cache()
    ds = ds.shuffle(n, seed=0).batch(bs, drop_remainder=True).repeat()
    if cfg["cache"]:
        ds = ds.prefetch(tf.data.AUTOTUNE)
    model = vgg_small((28, 28, 1), 10, width=width)
    model.compile(
        keras.optimizers.SGD(0.05, momentum=0.9),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=cfg["jit"],
    )
    model.fit(ds, steps_per_epoch=warmup, epochs=1, verbose=0)
    t0 = time.perf_counter()
    model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
    return (time.perf_counter() - t0) / steps * 1000.0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=None, help="Markdown file to write (atomically).")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        cfg = json.loads(a.worker)
        print(json.dumps({"ms": _worker(cfg, a.width, a.steps, a.warmup)}))
        return 0
    times: dict[str, list[float]] = {k: [] for k in CONFIGS}
    for r in range(a.repeats):
        for name, cfg in CONFIGS.items():
            env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=cfg["onednn"], TF_CPP_MIN_LOG_LEVEL="2")
            out = subprocess.run(
                [sys.executable, __file__, "--worker", json.dumps(cfg), "--width", str(a.width),
                 "--steps", str(a.steps), "--warmup", str(a.warmup)],
                env=env, capture_output=True, text=True, check=True,
            )
            ms = json.loads(out.stdout.strip().splitlines()[-1])["ms"]
            times[name].append(ms)
            print(f"round {r + 1}: {name}: {ms:.1f} ms/step", flush=True)
    ref_name = next(iter(CONFIGS))
    ref = statistics.median(times[ref_name]) / CONFIGS[ref_name]["batch"]
    lines = [
        "# Training-step speed (benchmarks/train_speed.py)",
        "",
        f"`vgg_small(width={a.width})` on 28x28x1 inputs, SGD, {a.steps} timed steps after "
        f"{a.warmup} warm-up steps, median of {a.repeats} fresh processes per configuration "
        "(interleaved). `per-sample time vs reference`: below 1 is faster.",
        "",
        "| configuration | ms/step (median) | runs | per-sample time vs reference |",
        "|---|---:|---|---:|",
    ]
    for name, cfg in CONFIGS.items():
        med = statistics.median(times[name])
        runs = ", ".join(f"{t:.0f}" for t in times[name])
        lines.append(f"| {name} | {med:.1f} | {runs} | {med / cfg['batch'] / ref:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        from acsl_tf._io import atomic_write_text

        atomic_write_text(a.out, text, overwrite=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
