"""ACSL sparsity training of a tiny CNN, alone or as one worker of a
``MultiWorkerMirroredStrategy`` job; writes the final sparsity state as JSON.

    python multiworker_train.py --mode single --out single.json
    python scripts/launch_local_workers.py 2 tests/scripts/multiworker_train.py -- \
        --mode worker --out-dir results/

Both modes train on the same global batches in the same order: the single
process batches the arrays by ``--global-batch``; in a job every replica gets
its contiguous slice of each global batch
(:func:`acsl_tf.distributed.global_batch_dataset_fn`). The initial weights
come from a NumPy generator, not from the backend's random state.

Options for the checkpoint test: ``--backup-dir`` adds
``keras.callbacks.BackupAndRestore`` (one directory per worker, before
``BudgetStrength`` so the state is restored before the controller reads it);
``--pause-epoch``/``--pause-file`` make the worker whose index is in
``ACSL_MW_PAUSE_WORKER`` write ``--pause-file`` after the first batch of that
epoch and wait there to be killed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=("single", "worker"), required=True)
    p.add_argument("--out", help="JSON result file (single mode)")
    p.add_argument("--out-dir", help="directory of worker<i>.json (worker mode)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--global-batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--penalty", type=float, default=3e-2)
    p.add_argument("--target-flops", type=float, default=0.3)
    p.add_argument("--check-every", type=int, default=2, help="BudgetStrength update_every")
    p.add_argument("--backup-dir")
    p.add_argument("--pause-epoch", type=int)
    p.add_argument("--pause-file")
    p.add_argument("--time-steps", action="store_true", help="record per-step wall times")
    return p.parse_args(argv)


def _write_json(path, data):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def main(argv=None):
    args = parse_args(argv)
    import keras
    import numpy as np
    import tensorflow as tf

    import acsl_tf
    from acsl_tf import distributed
    from tests._models import small_cnn

    strategy = None
    if args.mode == "worker":
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        distributed.check_strategy(strategy)
        # The constructor returns once every worker has joined the cluster.
        print("CLUSTER_READY", strategy.num_replicas_in_sync, flush=True)
    index = distributed.task_index()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.samples, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 3, args.samples)
    steps = args.samples // args.global_batch

    scope = strategy.scope() if strategy is not None else tf.init_scope()
    with scope:
        base = small_cnn(synchronized=True)
        wrng = np.random.default_rng(1)
        base.set_weights(
            [
                (
                    wrng.uniform(0.5, 1.5, w.shape)
                    if "gamma" in v.path
                    else np.abs(wrng.normal(1.0, 0.1, w.shape))
                    if "variance" in v.path
                    else wrng.normal(0.0, 0.3, w.shape)
                ).astype("float32")
                for v, w in zip(base.weights, base.get_weights())
            ]
        )
        model = acsl_tf.prune_low_correlation(
            base, penalty=args.penalty, update_every=1, warmup=0, center=True
        )
        model.compile(
            optimizer=keras.optimizers.SGD(args.lr, momentum=0.9),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    if strategy is None:
        data = tf.data.Dataset.from_tensor_slices((x, y)).batch(args.global_batch).repeat()
    else:
        data = strategy.distribute_datasets_from_function(
            distributed.global_batch_dataset_fn((x, y), args.global_batch, repeat=True)
        )
        distributed.enable_multiworker_fit(model)
    wrappers = acsl_tf.get_wrappers(model)

    def state():
        return {
            w.layer.name: {
                # The controller's per-channel mask, where the wrapper has one.
                **(
                    {"budget_mask": np.asarray(w.budget_mask).tolist()}
                    if hasattr(w, "budget_mask")
                    else {}
                ),
                "step": int(np.asarray(w.step)),
                "updates": int(np.asarray(w.updates)),
                "affinity": np.asarray(w.affinity).tolist(),
                "strength": np.asarray(w.strength).tolist(),
                "gamma": np.asarray(w.layer.gamma).tolist(),
                "moving_mean": np.asarray(w.layer.moving_mean).tolist(),
                "budget_scale": float(np.asarray(w.budget_scale)),
                "controller_state": np.asarray(w.controller_state).tolist(),
                "penalty_total": np.asarray(w.penalty_total).tolist(),
            }
            for w in wrappers
        }

    record = {
        "mode": args.mode,
        "index": index,
        "epochs_run": [],
        "epoch_states": {},
        "step_times": [],
    }

    class Recorder(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if not record["epochs_run"]:
                record["start_state"] = state()
            record["epochs_run"].append(epoch)

        def on_epoch_end(self, epoch, logs=None):
            record["epoch_states"][str(epoch)] = state()

        def on_train_batch_begin(self, batch, logs=None):
            self._t = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            if args.time_steps:
                record["step_times"].append(time.perf_counter() - self._t)
            pause = os.environ.get("ACSL_MW_PAUSE_WORKER")
            if (
                args.pause_epoch is not None
                and pause is not None
                and int(pause) == index
                and record["epochs_run"][-1] == args.pause_epoch
                and batch == 0
            ):
                _write_json(args.pause_file, {"index": index, "pid": os.getpid()})
                time.sleep(300)  # killed here by the test
                raise SystemExit("the pause was not ended by a kill")

    budget = acsl_tf.BudgetStrength(
        target_flops=args.target_flops, update_every=args.check_every, verbose=0
    )
    callbacks = []
    if args.backup_dir:
        callbacks.append(
            keras.callbacks.BackupAndRestore(distributed.worker_backup_dir(args.backup_dir))
        )
    callbacks += [budget, Recorder()]
    hist = model.fit(
        data, epochs=args.epochs, steps_per_epoch=steps, verbose=0, callbacks=callbacks
    )
    record.update(
        replicas=strategy.num_replicas_in_sync if strategy is not None else 1,
        state=state(),
        history={k: [float(v) for v in vals] for k, vals in hist.history.items()},
        controller=budget.history,
    )
    if args.mode == "single":
        _write_json(args.out, record)
    else:
        _write_json(os.path.join(args.out_dir, f"worker{index}.json"), record)
    print("DONE", index, flush=True)


if __name__ == "__main__":
    main()
