"""DCP's stage-wise schedule: fine-tune, select, prune, one stage at a time.

As published (Liu, Zhuang, Tan et al., Algorithm 1), the network is pruned
stage by stage, a stage ending at an auxiliary head (the last stage at the
model's output). For stage p = 1, ..., P:

1. fine-tune the network pruned so far with the stage's auxiliary loss plus
   the final loss;
2. select the channels of the stage's layers (reconstruction MSE to the
   baseline plus lambda times the stage's auxiliary loss), re-fit their
   readers, and remove the other channels: the network is now thinner in
   stages 1..p.

:func:`select_channels` instead selects every stage in one pass after one
fine-tuning with all heads (the ``"once"`` schedule). The stage-wise run
works on a copy of the model kept at full width: a removed channel's slices
in the kernels that read it are zero and stay zero through the fine-tuning,
which makes the copy compute exactly what the thin network computes. The
result is an ordinary :class:`~acsl_tf.dcp.DCPResult` whose plan ``shrink``
applies to that copy (``result.model``).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import keras
import numpy as np

from acsl_tf import _keras, _validation
from acsl_tf.dcp import heads as _heads
from acsl_tf.dcp._engine import slot_channels
from acsl_tf.dcp.select import DCPResult, _select_group, _setup

__all__ = ["StageRecord", "select_channels_stagewise"]


@dataclass
class StageRecord:
    """One stage of a stage-wise selection.

    Attributes:
        index: Position of the stage (its head; the model's output last),
            as :attr:`LayerSelection.stage`.
        head: The layer the stage's head reads, or ``"output"``.
        groups: The channel groups selected in the stage, in order.
        epochs: Fine-tuning epochs before the selection.
        fit_seconds: Wall time of the fine-tuning.
        select_seconds: Wall time of the selection.
        history: The fine-tuning's ``History.history`` (losses per epoch:
            ``loss``, ``task_loss`` and ``aux{i}_loss`` of the stage's head).
        flops_reduction: Fraction of the FLOPs removed from the network
            after this stage (stages 1..p pruned; analytic counts).
        params_reduction: The same for the parameters.
    """

    index: int
    head: str
    groups: tuple
    epochs: int
    fit_seconds: float
    select_seconds: float
    history: dict
    flops_reduction: float
    params_reduction: float


class _ZeroRemoved(keras.callbacks.Callback):
    """Keep the removed channels' kernel slices at zero while training."""

    def __init__(self, items):
        super().__init__()
        self.items = list(items)

    def apply(self):
        for op, mask in self.items:
            op.kernel.assign(op.kernel * keras.ops.convert_to_tensor(mask, op.kernel.dtype))

    def on_train_begin(self, logs=None):
        self.apply()

    def on_train_batch_end(self, batch, logs=None):
        self.apply()


def _removed_masks(run) -> list:
    """``[(op, mask)]``: for every reader of a group selected so far, a mask
    over its kernel's input features, zero on the removed channels."""
    g, removed = run.g, run.ctx.removed
    masks = {}
    for _, r, calls, _ in run.cands:
        if r not in removed:
            continue
        for c in calls:
            slots = slot_channels(g, c, r)
            gone = (slots >= 0) & ~np.isin(slots, removed[r])
            op = c.op
            rank = len(op.kernel.shape)
            m = (~gone).astype(np.float32).reshape((1,) * (rank - 2) + (len(slots), 1))
            prev = masks.get(id(op))
            masks[id(op)] = (op, m if prev is None else prev[1] * m)
    return list(masks.values())


def _make_optimizer(optimizer):
    if optimizer is None:
        return keras.optimizers.SGD(0.01, momentum=0.9)
    if isinstance(optimizer, keras.optimizers.Optimizer):
        # a fresh copy per stage: each stage trains another set of variables
        return optimizer.__class__.from_config(optimizer.get_config())
    if isinstance(optimizer, str):
        return keras.optimizers.get(optimizer)
    if callable(optimizer):
        opt = optimizer()
        if not isinstance(opt, keras.optimizers.Optimizer):
            raise TypeError(
                "optimizer, when a callable, must return a keras optimizer. "
                f"Received: a callable returning {type(opt).__name__}"
            )
        return opt
    raise TypeError(
        "optimizer must be None, a keras optimizer, its name, or a callable returning one. "
        f"Received: optimizer of type {type(optimizer).__name__}"
    )


def _copy_with_heads(model, heads):
    """A copy of ``model`` (same layer names and weights) and its heads'
    copies re-pointed at it."""
    work = keras.models.clone_model(model)
    work.set_weights(model.get_weights())
    if heads is None:
        return work, None
    if not isinstance(heads, _heads.AuxiliaryHeads):
        raise TypeError(
            "heads must be the AuxiliaryHeads model of with_auxiliary_heads(model). "
            f"Received: heads of type {type(heads).__name__}"
        )
    if heads.model is not model:
        raise ValueError(
            "heads wraps another model; pass the model that with_auxiliary_heads wrapped. "
            f"Received: heads.model={heads.model.name!r}, model={model.name!r}"
        )
    copies = []
    for h in heads.heads:
        c = keras.models.clone_model(h)
        c.set_weights(h.get_weights())
        copies.append(c)
    aux = _heads.AuxiliaryHeads(
        work,
        heads.points,
        copies,
        task=heads.task,
        task_loss=heads.task_loss,
        aux_loss=heads.aux_loss,
        aux_weight=heads.aux_weight,
    )
    return work, aux


def _reductions(run):
    from acsl_tf.pruning import plan_shrink

    p = plan_shrink(run.ctx.model, keep=run.keep, graph=run.g, criterion="l1")
    return p, p.flops_reduction, p.params_reduction


def select_channels_stagewise(
    model,
    x,
    y,
    *,
    heads=None,
    stage_epochs: int = 1,
    train_data=None,
    steps_per_epoch: int | None = None,
    batch_size: int = 64,
    optimizer=None,
    callbacks=None,
    run_eagerly: bool = False,
    channels=None,
    target_flops: float | None = None,
    target_params: float | None = None,
    epsilon: float | None = None,
    aux_weight: float = 1.0,
    task_loss=None,
    steps: int = 5,
    learning_rate: float = 0.01,
    momentum: float = 0.9,
    n_samples: int = 256,
    min_channels: int = 1,
    layers=None,
    ignored_layers=(),
    per_step: int | float = 1,
    verbose: int = 1,
) -> DCPResult:
    """DCP with the published stage-wise schedule.

    The stages are the auxiliary heads of ``heads`` in graph order, then the
    model's output. A channel group belongs to the stage of the first head
    its readers' outputs reach (as in :func:`select_channels`). For each
    stage that has groups to select: fine-tune the copy of the network pruned
    so far for ``stage_epochs`` epochs with the stage's auxiliary loss plus
    the task loss (the task loss alone for the output stage), then select the
    stage's groups and remove the other channels. The reconstruction target
    of every stage is ``model`` itself (the baseline, not changed). The
    removed channels are kept at zero through the later fine-tunings.

    The targets (``channels``, ``target_flops``, ...) are resolved once on
    the whole network, as for :func:`select_channels`. With
    ``stage_epochs=0`` the run is :func:`select_channels` with the groups
    visited stage by stage: for networks whose groups' stages follow the
    graph order (chains, residual stages) the same selection.

    Args:
        model: A functional ``keras.Model`` (not changed).
        x, y: Calibration data (the first ``n_samples``); also the
            fine-tuning data unless ``train_data`` is given.
        heads: The :class:`~acsl_tf.dcp.AuxiliaryHeads` of ``model`` (not
            changed: the run trains copies). Without heads there is one
            stage, the model's output.
        stage_epochs: Fine-tuning epochs before each stage's selection.
        train_data: Fine-tuning data for ``fit`` (e.g. a ``tf.data``
            pipeline of ``(x, y)`` batches, shuffled by itself) instead of
            ``x, y``.
        steps_per_epoch: Steps per epoch with ``train_data``.
        batch_size: Fine-tuning batch size on ``x, y``.
        optimizer: Fine-tuning optimizer: None (SGD 0.01, momentum 0.9), an
            optimizer (a fresh copy of it per stage), its name, or a callable
            returning one.
        callbacks: More ``fit`` callbacks for every stage's fine-tuning.
        run_eagerly: Run the fine-tuning eagerly.
        channels, target_flops, target_params, epsilon, aux_weight,
        task_loss, steps, learning_rate, momentum, n_samples, min_channels,
        layers, ignored_layers, per_step: As for :func:`select_channels`.
        verbose: 0 silent; 1 a line per stage, the ``fit`` progress and a
            progress bar per group; 2 also log lines.

    Returns:
        A :class:`~acsl_tf.dcp.DCPResult` with ``schedule="stagewise"``:
        ``result.model`` is the fine-tuned full-width copy (its removed
        channels' kernel slices zero), ``result.plan`` its
        :class:`~acsl_tf.ShrinkPlan`, ``result.apply()`` (or
        ``shrink(result.model, plan=result.plan)``) the thin model without
        the heads, ``result.heads`` the trained heads' copies and
        ``result.stages`` one :class:`StageRecord` per stage.

    Raises:
        ValueError: For the errors of :func:`select_channels`, a negative
            ``stage_epochs``, or fine-tuning without ``y``.
        TypeError: For heads that are not an ``AuxiliaryHeads`` or an
            optimizer of the wrong kind.

    Example:
        >>> aux = acsl_tf.dcp.with_auxiliary_heads(model)
        >>> res = acsl_tf.dcp.select_channels_stagewise(
        ...     model, x, y, heads=aux, stage_epochs=1, target_flops=0.5)
        >>> small = res.apply()
    """
    t0 = time.perf_counter()
    _keras.check_graph_model(model, "select_channels_stagewise")
    stage_epochs = _validation.integer(stage_epochs, "stage_epochs", minimum=0)
    batch_size = _validation.positive_int(batch_size, "batch_size")
    if steps_per_epoch is not None:
        steps_per_epoch = _validation.positive_int(steps_per_epoch, "steps_per_epoch")
    if stage_epochs and y is None and train_data is None:
        raise ValueError(
            "The stage-wise fine-tuning trains on the task loss and needs the targets; pass y "
            "(or train_data), or stage_epochs=0. Received: y=None"
        )
    _make_optimizer(optimizer)  # fails early on a wrong kind
    work, aux = _copy_with_heads(model, heads)
    run = _setup(
        work,
        x,
        y,
        heads=aux,
        channels=channels,
        target_flops=target_flops,
        target_params=target_params,
        epsilon=epsilon,
        aux_weight=aux_weight,
        task_loss=task_loss,
        steps=steps,
        learning_rate=learning_rate,
        momentum=momentum,
        n_samples=n_samples,
        min_channels=min_channels,
        layers=layers,
        ignored_layers=ignored_layers,
        per_step=per_step,
        caller="select_channels_stagewise",
        reference=model,
    )
    ctx, g = run.ctx, run.g
    last = max(len(ctx.stages) - 1, 0)
    by_stage: dict = {}
    for i, (_, _, calls, _) in enumerate(run.cands):
        si = ctx.stage_for(calls)[0]
        by_stage.setdefault(last if si is None else si, []).append(i)
    order = sorted(by_stage)
    records = []
    for k, si in enumerate(order):
        st = ctx.stages[si] if si < len(ctx.stages) else None
        head_name = st.name if st is not None else "output"
        idx = by_stage[si]
        if verbose:
            what = (
                f"its head ({head_name}) and the task loss"
                if st is not None and st.head is not None
                else "the task loss"
            )
            print(
                f"DCP stage {k + 1}/{len(order)} ({head_name}): {len(idx)} group(s); "
                + (
                    f"fine-tuning {stage_epochs} epoch(s) with {what}"
                    if stage_epochs
                    else "no fine-tuning"
                ),
                flush=True,
            )
        t1 = time.perf_counter()
        history = {}
        if stage_epochs:
            history = _fit_stage(
                work,
                aux,
                st,
                x,
                y,
                epochs=stage_epochs,
                train_data=train_data,
                steps_per_epoch=steps_per_epoch,
                batch_size=batch_size,
                optimizer=_make_optimizer(optimizer),
                callbacks=[_ZeroRemoved(_removed_masks(run))] + list(callbacks or []),
                run_eagerly=run_eagerly,
                verbose=verbose,
            )
        t2 = time.perf_counter()
        for i in idx:
            _select_group(run, i, verbose)
        # write the stage's re-fitted kernels into the copy: its later stages
        # are fine-tuned and selected on the network pruned so far
        masks = {id(op): m for op, m in _removed_masks(run)}
        for op in g.trace.all_ops:
            w = ctx.kernels.get(id(op))
            if w is not None:
                m = masks.get(id(op))
                op.kernel.assign(w if m is None else w * m)
        ctx.kernels.clear()
        t3 = time.perf_counter()
        _, fr, pr = _reductions(run)
        records.append(
            StageRecord(
                index=si,
                head=head_name,
                groups=tuple(run.cands[i][3] for i in idx),
                epochs=stage_epochs,
                fit_seconds=t2 - t1,
                select_seconds=t3 - t2,
                history={key: [float(v) for v in vals] for key, vals in history.items()},
                flops_reduction=fr,
                params_reduction=pr,
            )
        )
        if verbose:
            print(
                f"DCP stage {k + 1}/{len(order)} done: FLOPs -{fr:.1%}, params -{pr:.1%} so far "
                f"(fine-tuning {t2 - t1:.1f} s, selection {t3 - t2:.1f} s)",
                flush=True,
            )
    plan, _, _ = _reductions(run)
    plan = dataclasses.replace(plan, criterion="dcp")
    ops = {}
    for sel in run.layers:
        for name in sel.consumers:
            ops[name] = None
    by_name = {g.name(op): op for op in g.trace.all_ops}
    kernels = {name: np.asarray(by_name[name].kernel) for name in ops}
    return DCPResult(
        keep={_k: tuple(int(i) for i in v) for _k, v in run.keep.items()},
        plan=plan,
        layers=run.layers,
        kernels=kernels,
        skipped=run.skipped,
        seconds=time.perf_counter() - t0,
        model=work,
        heads=aux,
        schedule="stagewise",
        stages=records,
    )


def _fit_stage(
    work,
    aux,
    stage,
    x,
    y,
    *,
    epochs,
    train_data,
    steps_per_epoch,
    batch_size,
    optimizer,
    callbacks,
    run_eagerly,
    verbose,
) -> dict:
    """Fine-tune ``work`` with the stage's head loss plus the task loss."""
    if stage is not None and stage.head is not None:
        i = aux.points.index(stage.name)
        net = _heads.AuxiliaryHeads(
            work,
            [aux.points[i]],
            [aux.heads[i]],
            task=aux.task,
            task_loss=aux.task_loss,
            aux_loss=aux.aux_loss,
            aux_weight=aux.aux_weight,
        )
        net.compile(optimizer, run_eagerly=run_eagerly)
    else:
        loss = stage.loss if stage is not None else None
        if loss is None:
            loss = _heads.default_loss(_heads.infer_task(work))
        net = work
        net.compile(optimizer, loss=loss, run_eagerly=run_eagerly)
    fit_verbose = 0 if not verbose else (2 if verbose > 1 else 1)
    if train_data is not None:
        h = net.fit(
            train_data,
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            shuffle=False,  # a pipeline shuffles itself
            callbacks=callbacks,
            verbose=fit_verbose,
        )
    else:
        h = net.fit(
            x,
            y,
            epochs=epochs,
            batch_size=batch_size,
            shuffle=True,
            callbacks=callbacks,
            verbose=fit_verbose,
        )
    out = dict(h.history)
    if stage is not None and stage.head is not None:  # name the head by its stage
        i = aux.points.index(stage.name)
        out = {(f"aux{i + 1}_loss" if k == "aux1_loss" else k): v for k, v in out.items()}
    return out
