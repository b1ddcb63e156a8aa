"""Entry points: `prune_low_correlation` wraps a model's prunable units,
`strip_pruning` removes the wrappers again."""

from __future__ import annotations

from collections.abc import Callable

import keras

from acsl_tf import _keras, _validation
from acsl_tf.graph.dependency import DependencyGraph
from acsl_tf.sparsity.wrapper import STATISTICS_ACTIVATIONS, PruneLowCorrelation


def _check_model(model, fn_name):
    _keras.check_graph_model(model, fn_name)


def find_units(model, *, ignored_layers=(), pruning_policy=None, handlers=None, graph=None):
    """The BatchNormalization units that sparsity training wraps: exactly the
    units of the groups the dependency graph calls prunable by gamma
    (covered, not fixed), wherever they sit (after a Conv/Dense, an Add or a
    Concatenate), nested models included.

    Returns:
        dict ``{id(bn): (bn, feature_activation_config_or_None)}``.
    """
    if graph is None:
        graph = DependencyGraph(model, ignored_layers=ignored_layers, handlers=handlers)
    readers: dict = {}
    for call in graph.trace.calls:
        for k in call.in_keys:
            readers.setdefault(k, []).append(call)
    units = {}
    for unit in graph.prunable_units(need_cover=True):
        bn = unit.layer
        if unit.wrapper is not None or isinstance(bn, PruneLowCorrelation):
            continue
        if pruning_policy is not None and not pruning_policy(bn):
            continue
        act = None
        calls = [c for c in graph.trace.calls if c.op is bn]
        if not calls:
            continue  # inside a composite layer: no call of the model to wrap
        if len(calls) == 1:
            nxt = readers.get(calls[0].out_keys[0], [])
            if len(nxt) == 1 and type(nxt[0].op).__name__ in STATISTICS_ACTIVATIONS:
                act = keras.saving.serialize_keras_object(nxt[0].op)
        units[id(bn)] = (bn, act)
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


def _clone(model, clone_function):
    """Clone through ``keras.models.clone_model``; returns ``(clone, sources)``
    where ``sources`` maps ``id(new layer)`` to the layer whose weights it
    takes (by object, never by name)."""
    sources: dict = {}

    def fn(layer):
        new, src = clone_function(layer)
        if new is not layer:
            sources[id(new)] = (new, src)
        return new

    input_tensors = None
    if not isinstance(model, keras.Sequential):
        new_inputs = [
            keras.Input(batch_shape=t.shape, dtype=t.dtype, name=layer.name)
            for t, layer in zip(model.inputs, _keras.input_layers(model))
        ]
        input_tensors = _keras.pack_inputs(model, new_inputs)
    with _keras.unsafe_deserialization():
        clone = keras.models.clone_model(
            model, input_tensors=input_tensors, clone_function=fn, recursive=True
        )
    for new, src in sources.values():
        if isinstance(src, _InnerWeights):
            src.set_into(new)
            continue
        ws = src.get_weights()
        if ws:
            new.set_weights(ws)
    return clone


def _default_clone(layer):
    if isinstance(layer, keras.layers.InputLayer):
        return layer, layer
    return _keras.clone_layer(layer), layer


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
    ignored_layers=(),
    pruning_policy: Callable[[keras.layers.Layer], bool] | None = None,
    handlers=None,
    moving_stats_momentum: float | None = 0.5,
    beta_weight: float = 0.0,
) -> keras.Model:
    """Wrap every prunable unit of a model for ACSL sparsity training.

    A prunable unit is a ``BatchNormalization`` (``scale=True``) whose
    gammas cover a prunable channel group of the model's dependency graph
    (:class:`acsl_tf.DependencyGraph`): after a convolution or Dense layer,
    an ``Add`` or a ``Concatenate``, wherever zero gammas make the channels
    removable by :func:`acsl_tf.shrink`. Each one is wrapped in
    :class:`PruneLowCorrelation`; everything else is cloned unchanged
    (``keras.models.clone_model``) and all weights are copied. The input
    model is never modified.

    Args:
        model: a built Functional or Sequential model (nested functional
            models, e.g. a ``keras.applications`` backbone, are handled), or a
            tf_keras model, converted to Keras 3 (``acsl_tf.interop``); the
            wrapped model is Keras 3.
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
        ignored_layers: layer names (or layers) whose channels are kept; the
            units of their channel groups are left unwrapped. A single
            string is one name.
        pruning_policy: optional ``fn(bn_layer) -> bool``; units for which it
            returns False are left unwrapped.
        handlers: ``{layer class: LayerHandler}`` for layers of your own
            (scoped to this call; see docs/SHRINK.md).
        moving_stats_momentum: momentum of the BatchNorm moving statistics
            during sparsity training (see :class:`PruneLowCorrelation`; None
            keeps each BatchNorm's own).
        beta_weight: also penalise ``|beta|`` with the same per-channel
            strengths, times this factor (see :class:`PruneLowCorrelation`);
            makes ``shrink`` exact where the removed channels' constant
            outputs would otherwise be folded approximately.

    Returns:
        A new functional ``keras.Model`` with the same inputs, outputs and
        weights, ready for ``compile`` and ``fit``.

    Raises:
        ValueError: subclassed or unbuilt model, no prunable unit, invalid
            argument.

    Example:

    ```python
    pruned = acsl_tf.prune_low_correlation(model, penalty=1e-4)
    pruned.compile(keras.optimizers.SGD(0.05, momentum=0.9), "sparse_categorical_crossentropy")
    pruned.fit(x, y, epochs=5)
    small = acsl_tf.shrink(pruned, ratio=0.5)
    ```
    """
    from acsl_tf.pruning.plan import _from_tf_keras

    model = _from_tf_keras(model)  # training runs in Keras 3
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
    ignored_layers = _validation.names(ignored_layers, "ignored_layers")
    if pruning_policy is not None and not callable(pruning_policy):
        raise TypeError(
            "pruning_policy must be a callable fn(bn_layer) -> bool or None. "
            f"Received: pruning_policy={pruning_policy!r}"
        )
    units = find_units(
        model, ignored_layers=ignored_layers, pruning_policy=pruning_policy, handlers=handlers
    )
    if not units:
        raise ValueError(
            f"Model {model.name!r} has no prunable unit: sparsity training drives the gammas "
            "of BatchNormalization layers (scale=True) that cover a prunable channel group "
            "(acsl_tf.plan_shrink(model, ratio=0).summary() says why each group is kept). "
            "Add BatchNormalization after your convolutions (Conv -> BN -> activation), check "
            "`ignored_layers` / `pruning_policy`, or prune without sparsity training with a "
            "weight criterion: acsl_tf.shrink(model, criterion='l1', ...)."
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
        moving_stats_momentum=moving_stats_momentum,
        beta_weight=beta_weight,
    )
    # Validate the options once, before cloning anything.
    probe = next(iter(units.values()))[0]
    PruneLowCorrelation(probe.__class__.from_config(probe.get_config()), **options)

    def clone_function(layer):
        if id(layer) in units:
            bn, act = units[id(layer)]
            inner = bn.__class__.from_config(bn.get_config())
            wrapper = PruneLowCorrelation(inner, feature_activation=act, **options)
            return wrapper, _InnerWeights(inner, bn)
        return _default_clone(layer)

    return _clone(model, clone_function)


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
            return _default_clone(layer.layer)
        return _default_clone(layer)

    return _clone(model, clone_function)


class _InnerWeights:
    """Weight source for a new wrapper: its inner BN takes the BN's weights
    (the wrapper's own state starts fresh)."""

    def __init__(self, inner, bn):
        self.inner, self.bn = inner, bn

    def get_weights(self):
        return self.bn.get_weights()

    def set_into(self, wrapper):
        self.inner.set_weights(self.bn.get_weights())
