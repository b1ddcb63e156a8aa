"""DCP in one call: auxiliary heads, fine-tuning, channel selection."""

from __future__ import annotations

import keras

from acsl_tf.dcp.heads import with_auxiliary_heads
from acsl_tf.dcp.select import select_channels

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
    **select_kwargs,
):
    """Discrimination-aware channel pruning (DCP) of ``model``.

    Attaches auxiliary heads (:func:`~acsl_tf.dcp.with_auxiliary_heads`),
    fine-tunes the model with the task loss plus the auxiliary losses for
    ``epochs`` epochs (0 skips it), then selects channels group by group
    (:func:`~acsl_tf.dcp.select_channels`) with the heads' losses. ``model``
    is trained in place by the fine-tuning; the selection does not change it.

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
        epochs: Fine-tuning epochs with the heads.
        batch_size: Fine-tuning batch size.
        optimizer: Fine-tuning optimizer (default SGD 0.01, momentum 0.9).
        verbose: Verbosity of ``fit`` and of the selection.
        **select_kwargs: More arguments of
            :func:`~acsl_tf.dcp.select_channels` (``steps``,
            ``learning_rate``, ``n_samples``, ``layers``, ...).

    Returns:
        A :class:`~acsl_tf.dcp.DCPResult`: ``result.apply()`` is the thin
        model with the re-optimised kernels; ``result.heads`` the trained
        heads.

    Example:
        >>> res = acsl_tf.discrimination_aware_prune(model, x, y, target_flops=0.5)
        >>> small = res.apply()
    """
    aux = with_auxiliary_heads(model, at, task=task, head=head, aux_weight=aux_weight)
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
