"""Distillation losses: pure functions on tensors plus Keras loss classes.

The functions are backend-neutral (``keras.ops``), reduce to a scalar, and are
checked against NumPy references in ``tests/test_losses.py``. They are the
building blocks of :class:`acsl_tf.Distiller`:

- :func:`distillation_kl_divergence`: Hinton's temperature-softened KL
  divergence, ``T**2 * KL(softmax(t/T) || softmax(s/T))``, averaged over every
  position that carries a class distribution (samples, or samples x pixels).
- :func:`masked_sparse_categorical_crossentropy`: cross-entropy with an
  ignore label (255 by default), averaged over the labelled positions only.
- :func:`spatial_affinity` / :func:`affinity_distillation_loss`: pair-wise
  spatial-affinity distillation. Each location's feature vector is
  L2-normalised, the ``N x N`` cosine-similarity matrix (``N = H * W``) is
  built per sample, and the loss is the mean squared difference between the
  teacher's and the student's matrices. The channel counts of the two feature
  maps may differ, which is what makes it usable after channel pruning.
- :func:`density_distillation_loss`: crowd counting,
  ``MSE(student, ground truth) + alpha * MSE(student, teacher)``.

Probability outputs (a softmax as the last activation) are supported with
``from_logits=False``: the logits are then recovered as ``log(p)`` (clipped at
``epsilon``), which equals the true logits up to a per-position constant and
therefore gives the same softmax at any temperature.
"""

from __future__ import annotations

import keras
from keras import ops

from acsl_tf._keras import register

__all__ = [
    "affinity_distillation_loss",
    "density_distillation_loss",
    "distillation_kl_divergence",
    "masked_sparse_categorical_crossentropy",
    "probabilities_to_logits",
    "spatial_affinity",
    "DistillationKLDivergence",
    "SpatialAffinityLoss",
]

_EPSILON = 1e-7


def _check_temperature(temperature) -> float:
    try:
        t = float(temperature)
    except (TypeError, ValueError):
        raise ValueError(
            f"`temperature` must be a positive number. Received: temperature={temperature!r}"
        ) from None
    if not t > 0:
        raise ValueError(
            f"`temperature` must be a positive number. Received: temperature={temperature!r}"
        )
    return t


def _check_pool_size(pool_size) -> int:
    if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
        raise ValueError(f"`pool_size` must be an integer >= 1. Received: pool_size={pool_size!r}")
    return pool_size


def _check_same_shape(a, b, what: str) -> None:
    sa, sb = tuple(a.shape), tuple(b.shape)
    if len(sa) != len(sb) or any(
        x is not None and y is not None and x != y for x, y in zip(sa, sb)
    ):
        raise ValueError(
            f"The teacher's and the student's {what} must have the same shape. "
            f"Received: teacher shape={sa}, student shape={sb}"
        )


def probabilities_to_logits(probabilities, epsilon: float = _EPSILON):
    """Recovers logits from probabilities as ``log(clip(p, epsilon, 1))``.

    The result differs from the original logits by a constant per position, so
    ``softmax(result / T) == softmax(logits / T)`` for every temperature ``T``
    (up to the clipping of probabilities below ``epsilon``).

    Args:
        probabilities: Tensor of class probabilities (last axis sums to 1).
        epsilon: Lower clip value that keeps the logarithm finite.

    Returns:
        A tensor of the same shape with log-probabilities.

    Example:
        >>> logits = probabilities_to_logits(keras.ops.softmax(x))
    """
    p = ops.convert_to_tensor(probabilities)
    return ops.log(ops.clip(p, epsilon, 1.0))


def distillation_kl_divergence(
    teacher_outputs,
    student_outputs,
    temperature: float = 4.0,
    from_logits: bool = True,
    axis: int = -1,
):
    """Hinton knowledge-distillation loss, scaled by ``temperature**2``.

    ``T**2 * mean_over_positions(sum_c p_t[c] * (log p_t[c] - log p_s[c]))``
    with ``p = softmax(logits / T)``. A position is a sample for
    classification and a pixel of a sample for segmentation, so the pixel-wise
    segmentation KL is the same function applied to ``(B, H, W, C)`` maps.

    Args:
        teacher_outputs: Teacher logits (or probabilities, see ``from_logits``),
            classes on ``axis``. Treated as a constant (no gradient).
        student_outputs: Student outputs of the same shape.
        temperature: Softening temperature ``T > 0``.
        from_logits: ``False`` when both models end in a softmax; logits are
            then recovered as ``log(p)``.
        axis: The class axis.

    Returns:
        A scalar tensor.

    Raises:
        ValueError: If the shapes differ or ``temperature <= 0``.

    Example:
        >>> loss = distillation_kl_divergence(teacher(x), student(x), temperature=4.0)
    """
    t = _check_temperature(temperature)
    teacher_outputs = ops.convert_to_tensor(teacher_outputs)
    student_outputs = ops.convert_to_tensor(student_outputs)
    _check_same_shape(teacher_outputs, student_outputs, "outputs")
    teacher_outputs = ops.cast(ops.stop_gradient(teacher_outputs), student_outputs.dtype)
    if not from_logits:
        teacher_outputs = probabilities_to_logits(teacher_outputs)
        student_outputs = probabilities_to_logits(student_outputs)
    log_pt = ops.log_softmax(teacher_outputs / t, axis=axis)
    log_ps = ops.log_softmax(student_outputs / t, axis=axis)
    kl = ops.sum(ops.exp(log_pt) * (log_pt - log_ps), axis=axis)
    return ops.mean(kl) * (t * t)


def masked_sparse_categorical_crossentropy(
    y_true, y_pred, from_logits: bool = True, ignore_index: int | None = 255
):
    """Sparse categorical cross-entropy that skips an ignore label.

    Averages over the positions whose label is not ``ignore_index`` (the
    PASCAL VOC / Cityscapes convention for unlabelled pixels). Returns 0 when
    no position is labelled.

    Args:
        y_true: Integer labels, shape ``(B, ...)`` or ``(B, ..., 1)``.
        y_pred: Logits or probabilities, shape ``(B, ..., C)``.
        from_logits: Whether ``y_pred`` holds logits.
        ignore_index: Label value to skip, or ``None`` to use every position.

    Returns:
        A scalar tensor.

    Example:
        >>> loss = masked_sparse_categorical_crossentropy(masks, model(images))
    """
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.convert_to_tensor(y_true)
    if len(y_true.shape) == len(y_pred.shape) and y_true.shape[-1] == 1:
        y_true = ops.squeeze(y_true, axis=-1)
    y_true = ops.cast(y_true, "int32")
    if from_logits:
        log_p = ops.log_softmax(y_pred, axis=-1)
    else:
        log_p = probabilities_to_logits(y_pred)
    if ignore_index is None:
        valid = ops.ones_like(y_true, dtype=y_pred.dtype)
        labels = y_true
    else:
        is_valid = ops.not_equal(y_true, ignore_index)
        valid = ops.cast(is_valid, y_pred.dtype)
        labels = ops.where(is_valid, y_true, ops.zeros_like(y_true))
    onehot = ops.one_hot(labels, y_pred.shape[-1], dtype=y_pred.dtype)
    nll = -ops.sum(onehot * log_p, axis=-1)
    return ops.sum(nll * valid) / ops.maximum(ops.sum(valid), 1.0)


def spatial_affinity(features, pool_size: int = 1, epsilon: float = 1e-12):
    """Pair-wise spatial affinity (cosine similarity) of a feature map.

    The map ``(B, H, W, C)`` is optionally average-pooled by ``pool_size``
    (``padding="valid"``) to bound ``N``, flattened to ``(B, N, C)``, each
    location's ``C``-vector is L2-normalised, and ``A = F F^T`` is returned.

    Args:
        features: A ``(B, H, W, C)`` (or ``(B, L, C)``) feature tensor.
        pool_size: Average-pooling window and stride (``1`` = none).
        epsilon: Keeps the normalisation finite for all-zero vectors (a
            zero vector gets zero affinities).

    Returns:
        A ``(B, N, N)`` tensor with values in ``[-1, 1]``.

    Raises:
        ValueError: If ``features`` is not rank 3 or 4 or ``pool_size < 1``.

    Example:
        >>> a = spatial_affinity(feature_map, pool_size=2)
    """
    pool_size = _check_pool_size(pool_size)
    f = ops.convert_to_tensor(features)
    rank = len(f.shape)
    if rank not in (3, 4):
        raise ValueError(
            "`features` must be a (batch, height, width, channels) or "
            f"(batch, length, channels) tensor. Received: shape={tuple(f.shape)}"
        )
    if pool_size > 1:
        f = ops.average_pool(f, pool_size, strides=pool_size, padding="valid")
    b = ops.shape(f)[0]
    f = ops.reshape(f, (b, -1, f.shape[-1]))
    norm = ops.sqrt(ops.sum(ops.square(f), axis=-1, keepdims=True))
    f = f / ops.maximum(norm, epsilon)
    return ops.matmul(f, ops.transpose(f, (0, 2, 1)))


def affinity_distillation_loss(teacher_features, student_features, pool_size: int = 1):
    """Mean squared difference of teacher and student spatial affinities.

    Works when the channel counts differ (a pruned student), because each
    affinity matrix is ``N x N`` whatever ``C`` is. The spatial sizes must
    match.

    Args:
        teacher_features: ``(B, H, W, Ct)`` teacher feature map (no gradient).
        student_features: ``(B, H, W, Cs)`` student feature map.
        pool_size: Average pooling applied to both maps first (see
            :func:`spatial_affinity`).

    Returns:
        A scalar tensor, ``mean((A_s - A_t)**2)`` over ``B x N x N``.

    Raises:
        ValueError: If the batch or spatial dimensions differ.

    Example:
        >>> loss = affinity_distillation_loss(t_feat, s_feat, pool_size=2)
    """
    teacher_features = ops.convert_to_tensor(teacher_features)
    student_features = ops.convert_to_tensor(student_features)
    ts, ss = tuple(teacher_features.shape), tuple(student_features.shape)
    if len(ts) != len(ss) or any(
        x is not None and y is not None and x != y for x, y in zip(ts[:-1], ss[:-1])
    ):
        raise ValueError(
            "Affinity distillation needs teacher and student feature maps with the "
            "same batch and spatial dimensions (channels may differ). "
            f"Received: teacher shape={ts}, student shape={ss}"
        )
    teacher_features = ops.cast(ops.stop_gradient(teacher_features), student_features.dtype)
    a_t = spatial_affinity(teacher_features, pool_size)
    a_s = spatial_affinity(student_features, pool_size)
    return ops.mean(ops.square(a_s - a_t))


def density_distillation_loss(y_true, student_density, teacher_density, alpha: float = 1.0):
    """Crowd-counting distillation: ``MSE(s, y) + alpha * MSE(s, t)``.

    Args:
        y_true: Ground-truth density maps.
        student_density: Student density maps, same shape.
        teacher_density: Teacher density maps, same shape (no gradient).
        alpha: Weight of the teacher term, ``>= 0``.

    Returns:
        A scalar tensor (means over every element).

    Raises:
        ValueError: If ``alpha < 0`` or the student and teacher shapes differ.

    Example:
        >>> loss = density_distillation_loss(density, student(x), teacher(x), alpha=0.5)
    """
    if not float(alpha) >= 0:
        raise ValueError(f"`alpha` must be >= 0. Received: alpha={alpha!r}")
    s = ops.convert_to_tensor(student_density)
    t = ops.convert_to_tensor(teacher_density)
    _check_same_shape(t, s, "density maps")
    y = ops.reshape(ops.cast(y_true, s.dtype), ops.shape(s))
    t = ops.cast(ops.stop_gradient(t), s.dtype)
    return ops.mean(ops.square(s - y)) + float(alpha) * ops.mean(ops.square(s - t))


@register
class DistillationKLDivergence(keras.losses.Loss):
    """Keras loss form of :func:`distillation_kl_divergence`.

    ``y_true`` is the teacher's output and ``y_pred`` the student's. ``call``
    returns one value per sample (the mean over its positions, ``T**2``
    scaled); the usual Keras reduction then averages over the batch, which
    equals :func:`distillation_kl_divergence` without sample weights.

    Args:
        temperature: Softening temperature ``T > 0``.
        from_logits: ``False`` for softmax outputs (logits recovered as
            ``log(p)``).
        reduction: Keras reduction, default ``"sum_over_batch_size"``.
        name: Loss name.

    Example:
        >>> loss = DistillationKLDivergence(temperature=4.0)(teacher(x), student(x))
    """

    def __init__(
        self,
        temperature: float = 4.0,
        from_logits: bool = True,
        reduction: str | None = "sum_over_batch_size",
        name: str = "distillation_kl_divergence",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.temperature = _check_temperature(temperature)
        self.from_logits = bool(from_logits)

    def call(self, y_true, y_pred):
        y_pred = ops.convert_to_tensor(y_pred)
        y_true = ops.convert_to_tensor(y_true)
        _check_same_shape(y_true, y_pred, "outputs")
        t = self.temperature
        y_true = ops.cast(ops.stop_gradient(y_true), y_pred.dtype)
        if not self.from_logits:
            y_true = probabilities_to_logits(y_true)
            y_pred = probabilities_to_logits(y_pred)
        log_pt = ops.log_softmax(y_true / t, axis=-1)
        log_ps = ops.log_softmax(y_pred / t, axis=-1)
        kl = ops.sum(ops.exp(log_pt) * (log_pt - log_ps), axis=-1)
        if len(kl.shape) > 1:
            kl = ops.mean(ops.reshape(kl, (ops.shape(kl)[0], -1)), axis=-1)
        return kl * (t * t)

    def get_config(self):
        config = super().get_config()
        config.update({"temperature": self.temperature, "from_logits": self.from_logits})
        return config


@register
class SpatialAffinityLoss(keras.losses.Loss):
    """Keras loss form of :func:`affinity_distillation_loss`.

    ``y_true`` is the teacher's feature map and ``y_pred`` the student's; the
    channel counts may differ. ``call`` returns one value per sample.

    Args:
        pool_size: Average pooling applied before building the affinities.
        reduction: Keras reduction, default ``"sum_over_batch_size"``.
        name: Loss name.

    Example:
        >>> loss = SpatialAffinityLoss(pool_size=2)(teacher_feat, student_feat)
    """

    def __init__(
        self,
        pool_size: int = 1,
        reduction: str | None = "sum_over_batch_size",
        name: str = "spatial_affinity_loss",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.pool_size = _check_pool_size(pool_size)

    def call(self, y_true, y_pred):
        y_pred = ops.convert_to_tensor(y_pred)
        y_true = ops.cast(ops.stop_gradient(ops.convert_to_tensor(y_true)), y_pred.dtype)
        a_t = spatial_affinity(y_true, self.pool_size)
        a_s = spatial_affinity(y_pred, self.pool_size)
        return ops.mean(ops.square(a_s - a_t), axis=(1, 2))

    def get_config(self):
        config = super().get_config()
        config.update({"pool_size": self.pool_size})
        return config
