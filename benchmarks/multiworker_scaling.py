"""Step time of ACSL sparsity training with 1 vs 2 workers on this machine.

The same model (``vgg_small(width=...)`` on 28x28x1 inputs, every
BatchNorm wrapped by ``prune_low_correlation``, SGD with momentum, batch
statistics every step) trains on the same global batches:

- 1 worker: one process, no strategy, global batch ``B``;
- 2 workers: two processes of a ``MultiWorkerMirroredStrategy`` job on
  127.0.0.1 (``acsl_tf.distributed.launch_local_workers``), each with
  ``B / 2`` samples of every global batch, synchronized BatchNorm.

Each run times ``--steps`` steps after ``--warmup`` steps (per-step wall
times from a callback; the median is the run's value; for 2 workers, the
chief's). The two configurations alternate over ``--repeats`` rounds, and the
table reports the median over the rounds and their ratio from the same run.

    python benchmarks/multiworker_scaling.py --out benchmarks/results/multiworker_scaling.md
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _worker(a) -> dict:
    """One training run (a plain process or one worker of a job)."""
    import keras
    import numpy as np
    import tensorflow as tf

    import acsl_tf
    from acsl_tf import distributed
    from acsl_tf.models import vgg_small

    strategy = tf.distribute.MultiWorkerMirroredStrategy() if a.role == "worker" else None
    keras.utils.set_random_seed(0)
    steps = a.warmup + a.steps
    n = a.batch * steps
    rng = np.random.default_rng(0)
    x = rng.random((n, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, n)

    def build():
        base = vgg_small((28, 28, 1), 10, width=a.width)
        if strategy is not None:
            # Synchronized BatchNorm: the replicas normalise with the global
            # batch's statistics, as the single process does.
            for layer in base.layers:
                if isinstance(layer, keras.layers.BatchNormalization):
                    layer.synchronized = True
        model = acsl_tf.prune_low_correlation(base, penalty=1e-4, update_every=1)
        model.compile(
            keras.optimizers.SGD(0.05, momentum=0.9),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        return model

    if strategy is None:
        model = build()
        data = tf.data.Dataset.from_tensor_slices((x, y)).batch(a.batch, drop_remainder=True)
    else:
        with strategy.scope():
            model = build()
        distributed.enable_multiworker_fit(model)
        data = strategy.distribute_datasets_from_function(
            distributed.global_batch_dataset_fn((x, y), a.batch)
        )

    times: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self._t = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            times.append(time.perf_counter() - self._t)

    model.fit(data, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[Timer()])
    timed = times[a.warmup :]
    return {
        "ms": 1000.0 * statistics.median(timed),
        "replicas": strategy.num_replicas_in_sync if strategy is not None else 1,
        "index": distributed.task_index(),
    }


def _result(stdout: str) -> dict:
    lines = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        raise RuntimeError(f"a benchmark run printed no result:\n{stdout[-2000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--batch", type=int, default=128, help="global batch size")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per run")
    p.add_argument("--out", default=None, help="Markdown file to write (atomically).")
    p.add_argument("--role", choices=("single", "worker"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    common = [
        "--width",
        str(a.width),
        "--batch",
        str(a.batch),
        "--steps",
        str(a.steps),
        "--warmup",
        str(a.warmup),
    ]
    if a.role:
        print("RESULT " + json.dumps(_worker(a)), flush=True)
        return 0

    from acsl_tf.distributed import launch_local_workers

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    env.pop("TF_CONFIG", None)
    one: list[float] = []
    two: list[float] = []
    for r in range(a.repeats):
        proc = subprocess.run(
            [sys.executable, __file__, "--role", "single", *common],
            env=env,
            capture_output=True,
            text=True,
            timeout=a.timeout,
        )
        if proc.returncode:
            raise RuntimeError(f"the 1-worker run failed:\n{proc.stderr[-3000:]}")
        one.append(_result(proc.stdout)["ms"])
        results = launch_local_workers(
            __file__, 2, ["--role", "worker", *common], timeout=a.timeout, env=env
        )
        chief = _result(results[0].stdout)
        assert chief["replicas"] == 2
        two.append(chief["ms"])
        print(
            f"round {r + 1}: 1 worker {one[-1]:.1f} ms/step, 2 workers {two[-1]:.1f} ms/step",
            flush=True,
        )
    m1, m2 = statistics.median(one), statistics.median(two)
    import keras
    import tensorflow as tf

    lines = [
        "# Multi-worker step time (benchmarks/multiworker_scaling.py)",
        "",
        f"ACSL sparsity training of `vgg_small(width={a.width})` (28x28x1, every BatchNorm "
        f"wrapped, statistics every step), SGD, global batch {a.batch}; {a.steps} timed "
        f"steps after {a.warmup} warm-up steps, median step time per run, median over "
        f"{a.repeats} interleaved rounds. 2 workers: `MultiWorkerMirroredStrategy` on "
        f"127.0.0.1, {a.batch // 2} samples per worker and step, synchronized BatchNorm.",
        "",
        f"Machine: {_cpu()}, {os.cpu_count()} CPU cores; TensorFlow {tf.__version__}, "
        f"Keras {keras.__version__}, Python {platform.python_version()}.",
        "",
        "| configuration | ms/step (median) | runs | images/s | step time vs 1 worker |",
        "|---|---:|---|---:|---:|",
        f"| 1 worker (one process, no strategy) | {m1:.1f} | "
        f"{', '.join(f'{t:.0f}' for t in one)} | {a.batch / m1 * 1000:.0f} | 1.00 |",
        f"| 2 workers (MultiWorkerMirroredStrategy) | {m2:.1f} | "
        f"{', '.join(f'{t:.0f}' for t in two)} | {a.batch / m2 * 1000:.0f} | {m2 / m1:.2f} |",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if a.out:
        from acsl_tf._io import atomic_write_text

        atomic_write_text(a.out, text, overwrite=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
