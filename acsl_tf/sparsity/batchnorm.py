"""BatchNorm statistics recalibration.

Strong L1 penalties on gammas (high ``penalty`` or a large budget multiplier)
shrink activations quickly. The moving mean/variance of the BatchNorm layers
(momentum 0.99 by default) then lag behind the activations they describe, and
a model that trains well (batch statistics) can predict badly in inference
mode (moving statistics). Removing channels with :func:`acsl_tf.shrink` has
the same effect downstream. Re-estimating the moving statistics on a few
batches fixes it without touching any trained weight.
"""

from __future__ import annotations

import keras
import numpy as np


def _batchnorms(model):
    from acsl_tf.sparsity.wrapper import PruneLowCorrelation

    found, wrappers = [], []

    def visit(m):
        for layer in m.layers:
            if isinstance(layer, PruneLowCorrelation):
                wrappers.append(layer)
                found.append(layer.layer)
            elif isinstance(layer, keras.layers.BatchNormalization):
                found.append(layer)
            elif isinstance(layer, keras.Model):
                visit(layer)

    visit(model)
    return found, wrappers


def _batches(data, steps, batch_size):
    if isinstance(data, np.ndarray):
        n = len(data)
        if n == 0:
            raise ValueError("`data` is empty.")
        count = 0
        for start in range(0, n, batch_size):
            if steps is not None and count >= steps:
                return
            yield data[start : start + batch_size]
            count += 1
        return
    count = 0
    for item in data:
        if steps is not None and count >= steps:
            return
        if isinstance(item, (tuple, list)):
            item = item[0]
        yield item
        count += 1


def recalibrate_batchnorm(model, data, *, steps: int | None = 20, batch_size: int = 128):
    """Re-estimate the moving statistics of every BatchNormalization layer.

    Runs the model in training mode on ``steps`` batches and sets each BN's
    moving mean and variance to the plain average of the batch statistics
    (cumulative averaging, not an exponential one, so the old values are
    discarded). Trainable weights are not changed, and the ACSL statistics of
    :class:`acsl_tf.PruneLowCorrelation` wrappers (affinity, step counters)
    are left alone. Dropout layers are active during the passes, as in
    training.

    Args:
        model: a Keras model (plain, wrapped or shrunk).
        data: a NumPy array of inputs, or an iterable / ``tf.data.Dataset``
            yielding input batches or ``(inputs, targets)`` tuples.
        steps: number of batches to use (None: the whole of ``data``).
        batch_size: batch size when ``data`` is an array.

    Returns:
        The number of batches used.

    Example:

    ```python
    small = acsl_tf.shrink(pruned, target_flops=0.5)
    acsl_tf.recalibrate_batchnorm(small, x_train[:2560])
    ```
    """
    if not isinstance(model, keras.Model):
        raise ValueError(f"`model` must be a keras.Model. Received: {type(model).__name__}")
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise ValueError(f"`steps` must be a positive integer or None. Received: steps={steps!r}")
    bns, wrappers = _batchnorms(model)
    if not bns:
        return 0
    momenta = [bn.momentum for bn in bns]
    state = [v for w in wrappers for v in (w.affinity, w.strength, w.step, w.updates)]
    saved = [np.array(v) for v in state]
    used = 0
    try:
        for k, batch in enumerate(_batches(data, steps, batch_size)):
            for bn in bns:
                bn.momentum = k / (k + 1.0)
            model(batch, training=True)
            used += 1
    finally:
        for bn, m in zip(bns, momenta):
            bn.momentum = m
        for v, value in zip(state, saved):
            v.assign(value)
    if used == 0:
        raise ValueError("`data` yielded no batch; nothing was recalibrated.")
    return used
