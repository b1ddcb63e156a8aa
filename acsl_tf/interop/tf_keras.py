"""Keras 3 <-> tf_keras (Keras 2) conversion of functional and Sequential models.

The converters rebuild the graph layer by layer in the other Keras, with the
same layer names, configurations and weights. Raw ``keras.ops`` calls in a
Keras 3 graph become the equivalent tf_keras layer where one exists with
identical numerics (``keras.ops.add(a, b)`` -> ``Add``, ``keras.ops.relu`` ->
``ReLU``, a spatial ``keras.ops.mean`` -> ``GlobalAveragePooling2D``, ...) and a
TensorFlow op (a tf_keras ``TFOpLambda`` layer) otherwise; the reverse
direction maps ``TFOpLambda`` layers back to ``keras.ops``.

tf_keras is optional and imported lazily; using these functions never changes
the Keras the rest of the process sees (see :mod:`acsl_tf.interop._legacy`).
"""

from __future__ import annotations

import inspect

import keras
import numpy as np

from acsl_tf import _keras
from acsl_tf.interop import _legacy

__all__ = [
    "from_tf_keras",
    "is_tf_keras_model",
    "maybe_from_tf_keras",
    "maybe_to_tf_keras",
    "shrink_tf_keras",
    "to_tf_keras",
]

# Base-layer keyword arguments every tf_keras / Keras 3 layer accepts.
_TFK_BASE_KWARGS = {"name", "dtype", "trainable", "dynamic", "input_dim", "input_shape",
                    "batch_input_shape", "batch_size", "weights", "activity_regularizer",
                    "autocast"}  # fmt: skip
_K3_BASE_KWARGS = {"name", "dtype", "trainable", "activity_regularizer", "input_shape",
                   "input_dim", "batch_input_shape", "batch_size", "autocast"}  # fmt: skip
# Keras 3 config entries that tf_keras lacks and that are harmless at these values.
_DEFAULTS_OK = (None, False, 0, (), [], {}, "linear")
_HARMLESS = {
    "groups": 1,
    "axis": -1,
    "data_format": "channels_last",
    "fill_mode": "constant",  # Keras 3 Resizing: only used with pad_to_aspect_ratio
    "fill_value": 0.0,
}
# Settings that change speed or memory only, never the outputs.
_ALWAYS_DROPPABLE = {"implementation", "trainable"}  # `trainable` is set after creation
# Constructor arguments renamed between the two Keras versions: {class: {Keras 3: tf_keras}}.
_RENAMED = {"LeakyReLU": {"negative_slope": "alpha"}}
# Activation names whose meaning differs between the versions (Keras 3:
# relu6(x + 3) / 6; tf_keras: clip(0.2 x + 0.5, 0, 1)) or that tf_keras lacks.
_HARD_ACTIVATIONS = ("hard_sigmoid", "hard_silu", "hard_swish")
_OBJECT_SUFFIXES = ("_initializer", "_regularizer", "_constraint")


def is_tf_keras_model(obj) -> bool:
    """True if ``obj`` is a tf_keras model or layer (checked without importing tf_keras)."""
    return _legacy.is_tf_keras_object(obj)


# --------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------


def _accepted_kwargs(cls, base):
    params = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            sig = inspect.signature(init)
        except (TypeError, ValueError):  # pragma: no cover - builtins
            continue
        params |= {
            p.name
            for p in sig.parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        }
        if not any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
            # No **kwargs: the base-layer keywords only reach the layer if listed.
            return params - {"self"}
    return (params | base) - {"self"}


def _policy_name(dtype):
    """A dtype policy (string, Keras 3 ``DTypePolicy`` dict, tf_keras ``Policy`` dict) -> name."""
    if isinstance(dtype, dict):
        cfg = dtype.get("config", {})
        return cfg.get("name", "float32") if isinstance(cfg, dict) else "float32"
    if dtype is None or isinstance(dtype, str):
        return dtype
    return getattr(dtype, "name", str(dtype))


def _convert_object(value, getter, layer, key):
    """Re-create a serialized initializer/regularizer/constraint in the other Keras."""
    if value is None or isinstance(value, str):
        return value
    if not isinstance(value, dict) or "class_name" not in value:
        raise ValueError(
            f"Layer {layer.name!r} ({type(layer).__name__}) has a `{key}` that cannot be "
            f"converted. Use a built-in {key.split('_')[-1]} or pass a converter for this "
            f"layer in `converters`. Received: {key}={value!r}"
        )
    cls_name = value["class_name"]
    cfg = dict(value.get("config") or {})
    try:
        cls = type(getter(cls_name))
    except (ValueError, TypeError):
        cls = None
    if cls is not None:
        allowed = _accepted_kwargs(cls, set())
        cfg = {k: v for k, v in cfg.items() if k in allowed}
    try:
        return getter({"class_name": cls_name, "config": cfg})
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"Layer {layer.name!r} ({type(layer).__name__}) has a `{key}` of class "
            f"{cls_name!r}, which the target Keras does not know. Use a built-in one or pass "
            f"a converter for this layer in `converters`. Received: {key}={value!r}"
        ) from e


def _translate_config(layer, target_cls, base_kwargs, getters, *, to_legacy):
    """The layer's config, adapted to ``target_cls``'s constructor."""
    cfg = {k: _plain(v) for k, v in layer.get_config().items()}
    for k3_key, tfk_key in _RENAMED.get(target_cls.__name__, {}).items():
        old, new = (k3_key, tfk_key) if to_legacy else (tfk_key, k3_key)
        if old in cfg:
            cfg[new] = cfg.pop(old)
    if cfg.get("activation") in _HARD_ACTIVATIONS:
        raise ValueError(
            f"Layer {layer.name!r} ({type(layer).__name__}) uses activation="
            f"{cfg['activation']!r}, which Keras 3 and tf_keras define differently (Keras 3: "
            "relu6(x + 3) / 6; tf_keras: clip(0.2 x + 0.5, 0, 1)) or not at all. Use a "
            "separate Activation layer (converted exactly) or pass a converter for this "
            f"layer in `converters`. Received: activation={cfg['activation']!r}"
        )
    if target_cls.__name__ == "BatchNormalization" and isinstance(cfg.get("axis"), list):
        if len(cfg["axis"]) != 1:
            raise ValueError(
                f"Layer {layer.name!r} normalizes over several axes, which Keras 3's "
                "BatchNormalization does not support. Pass a converter for it in "
                f"`converters`. Received: axis={cfg['axis']!r}"
            )
        cfg["axis"] = int(cfg["axis"][0])
    if "dtype" in cfg:
        cfg["dtype"] = _policy_name(cfg["dtype"])
    for key in list(cfg):
        if key.endswith(_OBJECT_SUFFIXES) or key == "activity_regularizer":
            kind = next((s for s in _OBJECT_SUFFIXES if key.endswith(s)), "_regularizer")
            cfg[key] = _convert_object(cfg[key], getters[kind], layer, key)
    allowed = _accepted_kwargs(target_cls, base_kwargs)
    for key in [k for k in cfg if k not in allowed]:
        value = cfg.pop(key)
        # Initializers do not matter: the weights are copied.
        harmless = (
            value is None
            or key.endswith("_initializer")
            or key in _ALWAYS_DROPPABLE
            or (
                isinstance(value, (bool, int, float, str, tuple, list, dict))
                and (value in _DEFAULTS_OK or _HARMLESS.get(key, object()) == value)
            )
        )
        if not harmless:
            raise ValueError(
                f"Layer {layer.name!r} ({type(layer).__name__}) uses `{key}`, which the "
                f"target Keras' {target_cls.__name__} does not have, so it cannot be converted "
                f"exactly. Remove the setting or pass a converter for this layer in "
                f"`converters`. Received: {key}={value!r}"
            )
    return cfg


def _plain(value):
    """tf_keras' tracking wrappers (``ListWrapper``, ``_DictWrapper``) -> list / dict."""
    if isinstance(value, (str, bytes)):
        return value
    if type(value).__name__ == "ListWrapper":
        return [_plain(v) for v in value]
    if type(value).__name__ == "_DictWrapper":
        return {k: _plain(v) for k, v in value.items()}
    return value


def _short_name(variable):
    name = getattr(variable, "path", None) or variable.name
    return name.split("/")[-1].split(":")[0]


def _copy_weights(src, dst):
    """Copy ``src``'s weights into the built layer ``dst`` (matched by name, else by order)."""
    sw, dw = list(src.weights), list(dst.weights)
    if len(sw) != len(dw):
        raise ValueError(
            f"Layer {src.name!r} ({type(src).__name__}) has {len(sw)} weights but its "
            f"converted counterpart has {len(dw)}; the layer cannot be converted exactly. "
            f"Pass a converter for it in `converters`. Received: layer={src.name!r}"
        )
    s_names, d_names = [_short_name(w) for w in sw], [_short_name(w) for w in dw]
    if len(set(s_names)) == len(sw) and set(s_names) == set(d_names):
        by_name = dict(zip(s_names, sw))
        pairs = [(by_name[n], w) for n, w in zip(d_names, dw)]
    else:
        pairs = list(zip(sw, dw))
    for s, d in pairs:
        value = np.asarray(s.numpy())
        if tuple(value.shape) != tuple(d.shape):
            raise ValueError(
                f"Weight {_short_name(s)!r} of layer {src.name!r} has shape {value.shape}, "
                f"but the converted layer expects {tuple(d.shape)}. Pass a converter for this "
                f"layer in `converters`. Received: layer={src.name!r}"
            )
        d.assign(value)


def _check_graph_model(model, *, what, flavour):
    if flavour == "keras":
        ok = _keras.is_functional(model)
    else:
        ok = type(model).__name__ in ("Functional", "Sequential") and is_tf_keras_model(model)
    if not ok:
        raise TypeError(
            f"{what} converts functional and Sequential models only; a subclassed model's "
            "`call` cannot be translated. Rebuild it with the functional API. "
            f"Received: model={type(model).__name__}"
        )
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    if not inputs:
        raise ValueError(
            f"{what} needs a built model with defined inputs. Create it with an Input layer "
            f"(or call it once on a batch). Received: model={model.name!r}"
        )


def _flatten_k3(x):
    return keras.tree.flatten(x)


def _converters_for(converters, layer):
    if not converters:
        return None
    for key in (type(layer), type(layer).__name__):
        if key in converters:
            return converters[key]
    return None


def _k3_operations(model):
    """Every operation of a Keras 3 graph model, recursing into nested models."""
    seen = []
    for op in getattr(model, "operations", None) or model.layers:
        seen.append(op)
        if isinstance(op, keras.Model):
            seen.extend(_k3_operations(op))
    return seen


def _check_not_wrapped(model):
    import acsl_tf

    for op in _k3_operations(model):
        if isinstance(op, acsl_tf.PruneLowCorrelation):
            raise ValueError(
                "The model still holds acsl_tf PruneLowCorrelation wrappers from "
                "`acsl_tf.prune_low_correlation`. Call `acsl_tf.strip_pruning(model)` (or "
                f"`acsl_tf.shrink`) first and convert the plain model. Received: layer={op.name!r}"
            )


# --------------------------------------------------------------------------
# Keras 3 -> tf_keras
# --------------------------------------------------------------------------

# Raw keras.ops -> TensorFlow functions (become tf_keras TFOpLambda layers).
_BINARY_TF = {
    "Add": "math.add",
    "Subtract": "math.subtract",
    "Multiply": "math.multiply",
    "Divide": "math.truediv",
    "TrueDivide": "math.truediv",
    "Maximum": "math.maximum",
    "Minimum": "math.minimum",
    "Power": "math.pow",
    "Matmul": "linalg.matmul",
}
_UNARY_TF = {
    "Relu": "nn.relu",
    "Relu6": "nn.relu6",
    "Sigmoid": "math.sigmoid",
    "Tanh": "math.tanh",
    "Silu": "nn.silu",
    "Softplus": "math.softplus",
    "Softsign": "nn.softsign",
    "Abs": "math.abs",
    "Absolute": "math.abs",
    "Negative": "math.negative",
    "Exp": "math.exp",
    "Sqrt": "math.sqrt",
    "Square": "math.square",
    "Log": "math.log",
    "Floor": "math.floor",
    "Ceil": "math.ceil",
    "Round": "math.round",
    "Sign": "math.sign",
}
_REDUCE_TF = {"Mean": "math.reduce_mean", "Max": "math.reduce_max", "Min": "math.reduce_min",
              "Sum": "math.reduce_sum"}  # fmt: skip
# Raw binary ops with an exactly equivalent tf_keras merge layer.
_BINARY_LAYER = {"Add": "Add", "Subtract": "Subtract", "Multiply": "Multiply",
                 "Maximum": "Maximum", "Minimum": "Minimum"}  # fmt: skip


def _tf_fn(tf, dotted):
    obj = tf
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _is_tfk_tensor(x):
    return hasattr(x, "_keras_history") or type(x).__name__ == "KerasTensor"


def _hard_tf(tf, x, *, silu):
    """Keras 3's hard_sigmoid (relu6(x + 3) / 6) or hard_silu (x times that) as TF ops."""
    y = tf.math.truediv(tf.nn.relu6(tf.math.add(x, 3.0)), 6.0)
    return tf.math.multiply(x, y) if silu else y


def _raw_op_to_tfk(op, args, kwargs, tfk, tf):
    """Apply the tf_keras equivalent of a raw Keras 3 operation to tf_keras tensors."""
    kind = type(op).__name__
    cfg = op.get_config() if hasattr(op, "get_config") else {}
    name = op.name
    tensors = [a for a in args if _is_tfk_tensor(a)]
    if kwargs:
        pass  # keyword call arguments have no mapping: fall through to the error
    elif (
        kind in _BINARY_LAYER
        and len(args) == 2
        and len(tensors) == 2
        and (tuple(args[0].shape) == tuple(args[1].shape))
    ):
        return getattr(tfk.layers, _BINARY_LAYER[kind])(name=name)(list(args))
    elif kind in _BINARY_TF and len(args) == 2:
        return _tf_fn(tf, _BINARY_TF[kind])(args[0], args[1])
    elif kind == "Relu" and len(args) == 1:
        return tfk.layers.ReLU(name=name)(args[0])
    elif kind == "Relu6" and len(args) == 1:
        return tfk.layers.ReLU(max_value=6.0, name=name)(args[0])
    elif kind in ("Sigmoid", "Tanh") and len(args) == 1:
        return tfk.layers.Activation(kind.lower(), name=name)(args[0])
    elif kind in _UNARY_TF and len(args) == 1:
        return _tf_fn(tf, _UNARY_TF[kind])(args[0])
    elif kind == "LeakyRelu" and len(args) == 1:
        return tf.nn.leaky_relu(args[0], alpha=cfg.get("negative_slope", 0.2))
    elif kind == "Gelu" and len(args) == 1:
        return tf.nn.gelu(args[0], approximate=bool(cfg.get("approximate", True)))
    elif kind == "Softmax" and len(args) == 1:
        return tfk.layers.Softmax(axis=cfg.get("axis", -1), name=name)(args[0])
    elif kind in _REDUCE_TF and len(args) == 1 and cfg.get("initial") is None:
        axis, keepdims = cfg.get("axis"), bool(cfg.get("keepdims", False))
        rank = len(args[0].shape)
        axes = None if axis is None else sorted(a % rank for a in np.atleast_1d(axis))
        if kind == "Mean" and rank == 4 and axes == [1, 2]:
            return tfk.layers.GlobalAveragePooling2D(keepdims=keepdims, name=name)(args[0])
        if kind == "Max" and rank == 4 and axes == [1, 2]:
            return tfk.layers.GlobalMaxPooling2D(keepdims=keepdims, name=name)(args[0])
        return _tf_fn(tf, _REDUCE_TF[kind])(
            args[0], axis=None if axis is None else list(np.atleast_1d(axis)), keepdims=keepdims
        )
    elif kind == "Concatenate" and len(args) == 1 and isinstance(args[0], (list, tuple)):
        if all(_is_tfk_tensor(t) for t in args[0]) and len(args[0]) > 1:
            return tfk.layers.Concatenate(axis=cfg.get("axis", 0), name=name)(list(args[0]))
        return tf.concat(list(args[0]), axis=cfg.get("axis", 0))
    elif kind == "Reshape" and len(args) == 1:
        shape = [-1 if s is None else int(s) for s in cfg["newshape"]]
        if shape and shape[0] == -1 and -1 not in shape[1:]:
            return tfk.layers.Reshape(tuple(shape[1:]), name=name)(args[0])
        return tf.reshape(args[0], shape)
    elif kind == "Transpose" and len(args) == 1:
        return tf.transpose(args[0], perm=cfg.get("axes"))
    elif kind == "Clip" and len(args) == 1:
        return tf.clip_by_value(args[0], cfg["x_min"], cfg["x_max"])
    elif kind == "Cast" and len(args) == 1:
        return tf.cast(args[0], cfg["dtype"])
    elif kind == "GetItem" and len(args) == 2:
        return args[0][args[1]]
    elif kind in ("HardSigmoid", "HardSilu", "HardSwish") and len(args) == 1:
        return _hard_tf(tf, args[0], silu=kind != "HardSigmoid")
    raise ValueError(
        f"The raw operation {name!r} (keras.ops {kind}) has no tf_keras equivalent in "
        "acsl_tf.interop. Replace it with a Keras layer, or pass a converter for it in "
        f"`converters`. Received: operation={kind}"
    )


def _activation_name(layer):
    act = layer.get_config().get("activation")
    return act if isinstance(act, str) else getattr(act, "__name__", None)


def _tfk_getters(tfk):
    return {
        "_initializer": tfk.initializers.get,
        "_regularizer": tfk.regularizers.get,
        "_constraint": tfk.constraints.get,
    }


def _layer_to_tfk(layer, tfk, converters):
    custom = _converters_for(converters, layer)
    if custom is not None:
        return custom(layer)
    cls_name = type(layer).__name__
    target = getattr(tfk.layers, cls_name, None)
    builtin = type(layer).__module__.startswith("keras.")
    if target is None or not builtin:
        raise ValueError(
            f"Layer {layer.name!r} of class {cls_name} has no tf_keras counterpart that "
            "acsl_tf.interop can convert. Replace it with built-in layers, or pass "
            f"`converters={{{cls_name!r}: fn}}` where fn(layer) returns an equivalent "
            f"tf_keras layer. Received: layer={layer.name!r} ({type(layer).__module__}.{cls_name})"
        )
    cfg = _translate_config(layer, target, _TFK_BASE_KWARGS, _tfk_getters(tfk), to_legacy=True)
    try:
        new = target.from_config(cfg)
        new.trainable = layer.trainable
        return new
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"Layer {layer.name!r} ({cls_name}) could not be re-created in tf_keras: {e} "
            f"Pass a converter for it in `converters`. Received: layer={layer.name!r}"
        ) from e


def _k3_input_to_tfk(tensor, tfk):
    op = tensor._keras_history.operation
    cfg = op.get_config() if hasattr(op, "get_config") else {}
    batch_shape = cfg.get("batch_shape") or (None,) + tuple(tensor.shape[1:])
    return tfk.Input(
        batch_shape=tuple(batch_shape),
        dtype=_policy_name(cfg.get("dtype")) or tensor.dtype,
        name=op.name,
        sparse=bool(cfg.get("sparse", False)) or None,
    )


def _to_tfk(model, tfk, tf, converters, memo):
    if isinstance(model, keras.Sequential):
        return _sequential_to_tfk(model, tfk, tf, converters, memo)
    tensors = {}
    new_inputs = []
    for t in model.inputs:
        new = _k3_input_to_tfk(t, tfk)
        tensors[id(t)] = new
        new_inputs.append(new)

    def lookup(x):
        if isinstance(x, keras.KerasTensor):
            return tensors[id(x)]
        return x

    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            op = node.operation
            if isinstance(op, keras.layers.InputLayer):
                continue
            args = keras.tree.map_structure(lookup, tuple(node.arguments.args))
            kwargs = keras.tree.map_structure(lookup, dict(node.arguments.kwargs))
            if isinstance(op, keras.Model):
                new = memo.get(id(op))
                if new is None:
                    _check_graph_model(op, what="to_tf_keras", flavour="keras")
                    new = memo[id(op)] = _to_tfk(op, tfk, tf, converters, memo)
                out = new(*args, **kwargs)
            elif (
                type(op) is keras.layers.Activation
                and _activation_name(op) in _HARD_ACTIVATIONS
                and not _converters_for(converters, op)
            ):
                out = _hard_tf(tf, args[0], silu=_activation_name(op) != "hard_sigmoid")
            elif isinstance(op, keras.layers.Layer) or _converters_for(converters, op):
                new = memo.get(id(op))
                first = new is None
                if first:
                    new = memo[id(op)] = _layer_to_tfk(op, tfk, converters)
                out = new(*args, **kwargs)
                if first and op.weights:
                    _copy_weights(op, new)
            else:
                out = _raw_op_to_tfk(op, args, kwargs, tfk, tf)
            old_out = _flatten_k3(node.outputs)
            new_out = tf.nest.flatten(out)
            for o, n in zip(old_out, new_out):
                tensors[id(o)] = n
    outputs = [tensors[id(t)] for t in model.outputs]
    return tfk.Model(
        new_inputs if len(new_inputs) > 1 else new_inputs[0],
        outputs if len(outputs) > 1 else outputs[0],
        name=model.name,
    )


def _sequential_to_tfk(model, tfk, tf, converters, memo):
    new = tfk.Sequential(name=model.name)
    new.add(_k3_input_to_tfk(model.inputs[0], tfk))
    pending = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            _check_graph_model(layer, what="to_tf_keras", flavour="keras")
            converted = memo.get(id(layer)) or _to_tfk(layer, tfk, tf, converters, memo)
        else:
            converted = memo.get(id(layer)) or _layer_to_tfk(layer, tfk, converters)
            pending.append((layer, converted))
        memo[id(layer)] = converted
        new.add(converted)
    for layer, converted in pending:
        if layer.weights:
            _copy_weights(layer, converted)
    return new


def to_tf_keras(model, *, converters: dict | None = None):
    """Rebuild a Keras 3 functional or Sequential model in tf_keras (Keras 2).

    The result has the same graph, layer names, configurations and weights, so
    its outputs equal the Keras 3 model's (within float32 rounding, tested to
    1e-5). Nested models become nested tf_keras models; shared layers stay
    shared. Raw ``keras.ops`` calls become the equivalent tf_keras layer
    (``Add``, ``ReLU``, ``Concatenate``, ``GlobalAveragePooling2D``, ...) when
    one matches exactly, otherwise a TensorFlow op (a tf_keras ``TFOpLambda``
    layer).

    tfmot (``tfmot.quantization.keras.quantize_model``,
    ``tfmot.sparsity.keras.prune_low_magnitude``) accepts the result. tf_keras
    is imported lazily; ``tf.keras`` and ``TF_USE_LEGACY_KERAS`` are left as
    they were.

    Args:
        model: A built Keras 3 functional or Sequential model, for example one
            returned by ``acsl_tf.shrink``. Models still wrapped by
            ``acsl_tf.prune_low_correlation`` are refused: strip them first.
        converters: Optional ``{layer class or class name: fn}``, where
            ``fn(layer)`` returns an equivalent (unbuilt) tf_keras layer. The
            weights are then copied by name (else in order) after the first
            call.

    Returns:
        A ``tf_keras.Model`` (``tf_keras.Sequential`` for a Sequential model).

    Raises:
        TypeError: not a Keras 3 functional/Sequential model.
        ValueError: unbuilt model, wrapped model, or a layer / raw op without
            a tf_keras counterpart (the error names it).
        ImportError: tf_keras is not installed (the message says what to install).

    Example:
    ```python
    small = acsl_tf.shrink(model, ratio=0.3)
    legacy = acsl_tf.interop.to_tf_keras(small)
    q = tfmot.quantization.keras.quantize_model(legacy)
    ```
    """
    _keras.require_tensorflow("acsl_tf.interop.to_tf_keras")
    if is_tf_keras_model(model):
        raise TypeError(
            "to_tf_keras converts Keras 3 models, but this is already a tf_keras model. "
            f"Use it as it is, or from_tf_keras(model) for Keras 3. Received: model={model.name!r}"
        )
    if not isinstance(model, keras.Model):
        raise TypeError(
            "to_tf_keras expects a Keras 3 `keras.Model`. Load or build the model first. "
            f"Received: model={type(model).__name__}"
        )
    _check_graph_model(model, what="to_tf_keras", flavour="keras")
    _check_not_wrapped(model)
    with _legacy.keras_guard():
        tfk = _legacy.tf_keras()
        import tensorflow as tf

        return _to_tfk(model, tfk, tf, converters, {})


# --------------------------------------------------------------------------
# tf_keras -> Keras 3
# --------------------------------------------------------------------------


def _unslice(x):
    """tf_keras stores slices of ``SlicingOpLambda`` calls as dicts; turn them back."""
    if isinstance(x, dict) and set(x) == {"start", "stop", "step"}:
        return slice(x["start"], x["stop"], x["step"])
    if isinstance(x, (list, tuple)):
        return type(x)(_unslice(v) for v in x)
    return x


_TF_BINARY_K3 = {
    "math.add": "add",
    "__operators__.add": "add",
    "math.subtract": "subtract",
    "math.multiply": "multiply",
    "math.truediv": "divide",
    "math.divide": "divide",
    "math.maximum": "maximum",
    "math.minimum": "minimum",
    "math.pow": "power",
    "linalg.matmul": "matmul",
}
_TF_UNARY_K3 = {
    "nn.relu": "relu",
    "nn.relu6": "relu6",
    "math.sigmoid": "sigmoid",
    "nn.sigmoid": "sigmoid",
    "math.tanh": "tanh",
    "nn.tanh": "tanh",
    "nn.silu": "silu",
    "nn.swish": "silu",
    "math.softplus": "softplus",
    "nn.softsign": "softsign",
    "math.abs": "abs",
    "math.negative": "negative",
    "math.exp": "exp",
    "math.sqrt": "sqrt",
    "math.square": "square",
    "math.log": "log",
    "math.floor": "floor",
    "math.ceil": "ceil",
    "math.round": "round",
    "math.sign": "sign",
}
_TF_REDUCE_K3 = {"math.reduce_mean": "mean", "math.reduce_max": "max",
                 "math.reduce_min": "min", "math.reduce_sum": "sum"}  # fmt: skip


def _tf_op_to_k3(layer, args, kwargs):
    """Apply the ``keras.ops`` equivalent of a tf_keras TFOpLambda/SlicingOpLambda call."""
    symbol = getattr(layer, "symbol", None) or ""
    ops = keras.ops
    if type(layer).__name__ == "SlicingOpLambda" and symbol == "__operators__.getitem":
        return args[0][_unslice(args[1])]
    try:
        bound = inspect.signature(layer.function).bind(*args, **kwargs)
        bound.apply_defaults()
        a = dict(bound.arguments)
    except (TypeError, ValueError):
        a = None
    a = a or {}
    a.pop("name", None)
    vals = list(a.values())
    if symbol in _TF_BINARY_K3 and len(vals) >= 2:
        return getattr(ops, _TF_BINARY_K3[symbol])(vals[0], vals[1])
    if symbol in _TF_UNARY_K3 and vals:
        return getattr(ops, _TF_UNARY_K3[symbol])(vals[0])
    if symbol == "nn.leaky_relu":
        return ops.leaky_relu(a["features"], negative_slope=a.get("alpha", 0.2))
    if symbol == "nn.gelu":
        return ops.gelu(a["features"], approximate=bool(a.get("approximate", False)))
    if symbol in ("nn.softmax", "math.softmax"):
        axis = a.get("axis")
        return ops.softmax(a["logits"], axis=-1 if axis is None else axis)
    if symbol in _TF_REDUCE_K3:
        axis = a.get("axis")
        if isinstance(axis, (list, tuple)):
            axis = tuple(int(v) for v in axis)
        return getattr(ops, _TF_REDUCE_K3[symbol])(
            a["input_tensor"], axis=axis, keepdims=bool(a.get("keepdims", False))
        )
    if symbol == "concat":
        return ops.concatenate(list(a["values"]), axis=a["axis"])
    if symbol == "reshape":
        return ops.reshape(a["tensor"], tuple(int(s) for s in a["shape"]))
    if symbol in ("transpose", "compat.v1.transpose", "linalg.matrix_transpose"):
        perm = a.get("perm") or a.get("a_perm")
        return ops.transpose(a.get("a"), axes=None if perm is None else tuple(perm))
    if symbol == "clip_by_value":
        return ops.clip(a["t"], a["clip_value_min"], a["clip_value_max"])
    if symbol == "cast":
        return ops.cast(a["x"], a["dtype"])
    raise ValueError(
        f"The TensorFlow op layer {layer.name!r} (tf.{symbol}) has no keras.ops "
        "equivalent in acsl_tf.interop. Replace it with a Keras layer, or pass a converter "
        f"for it in `converters`. Received: layer={layer.name!r} (tf.{symbol})"
    )


def _k3_getters():
    return {
        "_initializer": keras.initializers.get,
        "_regularizer": keras.regularizers.get,
        "_constraint": keras.constraints.get,
    }


_TFMOT_WRAPPERS = ("QuantizeWrapper", "QuantizeWrapperV2", "PruneLowMagnitude",
                   "ClusterWeights", "ClusterWeightsMHA", "QuantizeLayer")  # fmt: skip


def _layer_to_k3(layer, converters):
    custom = _converters_for(converters, layer)
    if custom is not None:
        return custom(layer)
    cls_name = type(layer).__name__
    if cls_name in _TFMOT_WRAPPERS:
        raise ValueError(
            f"Layer {layer.name!r} is a tfmot {cls_name}; tfmot training wrappers have no "
            "Keras 3 form. Convert the float model, or strip pruning wrappers with "
            "`tfmot.sparsity.keras.strip_pruning` first. Received: layer="
            f"{layer.name!r} ({cls_name})"
        )
    target = getattr(keras.layers, cls_name, None)
    builtin = type(layer).__module__.startswith("tf_keras.")
    if target is None or not builtin:
        raise ValueError(
            f"Layer {layer.name!r} of class {cls_name} has no Keras 3 counterpart that "
            "acsl_tf.interop can convert. Replace it with built-in layers, or pass "
            f"`converters={{{cls_name!r}: fn}}` where fn(layer) returns an equivalent "
            f"Keras 3 layer. Received: layer={layer.name!r} ({type(layer).__module__}.{cls_name})"
        )
    cfg = _translate_config(layer, target, _K3_BASE_KWARGS, _k3_getters(), to_legacy=False)
    try:
        new = target.from_config(cfg)
        new.trainable = layer.trainable
        return new
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"Layer {layer.name!r} ({cls_name}) could not be re-created in Keras 3: {e} "
            f"Pass a converter for it in `converters`. Received: layer={layer.name!r}"
        ) from e


def _tfk_input_to_k3(tensor):
    layer = tensor._keras_history.layer
    cfg = layer.get_config()
    batch_shape = cfg.get("batch_input_shape") or (None,) + tuple(tensor.shape[1:])
    return keras.Input(
        batch_shape=tuple(batch_shape),
        dtype=_policy_name(cfg.get("dtype")) or tensor.dtype.name,
        name=layer.name,
        sparse=bool(cfg.get("sparse", False)),
    )


def _to_k3(model, tf, converters, memo):
    if type(model).__name__ == "Sequential":
        return _sequential_to_k3(model, tf, converters, memo)
    tensors = {}
    new_inputs = []
    for t in model.inputs:
        new = _tfk_input_to_k3(t)
        tensors[id(t)] = new
        new_inputs.append(new)

    def lookup(x):
        if _is_tfk_tensor(x) and not isinstance(x, keras.KerasTensor):
            return tensors[id(x)]
        return x

    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            layer = node.layer
            if node.is_input or type(layer).__name__ == "InputLayer":
                continue
            args = tf.nest.map_structure(lookup, tuple(node.call_args))
            kwargs = tf.nest.map_structure(lookup, dict(node.call_kwargs))
            kwargs.pop("training", None)
            kind = type(layer).__name__
            if kind in ("Functional", "Sequential", "Model") and hasattr(layer, "_nodes_by_depth"):
                new = memo.get(id(layer))
                if new is None:
                    _check_graph_model(layer, what="from_tf_keras", flavour="tf_keras")
                    new = memo[id(layer)] = _to_k3(layer, tf, converters, memo)
                out = new(*args, **kwargs)
            elif (
                kind == "Activation"
                and _activation_name(layer) == "hard_sigmoid"
                and not _converters_for(converters, layer)
            ):
                out = keras.ops.clip(keras.ops.add(keras.ops.multiply(args[0], 0.2), 0.5), 0, 1)
            elif kind in ("TFOpLambda", "SlicingOpLambda") and not _converters_for(
                converters, layer
            ):
                kwargs.pop("name", None)
                out = _tf_op_to_k3(layer, args, kwargs)
            else:
                new = memo.get(id(layer))
                first = new is None
                if first:
                    new = memo[id(layer)] = _layer_to_k3(layer, converters)
                out = new(*args, **kwargs)
                if first and layer.weights:
                    _copy_weights(layer, new)
            for o, n in zip(tf.nest.flatten(node.outputs), keras.tree.flatten(out)):
                tensors[id(o)] = n
    outputs = [tensors[id(t)] for t in model.outputs]
    return keras.Model(
        new_inputs if len(new_inputs) > 1 else new_inputs[0],
        outputs if len(outputs) > 1 else outputs[0],
        name=model.name,
    )


def _sequential_to_k3(model, tf, converters, memo):
    new = keras.Sequential(name=model.name)
    new.add(_tfk_input_to_k3(model.inputs[0]))
    pending = []
    for layer in model.layers:
        if type(layer).__name__ in ("Functional", "Sequential"):
            _check_graph_model(layer, what="from_tf_keras", flavour="tf_keras")
            converted = memo.get(id(layer)) or _to_k3(layer, tf, converters, memo)
        else:
            converted = memo.get(id(layer)) or _layer_to_k3(layer, converters)
            pending.append((layer, converted))
        memo[id(layer)] = converted
        new.add(converted)
    for layer, converted in pending:
        if layer.weights:
            _copy_weights(layer, converted)
    return new


def from_tf_keras(model, *, converters: dict | None = None):
    """Rebuild a tf_keras (Keras 2) functional or Sequential model in Keras 3.

    The inverse of :func:`to_tf_keras`: same graph, layer names, configurations
    and weights. tf_keras ``TFOpLambda`` layers (TensorFlow functions called on
    symbolic tensors, e.g. ``tf.nn.relu(x)`` or ``x + y``) become the
    equivalent ``keras.ops`` calls.

    Args:
        model: A built tf_keras functional or Sequential model. tfmot training
            wrappers (quantization, pruning, clustering) are refused: convert
            the float model, or strip them first.
        converters: Optional ``{layer class or class name: fn}``, where
            ``fn(layer)`` returns an equivalent (unbuilt) Keras 3 layer.

    Returns:
        A ``keras.Model`` (``keras.Sequential`` for a Sequential model).

    Raises:
        TypeError: not a tf_keras functional/Sequential model.
        ValueError: unbuilt model, tfmot wrappers, or a layer / TensorFlow op
            without a Keras 3 counterpart (the error names it).
    """
    _keras.require_tensorflow("acsl_tf.interop.from_tf_keras")
    if not is_tf_keras_model(model):
        raise TypeError(
            "from_tf_keras expects a tf_keras (Keras 2) model"
            + (
                "; this is already a Keras 3 model, use it as it is"
                if isinstance(model, keras.Model)
                else ""
            )
            + f". Received: model={type(model).__module__}.{type(model).__name__}"
        )
    _check_graph_model(model, what="from_tf_keras", flavour="tf_keras")
    with _legacy.keras_guard():
        import tensorflow as tf

        return _to_k3(model, tf, converters, {})


def maybe_from_tf_keras(model, *, converters: dict | None = None):
    """Return ``(keras3_model, was_tf_keras)``.

    A tf_keras model is converted with :func:`from_tf_keras`; anything else is
    returned unchanged with ``was_tf_keras=False``. For entry points (``shrink``,
    ``profile``, ...) that accept both kinds of model; hand the result back with
    :func:`maybe_to_tf_keras`.
    """
    if is_tf_keras_model(model):
        return from_tf_keras(model, converters=converters), True
    return model, False


def maybe_to_tf_keras(model, was_tf_keras: bool, *, converters: dict | None = None):
    """Convert ``model`` back to tf_keras when ``was_tf_keras`` is true; else return it."""
    return to_tf_keras(model, converters=converters) if was_tf_keras else model


def shrink_tf_keras(model, **shrink_kwargs):
    """Prune channels of a tf_keras model with ``acsl_tf.shrink``; returns a tf_keras model.

    The model is converted to Keras 3 (:func:`from_tf_keras`), shrunk with
    ``acsl_tf.shrink(**shrink_kwargs)`` and converted back
    (:func:`to_tf_keras`), so a tfmot user can remove channels from an existing
    tf_keras model and keep using tfmot on the result.

    Args:
        model: A built tf_keras functional or Sequential model.
        **shrink_kwargs: Arguments of ``acsl_tf.shrink`` (``ratio``,
            ``threshold``, ``target_flops``, ``target_params``, ``keep``,
            ``criterion``, ``round_to``, ...).

    Returns:
        A new, smaller tf_keras model.

    Example:
    ```python
    small = acsl_tf.interop.shrink_tf_keras(legacy_model, target_flops=0.5)
    qat = tfmot.quantization.keras.quantize_model(small)
    ```
    """
    import acsl_tf

    if not is_tf_keras_model(model):
        raise TypeError(
            "shrink_tf_keras expects a tf_keras model; for a Keras 3 model call "
            f"acsl_tf.shrink directly. Received: model={type(model).__name__}"
        )
    k3 = from_tf_keras(model)
    return to_tf_keras(acsl_tf.shrink(k3, **shrink_kwargs))
