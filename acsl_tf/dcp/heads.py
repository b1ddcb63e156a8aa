"""Discrimination-aware losses: auxiliary heads at stage boundaries.

DCP (Liu, Zhuang, Tan et al.) attaches auxiliary classifiers at the ends of
the network's stages and fine-tunes the network with the task loss plus all
auxiliary losses, so the intermediate features become discriminative; the
same heads then drive channel selection (:func:`acsl_tf.dcp.select_channels`).

As published, a head is BatchNormalization -> ReLU -> global average pooling
-> Dense with cross-entropy. For pixel-level tasks (an extension: the
published method is for classification) a head predicts the task's target at
the stage's resolution: per-pixel classes for segmentation, a one-channel
density map for counting; the target is resized to the stage resolution
(nearest for labels, count-preserving area resampling for densities).
"""

from __future__ import annotations

import keras
import numpy as np

from acsl_tf import _keras
from acsl_tf.graph import DependencyGraph

__all__ = [
    "AuxiliaryHeads",
    "ResizedDensityMSE",
    "ResizedSparseCategoricalCrossentropy",
    "auxiliary_head_points",
    "infer_task",
    "make_head",
    "with_auxiliary_heads",
]

TASKS = ("classification", "segmentation", "counting")


def infer_task(model) -> str:
    """``"classification"`` for a rank-2 output, ``"counting"`` for a
    one-channel map, ``"segmentation"`` for a map with several channels."""
    shape = tuple(model.outputs[0].shape)
    if len(shape) == 2:
        return "classification"
    return "counting" if shape[-1] == 1 else "segmentation"


def _spatial(shape):
    return tuple(shape[1:-1]) if len(shape) >= 3 else None


def auxiliary_head_points(model, *, max_heads: int | None = 3, graph=None) -> list:
    """Layer names at the stage boundaries of ``model``, where DCP attaches
    its auxiliary heads.

    A boundary is the tensor read by a layer that changes the spatial
    resolution (a strided convolution or pooling, an upsampling), when
    convolutions follow it; so ``vgg_small`` gets two heads (before its first
    two pools) and a CIFAR ResNet two (before stages 2 and 3), the final
    classifier being the last loss as published. Only layers of the top-level
    model are used. With more than ``max_heads`` boundaries, the ones nearest
    to the depths ``1/(P+1), ..., P/(P+1)`` of the network (in layer calls)
    are kept.

    Args:
        model: A functional ``keras.Model``.
        max_heads: Most heads to place (None: all boundaries).
        graph: A ready :class:`~acsl_tf.graph.DependencyGraph` of ``model``.

    Returns:
        Layer names, in graph order.
    """
    g = graph if graph is not None else DependencyGraph(model)
    tr = g.trace
    producer = {}
    for call in tr.calls:
        for k in call.out_keys:
            producer[k] = call
    conv_types = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
    last_conv = max((c.index for c in tr.calls if isinstance(c.op, conv_types)), default=-1)
    points, where = [], {}
    for call in tr.calls:
        if not call.in_keys or len(call.out_keys) != 1:
            continue
        a, b = _spatial(tr.shapes[call.in_keys[0]]), _spatial(tr.shapes[call.out_keys[0]])
        if a is None or b is None or len(a) != len(b) or a == b or None in a + b:
            continue
        if _is_padding(call.op):
            continue
        key = call.in_keys[0]
        src = producer.get(key)
        while src is not None and _is_padding(src.op) and src.in_keys:
            key = src.in_keys[0]  # a stride-2 conv after explicit padding
            src = producer.get(key)
        if src is None or src.scope or len(src.out_keys) != 1 or call.index > last_conv:
            continue
        name = src.op.name
        if name not in points:
            points.append(name)
            where[name] = src.index
    if max_heads is not None and len(points) > max_heads:
        # the heads nearest to depths 1/(P+1), ..., P/(P+1) of the network
        n = max(len(tr.calls), 1)
        depth = {name: where[name] / n for name in points}
        chosen = []
        for i in range(1, max_heads + 1):
            q = i / (max_heads + 1)
            free = [p for p in points if p not in chosen]
            chosen.append(min(free, key=lambda p, q=q: abs(depth[p] - q)))
        points = [p for p in points if p in chosen]
    return points


def _is_padding(op) -> bool:
    name = type(op).__name__.lower()
    return "padding" in name or "cropping" in name or name == "pad"


class ResizedSparseCategoricalCrossentropy(keras.losses.Loss):
    """Per-pixel cross-entropy from logits, with integer labels resized
    (nearest) to the prediction's resolution.

    Args:
        ignore_class: A label value that does not count (e.g. 255), or None.
        name: Loss name.
    """

    def __init__(self, ignore_class=None, name="resized_sparse_ce", **kwargs):
        super().__init__(name=name, **kwargs)
        self.ignore_class = ignore_class

    def call(self, y_true, y_pred):
        y = keras.ops.cast(y_true, "float32")
        if len(y.shape) == len(y_pred.shape) - 1:
            y = y[..., None]
        size = tuple(y_pred.shape[1:-1])
        if tuple(y.shape[1:-1]) != size:
            y = keras.ops.image.resize(y, size, interpolation="nearest")
        y = keras.ops.cast(y[..., 0], "int32")
        if self.ignore_class is None:
            return keras.losses.sparse_categorical_crossentropy(y, y_pred, from_logits=True)
        valid = keras.ops.cast(keras.ops.not_equal(y, self.ignore_class), y_pred.dtype)
        y = keras.ops.where(keras.ops.equal(y, self.ignore_class), 0, y)
        ce = keras.losses.sparse_categorical_crossentropy(y, y_pred, from_logits=True) * valid
        return keras.ops.sum(ce, axis=(1, 2)) / keras.ops.maximum(
            keras.ops.sum(valid, axis=(1, 2)), 1.0
        )

    def get_config(self):
        return {**super().get_config(), "ignore_class": self.ignore_class}


class ResizedDensityMSE(keras.losses.Loss):
    """Mean squared error of a density map, with the target resampled to the
    prediction's resolution so that its sum (the count) is preserved.

    Args:
        name: Loss name.
    """

    def __init__(self, name="resized_density_mse", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        y = keras.ops.cast(y_true, y_pred.dtype)
        if len(y.shape) == len(y_pred.shape) - 1:
            y = y[..., None]
        src, dst = tuple(y.shape[1:-1]), tuple(y_pred.shape[1:-1])
        if src != dst:
            y = keras.ops.image.resize(y, dst, interpolation="area")
            y = y * (float(np.prod(src)) / float(np.prod(dst)))
        return keras.ops.mean(keras.ops.square(y - y_pred), axis=tuple(range(1, len(dst) + 2)))


def make_head(task: str, input_shape, num_classes: int, name: str) -> keras.Model:
    """One auxiliary head (a small functional model) for a stage tensor.

    ``classification``: BatchNormalization -> ReLU -> global average pooling
    -> Dense(num_classes) (logits), as published. ``segmentation``:
    BatchNormalization -> ReLU -> 1x1 Conv(num_classes) (per-pixel logits at
    the stage resolution). ``counting``: BatchNormalization -> ReLU -> 1x1
    Conv(1) (a density map at the stage resolution).
    """
    inp = keras.Input(tuple(input_shape[1:]), name=f"{name}_input")
    x = keras.layers.BatchNormalization(name=f"{name}_bn")(inp)
    x = keras.layers.ReLU(name=f"{name}_relu")(x)
    if task == "classification":
        rank = len(input_shape) - 2
        if rank == 1:
            x = keras.layers.GlobalAveragePooling1D(name=f"{name}_gap")(x)
        elif rank == 2:
            x = keras.layers.GlobalAveragePooling2D(name=f"{name}_gap")(x)
        elif rank == 3:
            x = keras.layers.GlobalAveragePooling3D(name=f"{name}_gap")(x)
        x = keras.layers.Dense(num_classes, name=f"{name}_logits")(x)
    else:
        conv = {1: keras.layers.Conv1D, 2: keras.layers.Conv2D, 3: keras.layers.Conv3D}
        rank = len(input_shape) - 2
        if rank not in conv:
            raise ValueError(
                f"A {task} head needs a feature map with spatial axes. "
                f"Received: input_shape={tuple(input_shape)}"
            )
        x = conv[rank](num_classes if task == "segmentation" else 1, 1, name=f"{name}_out")(x)
    return keras.Model(inp, x, name=name)


def default_loss(task: str):
    """The task loss used for the final output and the heads by default."""
    if task == "classification":
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if task == "segmentation":
        return ResizedSparseCategoricalCrossentropy()
    return ResizedDensityMSE()


class AuxiliaryHeads(keras.Model):
    """A model and its auxiliary heads, trained with the task loss plus the
    weighted auxiliary losses by ``fit(x, y)`` (one target for all outputs).

    Build it with :func:`with_auxiliary_heads`. ``call`` returns the list
    ``[model output, head 1, ..., head P]``. ``fit``/``evaluate`` log
    ``task_loss`` and ``aux{i}_loss`` next to ``loss``; compiled metrics
    apply to the model's own output. The wrapped model shares its layers
    (training the wrapper trains it); it is ``self.model``.

    Attributes:
        model: The wrapped model.
        points: Layer names the heads read.
        heads: The head models (``keras.Model`` each).
        task: ``"classification"``, ``"segmentation"`` or ``"counting"``.
        task_loss: Loss of the model's output.
        aux_loss: Loss of every head.
        aux_weight: Weight of each auxiliary loss.
    """

    def __init__(self, model, points, heads, *, task, task_loss, aux_loss, aux_weight, **kw):
        super().__init__(name=kw.pop("name", f"{model.name}_aux"), **kw)
        self.model = model
        self.points = list(points)
        self.heads = list(heads)
        self.task = task
        self.task_loss = task_loss
        self.aux_loss = aux_loss
        self.aux_weight = float(aux_weight)
        feats = [model.get_layer(p).output for p in self.points]
        self._features = keras.Model(model.inputs, [model.outputs[0]] + feats, name="features")
        self._task_tracker = keras.metrics.Mean(name="task_loss")
        self._aux_trackers = [
            keras.metrics.Mean(name=f"aux{i + 1}_loss") for i in range(len(self.heads))
        ]

    def call(self, inputs, training=None):
        outs = self._features(inputs, training=training)
        return [outs[0]] + [h(t, training=training) for h, t in zip(self.heads, outs[1:])]

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        main = self.task_loss(y, y_pred[0], sample_weight=sample_weight)
        total = main
        self._task_tracker.update_state(main)
        for tracker, pred in zip(self._aux_trackers, y_pred[1:]):
            aux = self.aux_loss(y, pred, sample_weight=sample_weight)
            tracker.update_state(aux)
            total = total + self.aux_weight * aux
        if self.losses:
            total = total + keras.ops.sum(keras.ops.stack(self.losses))
        return total

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        return super().compute_metrics(x, y, y_pred[0], sample_weight)


def with_auxiliary_heads(
    model,
    at=None,
    *,
    task: str | None = None,
    num_classes: int | None = None,
    head=None,
    task_loss=None,
    aux_loss=None,
    aux_weight: float = 1.0,
    max_heads: int | None = 3,
) -> AuxiliaryHeads:
    """Attach DCP's auxiliary heads to ``model`` for fine-tuning with ``fit``.

    Args:
        model: A functional ``keras.Model`` (logits for classification and
            segmentation; a density map for counting).
        at: Layer names (top-level) whose outputs get a head; default:
            :func:`auxiliary_head_points` (stage boundaries).
        task: ``"classification"``, ``"segmentation"`` or ``"counting"``;
            default inferred from the output shape (:func:`infer_task`).
        num_classes: Classes of a classification/segmentation head; default:
            the output's last dimension.
        head: ``"gap"`` (the published BN -> ReLU -> GAP -> Dense head),
            ``"pixel"`` (per-pixel head at the stage resolution), or a
            callable ``fn(input_shape, name) -> keras.Model``. Default:
            ``"gap"`` for classification, ``"pixel"`` otherwise.
        task_loss: Loss of the model's output (default: sparse
            cross-entropy from logits, resized per-pixel cross-entropy, or
            count-preserving density MSE, by task).
        aux_loss: Loss of the heads (default: the task's default loss).
        aux_weight: Weight of each auxiliary loss (published: 1).
        max_heads: With ``at=None``, most heads to place.

    Returns:
        An :class:`AuxiliaryHeads` model; compile it with an optimizer (and
        metrics) and ``fit(x, y)``.

    Raises:
        ValueError: For a layer name not in the model, an unknown task or
            head, or a model that is not functional.

    Example:
        >>> aux = acsl_tf.dcp.with_auxiliary_heads(model)
        >>> aux.compile(keras.optimizers.SGD(0.01, momentum=0.9), metrics=["accuracy"])
        >>> aux.fit(x, y, epochs=1)
    """
    _keras.check_graph_model(model, "with_auxiliary_heads")
    if task is None:
        task = infer_task(model)
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}. Received: task={task!r}")
    if at is None:
        at = auxiliary_head_points(model, max_heads=max_heads)
    elif isinstance(at, str):
        at = [at]
    names = {layer.name for layer in model.layers}
    missing = [a for a in at if a not in names]
    if missing:
        raise ValueError(
            f"`at` names layers that are not top-level layers of {model.name!r}: {missing}. "
            f"Received: at={list(at)}"
        )
    if num_classes is None:
        num_classes = int(model.outputs[0].shape[-1])
    if head is None:
        head = "gap" if task == "classification" else "pixel"
    heads = []
    for i, p in enumerate(at):
        shape = tuple(model.get_layer(p).output.shape)
        name = f"aux{i + 1}_head"
        if callable(head):
            h = head(shape, name)
        elif head == "gap":
            if task != "classification":
                raise ValueError(
                    "head='gap' predicts image-level classes; a pixel-level task needs "
                    f"head='pixel'. Received: head={head!r}, task={task!r}"
                )
            h = make_head("classification", shape, num_classes, name)
        elif head == "pixel":
            if task == "classification":
                raise ValueError(
                    "head='pixel' needs a pixel-level task (segmentation or counting). "
                    f"Received: head={head!r}, task={task!r}"
                )
            h = make_head(task, shape, num_classes, name)
        else:
            raise ValueError(f"head must be 'gap', 'pixel' or a callable. Received: head={head!r}")
        heads.append(h)
    tl = task_loss if task_loss is not None else default_loss(task)
    if aux_loss is None:
        aux_loss = default_loss(task)
    return AuxiliaryHeads(
        model, at, heads, task=task, task_loss=tl, aux_loss=aux_loss, aux_weight=aux_weight
    )
