"""`CorrelationSparsity`: the weighted L1 penalty on BatchNorm gammas."""

from __future__ import annotations

import math

import keras

from acsl_tf._keras import register
from acsl_tf.sparsity import affinity as affinity_lib


@register
class CorrelationSparsity(keras.regularizers.Regularizer):
    """Stateless weighted L1 penalty: ``l1 * sum_i w_i * |x_i|``.

    Called with one argument it is the plain L1 penalty of Network Slimming
    and can be used as any Keras regularizer, e.g.
    ``BatchNormalization(gamma_regularizer=CorrelationSparsity(1e-4))``.
    :class:`acsl_tf.PruneLowCorrelation` calls it with the per-channel
    adaptive weights ``w`` it maintains, which is how ACSL's penalty
    ``sum_i lambda_i |gamma_i|`` with ``lambda_i = l1 * w_i`` is applied: as a
    loss term, never by editing gradients.

    Args:
        l1: the base strength lambda (>= 0).

    Example:

    >>> reg = CorrelationSparsity(1e-4)
    >>> float(reg(keras.ops.array([1.0, -2.0])))  # doctest: +ELLIPSIS
    0.0003...
    """

    def __init__(self, l1: float = 1e-4):
        l1 = float(l1)
        if not math.isfinite(l1) or l1 < 0:
            raise ValueError(f"`l1` must be a finite, non-negative number. Received: l1={l1}")
        self.l1 = l1

    def __call__(self, x, weights=None):
        if weights is None:
            weights = keras.ops.ones_like(keras.ops.cast(x, "float32"))
        return affinity_lib.weighted_l1(x, weights, self.l1)

    def get_config(self):
        return {"l1": self.l1}
