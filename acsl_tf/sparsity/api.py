"""Entry points: `prune_low_correlation` wraps a model's prunable units,
`strip_pruning` removes the wrappers again."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import keras

from acsl_tf import _keras
from acsl_tf.sparsity.wrapper import STATISTICS_ACTIVATIONS, PruneLowCorrelation

#: Layers whose output channels a following BatchNormalization scales.
PRODUCER_CLASSES = (
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv3D,
    keras.layers.Conv1DTranspose,
    keras.layers.Conv2DTranspose,
    keras.layers.Conv3DTranspose,
    keras.layers.DepthwiseConv1D,
    keras.layers.DepthwiseConv2D,
    keras.layers.SeparableConv1D,
    keras.layers.SeparableConv2D,
    keras.layers.Dense,
)


def _check_model(model, fn_name):
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"{fn_name} expects a keras.Model (Functional or Sequential). "
            f"Received: model of type {type(model).__name__}"
        )
    if not _keras.is_functional(model):
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


def _graph(model):
    """``(inbound, consumers)`` name maps of one (non-nested) graph level."""
    layers = list(model.layers)
    inbound = {layer.name: [] for layer in layers}
    if isinstance(model, keras.Sequential):
        for prev, layer in zip(layers, layers[1:]):
            inbound[layer.name].append(prev.name)
    else:
        for lc in model.get_config()["layers"]:
            for node in lc.get("inbound_nodes", []):
                for name, _, _ in _keras.inbound_keras_tensors(node):
                    inbound.setdefault(lc["name"], []).append(name)
    consumers = {name: [] for name in inbound}
    for name, parents in inbound.items():
        for p in parents:
            consumers.setdefault(p, []).append(name)
    return inbound, consumers


def find_units(model, *, ignored_layers: Iterable[str] = (), pruning_policy=None):
    """Prunable units of a model, recursing into nested models.

    A unit is a ``BatchNormalization`` with ``scale=True`` whose input is the
    output of a convolution or Dense layer.

    Returns:
        dict ``{id(bn): (bn, feature_activation_config_or_None)}``.
    """
    ignored = set(ignored_layers)
    units = {}

    def visit(m):
        by_name = {layer.name: layer for layer in m.layers}
        inbound, consumers = _graph(m)
        for layer in m.layers:
            if isinstance(layer, keras.Model):
                visit(layer)
                continue
            if not isinstance(layer, keras.layers.BatchNormalization) or not layer.scale:
                continue
            if isinstance(layer, PruneLowCorrelation):
                continue
            parents = inbound.get(layer.name, [])
            if len(parents) != 1 or not isinstance(by_name.get(parents[0]), PRODUCER_CLASSES):
                continue
            if layer.name in ignored or parents[0] in ignored:
                continue
            if pruning_policy is not None and not pruning_policy(layer):
                continue
            act = None
            cons = consumers.get(layer.name, [])
            if len(cons) == 1:
                nxt = by_name.get(cons[0])
                if type(nxt).__name__ in STATISTICS_ACTIVATIONS:
                    act = keras.saving.serialize_keras_object(nxt)
            units[id(layer)] = (layer, act)

    visit(model)
    return units


def get_wrappers(model) -> list[PruneLowCorrelation]:
    """All :class:`PruneLowCorrelation` layers of a model, nested models included."""
    found = []

    def visit(m):
        for layer in m.layers:
            if isinstance(layer, PruneLowCorrelation):
                found.append(layer)
            elif isinstance(layer, keras.Model):
                visit(layer)

    visit(model)
    return found


def _source_lookup(model):
    """Name -> layer map of a (possibly wrapped) model, in which a wrapper is
    also reachable by its inner layer's name."""
    lookup = {}
    for layer in model.layers:
        lookup[layer.name] = layer
        if isinstance(layer, PruneLowCorrelation):
            lookup[layer.layer.name] = layer.layer
    return lookup


def _copy_weights(src, dst, *, copy_state: bool):
    """Copy weights from ``src`` to the clone ``dst`` layer by layer, by name."""
    lookup = _source_lookup(src)
    for layer in dst.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if isinstance(layer, keras.Model):
            _copy_weights(lookup[layer.name], layer, copy_state=copy_state)
            continue
        if isinstance(layer, PruneLowCorrelation):
            source = lookup.get(layer.name)
            if copy_state and isinstance(source, PruneLowCorrelation):
                layer.set_weights(source.get_weights())
            else:
                layer.layer.set_weights(lookup[layer.layer.name].get_weights())
            continue
        source = lookup[layer.name]
        if isinstance(source, PruneLowCorrelation):
            source = source.layer
        layer.set_weights(source.get_weights())


def _clone(model, clone_function):
    input_tensors = None
    if not isinstance(model, keras.Sequential):
        input_tensors = [
            keras.Input(batch_shape=t.shape, dtype=t.dtype, name=layer.name)
            for t, layer in zip(model.inputs, _input_layers(model))
        ]
        if len(input_tensors) == 1:
            input_tensors = input_tensors[0]
    clone = keras.models.clone_model(
        model, input_tensors=input_tensors, clone_function=clone_function, recursive=True
    )
    if isinstance(clone, keras.Sequential):
        # A functional model over the same layers: one graph API downstream.
        clone = keras.Model(clone.inputs, clone.outputs, name=clone.name)
    return clone


def _input_layers(model):
    return _keras.input_layers(model)


def _default_clone(layer):
    return layer.__class__.from_config(layer.get_config())


def prune_low_correlation(
    model: keras.Model,
    *,
    penalty: float = 1e-4,
    affinity: str = "cosine",
    direction: str = "redundant",
    temperature: float = 1.0,
    momentum: float = 0.9,
    update_every: int = 8,
    warmup: int = 2,
    clip=None,
    center: bool = False,
    attention_scale: float = 0.1,
    schedule=None,
    target=None,
    method: str = "acsl",
    ignored_layers: Iterable[str] = (),
    pruning_policy: Callable[[keras.layers.Layer], bool] | None = None,
) -> keras.Model:
    """Wrap every prunable unit of a model for ACSL sparsity training.

    A prunable unit is a ``BatchNormalization`` (``scale=True``) that scales
    the output channels of a convolution or Dense layer. Each one is wrapped
    in :class:`PruneLowCorrelation`; everything else is cloned unchanged and
    all weights are copied. The input model is never modified.

    Args:
        model: a built Functional or Sequential model (nested functional
            models, e.g. a ``keras.applications`` backbone, are handled).
        penalty: base L1 strength lambda (Network Slimming uses 1e-4 for VGG,
            1e-5 for ResNets).
        affinity: ``"cosine"`` or ``"attention"``.
        direction: ``"redundant"`` (correlated channels get a stronger
            penalty), ``"informative"`` (the inverse) or ``"uniform"``
            (exactly Network Slimming).
        temperature, momentum, update_every, warmup, clip, center,
            attention_scale: see :class:`PruneLowCorrelation`.
        schedule: strength schedule (:mod:`acsl_tf.schedules`), e.g.
            ``PolynomialStrength(0, 1, 0, 2000)``.
        target: optional budget for the budget-driven adaptive strength: a
            float (fraction of FLOPs to remove) or a dict
            ``{"flops": f}`` / ``{"params": p}``. It is stored in the wrappers
            and enforced by :class:`acsl_tf.callbacks.BudgetStrength`, which
            must then be passed to ``fit``.
        method: ``"acsl"`` or ``"cap"`` (context-aware pruning: uniform
            penalty, affinity tracked for the ``"cap"`` pruning criterion).
        ignored_layers: names of BatchNormalization or producer layers to
            leave unwrapped.
        pruning_policy: optional ``fn(bn_layer) -> bool``; units for which it
            returns False are left unwrapped.

    Returns:
        A new functional ``keras.Model`` with the same inputs, outputs and
        weights, ready for ``compile`` and ``fit``.

    Raises:
        ValueError: subclassed or unbuilt model, no prunable unit, invalid
            argument.

    Example:

    ```python
    pruned = acsl_tf.prune_low_correlation(model, penalty=1e-4)
    pruned.compile("adam", "sparse_categorical_crossentropy")
    pruned.fit(x, y, epochs=5)
    small = acsl_tf.shrink(pruned, ratio=0.5)
    ```
    """
    _check_model(model, "prune_low_correlation")
    if method == "cap":
        direction = "uniform" if direction == "redundant" else direction
    target_flops = target_params = None
    if target is not None:
        if isinstance(target, dict):
            unknown = set(target) - {"flops", "params"}
            if unknown or len(target) != 1:
                raise ValueError(
                    "`target` must be a float (FLOPs fraction to remove) or a dict with one "
                    f"key 'flops' or 'params'. Received: target={target!r}"
                )
            target_flops = target.get("flops")
            target_params = target.get("params")
        else:
            target_flops = target
    if get_wrappers(model):
        raise ValueError(
            f"Model {model.name!r} is already wrapped by prune_low_correlation. Call "
            "acsl_tf.strip_pruning(model) first if you want to re-wrap it with new settings."
        )
    ignored_layers = list(ignored_layers)
    names = {layer.name for layer in _all_layers(model)}
    missing = [n for n in ignored_layers if n not in names]
    if missing:
        raise ValueError(
            f"`ignored_layers` names layers that are not in the model: {missing}. "
            f"Received: ignored_layers={ignored_layers}"
        )
    units = find_units(model, ignored_layers=ignored_layers, pruning_policy=pruning_policy)
    if not units:
        raise ValueError(
            f"Model {model.name!r} has no prunable unit: acsl_tf prunes the channels that a "
            "BatchNormalization (scale=True) scales right after a convolution or Dense layer. "
            "Add BatchNormalization after your convolutions (Conv -> BN -> activation), or "
            "check `ignored_layers` / `pruning_policy`."
        )
    options = dict(
        penalty=penalty,
        affinity=affinity,
        direction=direction,
        temperature=temperature,
        momentum=momentum,
        update_every=update_every,
        warmup=warmup,
        clip=clip,
        center=center,
        attention_scale=attention_scale,
        schedule=schedule,
        method=method,
        target_flops=target_flops,
        target_params=target_params,
    )
    # Validate the options once, before cloning anything.
    probe = next(iter(units.values()))[0]
    PruneLowCorrelation(probe.__class__.from_config(probe.get_config()), **options)

    def clone_function(layer):
        if id(layer) in units:
            bn, act = units[id(layer)]
            inner = bn.__class__.from_config(bn.get_config())
            return PruneLowCorrelation(inner, feature_activation=act, **options)
        return _default_clone(layer)

    wrapped = _clone(model, clone_function)
    _copy_weights(model, wrapped, copy_state=False)
    return wrapped


def _all_layers(model):
    out = []
    for layer in model.layers:
        out.append(layer)
        if isinstance(layer, keras.Model):
            out.extend(_all_layers(layer))
        elif isinstance(layer, keras.layers.Wrapper):
            out.append(layer.layer)
    return out


def strip_pruning(model: keras.Model) -> keras.Model:
    """Remove the :class:`PruneLowCorrelation` wrappers.

    Returns a new plain Keras model in which every wrapper is replaced by the
    ``BatchNormalization`` it wraps (original name, identical weights), so
    its outputs equal the wrapped model's. A model without wrappers is
    returned as an identical clone.

    Example:

    ```python
    plain = acsl_tf.strip_pruning(pruned)
    plain.save("model.keras")
    ```
    """
    _check_model(model, "strip_pruning")

    def clone_function(layer):
        if isinstance(layer, PruneLowCorrelation):
            inner = layer.layer
            return inner.__class__.from_config(inner.get_config())
        return _default_clone(layer)

    stripped = _clone(model, clone_function)
    _copy_weights(model, stripped, copy_state=False)
    return stripped
