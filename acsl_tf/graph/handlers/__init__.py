"""One handler per layer family: everything acsl_tf knows about a layer.

A :class:`LayerHandler` owns, for its layer family:

- ``propagate``: how channels flow through the layer and which channels must
  be removed together (analysis);
- ``coverage_kind``: how a constant (removed) channel flows through it
  (``"pass"`` element-wise per channel, ``"unit"`` a BatchNormalization whose
  zero gamma makes the channel constant, ``"merge"`` / ``"product"`` for
  element-wise merges, ``"producer"`` opens new channels, ``"mix"`` mixes
  channels, ``"keep"`` keeps its channels);
- ``rebuild``: the thin layer's config and weights for kept input/output
  channels;
- ``params`` and ``cost``: parameter count and (MACs, FLOPs) for given
  channel counts and shapes;
- ``fold``: the exact correction for removed channels whose value is a
  constant (added to the layer's bias), and whether it is exact;
- ``kernel_view``: the weights as an (output channel, fan-in) matrix for
  weight criteria (l1, l2, fpgm).

Composite layers (several convolutions and BatchNormalizations in one
``call``) are described by a program of steps (:class:`CompositeHandler`);
keras-hub's MobileNet blocks are registered by qualified class name.

Register a handler for your own layer with ``handlers={MyLayer: h}`` on any
public function (scoped to that call), or process-wide with
:func:`register_layer_handler`.
"""

from acsl_tf.graph.handlers.base import (
    ELEMENTWISE_ACTIVATIONS,
    KEEP,
    Barrier,
    KeepChannels,
    LayerHandler,
    PassThrough,
    activation_name,
    is_elementwise_activation,
)
from acsl_tf.graph.handlers.composite import (
    CompositeHandler,
    ConvBnActBlockHandler,
    DepthwiseConvBlockHandler,
    InvertedResidualBlockHandler,
    SqueezeAndExciteHandler,
    Step,
)
from acsl_tf.graph.handlers.conv import (
    ConvHandler,
    ConvTransposeHandler,
    DenseHandler,
    DepthwiseHandler,
    ProducerHandler,
    SeparableConvHandler,
)
from acsl_tf.graph.handlers.merge import ConcatenateHandler, ElementwiseMerge
from acsl_tf.graph.handlers.norm import (
    BatchNormHandler,
    NormHandler,
    PerChannelWeights,
    WrappedBNHandler,
)
from acsl_tf.graph.handlers.registry import (
    Registry,
    default_registry,
    get_layer_handler,
    register_layer_handler,
    supported_layers,
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

__all__ = [
    "ELEMENTWISE_ACTIVATIONS",
    "KEEP",
    "Barrier",
    "KeepChannels",
    "LayerHandler",
    "PassThrough",
    "activation_name",
    "is_elementwise_activation",
    "CompositeHandler",
    "ConvBnActBlockHandler",
    "DepthwiseConvBlockHandler",
    "InvertedResidualBlockHandler",
    "SqueezeAndExciteHandler",
    "Step",
    "ConvHandler",
    "ConvTransposeHandler",
    "DenseHandler",
    "DepthwiseHandler",
    "ProducerHandler",
    "SeparableConvHandler",
    "ConcatenateHandler",
    "ElementwiseMerge",
    "BatchNormHandler",
    "NormHandler",
    "PerChannelWeights",
    "WrappedBNHandler",
    "Registry",
    "default_registry",
    "get_layer_handler",
    "register_layer_handler",
    "supported_layers",
    "ActivationHandler",
    "FlattenHandler",
    "PadHandler",
    "PermuteHandler",
    "Reduction",
    "RescalingHandler",
    "ReshapeHandler",
    "SoftmaxHandler",
    "SplitHandler",
]
