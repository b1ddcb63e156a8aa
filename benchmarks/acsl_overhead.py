"""Training-step overhead of ACSL over plain training.

Same model, same data, same optimizer; the plain model and its
``prune_low_correlation`` version are trained in alternating chunks
(interleaved, so machine noise hits both alike). Each chunk records per-step
wall times with a batch callback; the figure is the ratio of the median step
times, and the median of that ratio over the repetitions.

Usage::

    .venv/bin/python benchmarks/acsl_overhead.py            # default update_every
    .venv/bin/python benchmarks/acsl_overhead.py --update-every 1 8 32 --jit
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class StepTimer:
    def __init__(self):
        import keras

        class _CB(keras.callbacks.Callback):
            def __init__(cb):
                super().__init__()
                cb.times = []

            def on_train_batch_begin(cb, batch, logs=None):
                cb._t = time.perf_counter()

            def on_train_batch_end(cb, batch, logs=None):
                cb.times.append(time.perf_counter() - cb._t)

        self.cb = _CB()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--update-every", type=int, nargs="+", default=[8])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=30, help="steps per chunk")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--jit", action="store_true", help="jit_compile=True for both")
    p.add_argument("--out", default="benchmarks/results/acsl_overhead.json")
    args = p.parse_args(argv)

    import keras
    import numpy as np
    import tensorflow as tf

    import acsl_tf
    from acsl_tf import _io

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    n = args.batch_size * 16
    x = rng.random((n, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, n)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(args.batch_size).repeat().prefetch(2)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    configs = {"plain": None}
    for k in args.update_every:
        configs[f"acsl_k{k}"] = k
    models = {}
    for name, k in configs.items():
        base = acsl_tf.models.vgg_small((28, 28, 1), 10, width=args.width)
        m = base if k is None else acsl_tf.prune_low_correlation(base, update_every=k)
        m.compile(keras.optimizers.SGD(0.01, momentum=0.9), loss, jit_compile=args.jit)
        m.fit(ds, epochs=1, steps_per_epoch=3, verbose=0)  # trace and warm up
        models[name] = m

    medians = {name: [] for name in configs}
    for rep in range(args.repeats):
        for name, m in models.items():
            timer = StepTimer()
            m.fit(ds, epochs=1, steps_per_epoch=args.steps, verbose=0, callbacks=[timer.cb])
            medians[name].append(statistics.median(timer.cb.times[2:]))
        print(
            f"repeat {rep + 1}/{args.repeats}: "
            + ", ".join(f"{k} {v[-1] * 1e3:.1f} ms" for k, v in medians.items())
        )

    result = {
        "model": f"vgg_small(width={args.width})",
        "params": models["plain"].count_params(),
        "batch_size": args.batch_size,
        "jit_compile": args.jit,
        "repeats": args.repeats,
        "steps_per_chunk": args.steps,
        "median_step_ms": {k: 1e3 * statistics.median(v) for k, v in medians.items()},
        "ratio_vs_plain": {},
    }
    print(f"\nmedian step time (ms), {args.repeats} interleaved repeats, jit={args.jit}")
    for name in configs:
        ratios = [a / b for a, b in zip(medians[name], medians["plain"])]
        result["ratio_vs_plain"][name] = statistics.median(ratios)
        print(
            f"  {name:<10} {result['median_step_ms'][name]:8.1f} ms   "
            f"ratio {result['ratio_vs_plain'][name]:.3f}x"
        )
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    _io.atomic_write_text(args.out, json.dumps(result, indent=2), overwrite=True)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
