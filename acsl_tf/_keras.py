"""Keras-version specifics, in one place.

Everything in acsl_tf that depends on Keras internals or on the layout of
serialized configs goes through this module, so a Keras upgrade touches one
file.
"""

from __future__ import annotations

import importlib.util
import os

try:  # Keras 3 imports its backend on import; check_backend explains a failure.
    import keras
except ImportError as _err:  # pragma: no cover - exercised in a subprocess test
    keras = None
    _KERAS_IMPORT_ERROR: ImportError | None = _err
else:
    _KERAS_IMPORT_ERROR = None

PACKAGE = "acsl_tf"

INSTALL_HINT = (
    'pip install "acsl_tf[cpu]" (CPU-only TensorFlow) or pip install "acsl_tf[tf]" '
    "(TensorFlow with GPU support)"
)


def register(cls=None, *, name=None):
    """Register a class for Keras serialization under the ``acsl_tf`` package.

    ``keras.models.load_model`` then finds it without ``custom_objects``.
    """

    def deco(c):
        return keras.saving.register_keras_serializable(package=PACKAGE, name=name)(c)

    return deco(cls) if cls is not None else deco


def _module_missing(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is None
    except (ImportError, ValueError):
        return True


#: Keras backends acsl_tf runs on. Sparsity training, shrink, profile and
#: plans run on both; TFLite/ONNX export, the tf.data helpers, the TensorBoard
#: callback and the tf_keras interop need TensorFlow (docs/BACKENDS.md).
SUPPORTED_BACKENDS = ("tensorflow", "jax")

JAX_INSTALL_HINT = 'pip install "acsl_tf[jax]"'


def _requested_backend() -> str:
    return os.environ.get("KERAS_BACKEND", "tensorflow")


def check_backend():
    """Raise a clear error unless Keras 3 runs on a supported backend
    (:data:`SUPPORTED_BACKENDS`: TensorFlow or JAX).

    ``acsl_tf/__init__.py`` calls this before anything else, so a missing
    TensorFlow (or JAX) is reported with the install command instead of as an
    error from inside Keras.

    Raises:
        ImportError: the backend's package or Keras is not installed, Keras is
            not Keras 3, or Keras could not be imported.
        RuntimeError: Keras runs on a backend other than TensorFlow or JAX.

    Example:

    ```python
    import os
    os.environ["KERAS_BACKEND"] = "jax"   # before the first `import keras`
    import acsl_tf                        # check_backend() passes
    ```
    """
    if _KERAS_IMPORT_ERROR is not None or keras is None:
        backend = _requested_backend()
        if backend == "tensorflow" and _module_missing("tensorflow"):
            raise ImportError(
                "acsl_tf needs TensorFlow as the Keras backend, and TensorFlow is not "
                f"installed. Install it with {INSTALL_HINT}, or install your own "
                "TensorFlow build (`tensorflow`, `tensorflow-cpu`, `tensorflow-macos`) "
                "next to acsl_tf. Received: tensorflow=None",
                name="tensorflow",
            ) from None
        if _module_missing("keras"):
            raise ImportError(
                "acsl_tf needs Keras 3, which is not installed. Install it with "
                'pip install "keras>=3". Received: keras=None',
                name="keras",
            ) from None
        raise ImportError(
            f"Keras could not be imported: {_KERAS_IMPORT_ERROR}. acsl_tf needs Keras 3 "
            "on the TensorFlow or the JAX backend; set KERAS_BACKEND=tensorflow (and check "
            f"the TensorFlow installation: {INSTALL_HINT}) or KERAS_BACKEND=jax (with "
            f"{JAX_INSTALL_HINT}). Received: KERAS_BACKEND={backend!r}"
        ) from _KERAS_IMPORT_ERROR
    version = getattr(keras, "__version__", "0")
    if not version.startswith("3."):
        raise ImportError(
            "acsl_tf needs Keras 3; Keras 2 (`tf.keras` of TensorFlow < 2.16, or `tf_keras`) "
            'is not supported. Install Keras 3 with pip install "keras>=3". '
            f"Received: keras.__version__={version!r}"
        )
    backend = keras.backend.backend()
    if backend not in SUPPORTED_BACKENDS:
        raise RuntimeError(
            "acsl_tf runs on the TensorFlow or the JAX backend of Keras 3. Set the "
            "environment variable KERAS_BACKEND=tensorflow (or jax) before importing keras. "
            f"Received: backend={backend!r}"
        )


def backend() -> str:
    """The name of the Keras backend of this process (``"tensorflow"``, ``"jax"``)."""
    return keras.backend.backend()


def require_tensorflow(what: str) -> None:
    """Raise a clear error unless Keras runs on the TensorFlow backend.

    Functions that build TensorFlow graphs (TFLite/ONNX export, ``tf.data``
    pipelines, TensorBoard summaries, the tf_keras interop) call this first.

    Args:
        what: the function or feature, as the user calls it (e.g.
            ``"acsl_tf.export.to_tflite"``).

    Raises:
        RuntimeError: Keras runs on another backend; the message says how to
            get the model into a TensorFlow process.

    Example:

    ```python
    _keras.require_tensorflow("acsl_tf.export.to_tflite")
    ```
    """
    name = backend()
    if name == "tensorflow":
        return
    raise RuntimeError(
        f"{what} needs Keras' TensorFlow backend, and this process runs Keras on {name!r}. "
        "Models trained on JAX carry over: save the model (model.save('model.keras')), "
        "load the .keras file in a process started with KERAS_BACKEND=tensorflow "
        f"(keras.models.load_model) and call {what} there. Received: backend={name!r}"
    )


def state_dtypes() -> tuple[str, str]:
    """``(float, int)`` dtypes of the wide counters that acsl_tf keeps in
    non-trainable weights (step counters, running sums).

    ``("float64", "int64")``, except on JAX without 64-bit mode
    (``jax_enable_x64`` off, JAX's default), where such variables would hold
    32-bit values anyway: there they are declared ``("float32", "int32")``.
    Files saved under either backend load under the other (the values are
    cast on assignment).
    """
    if backend() == "jax":
        import jax

        if not jax.config.jax_enable_x64:
            return "float32", "int32"
    return "float64", "int64"


def is_functional(model) -> bool:
    """True for Functional and Sequential models (graph networks)."""
    from keras.src.models.functional import Functional

    return isinstance(model, (Functional, keras.Sequential))


def print_msg(message: str) -> None:
    """Print like Keras' own console output (``print``, or absl logging when
    Keras' interactive logging is off)."""
    try:
        from keras.src.utils.io_utils import print_msg as keras_print_msg
    except ImportError:  # pragma: no cover - private module moved
        keras_print_msg = print
    keras_print_msg(message)


def current_call_optimizer():
    """The optimizer of the model whose ``fit``/``evaluate`` step is running
    (read while a layer is being called), or None when unknown."""
    try:
        from keras.src.backend.common import global_state
    except ImportError:  # pragma: no cover - private Keras module moved
        return None
    ctx = global_state.get_global_attribute("current_call_ctx")
    return getattr(getattr(ctx, "entry_layer", None), "optimizer", None)


def tensorflow_nn_module():
    """Keras' TensorFlow implementation of ``keras.ops.nn`` (the module whose
    ``conv`` the oneDNN workaround replaces)."""
    from keras.src.backend.tensorflow import nn as tf_nn

    return tf_nn


def standardize_data_format(data_format):
    """``"channels_last"``/``"channels_first"`` for ``data_format`` (None:
    Keras' configured default)."""
    from keras.src import backend as keras_backend

    return keras_backend.standardize_data_format(data_format)


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
    (``(nn, numpy, image)``), or Nones if this Keras lays them out
    differently."""
    try:
        from keras.src.ops import image as image_ops
        from keras.src.ops import nn
        from keras.src.ops import numpy as np_ops
    except ImportError:  # pragma: no cover - other Keras layouts
        return None, None, None
    return nn, np_ops, image_ops


# ---------------------------------------------------------------------------
# Graph access (private Keras APIs, in one place)
# ---------------------------------------------------------------------------


def check_graph_model(model, fn_name: str) -> None:
    """Raise a clear error unless ``model`` is a built Functional/Sequential model."""
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"{fn_name} expects a keras.Model (Functional or Sequential). "
            f"Received: model of type {type(model).__name__}"
        )
    if not is_functional(model):
        raise ValueError(
            f"{fn_name} works on Functional and Sequential models, whose layer graph can be "
            f"read and cloned. {model.name!r} is a subclassed model "
            f"({type(model).__name__}). Rebuild it with the functional API "
            "(keras.Input -> layers -> keras.Model), or apply the function to the "
            "functional sub-models it contains."
        )
    try:
        has_inputs = bool(model.built and model.inputs)
    except (AttributeError, ValueError):
        has_inputs = False
    if not has_inputs:
        raise ValueError(
            f"{fn_name} needs a built model with known inputs; call the model on data or "
            f"give the Sequential model an Input first. Received: model={model.name!r}"
        )


def functional_of(model):
    """The Functional graph behind a Functional or Sequential model."""
    if isinstance(model, keras.Sequential):
        fn = getattr(model, "_functional", None)
        if fn is None:
            raise ValueError(
                "The Sequential model is not built. Build it (call it once or give it "
                f"an Input) before pruning. Received: model={model.name!r}"
            )
        return fn
    return model


def nodes_in_order(graph):
    """The operation nodes of one graph level, inputs first (topological)."""
    out = []
    for depth in sorted(graph._nodes_by_depth.keys(), reverse=True):
        for node in graph._nodes_by_depth[depth]:
            if node.operation is not None and not node.is_input:
                out.append(node)
    return out


def call_arguments(node, fill: dict):
    """``(args, kwargs)`` of a node's call with its KerasTensors replaced by
    ``fill[id(tensor)]``."""
    return node.arguments.fill_in(fill)


def inputs_struct(model):
    """The nested structure of a functional model's inputs (list/dict/tensor)."""
    return getattr(functional_of(model), "_inputs_struct", None)


def outputs_struct(model):
    """The nested structure of a functional model's outputs."""
    return getattr(functional_of(model), "_outputs_struct", None)


def unsafe_deserialization():
    """A context in which ``from_config`` may rebuild Python lambdas.

    Only used to clone layers of a live model the user handed over (never to
    read a file); Keras' safe mode is restored on exit.
    """
    from keras.src.saving import serialization_lib

    return serialization_lib.SafeModeScope(False)


def pack_inputs(model, flat: list):
    """``flat`` input tensors in the structure of ``model``'s inputs (a
    single-element list stays a list: ``keras.Model([inp], out)``)."""
    struct = inputs_struct(model)
    if struct is None:
        return flat[0] if len(flat) == 1 else flat
    return keras.tree.pack_sequence_as(struct, flat)


def clone_layer(layer, config=None):
    """A new layer of ``layer``'s class from ``config`` (default: its own).

    Python callables (Lambda functions, activations that are plain Python
    functions) survive: a custom activation is carried over as the object
    itself instead of through the config, and Lambda code is rebuilt in a
    scope where Keras' safe mode is off for this call only.
    """
    cfg = dict(config if config is not None else layer.get_config())
    act = getattr(layer, "activation", None)
    custom = callable(act) and not (getattr(act, "__module__", "") or "").startswith("keras.")
    if custom and "activation" in cfg:
        cfg["activation"] = "linear"
    with unsafe_deserialization():
        new = layer.__class__.from_config(cfg)
    if custom:
        new.activation = act
    return new
