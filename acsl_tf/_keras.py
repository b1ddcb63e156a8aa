"""Keras-version specifics, in one place.

Everything in acsl_tf that depends on Keras internals or on the layout of
serialized configs goes through this module, so a Keras upgrade touches one
file.
"""

from __future__ import annotations

import keras

PACKAGE = "acsl_tf"


def register(cls=None, *, name=None):
    """Register a class for Keras serialization under the ``acsl_tf`` package.

    ``keras.models.load_model`` then finds it without ``custom_objects``.
    """

    def deco(c):
        return keras.saving.register_keras_serializable(package=PACKAGE, name=name)(c)

    return deco(cls) if cls is not None else deco


def check_backend():
    """Raise a clear error unless Keras runs on the TensorFlow backend."""
    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise RuntimeError(
            "acsl_tf needs the TensorFlow backend of Keras 3. Set the environment "
            "variable KERAS_BACKEND=tensorflow before importing keras. "
            f"Received: backend={backend!r}"
        )


def is_functional(model) -> bool:
    """True for Functional and Sequential models (graph networks)."""
    from keras.src.models.functional import Functional

    return isinstance(model, (Functional, keras.Sequential))


def inbound_keras_tensors(node_config):
    """Yield ``(layer_name, node_index, tensor_index)`` for every KerasTensor in a
    serialized inbound node (Keras 3 format: ``{"args": [...], "kwargs": {...}}``)."""
    found = []

    def walk(x):
        if isinstance(x, dict):
            if x.get("class_name") == "__keras_tensor__":
                h = x["config"]["keras_history"]
                found.append((h[0], h[1], h[2]))
                return
            for v in x.values():
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)

    if isinstance(node_config, dict):
        walk(node_config.get("args", []))
        walk(node_config.get("kwargs", {}))
    else:
        walk(node_config)
    return found


def operations(model):
    """All operations of a functional model, including raw ``keras.ops`` calls
    (which ``model.layers`` leaves out)."""
    return list(model.operations)


def input_layers(model):
    """The InputLayer objects of a functional model, in ``model.inputs`` order."""
    return [t._keras_history.operation for t in model.inputs]


def input_layer_names(model):
    """Names of the InputLayers behind ``model.inputs``, in order."""
    return [layer.name for layer in input_layers(model)]


def first_call_input_channels(layer):
    """Channel count of the first input of a layer's first call (shared layers
    have several inputs, so ``layer.input`` is ambiguous for them)."""
    return layer._inbound_nodes[0].input_tensors[0].shape[-1]


def raw_op_modules():
    """The modules that define raw ``keras.ops`` operation classes
    (``(nn, numpy)``), or ``(None, None)`` if this Keras lays them out
    differently."""
    try:
        from keras.src.ops import nn
        from keras.src.ops import numpy as np_ops
    except ImportError:  # pragma: no cover - other Keras layouts
        return None, None
    return nn, np_ops
