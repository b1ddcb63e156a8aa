"""Apply a :class:`~acsl_tf.pruning.plan.ShrinkPlan`: build a NEW, thinner
model with sliced weights (the input model is never modified).

The graph is rebuilt call by call from the dependency graph's trace, so
nested models are inlined (colliding inner names get the nested model's name
as prefix), raw ``keras.ops`` are kept, and layers without channel changes
are cloned with their weights. Every rewrite that removes channels is
checked: the new model is run next to the original with the removed channels
silenced (:mod:`acsl_tf.pruning.fold`), and the measured deviation is
returned (and warned about where it is not exact).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import keras
import numpy as np

from acsl_tf import _keras
from acsl_tf.graph.dependency import DependencyGraph
from acsl_tf.graph.handlers import WrappedBNHandler
from acsl_tf.pruning import fold as _fold
from acsl_tf.pruning.plan import PlanFile, ShrinkPlan, plan_shrink

__all__ = ["ShrinkResult", "ApproximateShrinkWarning", "apply_plan", "shrink"]


class ApproximateShrinkWarning(UserWarning):
    """The shrunk model deviates from the original with the removed channels
    silenced (see the message for where and by how much)."""


@dataclass(frozen=True)
class ShrinkResult:
    """What :func:`apply_plan` built and how exact it is.

    Attributes:
        model: The new, thinner ``keras.Model``.
        max_abs_error: Largest absolute output difference between ``model``
            and the original with the removed channels silenced, on random
            probe inputs (0.0 when nothing was removed; NaN when not
            measured).
        rel_error: ``max_abs_error`` divided by the largest reference output.
        exact: ``rel_error`` within float32 round-off (1e-4).
        approximations: Where and why the rewrite is approximate.
    """

    model: keras.Model
    max_abs_error: float
    rel_error: float
    exact: bool
    approximations: tuple


def shrink(
    model,
    *,
    threshold: float | None = None,
    ratio: float | None = None,
    target_flops: float | None = None,
    target_params: float | None = None,
    keep: dict | None = None,
    criterion="gamma",
    min_channels: int = 1,
    round_to: int = 1,
    ignored_layers=(),
    handlers=None,
    strict: bool = False,
    fold_removed: bool = True,
    verify: str | bool = "warn",
    seed: int = 0,
    plan=None,
):
    """Return a NEW model with the low-importance channels physically removed.

    Exactly one of ``threshold``, ``ratio``, ``target_flops``,
    ``target_params``, ``keep`` (see :func:`acsl_tf.plan_shrink`), or a ready
    ``plan`` (a :class:`ShrinkPlan` for this model, or one loaded with
    :meth:`ShrinkPlan.load`). A model wrapped with
    ``acsl_tf.prune_low_correlation`` is stripped first.

    Args:
        model: A functional or Sequential Keras model; a tf_keras model is
            converted (``acsl_tf.interop``) and the result handed back as
            tf_keras.
        threshold, ratio, target_flops, target_params, keep, criterion,
        min_channels, round_to, ignored_layers, handlers, strict, seed: See
            :func:`acsl_tf.plan_shrink`.
        fold_removed: Fold the constant that a removed channel carries
            (``act(beta)`` after a zero gamma) into its consumers' biases.
            Exact for Dense, 1x1 / valid-padded convs and global pooling;
            approximate at the borders of same-padded kxk convs (measured and
            reported).
        verify: ``"warn"`` (default): measure the deviation from the original
            with the removed channels silenced and warn
            (:class:`ApproximateShrinkWarning`) where it is not exact;
            ``"raise"``: raise instead; False: do not measure.
        plan: A plan instead of the selection arguments.

    Returns:
        A new ``keras.Model``. Use :func:`apply_plan` to also get the
        measured deviation.

    Raises:
        TypeError, ValueError: For invalid arguments or a plan made for
            another architecture.

    Example:
        >>> small = acsl_tf.shrink(model, target_flops=0.5)
        >>> print(acsl_tf.shrink_report(model, small))
    """
    selection = (threshold, ratio, target_flops, target_params, keep)
    if plan is None:
        plan = plan_shrink(
            model,
            threshold=threshold,
            ratio=ratio,
            target_flops=target_flops,
            target_params=target_params,
            keep=keep,
            criterion=criterion,
            min_channels=min_channels,
            round_to=round_to,
            ignored_layers=ignored_layers,
            handlers=handlers,
            strict=strict,
            seed=seed,
        )
    elif any(v is not None for v in selection):
        raise ValueError("Pass either plan= or a selection argument, not both.")
    return apply_plan(
        model,
        plan,
        fold_removed=fold_removed,
        verify=verify,
        handlers=handlers,
        ignored_layers=ignored_layers,
    ).model


def apply_plan(
    model,
    plan,
    *,
    fold_removed: bool = True,
    verify: str | bool = "warn",
    handlers=None,
    ignored_layers=(),
) -> ShrinkResult:
    """Build the thin model of ``plan`` and measure how exact it is.

    Args:
        model: The model the plan was made for (or, for a loaded plan, a
            model of the same architecture).
        plan: A :class:`ShrinkPlan` or a loaded plan file.
        fold_removed, verify: See :func:`shrink`.
        handlers, ignored_layers: For a loaded plan: the same values that
            were used to make it.

    Returns:
        A :class:`ShrinkResult`.
    """
    if verify not in ("warn", "raise", False, True):
        raise ValueError(f"verify must be 'warn', 'raise' or False. Received: verify={verify!r}")
    if verify is True:
        verify = "raise"
    from acsl_tf.interop import _legacy

    was_tf_keras = _legacy.is_tf_keras_object(model)
    if isinstance(plan, ShrinkPlan):
        graph = plan._graph
        if graph is not None and getattr(graph, "source_model", None) is model:
            model = graph.model  # the Keras 3 copy of a tf_keras model
        if graph is None or graph.model is not model:
            raise ValueError(
                "plan was computed for a different model object; call plan_shrink(model, ...) "
                "again, or save the plan (plan.save) and apply the loaded file."
            )
        keep = dict(plan._keep)
    elif isinstance(plan, PlanFile):
        if was_tf_keras:
            from acsl_tf.pruning.plan import _from_tf_keras

            model = _from_tf_keras(model)
        graph = DependencyGraph(model, ignored_layers=ignored_layers, handlers=handlers)
        keep = plan.resolve(graph)
    else:
        raise TypeError(
            f"plan must be a ShrinkPlan or a loaded plan file. Received: plan of type "
            f"{type(plan).__name__}"
        )
    if any(isinstance(graph.handler(c.op), WrappedBNHandler) for c in graph.trace.calls):
        graph, keep = _strip_and_map(graph, keep)
    # Products (squeeze-and-excitation gates) are checked by the probe: a
    # removed channel that is not constant there is reported by the fold.
    notes = list(_fold.handler_fold_note(graph, keep, conditional=not fold_removed))
    pr = None
    folds: dict = {}
    if keep and (fold_removed or verify):  # the reference run feeds the folds and the check
        pr = _fold.probe(graph, keep)
        if fold_removed:
            raw, fold_notes = _fold.fold_plan(graph, keep, pr)
            notes.extend(fold_notes)
            for key, f in raw.items():
                if f[0] == "mean":
                    folds[("mean", id(f[2]))] = f[1]
                else:
                    folds[key] = f
    new = _rebuild(graph, keep, folds)
    err = rel = 0.0
    if pr is not None and verify:
        err, rel = _fold.measure(new, pr)
    elif keep:
        err = rel = float("nan")
    exact = bool(rel <= _fold.EXACT_RTOL) if np.isfinite(rel) else False
    if pr is not None and verify and not exact:
        where = (
            "; ".join(notes)
            if notes
            else (
                "no approximation is known here. Deep networks with random weights amplify "
                "float32 round-off (check with keras.config.set_floatx('float64')); otherwise "
                "this is a defect of the rewriter: please report it with the model"
            )
        )
        if not fold_removed:
            where = "fold_removed=False (the removed channels' constants are dropped); " + where
        msg = (
            f"shrink of {model.name!r} is approximate: max abs output deviation {err:.3g} "
            f"(relative {rel:.2e}) from the original with the removed channels silenced. "
            f"Where: {where}."
        )
        if verify == "raise":
            raise ValueError(msg)
        warnings.warn(msg, ApproximateShrinkWarning, stacklevel=3)
    if was_tf_keras:
        from acsl_tf.interop.tf_keras import to_tf_keras

        new = to_tf_keras(new)
    return ShrinkResult(new, err, rel, exact, tuple(dict.fromkeys(notes)))


def _strip_and_map(graph, keep):
    """Strip the sparsity wrappers and carry the kept indices over by group
    position (wrappers and BNs open no channels, so groups line up)."""
    from acsl_tf.sparsity import api as _api  # lazy: sparsity imports pruning

    stripped = _api.strip_pruning(graph.model)
    idx = {id(op): i for i, op in enumerate(graph.trace.all_ops)}
    ignored_pos = {idx[i] for i in graph.ignored if i in idx}
    ignored = []
    if ignored_pos:  # ignored layers are found in the stripped model by position
        from acsl_tf.graph.trace import trace_model

        new_ops = trace_model(stripped).all_ops
        ignored = [op for i, op in enumerate(new_ops) if i in ignored_pos]
    new_graph = DependencyGraph(stripped, ignored_layers=ignored, handlers=graph.registry)
    position = {r: i for i, r in enumerate(graph.groups)}
    new_roots = list(new_graph.groups)
    if len(position) != len(new_roots):
        raise RuntimeError("Stripping the wrappers changed the channel groups.")
    out = {}
    for r, k in keep.items():
        nr = new_roots[position[r]]
        if new_graph.groups[nr].size != graph.groups[r].size:
            raise RuntimeError("Stripping the wrappers changed a channel group's size.")
        out[nr] = k
    return new_graph, out


# ---------------------------------------------------------------------------
# Rebuild
# ---------------------------------------------------------------------------


def _rebuild(graph: DependencyGraph, keep: dict, folds: dict):
    tr = graph.trace
    model = graph.model
    new_inputs = []
    tensors = {}
    for k, nm in zip(tr.input_keys, tr.input_names):
        x = keras.Input(batch_shape=tr.shapes[k], dtype=tr.dtypes[k], name=nm)
        new_inputs.append(x)
        tensors[k] = x
    new_ops: dict = {}
    for call in tr.calls:
        op = call.op
        new = new_ops.get(id(op))
        first = new is None
        if first:
            new, ws, values = _rebuild_op(graph, call, keep, folds)
            new_ops[id(op)] = new
        fill = {id(kt): tensors[k] for kt, k in zip(call.node.input_tensors, call.in_keys)}
        args, kwargs = _keras.call_arguments(call.node, fill)
        try:
            out = new(*args, **kwargs)  # the first call builds the layer
        finally:
            created = first and values is not None and values.release()
        if first and ws and not created:
            new.set_weights(ws)
        for k, t in zip(call.out_keys, keras.tree.flatten(out)):
            tensors[k] = t
    outs = [tensors[k] for k in tr.output_keys]
    ins = _pack(_keras.inputs_struct(model), new_inputs)
    outputs = _pack(_keras.outputs_struct(model), outs)
    return keras.Model(ins, outputs, name=model.name)


def _pack(struct, flat):
    if struct is None:
        return flat[0] if len(flat) == 1 else flat
    try:
        return keras.tree.pack_sequence_as(struct, flat)
    except (TypeError, ValueError):
        return flat[0] if len(flat) == 1 else flat


class _ValueInit:
    """Initializer returning a fixed array, cast to the requested dtype (the
    variable copies it when it is created)."""

    def __init__(self, value):
        self.value = value

    def __call__(self, shape, dtype=None):
        if tuple(shape) != tuple(self.value.shape):
            raise ValueError(f"shape {tuple(shape)} != {self.value.shape}")
        if dtype is None or keras.backend.standardize_dtype(dtype) == self.value.dtype.name:
            return self.value
        return self.value.astype(dtype)


def _weight_name(variable) -> str:
    return variable.name.split("/")[-1]


def _shape_tuple(shape):
    try:
        return tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        return None


class _WeightValues:
    """Creates a new layer's weights directly with their final values.

    While the layer builds, ``add_weight`` of this one layer object is
    intercepted: a weight named like one of the original layer's weights,
    with the same shape, is created with that value as its initializer. No
    random initial values are drawn and nothing is assigned or read back
    afterwards. :meth:`release` ends the interception and says whether every
    weight was created this way; otherwise the caller assigns the weights.
    """

    def __init__(self, layer, names, ws):
        self.layer = layer
        self.names = names
        self.shapes = [tuple(np.shape(w)) for w in ws]
        self.values = {n: np.asarray(w) for n, w in zip(names, ws)}
        self.used: set = set()
        self._add_weight = type(layer).add_weight.__get__(layer)
        object.__setattr__(layer, "add_weight", self.add_weight)

    def add_weight(self, *args, **kwargs):
        name = kwargs.get("name")
        value = self.values.get(name) if isinstance(name, str) else None
        shape = kwargs.get("shape", args[0] if args else None)
        if (
            value is not None
            and name not in self.used
            and len(args) <= 1  # the legacy positional form may carry an initializer
            and shape is not None
            and _shape_tuple(shape) == value.shape
        ):
            kwargs["initializer"] = _ValueInit(value)
            self.used.add(name)
        return self._add_weight(*args, **kwargs)

    def release(self) -> bool:
        """Stop intercepting. True when the built layer holds exactly the
        original weights, in order, each created from its value."""
        if "add_weight" in self.layer.__dict__:
            object.__delattr__(self.layer, "add_weight")
        weights = self.layer.weights
        return (
            self.used == set(self.names)
            and [_weight_name(v) for v in weights] == self.names
            and [tuple(v.shape) for v in weights] == self.shapes
        )


def _values_for(orig, new, ws):
    """A :class:`_WeightValues` for a Keras layer whose weights are its own
    (uniquely named ones, as in the original layer), else None."""
    if not ws or not type(orig).__module__.startswith("keras.") or len(ws) != len(orig.weights):
        return None
    if type(new).add_weight is not keras.layers.Layer.add_weight:
        return None
    names = [_weight_name(v) for v in orig.weights]
    if len(set(names)) != len(names):
        return None
    return _WeightValues(new, names, ws)


def _rebuild_op(graph, call, keep, folds):
    """``(new op, weights, _WeightValues or None)`` of the thin copy of
    ``call.op``; weights is None for raw ``keras.ops``."""
    op = call.op
    if not isinstance(op, keras.layers.Layer):
        return op.__class__.from_config(op.get_config()), None, None
    h = graph.handler(op)
    in_maps = graph.call_in_maps[call.index]
    out_maps = graph.call_out_maps[call.index]
    in_keep = [graph.keep_features(m, keep) for m in in_maps]
    out_keep = graph.keep_features(out_maps[0], keep) if out_maps else None
    if h is None or (all(k is None for k in in_keep) and out_keep is None):
        cfg, ws = op.get_config(), [np.asarray(w) for w in op.get_weights()]
    else:
        cfg, ws = h.rebuild(op, in_keep, out_keep)
    cfg = dict(cfg)
    name = graph.name(op)
    if "name" in cfg:
        cfg["name"] = name
    fold = folds.get(id(op))
    if fold is not None and fold[0] == "bias":
        cfg, ws = _fold_into_bias(cfg, ws, fold[1], out_keep)
    mean_fold = folds.get(("mean", id(op)))
    if mean_fold is not None:
        d = mean_fold if in_keep[0] is None else mean_fold[in_keep[0]]
        ws = list(ws)
        i = len(ws) - 2  # moving_mean (then moving_variance) close the BN's weights
        ws[i] = (ws[i] - d).astype(ws[i].dtype)
    new = _keras.clone_layer(op, cfg)
    return new, ws, _values_for(op, new, ws)


def _fold_into_bias(cfg, ws, delta, out_keep):
    d = delta if out_keep is None else delta[out_keep]
    if cfg.get("use_bias"):
        ws = list(ws)
        ws[-1] = (ws[-1] + d).astype(ws[-1].dtype)
        return cfg, ws
    cfg["use_bias"] = True
    return cfg, list(ws) + [d.astype("float32")]
