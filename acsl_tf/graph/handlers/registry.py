"""The handler registry: layer class (or class name) -> handler, with the
defaults; every DependencyGraph copies it."""

from __future__ import annotations

import keras

from acsl_tf import _keras
from acsl_tf.graph.handlers.base import Barrier, LayerHandler, PassThrough
from acsl_tf.graph.handlers.composite import keras_hub_handlers
from acsl_tf.graph.handlers.conv import (
    ConvHandler,
    ConvTransposeHandler,
    DenseHandler,
    DepthwiseHandler,
    SeparableConvHandler,
)
from acsl_tf.graph.handlers.merge import ConcatenateHandler, ElementwiseMerge
from acsl_tf.graph.handlers.norm import (
    BatchNormHandler,
    NormHandler,
    PerChannelWeights,
    WrappedBNHandler,
)
from acsl_tf.graph.handlers.spatial import (
    ActivationHandler,
    FlattenHandler,
    PadHandler,
    PermuteHandler,
    Reduction,
    RescalingHandler,
    ReshapeHandler,
    SoftmaxHandler,
    SplitHandler,
)

L = keras.layers


class Registry:
    """Layer class (or class name) -> handler; lookup follows the MRO.

    A name is either a bare class name (``"LayerScale"``: any class of that
    name) or a qualified one, ``"module.QualName"``, which matches only the
    class defined there; the library registers classes of optional packages
    (keras-hub) this way, without importing them.
    """

    def __init__(self):
        self.by_class: dict = {}
        self.by_name: dict = {}
        self.by_qualname: dict = {}

    def copy(self) -> Registry:
        r = Registry()
        r.by_class = dict(self.by_class)
        r.by_name = dict(self.by_name)
        r.by_qualname = dict(self.by_qualname)
        return r

    def register(self, layer_class, handler) -> None:
        if not isinstance(handler, LayerHandler):
            raise TypeError(
                f"handler must be a LayerHandler instance. Received: handler={handler!r}"
            )
        if isinstance(layer_class, str) and "." in layer_class:
            self.by_qualname[layer_class] = handler
        elif isinstance(layer_class, str):
            self.by_name[layer_class] = handler
        elif isinstance(layer_class, type):
            self.by_class[layer_class] = handler
        else:
            raise TypeError(
                "layer_class must be a class or a class name. "
                f"Received: layer_class={layer_class!r}"
            )

    def lookup(self, op):
        if isinstance(op, L.Wrapper) and isinstance(
            getattr(op, "layer", None), L.BatchNormalization
        ):
            return _WRAPPED
        for cls in type(op).__mro__:
            if cls in self.by_class:
                return self.by_class[cls]
            if self.by_qualname:
                qualname = f"{cls.__module__}.{cls.__qualname__}"
                if qualname in self.by_qualname:
                    return self.by_qualname[qualname]
            if cls.__name__ in self.by_name:
                return self.by_name[cls.__name__]
        return None

    def names(self) -> list:
        return sorted(
            {c.__name__ for c in self.by_class}
            | set(self.by_name)
            | {q.rsplit(".", 1)[-1] for q in self.by_qualname}
        )


_WRAPPED = WrappedBNHandler()
_DEFAULT = Registry()


def default_registry() -> Registry:
    """The process-wide default registry (copied by every graph)."""
    return _DEFAULT


def register_layer_handler(layer_class, handler: LayerHandler) -> None:
    """Register a handler process-wide (every later graph copies it).

    Prefer ``handlers={LayerClass: handler}`` on ``plan_shrink`` / ``shrink``
    / ``profile`` / ``prune_low_correlation``, which is scoped to the call.

    Args:
        layer_class: A class (lookup follows subclassing), a class name, or
            a qualified name ``"module.QualName"`` (only the class defined
            there; no import needed).
        handler: A :class:`LayerHandler` instance.

    Raises:
        TypeError: For a handler that is not a LayerHandler or a
            ``layer_class`` that is neither a class nor a string.

    Example:
        >>> from acsl_tf.graph.handlers import PassThrough
        >>> class MyAct(keras.layers.Layer):
        ...     def call(self, x): return x * keras.ops.sigmoid(x)
        >>> acsl_tf.register_layer_handler(MyAct, PassThrough(flops="out"))
    """
    _DEFAULT.register(layer_class, handler)


def get_layer_handler(op):
    """The default handler for ``op`` (None when unknown)."""
    return _DEFAULT.lookup(op)


def supported_layers() -> list:
    """Names of the layer / op classes with a default handler."""
    return _DEFAULT.names()


def _register_defaults():
    r = _DEFAULT.register
    for cls in (L.Conv1D, L.Conv2D, L.Conv3D):
        r(cls, ConvHandler())
    for cls in (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose):
        r(cls, ConvTransposeHandler())
    r(L.Dense, DenseHandler())
    for cls in (L.SeparableConv1D, L.SeparableConv2D):
        r(cls, SeparableConvHandler())
    for cls in (L.DepthwiseConv1D, L.DepthwiseConv2D):
        r(cls, DepthwiseHandler())
    r(L.BatchNormalization, BatchNormHandler())
    r(L.PReLU, PerChannelWeights("out"))
    r("LayerScale", PerChannelWeights())
    for cls in (L.ReLU, L.LeakyReLU, L.ELU):
        r(cls, PassThrough("out"))
    r(L.Activation, ActivationHandler())
    for cls in (
        L.Dropout, L.SpatialDropout1D, L.SpatialDropout2D, L.SpatialDropout3D,
        L.GaussianNoise, L.GaussianDropout, L.AlphaDropout, L.ActivityRegularization,
        L.Identity, L.UpSampling1D, L.UpSampling2D, L.UpSampling3D, L.ZeroPadding1D,
        L.ZeroPadding2D, L.ZeroPadding3D, L.Cropping1D, L.Cropping2D, L.Cropping3D,
        L.Resizing, L.CenterCrop, L.RandomFlip, L.RandomRotation, L.RandomZoom,
        L.RandomTranslation, L.RandomCrop,
    ):  # fmt: skip
        r(cls, PassThrough())
    for cls in (
        L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D, L.AveragePooling1D,
        L.AveragePooling2D, L.AveragePooling3D, L.GlobalAveragePooling1D,
        L.GlobalAveragePooling2D, L.GlobalAveragePooling3D, L.GlobalMaxPooling1D,
        L.GlobalMaxPooling2D, L.GlobalMaxPooling3D,
    ):  # fmt: skip
        r(cls, PassThrough("in"))
    r("StochasticDepth", PassThrough())
    for cls in (L.Add, L.Subtract, L.Average, L.Maximum, L.Minimum):
        r(cls, ElementwiseMerge())
    r(L.Multiply, ElementwiseMerge(product=True))
    r(L.Concatenate, ConcatenateHandler())
    # keras.applications.InceptionResNetV2: inputs[0] + inputs[1] * scale
    r("CustomScaleLayer", ElementwiseMerge())
    r(L.Flatten, FlattenHandler())
    r(L.Reshape, ReshapeHandler())
    r(L.Permute, PermuteHandler())
    r(L.Rescaling, RescalingHandler())
    r(L.Normalization, Barrier("normalises per channel with fixed statistics"))
    for cls in (L.LayerNormalization, L.UnitNormalization):
        r(cls, NormHandler())
    r(L.GroupNormalization, Barrier("normalises groups of channels"))
    r(L.Softmax, SoftmaxHandler())
    # composite layers of optional packages, by qualified name (nothing imported)
    for qualname, handler in keras_hub_handlers().items():
        r(qualname, handler)

    _nn, _np, _img = _keras.raw_op_modules()
    if _nn is None:  # pragma: no cover - other Keras layouts
        return

    acts = (
        "Relu", "Relu6", "Sigmoid", "HardSigmoid", "HardSilu", "Silu", "Gelu", "Elu", "Selu",
        "Celu", "Softplus", "Softsign", "LeakyRelu", "LogSigmoid", "HardTanh", "SoftShrink",
        "HardShrink", "TanhShrink", "Squareplus", "SparsePlus", "SparseSigmoid", "Mish",
    )  # fmt: skip
    for n in acts:
        if hasattr(_nn, n):
            r(getattr(_nn, n), PassThrough("out"))
    unary = (
        "Tanh", "Abs", "Absolute", "Negative", "Exp", "Expm1", "Log", "Log1p", "Sqrt", "Square",
        "Clip", "Sign", "Round", "Floor", "Ceil", "Sin", "Cos", "Reciprocal", "Cast",
        "Erf", "Sigmoid", "Rsqrt",
    )  # fmt: skip
    for n in unary:
        if hasattr(_np, n):
            r(getattr(_np, n), PassThrough("out"))
    for n in ("Add", "Subtract", "Maximum", "Minimum"):
        if hasattr(_np, n):
            r(getattr(_np, n), ElementwiseMerge())
    for n in ("Multiply", "Divide", "TrueDivide", "Power"):
        if hasattr(_np, n):
            r(getattr(_np, n), ElementwiseMerge(product=True))
    for n in ("Softmax", "LogSoftmax"):
        if hasattr(_nn, n):
            r(getattr(_nn, n), SoftmaxHandler())
    if hasattr(_np, "Concatenate"):
        r(_np.Concatenate, ConcatenateHandler())
    for n in ("Mean", "Max", "Min", "Sum"):
        if hasattr(_np, n):
            r(getattr(_np, n), Reduction("out"))
    if hasattr(_np, "Pad"):
        r(_np.Pad, PadHandler())
    if hasattr(_np, "Split"):
        r(_np.Split, SplitHandler())
    if hasattr(_img, "Resize"):
        r(_img.Resize, PassThrough())


_register_defaults()
