"""Apply a :class:`~acsl_tf.pruning.plan.ShrinkPlan`: build a NEW, thinner
model with sliced weights (the input model is never modified).

The graph is rebuilt call by call from the dependency graph's trace, so
nested models are inlined (colliding inner names get the nested model's name
as prefix), raw ``keras.ops`` are kept, and layers without channel changes
are cloned with their weights. Every rewrite that removes channels is
checked: the new model is run next to the original with the removed channels
silenced (:mod:`acsl_tf.pruning.fold`), and the measured deviation is
returned (and warned about where it is not exact). Optionally, the new
model's BatchNormalization statistics are then re-estimated on data
(``recalibrate=``).
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass

import keras
import numpy as np

from acsl_tf import _keras, _validation
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
        recalibrated_batches: Batches on which the BatchNormalization
            moving statistics of ``model`` were re-estimated
            (``recalibrate=``; 0 when not asked for or when ``model`` has no
            BatchNormalization). The deviation above is measured before.
    """

    model: keras.Model
    max_abs_error: float
    rel_error: float
    exact: bool
    approximations: tuple
    recalibrated_batches: int = 0


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
    recalibrate=None,
    recalibrate_steps: int | None = 20,
    recalibrate_batch_size: int = 128,
    max_fraction: float | None = None,
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
        min_channels, round_to, ignored_layers, handlers, strict, seed,
        max_fraction: See :func:`acsl_tf.plan_shrink`.
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
        recalibrate: Data on which the BatchNormalization moving statistics
            of the new model are re-estimated after the exactness
            measurement, as :func:`acsl_tf.recalibrate_batchnorm` does: a
            NumPy array (or tensor) of inputs, an ``(x, y)`` or
            ``(x, y, sample_weight)`` tuple (``y`` is ignored), or a
            ``tf.data.Dataset`` / iterable of input batches or such tuples.
            Removing channels changes what every later BatchNorm sees, so
            statistics estimated on the unpruned model go stale; the
            trainable weights are not changed. None (default): off.
        recalibrate_steps: Batches used for ``recalibrate`` (None: all of
            the data).
        recalibrate_batch_size: Batch size when ``recalibrate`` holds
            arrays (a dataset keeps its own batches).

    Returns:
        A new ``keras.Model``. Use :func:`apply_plan` to also get the
        measured deviation and the number of recalibration batches.

    Raises:
        TypeError, ValueError: For invalid arguments, a plan made for
            another architecture, or ``recalibrate`` data that does not fit
            the model (checked before anything is built where the data's
            shape is known).

    Example:
        >>> small = acsl_tf.shrink(model, target_flops=0.5)
        >>> print(acsl_tf.shrink_report(model, small))
        >>> small = acsl_tf.shrink(model, target_flops=0.5, recalibrate=x_train[:2560])
    """
    _check_recalibration(model, recalibrate, recalibrate_steps, recalibrate_batch_size)
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
            max_fraction=max_fraction,
        )
    elif any(v is not None for v in selection) or max_fraction is not None:
        raise ValueError("Pass either plan= or a selection argument, not both.")
    return apply_plan(
        model,
        plan,
        fold_removed=fold_removed,
        verify=verify,
        handlers=handlers,
        ignored_layers=ignored_layers,
        recalibrate=recalibrate,
        recalibrate_steps=recalibrate_steps,
        recalibrate_batch_size=recalibrate_batch_size,
    ).model


def apply_plan(
    model,
    plan,
    *,
    fold_removed: bool = True,
    verify: str | bool = "warn",
    handlers=None,
    ignored_layers=(),
    recalibrate=None,
    recalibrate_steps: int | None = 20,
    recalibrate_batch_size: int = 128,
) -> ShrinkResult:
    """Build the thin model of ``plan`` and measure how exact it is.

    Args:
        model: The model the plan was made for (or, for a loaded plan, a
            model of the same architecture).
        plan: A :class:`ShrinkPlan` or a loaded plan file.
        fold_removed, verify: See :func:`shrink`.
        handlers, ignored_layers: For a loaded plan: the same values that
            were used to make it.
        recalibrate, recalibrate_steps, recalibrate_batch_size: See
            :func:`shrink`; the BatchNorm statistics of the new model are
            re-estimated after the measurement.

    Returns:
        A :class:`ShrinkResult`.
    """
    if verify not in ("warn", "raise", False, True):
        raise ValueError(f"verify must be 'warn', 'raise' or False. Received: verify={verify!r}")
    recalibrate_steps, recalibrate_batch_size = _check_recalibration(
        model, recalibrate, recalibrate_steps, recalibrate_batch_size
    )
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
            "; ".join(_grouped_notes(notes))
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
        if any("exact away from the borders" in n for n in notes):
            msg += (
                " Removed channels that carry a non-zero constant (act(beta) after a zero "
                "gamma) into same-padded convolutions cannot be folded exactly; sparsity "
                "training with prune_low_correlation(beta_weight=1.0) drives those constants "
                "to zero and makes such rewrites exact."
            )
        if recalibrate is not None:
            msg += (
                " This was measured before the BatchNorm statistics are re-estimated on the "
                "recalibrate= data."
            )
        if verify == "raise":
            raise ValueError(msg)
        warnings.warn(msg, ApproximateShrinkWarning, stacklevel=3)
    batches = 0
    if recalibrate is not None:
        batches = _recalibrate(new, recalibrate, recalibrate_steps, recalibrate_batch_size)
    if was_tf_keras:
        from acsl_tf.interop.tf_keras import to_tf_keras

        new = to_tf_keras(new)
    return ShrinkResult(new, err, rel, exact, tuple(dict.fromkeys(notes)), batches)


# ---------------------------------------------------------------------------
# BatchNorm recalibration after the rewrite
# ---------------------------------------------------------------------------


def _model_input_shapes(model):
    """Input shapes (batch axis included) of a Keras 3 or tf_keras model,
    or None when they cannot be read."""
    try:
        return [tuple(t.shape) for t in model.inputs]
    except (AttributeError, TypeError, ValueError):
        return None


def _check_recalibration(model, data, steps, batch_size):
    """Validate the ``recalibrate*`` arguments before anything is built:
    the numbers, the form of ``data`` and, for arrays (and datasets that
    declare their element shape), that the inputs fit the model. Returns
    ``(steps, batch_size)``."""
    if steps is not None:
        steps = _validation.positive_int(steps, "recalibrate_steps")
    batch_size = _validation.positive_int(batch_size, "recalibrate_batch_size")
    if data is None:
        return steps, batch_size
    from acsl_tf.sparsity import batchnorm as _bn  # lazy: sparsity imports pruning

    if isinstance(data, (str, bytes, os.PathLike)):
        raise TypeError(
            "`recalibrate` takes the data, not a file name: load it first (e.g. "
            f"numpy.load(path)). It takes {_bn._FORMS}. Received: recalibrate={data!r}"
        )
    if isinstance(data, dict):
        raise TypeError(
            f"`recalibrate` takes {_bn._FORMS}; a dict of named inputs is not supported. "
            f"Received: recalibrate of type dict with keys {sorted(map(str, data))}"
        )
    x = _bn._x_of(data)
    arrays = x if isinstance(x, list) and x and all(_bn._is_array(a) for a in x) else None
    if arrays is None and _bn._is_array(x):
        arrays = [x]
    shapes = _model_input_shapes(model)
    if arrays is not None:
        if any(len(a.shape) == 0 or a.shape[0] == 0 for a in arrays):
            raise ValueError(
                "`recalibrate` holds no samples; pass at least one batch of inputs. Received: "
                f"recalibrate inputs of shape {[tuple(a.shape) for a in arrays]}"
            )
        _check_input_shapes(model, shapes, [tuple(a.shape) for a in arrays], batched=True)
        return steps, batch_size
    try:
        import tensorflow as tf
    except ImportError:  # pragma: no cover - TensorFlow is the backend
        tf = None
    if tf is not None and isinstance(data, tf.data.Dataset):
        spec = _bn._x_of(data.element_spec)
        specs = list(spec) if isinstance(spec, (list, tuple)) else [spec]
        dims = [getattr(s, "shape", None) for s in specs]
        if all(d is not None and d.rank is not None for d in dims):
            _check_input_shapes(model, shapes, [tuple(d) for d in dims], batched=None)
        return steps, batch_size
    if not hasattr(data, "__iter__"):
        raise TypeError(
            f"`recalibrate` takes {_bn._FORMS}. Received: recalibrate of type {type(data).__name__}"
        )
    return steps, batch_size


def _check_input_shapes(model, model_shapes, data_shapes, *, batched):
    """Raise when data shapes cannot feed the model's inputs. ``batched``:
    True (a batch axis leads), None (a dataset: batched or not)."""
    if model_shapes is None:
        return
    name = getattr(model, "name", "model")
    if len(data_shapes) != len(model_shapes):
        raise ValueError(
            f"`recalibrate` must hold one input array per input of model {name!r} (a list of "
            f"arrays for several inputs), shapes {model_shapes}. Received: "
            f"{len(data_shapes)} array(s) of shapes {data_shapes}"
        )
    for got, want in zip(data_shapes, model_shapes):
        sample = want[1:]
        batch = tuple(got)
        if batched is None and len(got) == len(sample):
            batch = (None,) + batch  # unbatched dataset elements
        fits = len(batch) == len(want) and all(
            w is None or g is None or g == w for g, w in zip(batch[1:], sample)
        )
        if not fits:
            raise ValueError(
                f"`recalibrate` inputs must have the shape of the inputs of model {name!r}, "
                f"{tuple(want)} (batch axis first), preprocessed like the training data. "
                f"Received: recalibrate inputs of shape {tuple(got)}"
            )


def _recalibrate(model, data, steps, batch_size) -> int:
    """Re-estimate the BatchNorm moving statistics of the shrunk ``model``
    (:func:`acsl_tf.recalibrate_batchnorm`); returns the batches used."""
    from acsl_tf.sparsity.batchnorm import recalibrate_batchnorm

    try:
        used = recalibrate_batchnorm(model, data, steps=steps, batch_size=batch_size)
    except ValueError as err:
        raise ValueError(f"BatchNorm recalibration of the shrunk model failed: {err}") from err
    if used == 0:
        warnings.warn(
            f"recalibrate= was given, but the shrunk model {model.name!r} has no "
            "BatchNormalization layer: there are no statistics to re-estimate.",
            UserWarning,
            stacklevel=3,
        )
    return used


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


_NOTE = re.compile(r"^('[^']*') \(([^)]*)\): (.*)$", re.S)


def _grouped_notes(notes, most: int = 6) -> list:
    """The notes for a message, those that differ only in the layer name
    (``"'name' (detail): text"``) merged into one: ``"'a', 'b' and 3 more
    (detail): text"``. Order of first occurrence; other notes as they are."""
    groups: dict = {}
    for n in dict.fromkeys(notes):
        m = _NOTE.match(n)
        key = (m.group(2), m.group(3)) if m else n
        groups.setdefault(key, []).append(m.group(1) if m else None)
    out = []
    for key, names in groups.items():
        if not isinstance(key, tuple):
            out.append(key)
            continue
        shown = ", ".join(names[:most])
        if len(names) > most:
            shown += f" and {len(names) - most} more"
        out.append(f"{shown} ({key[0]}): {key[1]}")
    return out


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
