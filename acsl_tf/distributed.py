"""Multi-worker sparsity training on ``tf.distribute``: local clusters, worker
launching, data sharding and the check of the distribution strategy.

ACSL training is ordinary Keras training with a penalty, so it runs under
``tf.distribute.MultiWorkerMirroredStrategy`` like any other model: every
worker process runs the same script with its own ``TF_CONFIG``. This module
holds what such a job needs around the training itself:

- :func:`free_ports`, :func:`local_cluster_configs`: the ``TF_CONFIG`` of a
  cluster of N workers on this machine (loopback address only, ports chosen
  free at run time).
- :func:`launch_local_workers`: starts the N processes, waits with a timeout,
  kills all of them (their whole process groups) as soon as one fails or the
  time is up, and returns their outputs.
- :func:`global_batch_dataset_fn`: the input function for
  ``strategy.distribute_datasets_from_function`` that gives every replica its
  contiguous slice of each global batch, so a job of N workers sees exactly
  the global batches of a single-process run.
- :func:`enable_multiworker_fit`: works around a Keras 3 bug that stops
  ``Model.fit`` under ``MultiWorkerMirroredStrategy`` before the first step
  (keras-team/keras#20585).
- :func:`worker_backup_dir`: one ``BackupAndRestore`` directory per worker
  (Keras' callback writes its files from every worker).
- :func:`check_strategy`: raises a clear error under a strategy that ACSL
  training does not support.

docs/DISTRIBUTED.md describes the launch on a real cluster, what is
synchronised and how, and the measured scaling.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = [
    "LOOPBACK",
    "SUPPORTED_STRATEGIES",
    "UnsupportedStrategyError",
    "WorkerJobError",
    "WorkerResult",
    "check_strategy",
    "enable_multiworker_fit",
    "free_ports",
    "global_batch_dataset_fn",
    "launch_local_workers",
    "local_cluster_configs",
    "task_index",
    "worker_backup_dir",
]

#: The only address local clusters use.
LOOPBACK = "127.0.0.1"

#: Class names of the strategies ACSL training is tested under (the default
#: strategy, i.e. no strategy, is supported as well).
SUPPORTED_STRATEGIES = (
    "OneDeviceStrategy",
    "MirroredStrategy",
    "MultiWorkerMirroredStrategy",
    "CollectiveAllReduceStrategy",
)

#: Strategies that may work but cannot be tested here (no TPU): a warning.
UNTESTED_STRATEGIES = ("TPUStrategy",)

#: Strategies known not to work with ACSL training in Keras 3, with the reason
#: (matched against the names of the strategy's classes: ParameterServerStrategyV2...).
_UNSUPPORTED_REASONS = {
    "ParameterServerStrategy": (
        "Keras 3's Model.fit does not drive tf.distribute.coordinator.ClusterCoordinator, "
        "which parameter-server training needs (fit stops with 'To use this dataset, you "
        "need to pass this dataset to ClusterCoordinator.create_per_worker_dataset'), and "
        "the wrapper's statistics rely on synchronous replicas whose assignments are "
        "aggregated in every step, which asynchronous parameter-server training does not have"
    ),
    "CentralStorageStrategy": (
        "CentralStorageStrategy is experimental and untested with the wrapper's aggregated "
        "non-trainable statistics"
    ),
}


class UnsupportedStrategyError(ValueError):
    """ACSL training was started under a ``tf.distribute`` strategy it does not
    support."""


class WorkerJobError(RuntimeError):
    """A local multi-worker job failed or timed out.

    Attributes:
        results: the :class:`WorkerResult` of every worker (outputs included).
        timed_out: whether the job ran past its timeout.
    """

    def __init__(self, message: str, results: list[WorkerResult], timed_out: bool):
        super().__init__(message)
        self.results = results
        self.timed_out = timed_out


@dataclasses.dataclass
class WorkerResult:
    """What one worker process of a local job left behind.

    Attributes:
        index: the worker's task index in ``TF_CONFIG``.
        returncode: its exit status (negative: killed by that signal).
        stdout: its standard output.
        stderr: its standard error.
        killed: whether the launcher killed it (another worker failed, or the
            timeout).
    """

    index: int
    returncode: int | None
    stdout: str
    stderr: str
    killed: bool = False


# ---------------------------------------------------------------------- cluster


def free_ports(n: int, host: str = LOOPBACK) -> list[int]:
    """``n`` distinct TCP ports that are free on ``host`` right now.

    Every port is found by binding to port 0 (the kernel picks a free one);
    all sockets stay open until all ``n`` are found, so the ports are
    distinct. A port can be taken by another process between this call and
    its use; :func:`launch_local_workers` asks for fresh ports on every launch.

    Args:
        n: how many ports (>= 1).
        host: the address to bind; only the loopback address is accepted.

    Returns:
        The port numbers.

    Raises:
        ValueError: ``n`` < 1, or ``host`` is not the loopback address.

    Example:

    >>> ports = free_ports(2)
    >>> len(set(ports)) == 2
    True
    """
    _check_count(n, "n")
    _check_loopback(host)
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def local_cluster_configs(
    num_workers: int, ports: Sequence[int] | None = None
) -> list[dict[str, Any]]:
    """The ``TF_CONFIG`` dicts of a cluster of ``num_workers`` workers on this
    machine, one per worker (worker 0 is the chief).

    Args:
        num_workers: number of worker processes (>= 1).
        ports: one port per worker; by default free ones (:func:`free_ports`).

    Returns:
        ``[{"cluster": {"worker": ["127.0.0.1:p0", ...]}, "task": {"type":
        "worker", "index": i}}, ...]``; pass ``json.dumps`` of entry ``i`` as
        the ``TF_CONFIG`` environment variable of worker ``i``.

    Raises:
        ValueError: ``num_workers`` < 1, or ``ports`` of the wrong length,
            repeated or out of range.

    Example:

    >>> configs = local_cluster_configs(2, ports=[23456, 23457])
    >>> configs[1]["task"]
    {'type': 'worker', 'index': 1}
    """
    _check_count(num_workers, "num_workers")
    if ports is None:
        ports = free_ports(num_workers)
    ports = [int(p) for p in ports]
    if len(ports) != num_workers or len(set(ports)) != num_workers:
        raise ValueError(
            f"`ports` must hold {num_workers} distinct port numbers, one per worker. "
            f"Received: ports={ports}"
        )
    if not all(0 < p < 65536 for p in ports):
        raise ValueError(f"Port numbers must be in 1..65535. Received: ports={ports}")
    workers = [f"{LOOPBACK}:{p}" for p in ports]
    return [
        {"cluster": {"worker": list(workers)}, "task": {"type": "worker", "index": i}}
        for i in range(num_workers)
    ]


def task_index(tf_config: str | Mapping[str, Any] | None = None) -> int:
    """This process's worker index from ``TF_CONFIG`` (0 without one).

    Args:
        tf_config: a ``TF_CONFIG`` (JSON string or dict); by default the
            environment variable.

    Returns:
        ``task.index``, or 0 when there is no ``TF_CONFIG``.

    Raises:
        ValueError: ``TF_CONFIG`` is not valid JSON or has no integer task index.
    """
    if tf_config is None:
        tf_config = os.environ.get("TF_CONFIG", "")
    if isinstance(tf_config, str):
        if not tf_config.strip():
            return 0
        try:
            tf_config = json.loads(tf_config)
        except json.JSONDecodeError as e:
            raise ValueError(f"TF_CONFIG is not valid JSON ({e}): {tf_config!r}") from None
    task = tf_config.get("task") or {}
    index = task.get("index", 0)
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ValueError(
            f"TF_CONFIG's task.index must be a non-negative integer. Received: {task!r}"
        )
    return index


# ---------------------------------------------------------------------- launching


def _check_count(n, name):
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"`{name}` must be an integer. Received: {name}={n!r}")
    if n < 1:
        raise ValueError(f"`{name}` must be >= 1. Received: {name}={n}")


def _check_loopback(host):
    if host != LOOPBACK:
        raise ValueError(
            f"Local clusters bind the loopback address {LOOPBACK} only. Received: host={host!r}"
        )


def _kill_group(proc: subprocess.Popen) -> bool:
    """SIGKILL the worker's process group (it leads its own session). Returns
    whether it was still running."""
    if proc.poll() is not None:
        return False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    return True


def launch_local_workers(
    script: str | os.PathLike,
    num_workers: int = 2,
    args: Sequence[str] = (),
    *,
    timeout: float = 300.0,
    env: Mapping[str, str] | None = None,
    worker_env: Callable[[int], Mapping[str, str]] | None = None,
    python: str | None = None,
    cwd: str | os.PathLike | None = None,
    on_poll: Callable[[list[subprocess.Popen]], None] | None = None,
    poll_interval: float = 0.2,
    check: bool = True,
) -> list[WorkerResult]:
    """Run ``script`` as ``num_workers`` worker processes of a local
    ``MultiWorkerMirroredStrategy`` cluster and wait for them.

    Each worker gets its ``TF_CONFIG`` (:func:`local_cluster_configs`, fresh
    free loopback ports) and runs ``python script *args`` in a process group
    of its own. When one worker exits with an error, the others cannot go on
    (their collectives wait for it), so the launcher kills every remaining
    worker's process group at once; it does the same at the timeout and
    whenever it is interrupted (``KeyboardInterrupt``, an exception in
    ``on_poll``). No worker outlives the call.

    Outputs go to temporary files (no pipe can fill up and block a worker)
    and are returned.

    Args:
        script: the training script every worker runs.
        num_workers: number of worker processes (>= 1).
        args: command-line arguments passed to every worker.
        timeout: seconds to wait for the whole job (> 0).
        env: environment of the workers (default: this process's), to which
            ``TF_CONFIG`` is added.
        worker_env: optional ``index -> {name: value}`` of extra variables for
            one worker.
        python: the interpreter (default: this one).
        cwd: working directory of the workers.
        on_poll: called with the list of ``Popen`` objects every
            ``poll_interval`` seconds while the job runs, e.g. to kill one
            worker on purpose.
        poll_interval: seconds between polls (> 0).
        check: raise :class:`WorkerJobError` if a worker failed or the job
            timed out (otherwise return the results as they are).

    Returns:
        One :class:`WorkerResult` per worker, in task order.

    Raises:
        FileNotFoundError: ``script`` does not exist.
        ValueError, TypeError: invalid ``num_workers``, ``timeout`` or
            ``poll_interval``.
        WorkerJobError: (with ``check=True``) a worker exited with a non-zero
            status or the job timed out; the error holds every worker's output.

    Example:

    ```python
    results = launch_local_workers("train.py", 2, ["--epochs", "3"], timeout=600)
    print(results[0].stdout)  # the chief's output
    ```
    """
    script = os.fspath(script)
    if not os.path.isfile(script):
        raise FileNotFoundError(f"The worker script {script!r} does not exist.")
    _check_count(num_workers, "num_workers")
    for name, value in (("timeout", timeout), ("poll_interval", poll_interval)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"`{name}` must be a positive number. Received: {name}={value!r}")
    configs = local_cluster_configs(num_workers)
    base_env = dict(os.environ if env is None else env)
    python = python or sys.executable
    procs: list[subprocess.Popen] = []
    files = []
    killed: set[int] = set()
    timed_out = False
    with tempfile.TemporaryDirectory(prefix="acsl_tf-workers-") as tmp:
        try:
            for i, config in enumerate(configs):
                worker = dict(base_env, TF_CONFIG=json.dumps(config))
                if worker_env is not None:
                    worker.update({k: str(v) for k, v in worker_env(i).items()})
                out = open(os.path.join(tmp, f"worker{i}.out"), "w+b")  # noqa: SIM115
                err = open(os.path.join(tmp, f"worker{i}.err"), "w+b")  # noqa: SIM115
                files.append((out, err))
                procs.append(
                    subprocess.Popen(
                        [python, script, *map(str, args)],
                        stdout=out,
                        stderr=err,
                        stdin=subprocess.DEVNULL,
                        env=worker,
                        cwd=cwd,
                        start_new_session=True,
                    )
                )
            deadline = time.monotonic() + float(timeout)
            while True:
                codes = [p.poll() for p in procs]
                if all(c is not None for c in codes):
                    break
                if any(c not in (None, 0) for c in codes):
                    break  # one failed: the others would wait for it forever
                if time.monotonic() > deadline:
                    timed_out = True
                    break
                if on_poll is not None:
                    on_poll(procs)
                time.sleep(poll_interval)
        finally:
            for i, p in enumerate(procs):
                if _kill_group(p):
                    killed.add(i)
            # A worker that exited by itself may have left children in its group.
            for p in procs:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, signal.SIGKILL)
            results = []
            for i, (p, (out, err)) in enumerate(zip(procs, files)):
                texts = []
                for f in (out, err):
                    f.seek(0)
                    texts.append(f.read().decode("utf-8", "replace"))
                    f.close()
                results.append(WorkerResult(i, p.returncode, texts[0], texts[1], i in killed))
    failed = [r for r in results if r.returncode != 0]
    if check and (timed_out or failed):
        if timed_out:
            what = f"timed out after {timeout:g} s"
        else:
            # The first worker that failed by itself, not one killed afterwards.
            first = next((r for r in failed if not r.killed), failed[0])
            what = f"worker {first.index} exited with status {first.returncode}"
        tails = "\n".join(
            f"--- worker {r.index} (status {r.returncode}{', killed' if r.killed else ''}) "
            f"stderr tail:\n{r.stderr[-2000:]}"
            for r in results
        )
        raise WorkerJobError(
            f"The local {num_workers}-worker job of {script!r} {what}; every worker was "
            f"stopped.\n{tails}",
            results,
            timed_out,
        )
    return results


# ---------------------------------------------------------------------- data


def global_batch_dataset_fn(
    arrays: Sequence[Any], global_batch_size: int, *, repeat: bool = False
) -> Callable[[Any], Any]:
    """Input function for ``strategy.distribute_datasets_from_function`` that
    gives every replica its contiguous slice of each global batch.

    With ``R`` replicas in sync, global batch ``g`` is ``arrays[g*B:(g+1)*B]``
    (``B = global_batch_size``) and replica ``r`` gets rows
    ``[g*B + r*B/R, g*B + (r+1)*B/R)``, the same global batches a single
    process batching the arrays by ``B`` sees, in the same order. Each worker
    reads only its own rows. A last, incomplete global batch is dropped.

    Args:
        arrays: the NumPy arrays of the dataset (e.g. ``(x, y)``), equal
            first dimensions.
        global_batch_size: ``B``, a multiple of the number of replicas.
        repeat: repeat the dataset forever (use ``steps_per_epoch``).

    Returns:
        ``fn(input_context) -> tf.data.Dataset`` of per-replica batches.

    Raises:
        ValueError: (when called) ``B`` is not a multiple of the number of
            replicas, or the arrays' lengths differ.

    Example:

    ```python
    fn = global_batch_dataset_fn((x, y), 32)
    ds = strategy.distribute_datasets_from_function(fn)
    model.fit(ds, epochs=3, steps_per_epoch=len(x) // 32)
    ```
    """
    import numpy as np

    _check_count(global_batch_size, "global_batch_size")
    arrays = tuple(np.asarray(a) for a in arrays)
    lengths = {a.shape[0] for a in arrays}
    if len(lengths) != 1:
        raise ValueError(f"The arrays' first dimensions differ: {sorted(lengths)}")
    (n,) = lengths

    def dataset_fn(input_context):
        import tensorflow as tf

        replicas = int(input_context.num_replicas_in_sync)
        pipelines = int(input_context.num_input_pipelines)
        if global_batch_size % replicas:
            raise ValueError(
                f"The global batch size {global_batch_size} is not a multiple of the "
                f"{replicas} replicas in sync; choose a multiple so every replica gets "
                "an equal slice."
            )
        per_replica = global_batch_size // replicas
        per_pipeline = replicas // pipelines
        steps = n // global_batch_size
        first = input_context.input_pipeline_id * per_pipeline
        # Rows of this pipeline's replicas in every complete global batch.
        start = np.arange(steps)[:, None] * global_batch_size + first * per_replica
        rows = (start + np.arange(per_pipeline * per_replica)[None, :]).reshape(-1)
        ds = tf.data.Dataset.from_tensor_slices(tuple(a[rows] for a in arrays))
        ds = ds.batch(per_replica, drop_remainder=True)
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        ds = ds.with_options(options)
        return ds.repeat() if repeat else ds

    return dataset_fn


# ---------------------------------------------------------------------- Keras


def enable_multiworker_fit(model: Any, strategy: Any = None) -> Any:
    """Let ``model.fit`` run under ``MultiWorkerMirroredStrategy`` (Keras 3).

    Keras 3's TensorFlow trainer (3.6 to 3.15 at least, keras-team/keras#20585)
    builds a model created under a strategy from the first batch of the
    dataset: it passes the whole batch structure, ``(x, y)`` of per-replica
    values, to ``strategy.reduce``, which ``MirroredStrategy`` lets through
    but ``MultiWorkerMirroredStrategy`` refuses (``Attempt to convert a value
    (PerReplica...) to a Tensor``). The build needs only the shapes and
    dtypes, so this replaces, on this model only, that step by one that reads
    each value's first local replica (no collective, no change to the
    data).

    The same trainer then reduces the step's logs under this strategy with
    ``strategy.reduce("MEAN", value, axis=0)``, which fails on scalar logs
    (``Invalid reduction dimension 0 for input with 0 dimensions``). The logs
    are the results of Keras' metrics, whose variables are summed over all
    replicas in every step, so every replica holds the global value; this
    function wraps the model's ``train_step`` and ``test_step`` so that each
    scalar log gets a leading axis of length 1, and the mean over the
    replicas along it is that same global value again. Every other part of
    ``fit`` is Keras' own.
    Harmless under other strategies and with a Keras that has the bugs fixed.

    Call it after ``compile``, under or outside the strategy's scope.

    Args:
        model: a ``keras.Model`` created under ``strategy.scope()``.
        strategy: the strategy (default: the model's ``distribute_strategy``).

    Returns:
        ``model``.

    Raises:
        TypeError: ``model`` is not a Keras model with the TensorFlow trainer.

    Example:

    ```python
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        model = acsl_tf.prune_low_correlation(build_model(), penalty=1e-4)
        model.compile(keras.optimizers.SGD(0.1, momentum=0.9), loss)
    acsl_tf.distributed.enable_multiworker_fit(model)
    model.fit(dataset, epochs=10, steps_per_epoch=100)
    ```
    """
    import tensorflow as tf
    from keras import tree

    build = getattr(model, "_symbolic_build", None)
    if build is None or not hasattr(model, "_maybe_symbolic_build"):
        raise TypeError(
            "enable_multiworker_fit needs a Keras 3 model on the TensorFlow backend. "
            f"Received: {type(model).__name__}"
        )
    if strategy is None:
        strategy = model.distribute_strategy

    def first_local(value):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    def maybe_symbolic_build(iterator=None, data_batch=None):
        if getattr(model, "_distribute_strategy", None) is None:
            return  # Keras builds at trace time then
        if iterator is not None:
            for _, _, it in iterator:
                data_batch = tree.map_structure(first_local, next(it))
                break
        with strategy.scope():
            build(data_batch=data_batch)

    # Instance attributes: only this model's `fit`/`evaluate` use them.
    object.__setattr__(model, "_maybe_symbolic_build", maybe_symbolic_build)
    if _is_multi_worker(strategy) and not getattr(model, "_acsl_multiworker_steps", False):
        for name in ("train_step", "test_step"):
            object.__setattr__(model, name, _with_vector_logs(getattr(model, name)))
        object.__setattr__(model, "_acsl_multiworker_steps", True)
    return model


def _is_multi_worker(strategy) -> bool:
    extended = getattr(strategy, "extended", None)
    in_mode = getattr(extended, "_in_multi_worker_mode", None)
    return (
        "CollectiveAllReduceStrategy" in _strategy_names(strategy)
        and callable(in_mode)
        and bool(in_mode())
    )


def _with_vector_logs(step):
    """``step`` with every scalar tensor of its logs given a leading axis of 1."""
    from keras import ops, tree

    def wrapped(data):
        logs = step(data)

        def vector(v):
            if hasattr(v, "shape") and len(v.shape) == 0:
                return ops.expand_dims(v, 0)
            return v

        return tree.map_structure(vector, logs)

    return wrapped


# ---------------------------------------------------------------------- checkpoints


def worker_backup_dir(backup_dir: str | os.PathLike, strategy: Any = None) -> str:
    """The ``keras.callbacks.BackupAndRestore`` directory of this worker:
    ``<backup_dir>/worker-<task index>``.

    Keras' ``BackupAndRestore`` writes ``latest.weights.h5`` and its metadata
    from every worker, so workers that share a directory overwrite each
    other's half-written files. All workers hold the same state after every
    step, so each one can restore from its own copy.

    Args:
        backup_dir: the job's backup directory (shared or local).
        strategy: the strategy (default: the current one); its task id is
            used when it has one, else ``TF_CONFIG``.

    Returns:
        The worker's directory (not created: the callback creates it).
    """
    index = None
    if strategy is not None:
        index = getattr(getattr(strategy, "cluster_resolver", None), "task_id", None)
    if index is None:
        index = task_index()
    return os.path.join(os.fspath(backup_dir), f"worker-{int(index)}")


# ---------------------------------------------------------------------- strategies


def _strategy_names(strategy) -> list[str]:
    return [c.__name__ for c in type(strategy).__mro__]


def check_strategy(strategy: Any = None) -> str:
    """Check that ACSL training supports ``strategy``; return its class name.

    Supported, and tested: no strategy (the default one),
    ``OneDeviceStrategy``, ``MirroredStrategy`` and
    ``MultiWorkerMirroredStrategy``: synchronous data parallelism, where the
    wrapper's assignments in replica context are aggregated across replicas
    (docs/DISTRIBUTED.md). ``TPUStrategy`` is synchronous as well but cannot
    be tested here: it gets a ``UserWarning``. Every other strategy raises.

    Call it where the strategy is known and nothing has been trained yet:
    when the wrapper's variables are created (``PruneLowCorrelation.build``,
    under the strategy's scope) and at the start of ``fit`` (a callback's
    ``on_train_begin`` with ``self.model.distribute_strategy``).

    Args:
        strategy: a ``tf.distribute.Strategy``; by default the current one
            (``tf.distribute.get_strategy()``).

    Returns:
        The strategy's class name (``"_DefaultDistributionStrategy"`` for none).

    Raises:
        UnsupportedStrategyError: the strategy is not supported; the message
            names the supported ones.

    Example:

    >>> import tensorflow as tf
    >>> check_strategy(tf.distribute.OneDeviceStrategy("/cpu:0"))
    'OneDeviceStrategy'
    """
    import tensorflow as tf

    if strategy is None:
        strategy = tf.distribute.get_strategy()
    name = type(strategy).__name__
    mro = _strategy_names(strategy)
    reason = next(
        (r for key, r in _UNSUPPORTED_REASONS.items() if any(key in c for c in mro)), None
    )
    if reason is None and (
        "_DefaultDistributionStrategy" in mro or any(s in mro for s in SUPPORTED_STRATEGIES)
    ):
        return name
    if reason is None and any(s in c for s in UNTESTED_STRATEGIES for c in mro):
        warnings.warn(
            f"ACSL training under {name} is untested (no TPU was available to test it). "
            "The wrapper relies on synchronous replicas and cross-replica aggregation of its "
            "statistics, which TPUStrategy provides; compare a short run with a "
            "single-device run before relying on it.",
            UserWarning,
            stacklevel=2,
        )
        return name
    supported = ", ".join(("no strategy",) + SUPPORTED_STRATEGIES[:3])
    raise UnsupportedStrategyError(
        f"ACSL sparsity training does not support {name}"
        + (f": {reason}." if reason else ".")
        + f" Supported strategies: {supported} (synchronous data parallelism). "
        "Use MultiWorkerMirroredStrategy for training on several machines "
        "(docs/DISTRIBUTED.md)."
    )
