"""The channel dependency graph of a Keras 3 functional model.

Everything in acsl_tf that reasons about channels (sparsity training, the
budget controller, ``profile``, planning, applying and folding) reads it from
one :class:`DependencyGraph`; per-layer knowledge lives in one handler per
layer family (:mod:`acsl_tf.graph.handlers`).
"""

from acsl_tf.graph.dependency import ChanMap, DependencyGraph, Group, Unit
from acsl_tf.graph.handlers import (
    ELEMENTWISE_ACTIVATIONS,
    ElementwiseMerge,
    KeepChannels,
    LayerHandler,
    PassThrough,
    PerChannelWeights,
    get_layer_handler,
    register_layer_handler,
    supported_layers,
)
from acsl_tf.graph.trace import Call, Trace, trace_model

__all__ = [
    "ChanMap",
    "DependencyGraph",
    "Group",
    "Unit",
    "ELEMENTWISE_ACTIVATIONS",
    "ElementwiseMerge",
    "KeepChannels",
    "LayerHandler",
    "PassThrough",
    "PerChannelWeights",
    "get_layer_handler",
    "register_layer_handler",
    "supported_layers",
    "Call",
    "Trace",
    "trace_model",
]
