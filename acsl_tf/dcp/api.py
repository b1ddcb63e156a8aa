"""DCP in one call: auxiliary heads, fine-tuning, channel selection."""

from __future__ import annotations

import keras

from acsl_tf import _validation
from acsl_tf.dcp.heads import with_auxiliary_heads
from acsl_tf.dcp.select import select_channels
from acsl_tf.dcp.stagewise import select_channels_stagewise

SCHEDULES = ("once", "stagewise")

__all__ = ["discrimination_aware_prune"]


def discrimination_aware_prune(
    model,
    x,
    y,
    *,
    channels=None,
    target_flops: float | None = None,
    target_params: float | None = None,
    epsilon: float | None = None,
    at=None,
    task: str | None = None,
    head=None,
    aux_weight: float = 1.0,
    epochs: int = 1,
    batch_size: int = 64,
    optimizer=None,
    verbose: int = 1,
    schedule: str = "once",
    stage_epochs: int | None = None,
    **select_kwargs,
):
    """Discrimination-aware channel pruning (DCP) of ``model``.

    Attaches auxiliary heads (:func:`~acsl_tf.dcp.with_auxiliary_heads`),
    fine-tunes the model with the task loss plus the auxiliary losses for
    ``epochs`` epochs (0 skips it), then selects channels group by group
    with the heads' losses: in one pass (``schedule="once"``,
    :func:`~acsl_tf.dcp.select_channels`), or stage by stage as published
    (``schedule="stagewise"``,
    :func:`~acsl_tf.dcp.select_channels_stagewise`: before each stage's
    selection, ``stage_epochs`` epochs with the stage's head and the task
    loss on the network pruned so far). ``model`` is trained in place by the
    first fine-tuning; the selection (and the stage-wise fine-tuning, which
    trains a copy) does not change it.

    Args:
        model: A functional ``keras.Model``.
        x, y: Training data (the fine-tuning uses all of it, the selection
            the first ``n_samples``).
        channels, target_flops, target_params, epsilon: The stopping rule
            (exactly one), see :func:`~acsl_tf.dcp.select_channels`.
        at, task, head: Head placement and kind, see
            :func:`~acsl_tf.dcp.with_auxiliary_heads`.
        aux_weight: lambda (published: 1), for the fine-tuning and the
            selection.
        epochs: Fine-tuning epochs with all heads, before the selection
            (stage-wise: before the first stage; 0 trains each head only in
            its stage, as published).
        batch_size: Fine-tuning batch size.
        optimizer: Fine-tuning optimizer (default SGD 0.01, momentum 0.9;
            the stage-wise schedule uses a fresh copy of it per stage).
        verbose: Verbosity of ``fit`` and of the selection.
        schedule: ``"once"`` (default) or ``"stagewise"``.
        stage_epochs: Stage-wise only: fine-tuning epochs before each
            stage's selection (default 1).
        **select_kwargs: More arguments of
            :func:`~acsl_tf.dcp.select_channels` (``steps``,
            ``learning_rate``, ``n_samples``, ``layers``, ...).

    Returns:
        A :class:`~acsl_tf.dcp.DCPResult`: ``result.apply()`` is the thin
        model with the re-optimised kernels; ``result.heads`` the trained
        heads; stage-wise, ``result.stages`` the per-stage records.

    Raises:
        ValueError: For an unknown ``schedule``, ``stage_epochs`` with the
            ``"once"`` schedule, and the errors of the selection.

    Example:
        >>> res = acsl_tf.discrimination_aware_prune(model, x, y, target_flops=0.5)
        >>> small = res.apply()
    """
    _validation.choice(schedule, "schedule", SCHEDULES, kind=str)
    if schedule == "once" and stage_epochs is not None:
        raise ValueError(
            "stage_epochs is the per-stage fine-tuning of schedule='stagewise'. "
            f"Received: schedule={schedule!r}, stage_epochs={stage_epochs!r}"
        )
    epochs = _validation.integer(epochs, "epochs", minimum=0)
    aux = with_auxiliary_heads(model, at, task=task, head=head, aux_weight=aux_weight)
    if schedule == "stagewise":
        if epochs:
            aux.compile(_fresh(optimizer))
            aux.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=verbose)
        return select_channels_stagewise(
            model,
            x,
            y,
            heads=aux,
            stage_epochs=1 if stage_epochs is None else stage_epochs,
            batch_size=batch_size,
            optimizer=optimizer,
            channels=channels,
            target_flops=target_flops,
            target_params=target_params,
            epsilon=epsilon,
            aux_weight=aux_weight,
            verbose=verbose,
            **select_kwargs,
        )
    if epochs:
        aux.compile(optimizer or keras.optimizers.SGD(0.01, momentum=0.9))
        aux.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=verbose)
    res = select_channels(
        model,
        x,
        y,
        heads=aux,
        channels=channels,
        target_flops=target_flops,
        target_params=target_params,
        epsilon=epsilon,
        aux_weight=aux_weight,
        verbose=verbose,
        **select_kwargs,
    )
    res.heads = aux
    return res


def _fresh(optimizer):
    """A new optimizer for one ``fit`` (the caller's may be copied again)."""
    from acsl_tf.dcp.stagewise import _make_optimizer

    return _make_optimizer(optimizer)
