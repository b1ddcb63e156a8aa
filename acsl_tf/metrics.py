"""Metrics for the three vision tasks, usable in ``model.compile(metrics=[...])``.

Segmentation
    :class:`MeanIoU` - mean intersection-over-union from an accumulated
    confusion matrix (pixels labelled ``ignore_index`` are left out; classes
    that never occur in either ground truth or prediction are left out of the
    mean). :class:`PixelAccuracy` - fraction of correctly labelled valid pixels.
    The pure functions :func:`confusion_matrix` and
    :func:`mean_iou_from_confusion` give the same numbers outside Keras.

Crowd counting
    The count of an image is the sum of its density map (any resolution: a
    1/8-resolution prediction and a full-resolution target are compared by their
    sums). :class:`CountMAE` is the mean absolute count error.
    :class:`CountRMSE` is the root mean squared count error; counting papers
    (MCNN, CSRNet, ACSL) report this number under the name "MSE", so
    :class:`CountMSE` is provided as the same metric under that name.

Classification
    Keras' own ``"accuracy"`` / ``keras.metrics.SparseCategoricalAccuracy`` is
    the right metric and is not duplicated here.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from acsl_tf._keras import register

__all__ = [
    "CountMAE",
    "CountMSE",
    "CountRMSE",
    "MeanIoU",
    "PixelAccuracy",
    "confusion_matrix",
    "iou_from_confusion",
    "mean_iou_from_confusion",
]


def _check_num_classes(num_classes):
    if (
        not isinstance(num_classes, (int, np.integer))
        or isinstance(num_classes, bool)
        or num_classes < 2
    ):
        raise ValueError(
            f"`num_classes` must be an integer >= 2. Received: num_classes={num_classes!r}"
        )
    return int(num_classes)


def _check_argmax(argmax):
    if argmax not in (None, True, False):
        raise ValueError(
            "`argmax` must be None (decide from the shapes), True or False. "
            f"Received: argmax={argmax!r}"
        )
    return argmax


def _labels_and_predictions(y_true, y_pred, num_classes, argmax):
    """Return flat int32 labels and predicted labels.

    ``y_true``: sparse labels ``(B, ...)`` or ``(B, ..., 1)``. ``y_pred``: scores
    ``(B, ..., num_classes)`` (logits or probabilities, argmax is the same) or
    labels with the shape of ``y_true``.
    """
    y_true = tf.convert_to_tensor(y_true)
    y_pred = tf.convert_to_tensor(y_pred)
    if argmax is None:
        argmax = (
            y_pred.shape.rank is not None
            and y_pred.shape[-1] == num_classes
            and (
                y_pred.shape.rank == y_true.shape.rank + 1
                or (y_pred.shape.rank == y_true.shape.rank and y_true.shape[-1] == 1)
            )
        )
    if argmax:
        y_pred = tf.argmax(y_pred, axis=-1, output_type=tf.int32)
    y_pred = tf.cast(y_pred, tf.int32)
    y_true = tf.cast(y_true, tf.int32)
    if y_true.shape.rank is not None and y_true.shape.rank == y_pred.shape.rank + 1:
        y_true = tf.squeeze(y_true, -1)
    if y_pred.shape.rank is not None and y_pred.shape.rank == y_true.shape.rank + 1:
        y_pred = tf.squeeze(y_pred, -1)
    return tf.reshape(y_true, [-1]), tf.reshape(y_pred, [-1]), y_true


def _flat_weights(sample_weight, like):
    if sample_weight is None:
        return None
    w = tf.cast(tf.convert_to_tensor(sample_weight), tf.float64)
    while w.shape.rank is not None and w.shape.rank < like.shape.rank:
        w = tf.expand_dims(w, -1)
    return tf.reshape(tf.broadcast_to(w, tf.shape(like)), [-1])


def confusion_matrix(
    y_true,
    y_pred,
    num_classes: int,
    *,
    ignore_index: int | None = 255,
    argmax: bool | None = None,
    sample_weight=None,
):
    """Confusion matrix of a segmentation (rows: ground truth, columns: prediction).

    Args:
        y_true: Integer labels, shape ``(B, H, W)`` or ``(B, H, W, 1)``.
        y_pred: Class scores ``(B, H, W, num_classes)`` (logits or probabilities)
            or integer labels with the shape of ``y_true``.
        num_classes: Number of classes.
        ignore_index: Label value whose pixels are left out (``None``: none).
            Any other label outside ``[0, num_classes)`` is an error.
        argmax: Take the argmax of ``y_pred`` over the last axis. ``None``
            decides from the shapes (scores when ``y_pred`` has one more axis
            than the labels and its last axis is ``num_classes``).
        sample_weight: Optional weights broadcastable to the label shape.

    Returns:
        A float64 tensor ``(num_classes, num_classes)``; entry ``[i, j]`` is the
        (weighted) number of pixels of class ``i`` predicted as ``j``.

    Raises:
        ValueError: Invalid ``num_classes``.
        tf.errors.InvalidArgumentError: Labels out of range.

    Example:
        >>> cm = confusion_matrix([[0, 1, 255]], [[0, 0, 1]], 2)
        >>> cm.numpy().tolist()
        [[1.0, 0.0], [1.0, 0.0]]
    """
    num_classes = _check_num_classes(num_classes)
    t, p, shaped = _labels_and_predictions(y_true, y_pred, num_classes, _check_argmax(argmax))
    w = _flat_weights(sample_weight, shaped)
    if ignore_index is not None:
        # Mask by weight (no boolean_mask: static shapes keep this XLA-compatible).
        keep = tf.not_equal(t, ignore_index)
        keep_w = tf.cast(keep, tf.float64)
        w = keep_w if w is None else w * keep_w
        t = tf.where(keep, t, 0)
        p = tf.where(keep, p, 0)
    msg = f"labels must lie in [0, {num_classes}) or equal ignore_index={ignore_index}"
    with tf.control_dependencies(
        [
            tf.debugging.assert_non_negative(t, message="y_true " + msg),
            tf.debugging.assert_less(t, num_classes, message="y_true " + msg),
            tf.debugging.assert_non_negative(p, message="y_pred " + msg),
            tf.debugging.assert_less(p, num_classes, message="y_pred " + msg),
        ]
    ):
        return tf.math.confusion_matrix(t, p, num_classes=num_classes, weights=w, dtype=tf.float64)


def iou_from_confusion(cm) -> np.ndarray:
    """Per-class IoU ``cm[c, c] / (row_c + col_c - cm[c, c])``; NaN where a class
    appears in neither the ground truth nor the prediction.

    Args:
        cm: Confusion matrix ``(C, C)`` (rows: truth, columns: prediction).

    Returns:
        float64 array ``(C,)``.

    Example:
        >>> iou_from_confusion(np.array([[2, 1], [0, 1]]))
        array([0.66666667, 0.5       ])
    """
    cm = np.asarray(cm, np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"`cm` must be a square matrix. Received: cm.shape={cm.shape}")
    inter = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1), np.nan)


def mean_iou_from_confusion(cm) -> float:
    """Mean IoU over the classes present in the ground truth or the prediction.

    Args:
        cm: Confusion matrix ``(C, C)`` (rows: truth, columns: prediction).

    Returns:
        The mean IoU as a float (0.0 for an all-zero matrix).

    Example:
        >>> mean_iou_from_confusion(np.array([[2, 1], [0, 1]]))
        0.5833333333333333
    """
    iou = iou_from_confusion(cm)
    valid = ~np.isnan(iou)
    return float(iou[valid].mean()) if valid.any() else 0.0


def _mean_iou_tf(cm):
    inter = tf.linalg.diag_part(cm)
    union = tf.reduce_sum(cm, 0) + tf.reduce_sum(cm, 1) - inter
    present = union > 0
    iou = tf.math.divide_no_nan(inter, union)
    n = tf.reduce_sum(tf.cast(present, cm.dtype))
    return tf.math.divide_no_nan(tf.reduce_sum(tf.where(present, iou, 0.0)), n)


@register
class MeanIoU(keras.metrics.Metric):
    """Mean intersection-over-union for semantic segmentation.

    Accumulates a confusion matrix over all batches and reports the mean IoU of
    the classes that occur in the ground truth or the prediction. Unlike
    ``keras.metrics.MeanIoU`` it takes logits/probabilities directly (argmax
    over the last axis; logits and probabilities give the same argmax, so no
    ``from_logits`` switch is needed) and skips ``ignore_index`` pixels.

    Args:
        num_classes: Number of classes.
        ignore_index: Label of pixels left out (Cityscapes/CamVid use 255).
            ``None`` keeps every pixel.
        argmax: See :func:`confusion_matrix` (``None``: decide from the shapes).
        name: Metric name.
        dtype: Result dtype.

    Example:
        >>> model.compile("adam", "sparse_categorical_crossentropy",
        ...               metrics=[MeanIoU(num_classes=11)])
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None = 255,
        argmax: bool | None = None,
        name: str = "mean_iou",
        dtype=None,
    ):
        super().__init__(name=name, dtype=dtype)
        self.num_classes = _check_num_classes(num_classes)
        if ignore_index is not None and not isinstance(ignore_index, (int, np.integer)):
            raise ValueError(
                f"`ignore_index` must be an int or None. Received: ignore_index={ignore_index!r}"
            )
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        self.argmax = _check_argmax(argmax)
        self.total_cm = self.add_variable(
            shape=(self.num_classes, self.num_classes),
            initializer="zeros",
            dtype="float64",
            name="total_confusion_matrix",
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        cm = confusion_matrix(
            y_true,
            y_pred,
            self.num_classes,
            ignore_index=self.ignore_index,
            argmax=self.argmax,
            sample_weight=sample_weight,
        )
        self.total_cm.assign_add(cm)

    def result(self):
        return tf.cast(_mean_iou_tf(tf.convert_to_tensor(self.total_cm)), self.dtype)

    def per_class_iou(self) -> np.ndarray:
        """Per-class IoU of the accumulated matrix (NaN for absent classes)."""
        return iou_from_confusion(np.asarray(self.total_cm))

    def reset_state(self):
        self.total_cm.assign(tf.zeros_like(self.total_cm))

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "ignore_index": self.ignore_index,
            "argmax": self.argmax,
        }


@register
class PixelAccuracy(keras.metrics.Metric):
    """Fraction of valid pixels whose predicted class equals the label.

    Args:
        num_classes: Number of classes (used to decide when to take the argmax).
        ignore_index: Label of pixels left out; ``None`` keeps all.
        argmax: See :func:`confusion_matrix`.
        name: Metric name.
        dtype: Result dtype.

    Example:
        >>> PixelAccuracy(num_classes=19)([[0, 1, 255]], [[0, 0, 1]]).numpy()
        0.5
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None = 255,
        argmax: bool | None = None,
        name: str = "pixel_accuracy",
        dtype=None,
    ):
        super().__init__(name=name, dtype=dtype)
        self.num_classes = _check_num_classes(num_classes)
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        self.argmax = _check_argmax(argmax)
        self.correct = self.add_variable(
            shape=(), initializer="zeros", dtype="float64", name="correct"
        )
        self.total = self.add_variable(shape=(), initializer="zeros", dtype="float64", name="total")

    def update_state(self, y_true, y_pred, sample_weight=None):
        cm = confusion_matrix(
            y_true,
            y_pred,
            self.num_classes,
            ignore_index=self.ignore_index,
            argmax=self.argmax,
            sample_weight=sample_weight,
        )
        self.correct.assign_add(tf.reduce_sum(tf.linalg.diag_part(cm)))
        self.total.assign_add(tf.reduce_sum(cm))

    def result(self):
        return tf.cast(tf.math.divide_no_nan(self.correct, self.total), self.dtype)

    def reset_state(self):
        self.correct.assign(0.0)
        self.total.assign(0.0)

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "ignore_index": self.ignore_index,
            "argmax": self.argmax,
        }


def _counts(d):
    d = tf.cast(tf.convert_to_tensor(d), tf.float64)
    if d.shape.rank is None or d.shape.rank < 1:
        raise ValueError(f"Density maps need a batch axis. Received: shape={d.shape}")
    if d.shape.rank == 1:
        return d  # already one count per image
    return tf.reduce_sum(d, axis=list(range(1, d.shape.rank)))


class _CountError(keras.metrics.Metric):
    def __init__(self, name, dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.err = self.add_variable(
            shape=(), initializer="zeros", dtype="float64", name="error_sum"
        )
        self.n = self.add_variable(shape=(), initializer="zeros", dtype="float64", name="count")

    def _error(self, diff):
        raise NotImplementedError

    def update_state(self, y_true, y_pred, sample_weight=None):
        diff = _counts(y_pred) - _counts(y_true)
        e = self._error(diff)
        if sample_weight is None:
            w = tf.ones_like(e)
        else:
            w = tf.reshape(tf.cast(sample_weight, tf.float64), [-1])
            w = tf.broadcast_to(w, tf.shape(e))
        self.err.assign_add(tf.reduce_sum(e * w))
        self.n.assign_add(tf.reduce_sum(w))

    def reset_state(self):
        self.err.assign(0.0)
        self.n.assign(0.0)


@register
class CountMAE(_CountError):
    """Mean absolute error of per-image counts (count = sum of the density map).

    ``y_true`` and ``y_pred`` are density maps ``(B, H, W[, 1])`` (their
    resolutions may differ) or counts ``(B,)``.

    Example:
        >>> m = CountMAE()
        >>> m.update_state(np.ones((2, 4, 4, 1)), np.zeros((2, 2, 2, 1)))
        >>> float(m.result())
        16.0
    """

    def __init__(self, name: str = "count_mae", dtype=None):
        super().__init__(name=name, dtype=dtype)

    def _error(self, diff):
        return tf.abs(diff)

    def result(self):
        return tf.cast(tf.math.divide_no_nan(self.err, self.n), self.dtype)


@register
class CountRMSE(_CountError):
    """Root mean squared error of per-image counts: ``sqrt(mean((sum(p) - sum(t))^2))``.

    This is the number crowd-counting papers report as "MSE".

    Example:
        >>> m = CountRMSE()
        >>> m.update_state(np.array([3.0, 1.0]), np.array([0.0, 0.0]))
        >>> round(float(m.result()), 4)
        2.2361
    """

    def __init__(self, name: str = "count_rmse", dtype=None):
        super().__init__(name=name, dtype=dtype)

    def _error(self, diff):
        return tf.square(diff)

    def result(self):
        return tf.cast(tf.sqrt(tf.math.divide_no_nan(self.err, self.n)), self.dtype)


@register
class CountMSE(CountRMSE):
    """Counting "MSE" as the counting literature defines it, which is the ROOT
    mean squared count error (identical to :class:`CountRMSE`; only the default
    name differs).

    Example:
        >>> model.compile("adam", "mse", metrics=[CountMAE(), CountMSE()])
    """

    def __init__(self, name: str = "count_mse", dtype=None):
        super().__init__(name=name, dtype=dtype)
