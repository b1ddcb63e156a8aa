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


_FORMS = (
    "a NumPy array or tensor of inputs, an (x, y) or (x, y, sample_weight) tuple of them, "
    "or a tf.data.Dataset / iterable yielding input batches or (x, y[, sample_weight]) tuples"
)


def _is_array(value) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype") and not isinstance(value, dict)


def _x_of(item):
    """The inputs of one element: ``x`` of an ``(x, y[, w])`` tuple, else the item."""
    if isinstance(item, tuple) and len(item) in (2, 3):
        return item[0]
    return item


def _slice_batches(x, steps, batch_size):
    n = len(x[0]) if isinstance(x, list) else len(x)
    if n == 0:
        raise ValueError("`data` is empty.")
    count = 0
    for start in range(0, n, batch_size):
        if steps is not None and count >= steps:
            return
        if isinstance(x, list):
            yield [a[start : start + batch_size] for a in x]
        else:
            yield x[start : start + batch_size]
        count += 1


def _batches(data, steps, batch_size, input_rank):
    x = _x_of(data)
    if _is_array(x) or (isinstance(x, list) and x and all(_is_array(a) for a in x)):
        yield from _slice_batches(x, steps, batch_size)
        return
    try:
        import tensorflow as tf

        if isinstance(data, tf.data.Dataset):
            spec = _x_of(data.element_spec)
            if isinstance(spec, (list, tuple)) and spec:
                spec = spec[0]
            shape = getattr(spec, "shape", None)
            if input_rank is not None and shape is not None and shape.rank is not None:
                if shape.rank == input_rank - 1:  # unbatched elements
                    data = data.batch(batch_size)
    except ImportError:  # JAX backend without TensorFlow: no tf.data to unwrap
        pass
    if not hasattr(data, "__iter__"):
        raise ValueError(
            f"recalibrate_batchnorm takes {_FORMS}. Received: data of type {type(data).__name__}"
        )
    count = 0
    for item in data:
        if steps is not None and count >= steps:
            return
        yield _x_of(item)
        count += 1


def _check_batch(batch, input_rank, k):
    if isinstance(batch, dict):  # inputs by name: the model checks them
        return
    first = batch[0] if isinstance(batch, list) and batch else batch
    if not _is_array(first):
        raise ValueError(
            f"recalibrate_batchnorm takes {_FORMS}. Batch {k} is a {type(first).__name__}."
        )
    rank = len(first.shape)
    if input_rank is not None and rank != input_rank:
        raise ValueError(
            f"recalibrate_batchnorm: batch {k} has shape {tuple(first.shape)}, but the model "
            f"takes inputs of rank {input_rank} (batch axis included). It takes {_FORMS}."
        )


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
        data: the inputs, in one of the forms ``fit`` takes: a NumPy array
            or tensor (split into batches of ``batch_size``), an ``(x, y)``
            or ``(x, y, sample_weight)`` tuple of them (``y`` is ignored),
            or a ``tf.data.Dataset`` / iterable yielding input batches or
            ``(x, y[, sample_weight])`` tuples. A dataset of unbatched
            elements is batched with ``batch_size``. A multi-input model
            takes a list of arrays as ``x``.
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
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(
            f"`batch_size` must be a positive integer. Received: batch_size={batch_size!r}"
        )
    try:
        input_rank = len(model.inputs[0].shape) if len(model.inputs) == 1 else None
    except (AttributeError, TypeError, ValueError):
        input_rank = None
    momenta = [bn.momentum for bn in bns]
    state = [
        v for w in wrappers for v in (w.affinity, w.strength, w.step, w.updates, w.penalty_total)
    ]
    saved = [np.array(v) for v in state]
    used = 0
    for w in wrappers:
        w._recalibrating = True
    try:
        for k, batch in enumerate(_batches(data, steps, batch_size, input_rank)):
            _check_batch(batch, input_rank, k)
            for bn in bns:
                bn.momentum = k / (k + 1.0)
            model(batch, training=True)
            used += 1
    finally:
        for bn, m in zip(bns, momenta):
            bn.momentum = m
        for v, value in zip(state, saved):
            v.assign(value)
        for w in wrappers:
            w._recalibrating = False
    if used == 0:
        raise ValueError("`data` yielded no batch; nothing was recalibrated.")
    return used
