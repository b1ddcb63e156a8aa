"""Reusable, task-agnostic steps of the pruning workflow.

baseline training -> ACSL / Network Slimming / CAP sparsity training ->
shrink to a budget -> fine-tune (optionally distilled) -> TFLite export and
latency measurement, for the three vision tasks of the project:

- ``"classification"``: Fashion-MNIST with :func:`acsl_tf.models.vgg_small`,
  metric ``accuracy`` (higher is better);
- ``"segmentation"``: composite Fashion-MNIST scenes
  (:func:`acsl_tf.datasets.make_segmentation_set`, 11 classes) with
  :func:`acsl_tf.models.unet`, metric ``mean_iou`` (higher is better);
- ``"counting"``: composite dense-counting scenes
  (:func:`acsl_tf.datasets.make_counting_set`) with
  :func:`acsl_tf.models.vgg16_decoder` predicting 1/8-resolution density
  maps, metric ``mae`` of the per-image counts (lower is better).

Sizes of :func:`make_task` (train / validation samples, input, default width):

=============  =====================  ======================  ======================
size           classification         segmentation            counting
=============  =====================  ======================  ======================
``"tiny"``     256 / 128, 28x28, 0.25  64 / 32, 32x32, 0.125   64 / 32, 32x32, 0.0625
``"quick"``    6000 / 1000, 0.5        600 / 200, 48x48, 0.25  600 / 200, 64x64, 0.125
``"full"``     60000 / 10000, 1.0      4000 / 500, 64x64, 0.5  3000 / 300, 96x96, 0.25
=============  =====================  ======================  ======================

``"tiny"`` is for tests (seconds); ``"quick"`` runs each step in well under a
minute on 2 CPU cores; ``"full"`` is for real measurements. The validation
sets are built from the Fashion-MNIST *test* images, so no item of the
training scenes appears in them.

Every training step feeds a repeated ``tf.data`` pipeline with
``steps_per_epoch`` (a finite dataset stalls ~4 s per epoch on CPU).

Example:
```python
from acsl_tf import workflow as wf

task = wf.make_task("classification", size="quick")
base = task.build_model()
wf.train(base, task, epochs=3, lr=0.05)
wrapped = wf.sparsity_train(base, task, epochs=4, target_flops=0.5)
small = wf.prune(wrapped, target_flops=0.5)
wf.finetune(small, task, epochs=2, teacher=base)
print(wf.record(small, task, export=wf.export_and_measure(small, task, "runs/x")))
```
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np

__all__ = [
    "SIZES",
    "TASKS",
    "Task",
    "compress",
    "evaluate",
    "export_and_measure",
    "finetune",
    "make_task",
    "predict",
    "prune",
    "recalibrate_bn",
    "record",
    "sparsity_train",
    "train",
]

TASKS = ("classification", "segmentation", "counting")

#: Configurations of :func:`make_task` per task and size.
SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "classification": {
        "tiny": dict(n_train=256, n_val=128, width=0.25, batch_size=64),
        "quick": dict(n_train=6000, n_val=1000, width=0.5, batch_size=128),
        "full": dict(n_train=60000, n_val=10000, width=1.0, batch_size=128),
    },
    "segmentation": {
        "tiny": dict(n_train=64, n_val=32, canvas=32, depth=2, width=0.125, batch_size=16, classes="fine"),
        "quick": dict(n_train=600, n_val=200, canvas=48, depth=3, width=0.25, batch_size=16, classes="fine"),
        "full": dict(n_train=4000, n_val=500, canvas=64, depth=3, width=0.5, batch_size=16, classes="fine"),
    },
    "counting": {
        "tiny": dict(
            n_train=64, n_val=32, canvas=32, width=0.0625, batch_size=16, count_range=(0, 20)
        ),
        "quick": dict(
            n_train=600, n_val=200, canvas=64, width=0.125, batch_size=16, count_range=(0, 80)
        ),
        "full": dict(
            n_train=3000, n_val=300, canvas=96, width=0.25, batch_size=16, count_range=(0, 200)
        ),
    },
}

_METHODS = ("acsl", "ns", "cap")


@dataclasses.dataclass
class Task:
    """A vision task: data, model builder, loss and the validation metric.

    Attributes:
        name: ``"classification"``, ``"segmentation"`` or ``"counting"``.
        build_model: ``fn(width=None, input_shape=None) -> keras.Model``
            (defaults: ``width`` and ``input_shape`` below).
        train_ds: ``fn() -> tf.data.Dataset``: shuffled, augmented, batched and
            **repeated**; use with ``steps_per_epoch``.
        val_ds: ``fn() -> tf.data.Dataset``: the validation set, finite,
            batched, not shuffled.
        x_val, y_val: The validation arrays (targets as fed to the loss).
        steps_per_epoch: Batches per training epoch.
        loss: ``fn() -> keras loss`` (a new object per compile).
        metrics: ``fn() -> list of keras metrics`` (new objects per compile).
        metric_name: Name of the task metric (``"accuracy"``, ``"mean_iou"``,
            ``"mae"``).
        higher_is_better: Direction of the metric.
        score: ``fn(y_true, y_pred) -> float``: the task metric on arrays.
        representative_data: Input samples for int8 calibration.
        input_shape: Model input shape ``(H, W, C)``.
        width: Default channel multiplier of ``build_model``.
        batch_size: Training batch size.
        distill_task: The ``task`` argument of :class:`acsl_tf.Distiller`.
        config: The size configuration used (see :data:`SIZES`).
        eager: Compile with ``run_eagerly`` (the ``"tiny"`` size: a few steps
            run faster eagerly than the graph tracing costs).
    """

    name: str
    build_model: Callable[..., keras.Model]
    train_ds: Callable[[], Any]
    val_ds: Callable[[], Any]
    x_val: np.ndarray
    y_val: np.ndarray
    steps_per_epoch: int
    loss: Callable[[], Any]
    metrics: Callable[[], list]
    metric_name: str
    higher_is_better: bool
    score: Callable[[np.ndarray, np.ndarray], float]
    representative_data: np.ndarray
    input_shape: tuple
    width: float
    batch_size: int
    distill_task: str
    config: dict = dataclasses.field(default_factory=dict)
    eager: bool = False

    def better(self, a: float, b: float) -> bool:
        """Whether metric value ``a`` is better than ``b`` for this task."""
        return a > b if self.higher_is_better else a < b


def _repeat_pipeline(x, y, batch_size, seed, augment_fn=None):
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed)
    if augment_fn is not None:
        ds = ds.map(augment_fn, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size, drop_remainder=True).repeat().prefetch(2)


def _finite_pipeline(x, y, batch_size):
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)


def _check_size(name, size):
    if name not in SIZES:
        raise ValueError(f"`name` must be one of {TASKS}. Received: name={name!r}")
    if size not in SIZES[name]:
        raise ValueError(
            f"`size` must be one of {tuple(SIZES[name])} for task {name!r}. Received: size={size!r}"
        )


def make_task(
    name: str,
    *,
    size: str = "quick",
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
    **overrides,
) -> Task:
    """Build a :class:`Task` with its data (generated / loaded now).

    Args:
        name: ``"classification"``, ``"segmentation"`` or ``"counting"``.
        size: ``"tiny"``, ``"quick"`` or ``"full"`` (see :data:`SIZES` and the
            module docstring).
        seed: Seed of the data subsets, scene generators and shuffling.
        data_dir: Fashion-MNIST directory (default: search the usual places,
            see :func:`acsl_tf.datasets.load_fashion_mnist`).
        **overrides: Replace entries of the size configuration, e.g.
            ``n_train=2000`` or ``width=0.25``.

    Returns:
        A :class:`Task`.

    Raises:
        ValueError: Unknown ``name``, ``size`` or override key.
        FileNotFoundError: Fashion-MNIST is not installed.

    Example:
    ```python
    task = make_task("segmentation", size="tiny")
    model = task.build_model()
    ```
    """
    _check_size(name, size)
    cfg = dict(SIZES[name][size])
    unknown = set(overrides) - set(cfg)
    if unknown:
        raise ValueError(
            f"Unknown configuration keys {sorted(unknown)} for task {name!r}; valid keys are "
            f"{sorted(cfg)}. Received: overrides={overrides!r}"
        )
    cfg.update(overrides)
    from acsl_tf.datasets import load_fashion_mnist

    (x_tr, y_tr), (x_te, y_te) = load_fashion_mnist(data_dir, normalize=True)
    builder = {
        "classification": _classification,
        "segmentation": _segmentation,
        "counting": _counting,
    }[name]
    task = builder(cfg, seed, (x_tr, y_tr), (x_te, y_te))
    task.config = dict(cfg, size=size, seed=seed)
    task.eager = size == "tiny"
    return task


def _subset(x, y, n, rng):
    if n > len(x):
        raise ValueError(f"Requested {n} samples but only {len(x)} are available. Received: n={n}")
    idx = rng.permutation(len(x))[:n]
    return x[idx], y[idx]


def _classification(cfg, seed, train, test):
    from acsl_tf.models import vgg_small

    rng = np.random.default_rng(seed)
    x_tr, y_tr = _subset(*train, cfg["n_train"], rng)
    x_va, y_va = _subset(*test, cfg["n_val"], rng)
    x_tr, x_va = x_tr.astype("float32"), x_va.astype("float32")
    if x_tr.ndim == 3:
        x_tr, x_va = x_tr[..., None], x_va[..., None]
    y_tr, y_va = y_tr.astype("int64"), y_va.astype("int64")
    bs = cfg["batch_size"]
    shape = tuple(x_tr.shape[1:])
    width = cfg["width"]

    def build(width=width, input_shape=shape):
        return vgg_small(input_shape, 10, width=width)

    def score(y, p):
        return float(np.mean(np.argmax(p, -1) == np.asarray(y).reshape(-1)))

    return Task(
        name="classification",
        build_model=build,
        train_ds=lambda: _repeat_pipeline(x_tr, y_tr, bs, seed),
        val_ds=lambda: _finite_pipeline(x_va, y_va, bs),
        x_val=x_va,
        y_val=y_va,
        steps_per_epoch=max(len(x_tr) // bs, 1),
        loss=lambda: keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=lambda: ["accuracy"],
        metric_name="accuracy",
        higher_is_better=True,
        score=score,
        representative_data=x_tr[:200],
        input_shape=shape,
        width=width,
        batch_size=bs,
        distill_task="classification",
    )


def _segmentation(cfg, seed, train, test):
    from acsl_tf.datasets import (
        SEGMENTATION_GROUPS,
        make_segmentation_set,
        segmentation_dataset,
    )
    from acsl_tf.metrics import MeanIoU, confusion_matrix, mean_iou_from_confusion
    from acsl_tf.models import unet

    c = cfg["canvas"]
    item = (max(8, c // 4), max(12, c // 2))
    classes = cfg.get("classes", "fine")
    if classes not in ("fine", "coarse"):
        raise ValueError(
            '`classes` must be "fine" (the 10 Fashion-MNIST classes) or "coarse" (merged by '
            f"shape: datasets.SEGMENTATION_GROUPS). Received: classes={classes!r}"
        )
    groups = SEGMENTATION_GROUPS if classes == "coarse" else None
    n_cls = 1 + (len(groups) if groups else 10)
    x_tr, y_tr = make_segmentation_set(
        cfg["n_train"], canvas=c, item_size=item, seed=seed, source=train, class_groups=groups
    )
    x_va, y_va = make_segmentation_set(
        cfg["n_val"], canvas=c, item_size=item, seed=seed + 1, source=test, class_groups=groups
    )
    bs = cfg["batch_size"]
    shape = tuple(x_tr.shape[1:])
    width, depth = cfg["width"], cfg["depth"]

    def build(width=width, input_shape=shape):
        return unet(input_shape, n_cls, width=width, depth=depth)

    def score(y, p):
        cm = confusion_matrix(np.asarray(y), np.asarray(p), n_cls, ignore_index=None, argmax=True)
        return float(mean_iou_from_confusion(cm))

    return Task(
        name="segmentation",
        build_model=build,
        train_ds=lambda: segmentation_dataset(
            x_tr, y_tr, batch_size=bs, repeat=True, seed=seed, drop_remainder=True
        ),
        val_ds=lambda: _finite_pipeline(x_va, y_va, bs),
        x_val=x_va,
        y_val=y_va,
        steps_per_epoch=max(len(x_tr) // bs, 1),
        loss=lambda: keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=lambda: [MeanIoU(n_cls, ignore_index=None)],
        metric_name="mean_iou",
        higher_is_better=True,
        score=score,
        representative_data=x_tr[:100],
        input_shape=shape,
        width=width,
        batch_size=bs,
        distill_task="segmentation",
    )


def _counting(cfg, seed, train, test):
    from acsl_tf.datasets import counting_dataset, make_counting_set
    from acsl_tf.datasets.density import downsample_density
    from acsl_tf.metrics import CountMAE
    from acsl_tf.models import vgg16_decoder

    c = cfg["canvas"]
    item = (max(3, c // 16), max(6, c // 6))
    kw = dict(canvas=c, count_range=tuple(cfg["count_range"]), item_size=item)
    x_tr, d_tr, _ = make_counting_set(cfg["n_train"], seed=seed, source=train, **kw)
    x_va, d_va, _ = make_counting_set(cfg["n_val"], seed=seed + 1, source=test, **kw)
    y_va = np.asarray(downsample_density(d_va, 8), np.float32)
    bs = cfg["batch_size"]
    shape = tuple(x_tr.shape[1:])
    width = cfg["width"]

    def build(width=width, input_shape=shape):
        return vgg16_decoder(input_shape, width=width)

    def score(y, p):
        y = np.asarray(y, np.float64).reshape(len(y), -1).sum(1)
        p = np.asarray(p, np.float64).reshape(len(p), -1).sum(1)
        return float(np.mean(np.abs(y - p)))

    return Task(
        name="counting",
        build_model=build,
        train_ds=lambda: counting_dataset(
            x_tr, d_tr, factor=8, batch_size=bs, repeat=True, seed=seed, drop_remainder=True
        ),
        val_ds=lambda: _finite_pipeline(x_va, y_va, bs),
        x_val=x_va,
        y_val=y_va,
        steps_per_epoch=max(len(x_tr) // bs, 1),
        loss=lambda: keras.losses.MeanSquaredError(),
        metrics=lambda: [CountMAE(name="mae")],
        metric_name="mae",
        higher_is_better=False,
        score=score,
        representative_data=x_tr[:100],
        input_shape=shape,
        width=width,
        batch_size=bs,
        distill_task="counting",
    )


# --------------------------------------------------------------------------- steps


def _check_epochs(epochs):
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
        raise ValueError(f"`epochs` must be an int >= 0. Received: epochs={epochs!r}")
    return int(epochs)


def _optimizer(optimizer, lr):
    if not isinstance(lr, keras.optimizers.schedules.LearningRateSchedule) and not lr > 0:
        raise ValueError(f"`lr` must be > 0. Received: lr={lr!r}")
    if optimizer == "sgd":
        return keras.optimizers.SGD(lr, momentum=0.9)
    if optimizer == "adam":
        return keras.optimizers.Adam(lr)
    if isinstance(optimizer, keras.optimizers.Optimizer):
        return optimizer
    raise ValueError(
        '`optimizer` must be "sgd" (momentum 0.9), "adam" or a keras optimizer. '
        f"Received: optimizer={optimizer!r}"
    )


def _fit(model, task, epochs, callbacks, verbose):
    if epochs == 0:
        return None
    return model.fit(
        task.train_ds(),
        epochs=epochs,
        steps_per_epoch=task.steps_per_epoch,
        callbacks=list(callbacks),
        verbose=verbose,
        shuffle=False,  # the dataset shuffles itself
    )


def train(
    model: keras.Model,
    task: Task,
    epochs: int,
    *,
    lr: float = 0.05,
    optimizer: str | keras.optimizers.Optimizer = "sgd",
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int = 2,
    recalibrate: int = 20,
    schedule: str = "constant",
):
    """Compile ``model`` with the task's loss and metrics and train it.

    Args:
        model: The model (trained in place).
        task: A :class:`Task`.
        epochs: Number of epochs (0 compiles only).
        lr: Learning rate.
        optimizer: ``"sgd"`` (momentum 0.9), ``"adam"`` or an optimizer object.
        callbacks: Keras callbacks.
        verbose: Keras verbosity (2 = one line per epoch).
        recalibrate: Batches of :func:`recalibrate_bn` run after training
            (0 = keep the moving statistics of ``fit``).
        schedule: ``"constant"`` (``lr`` throughout) or ``"cosine"`` (``lr``
            decayed to 1% of it over the ``epochs`` by a cosine; used to train
            baselines to a plateau). Ignored when ``optimizer`` is an object.

    Returns:
        The Keras ``History`` (None for 0 epochs).

    Raises:
        ValueError: Invalid ``epochs``, ``lr``, ``optimizer`` or ``schedule``.

    Example:
    ```python
    train(model, task, epochs=3, lr=0.05)
    ```
    """
    epochs = _check_epochs(epochs)
    if schedule not in ("constant", "cosine"):
        raise ValueError(
            f'`schedule` must be "constant" or "cosine". Received: schedule={schedule!r}'
        )
    rate = lr
    if schedule == "cosine" and epochs and not isinstance(optimizer, keras.optimizers.Optimizer):
        _optimizer(optimizer, lr)  # validates lr and optimizer
        rate = keras.optimizers.schedules.CosineDecay(
            float(lr), decay_steps=epochs * task.steps_per_epoch, alpha=0.01
        )
    model.compile(
        _optimizer(optimizer, rate), task.loss(), metrics=task.metrics(), run_eagerly=task.eager
    )
    hist = _fit(model, task, epochs, callbacks, verbose)
    if epochs and recalibrate:
        recalibrate_bn(model, task, recalibrate)
    return hist


def predict(model: keras.Model, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Inference-mode outputs of ``model`` on ``x``, batch by batch (no ``fit``/``predict``
    iterator set-up, so no per-call stall)."""
    outs = []
    for i in range(0, len(x), batch_size):
        y = model(x[i : i + batch_size], training=False)
        outs.append(keras.ops.convert_to_numpy(y))
    return np.concatenate(outs, axis=0)


def recalibrate_bn(model: keras.Model, task: Task, batches: int = 20) -> keras.Model:
    """Re-estimate the BatchNorm moving statistics on training batches
    (:func:`acsl_tf.recalibrate_batchnorm` on ``task.train_ds()``).

    After a short training run (or after channels were removed) the moving
    means/variances lag behind the weights: with Keras' default momentum 0.99
    they need several hundred steps to settle, and a model that trains well
    can evaluate badly. This runs ``batches`` training batches through the
    model in training mode, with each BN's momentum set so that the moving
    statistics become the plain average of the batch statistics (adaptive BN,
    as used by EagleEye to evaluate pruned networks). No weight is trained;
    the momenta are restored afterwards.

    Args:
        model: The model (updated in place).
        task: A :class:`Task` (its ``train_ds`` supplies the batches).
        batches: Number of batches (0 does nothing).

    Returns:
        ``model``.

    Example:
    ```python
    recalibrate_bn(small, task)
    ```
    """
    from acsl_tf.sparsity.batchnorm import recalibrate_batchnorm

    batches = _check_epochs(batches)
    if batches:
        recalibrate_batchnorm(model, task.train_ds(), steps=batches)
    return model


def evaluate(model: keras.Model, task: Task) -> float:
    """The task metric (``task.metric_name``) of ``model`` on the validation set.

    Works for plain, wrapped (``prune_low_correlation``) and shrunk models; the
    model's compile state is not touched.

    Args:
        model: A model mapping the task's inputs to its outputs.
        task: A :class:`Task`.

    Returns:
        The metric as a Python float (accuracy and mean IoU in [0, 1]; count
        MAE >= 0).

    Example:
    ```python
    acc = evaluate(model, make_task("classification", size="tiny"))
    ```
    """
    return task.score(task.y_val, predict(model, task.x_val, task.batch_size))


def sparsity_train(
    model: keras.Model,
    task: Task,
    *,
    epochs: int,
    method: str = "acsl",
    target_flops: float | None = None,
    penalty: float = 1e-3,
    lr: float = 0.05,
    threshold: float = 0.05,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int = 2,
    recalibrate: int = 20,
    budget_options: dict | None = None,
    **acsl_options,
) -> keras.Model:
    """Sparsity training on the BatchNorm gammas; returns the wrapped model.

    SGD with momentum 0.9 is used: Adam's per-parameter normalisation cancels
    the differences between the channels' penalties.

    Args:
        model: A trained (or fresh) model; it is not modified.
        task: A :class:`Task`.
        epochs: Training epochs.
        method: ``"acsl"`` (correlation-driven penalty, ``direction="redundant"``
            unless given), ``"ns"`` (Network Slimming: uniform L1) or ``"cap"``
            (uniform L1 with the context guiding vector tracked for the
            ``"cap"`` criterion).
        target_flops: Fraction of FLOPs to remove. With it the strength is
            adapted by :class:`acsl_tf.BudgetStrength` until
            the channels with ``|gamma| < threshold`` would remove that much.
        penalty: Base L1 strength lambda.
        lr: SGD learning rate.
        threshold: ``|gamma|`` counted as removable by ``BudgetStrength``.
        callbacks: Extra Keras callbacks.
        verbose: Keras verbosity.
        recalibrate: Batches of :func:`recalibrate_bn` after training (with
            batches, BudgetStrength's warning that the gammas were still moving
            at the end, which asks for exactly that, is not shown).
        budget_options: Extra keyword arguments of
            :class:`acsl_tf.BudgetStrength` (e.g. ``controller="epoch"``,
            ``reach_at=0.5``).
        **acsl_options: Passed to :func:`acsl_tf.prune_low_correlation`
            (e.g. ``affinity``, ``direction``, ``temperature``).

    Returns:
        The wrapped model (use :func:`prune` or :func:`acsl_tf.strip_pruning`).

    Raises:
        ValueError: Unknown ``method`` or invalid options.

    Example:
    ```python
    wrapped = sparsity_train(model, task, epochs=4, target_flops=0.5)
    ```
    """
    from acsl_tf.sparsity.api import prune_low_correlation
    from acsl_tf.sparsity.callbacks import BudgetStrength, StaleStatisticsWarning

    if method not in _METHODS:
        raise ValueError(f"`method` must be one of {_METHODS}. Received: method={method!r}")
    epochs = _check_epochs(epochs)
    opts = dict(acsl_options)
    if method == "ns":
        if opts.get("direction", "uniform") != "uniform":
            raise ValueError(
                'method="ns" is the uniform penalty; do not pass another `direction`. '
                f"Received: direction={opts['direction']!r}"
            )
        opts["direction"] = "uniform"
    elif method == "cap":
        opts["method"] = "cap"
        opts.setdefault("direction", "uniform")
    if target_flops is not None:
        opts["target"] = {"flops": float(target_flops)}
    wrapped = prune_low_correlation(model, penalty=penalty, **opts)
    cbs = list(callbacks)
    if target_flops is not None:
        bopts = dict(budget_options or {})
        bopts.setdefault("verbose", 1 if verbose else 0)
        cbs.append(BudgetStrength(threshold=threshold, **bopts))
    with warnings.catch_warnings():
        if recalibrate:
            # train() re-estimates the moving statistics right after fit, which
            # is what this warning of BudgetStrength asks the user to do.
            warnings.simplefilter("ignore", StaleStatisticsWarning)
        train(
            wrapped,
            task,
            epochs,
            lr=lr,
            optimizer="sgd",
            callbacks=cbs,
            verbose=verbose,
            recalibrate=recalibrate,
        )
    return wrapped


def prune(
    model: keras.Model,
    *,
    target_flops: float,
    criterion: str = "gamma",
    **shrink_options,
) -> keras.Model:
    """Physically remove channels until ``target_flops`` of the FLOPs are gone.

    Args:
        model: A plain or wrapped model (wrapped models are stripped first;
            the ``"cap"`` criterion needs the wrapped model from
            ``sparsity_train(..., method="cap")``).
        target_flops: Fraction (0..1) of the FLOPs to remove.
        criterion: ``"gamma"``, ``"l1"``, ``"random"``, ``"cap"`` or any
            registered criterion.
        **shrink_options: Passed to :func:`acsl_tf.shrink` (``round_to``,
            ``min_channels``, ``seed``...).

    Returns:
        A new, smaller ``keras.Model``.

    Raises:
        ValueError: ``target_flops`` outside (0, 1) or invalid options.

    Example:
    ```python
    small = prune(wrapped, target_flops=0.5)
    ```
    """
    from acsl_tf.pruning import shrink

    if not 0.0 < float(target_flops) < 1.0:
        raise ValueError(f"`target_flops` must be in (0, 1). Received: target_flops={target_flops}")
    return shrink(model, target_flops=float(target_flops), criterion=criterion, **shrink_options)


def finetune(
    model: keras.Model,
    task: Task,
    epochs: int,
    *,
    teacher: keras.Model | None = None,
    lr: float = 1e-3,
    optimizer: str | keras.optimizers.Optimizer = "adam",
    alpha: float | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int = 2,
    recalibrate: int = 20,
) -> keras.Model:
    """Fine-tune a (shrunk) model, optionally distilled from ``teacher``.

    Args:
        model: The student (trained in place).
        task: A :class:`Task`.
        epochs: Epochs.
        teacher: The unpruned model; when given, :class:`acsl_tf.Distiller`
            trains ``model`` against it (``task=task.distill_task``).
        lr: Learning rate.
        optimizer: ``"adam"``, ``"sgd"`` or an optimizer object.
        alpha: Distillation weight shortcut of :class:`acsl_tf.Distiller`.
        callbacks: Keras callbacks.
        verbose: Keras verbosity.
        recalibrate: Batches of :func:`recalibrate_bn` after fine-tuning.

    Returns:
        ``model`` (a plain model, compiled with the task's loss).

    Raises:
        ValueError: Invalid arguments.

    Example:
    ```python
    finetune(small, task, epochs=2, teacher=base)
    ```
    """
    epochs = _check_epochs(epochs)
    if teacher is None:
        train(
            model,
            task,
            epochs,
            lr=lr,
            optimizer=optimizer,
            callbacks=callbacks,
            verbose=verbose,
            recalibrate=recalibrate,
        )
        return model
    from acsl_tf.distill.distiller import Distiller

    d = Distiller(model, teacher, task=task.distill_task, alpha=alpha)
    d.compile(_optimizer(optimizer, lr), metrics=task.metrics(), run_eagerly=task.eager)
    _fit(d, task, epochs, callbacks, verbose)
    if epochs and recalibrate:
        recalibrate_bn(model, task, recalibrate)
    model.compile(
        _optimizer(optimizer, lr), task.loss(), metrics=task.metrics(), run_eagerly=task.eager
    )
    return model


def export_and_measure(
    model: keras.Model,
    task: Task,
    out_dir: str | os.PathLike,
    *,
    int8: bool = True,
    name: str = "model",
    runs: int = 100,
    threads: int = 1,
    overwrite: bool = True,
    progress: bool = True,
) -> dict:
    """Export float32 (and int8) TFLite files and measure their latency.

    Each file is checked against the Keras model by
    :func:`acsl_tf.export.to_tflite` (int8 with ``task.representative_data``
    as calibration data) and timed with :func:`acsl_tf.benchmark_tflite`
    (single-sample ``invoke()``, ``threads`` threads, median of ``runs``).

    Args:
        model: A plain Keras model (shrunk or not; strip wrappers first).
        task: A :class:`Task`.
        out_dir: Directory for ``<name>_float32.tflite`` / ``<name>_int8.tflite``
            (created if missing).
        int8: Also export the full-integer model.
        name: File name prefix: letters, digits, ``_``, ``-`` and ``.``, not
            starting with ``.`` or ``-`` (no path separators).
        runs: Timed invokes per model.
        threads: Interpreter threads.
        overwrite: Replace existing files.
        progress: Show a progress bar (tqdm, on stderr).

    Returns:
        A dict with ``tflite_bytes``, ``tflite_path``, ``latency_ms_float32``
        and, with ``int8``, ``int8_bytes``, ``int8_path``, ``latency_ms_int8``
        (medians, ms), and ``tflite_relative_error`` / ``int8_relative_error``
        (the output difference against Keras found by the verification).

    Raises:
        ValueError: Invalid model or arguments (e.g. a ``name`` that is not a
            plain file name); ``ParityError`` if an export disagrees with the
            Keras model.

    Example:
    ```python
    info = export_and_measure(small, task, "runs/cls")
    print(info["int8_bytes"], info["latency_ms_int8"])
    ```
    """
    from acsl_tf.export import benchmark_tflite, to_tflite

    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}", name):
        raise ValueError(
            "`name` is a file name prefix: 1-100 letters, digits, '_', '-' or '.', not starting "
            "with '.' or '-' and without path separators (choose the directory with `out_dir`). "
            f"Received: name={name!r}"
        )
    if not isinstance(out_dir, (str, os.PathLike)) or not os.fspath(out_dir):
        raise ValueError(f"`out_dir` must be a directory path. Received: out_dir={out_dir!r}")
    os.makedirs(out_dir, exist_ok=True)
    jobs = [("float32", "none")] + ([("int8", "int8")] if int8 else [])
    out: dict[str, Any] = {}
    bar = _progress(len(jobs) * 2, f"export+benchmark {name}", progress)
    for label, mode in jobs:
        path = os.path.join(os.fspath(out_dir), f"{name}_{label}.tflite")
        rep = to_tflite(
            model,
            path,
            quantization=mode,
            representative_data=task.representative_data if mode == "int8" else None,
            overwrite=overwrite,
        )
        bar.update(1)
        stats = benchmark_tflite(path, threads=threads, runs=runs)
        bar.update(1)
        key = "tflite" if label == "float32" else "int8"
        out[f"{key}_path"] = path
        out[f"{key}_bytes"] = os.path.getsize(path)
        out[f"latency_ms_{label}"] = stats.median_ms
        out[f"{key}_relative_error"] = rep.relative_error
    bar.close()
    return out


class _NoBar:
    def update(self, n=1):
        pass

    def close(self):
        pass


def _progress(total, desc, enabled):
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, desc=desc, file=sys.stderr, leave=False)


def compress(
    model: keras.Model,
    task: Task,
    *,
    targets: Sequence[float],
    method: str = "acsl",
    per_target: bool = True,
    sparsity_epochs: int = 3,
    finetune_epochs: int = 2,
    criterion: str | None = None,
    penalty: float = 1e-3,
    lr: float = 0.05,
    finetune_lr: float = 1e-3,
    teacher: keras.Model | None = None,
    verbose: int = 0,
    budget_options: dict | None = None,
    **acsl_options,
) -> dict[float, dict]:
    """Sparsity-train, prune and fine-tune ``model`` for each FLOPs target.

    With ``per_target=True`` (the default) sparsity training is aimed at each
    target separately: one sparsity-trained model per target, whose budget
    controller steers the removable FLOPs to that target. That is what a
    deployment with one budget wants; it costs ``sparsity_epochs`` per target.
    With ``per_target=False`` one sparsity-trained model, aimed at the most
    aggressive target, is pruned to every target (as Network Slimming does).

    Args:
        model: The trained, unpruned model (not modified).
        task: A :class:`Task`.
        targets: FLOPs fractions to remove, each in (0, 1).
        method: ``"acsl"``, ``"ns"`` or ``"cap"`` (see :func:`sparsity_train`).
        per_target: One sparsity training per target (True) or one for all.
        sparsity_epochs: Epochs of each sparsity training.
        finetune_epochs: Fine-tuning epochs after pruning (0: none).
        criterion: The :func:`prune` criterion (default: ``"cap"`` for
            ``method="cap"``, else ``"gamma"``).
        penalty: Base L1 strength of :func:`sparsity_train`.
        lr: SGD learning rate of sparsity training.
        finetune_lr: Fine-tuning learning rate.
        teacher: Distil from this model during fine-tuning (e.g. ``model``).
        verbose: Keras verbosity.
        budget_options: Passed to :func:`sparsity_train`.
        **acsl_options: Passed to :func:`sparsity_train`.

    Returns:
        ``{target: {"model": pruned model, "metric_sparse": ..., "metric_pruned":
        ..., "metric": ..., "params": ..., "flops": ..., "sparsity_target": ...}}``
        in the order of ``targets``.

    Raises:
        ValueError: Empty, repeated or out-of-range ``targets``, or invalid
            options of the steps.

    Example:
    ```python
    out = compress(base, task, targets=(0.5, 0.85), method="acsl")
    small = out[0.5]["model"]
    ```
    """
    try:
        ts = [float(t) for t in targets]
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"`targets` must be a sequence of FLOPs fractions in (0, 1). Received: targets={targets!r}"
        ) from e
    if not ts or len(set(ts)) != len(ts) or not all(0.0 < t < 1.0 for t in ts):
        raise ValueError(
            "`targets` must be distinct FLOPs fractions in (0, 1), at least one. "
            f"Received: targets={targets!r}"
        )
    if criterion is None:
        criterion = "cap" if method == "cap" else "gamma"
    sparse: dict[float, tuple] = {}
    out: dict[float, dict] = {}
    for t in ts:
        aim = t if per_target else max(ts)
        if aim not in sparse:
            wrapped = sparsity_train(
                model,
                task,
                epochs=sparsity_epochs,
                method=method,
                target_flops=aim,
                penalty=penalty,
                lr=lr,
                verbose=verbose,
                budget_options=budget_options,
                **acsl_options,
            )
            sparse[aim] = (wrapped, evaluate(wrapped, task))
        wrapped, metric_sparse = sparse[aim]
        small = prune(wrapped, target_flops=t, criterion=criterion)
        metric_pruned = evaluate(small, task)
        finetune(small, task, finetune_epochs, teacher=teacher, lr=finetune_lr, verbose=verbose)
        row = record(small, task)
        out[t] = dict(
            model=small,
            sparsity_target=aim,
            metric_sparse=metric_sparse,
            metric_pruned=metric_pruned,
            metric=row["metric"],
            params=row["params"],
            flops=row["flops"],
        )
    return out


def record(
    model: keras.Model,
    task: Task,
    *,
    metric: float | None = None,
    export: dict | None = None,
    **extra,
) -> dict:
    """One row of a results table: metric, params, FLOPs, sizes and latency.

    Args:
        model: A plain, wrapped or shrunk model (wrappers are not counted).
        task: A :class:`Task`.
        metric: The task metric; computed with :func:`evaluate` if None.
        export: The dict of :func:`export_and_measure`, merged in.
        **extra: More fields (e.g. ``stage="pruned"``).

    Returns:
        A JSON-serialisable dict with ``task``, ``metric_name``, ``metric``,
        ``params``, ``flops`` plus the export fields and ``extra``.

    Example:
    ```python
    row = record(small, task, stage="pruned")
    ```
    """
    from acsl_tf.pruning.profile import profile
    from acsl_tf.sparsity.api import get_wrappers, strip_pruning

    plain = strip_pruning(model) if get_wrappers(model) else model
    prof = profile(plain)
    row = {
        "task": task.name,
        "metric_name": task.metric_name,
        "metric": float(evaluate(plain, task) if metric is None else metric),
        "params": int(prof.total_params),
        "flops": int(prof.total_flops),
    }
    for k, v in (export or {}).items():
        if not k.endswith("_path"):
            row[k] = v
    row.update(extra)
    return row
