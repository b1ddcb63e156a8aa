"""Channel importance criteria, scored on the dependency graph's groups.

Two kinds:

- **Unit criteria** score the channels of one BatchNormalization (a *unit*):
  ``fn(UnitContext) -> scores``. ``"gamma"`` (``|gamma|``, Network Slimming
  and ACSL) and ``"cap"`` are of this kind, and so is any plain callable you
  pass. A group's score combines its units' scores; only groups **covered**
  by their gammas (see :mod:`acsl_tf.graph.dependency`) can be pruned this
  way, since only there zero gammas make removal exact.
- **Weight criteria** score a group from the weights of the layers that
  produce its channels (``LayerHandler.kernel_view``), so they work without
  BatchNormalization: ``"l1"``, ``"l2"`` (filter norms, Li et al. 2017),
  ``"fpgm"`` (distance to the other filters, the geometric-median criterion
  of He et al. 2019), ``"l1_layer"`` and ``"fpgm_layer"`` (``"l1"`` and
  ``"fpgm"`` divided by their mean in each producer, so that a global
  ranking compares layers on one scale) and ``"random"``.

- **Data criteria**: :class:`TaylorCriterion` (first-order Taylor
  expansion of the loss, needs ``(x, y)``).

Options (``WeightCriterion(norm, reduction=..., normalize=...)``): the group
reduction over several producers (``"mean"``, ``"max"``, ``"sum"``,
``"prod"``) and per-layer normalisation (``None``, ``"mean"``, ``"max"``).

Register more with :func:`register_criterion`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "UnitContext",
    "Criterion",
    "UnitCriterion",
    "WeightCriterion",
    "TaylorCriterion",
    "register_criterion",
    "get_criterion",
    "list_criteria",
]

REDUCTIONS = ("mean", "max", "sum", "prod")
NORMALIZATIONS = (None, "mean", "max")


@dataclass(frozen=True)
class UnitContext:
    """What a unit criterion sees for one BatchNormalization.

    Attributes:
        name: The unit's name (the key used by ``keep=``).
        bn: The ``keras.layers.BatchNormalization`` layer.
        producer: The Conv/Dense layer whose output the BN normalises, or
            None (several producers, e.g. after a concatenation).
        wrapper: The ``acsl_tf.PruneLowCorrelation`` wrapper, else None.
        model: The model being planned.
        rng: A ``numpy.random.Generator`` seeded from ``seed``.
    """

    name: str
    bn: Any
    producer: Any
    wrapper: Any
    model: Any
    rng: Any

    @property
    def gamma(self) -> np.ndarray:
        """``|gamma|`` as float64 (ones when the BN has ``scale=False``)."""
        g = getattr(self.bn, "gamma", None)
        if g is None:
            return np.ones(int(self.bn.moving_mean.shape[0]))
        return np.abs(np.asarray(g, dtype=np.float64))


class Criterion:
    """Base class. ``needs_gamma`` says whether the criterion scores BN
    units (then only gamma-covered groups are prunable)."""

    name = "criterion"
    needs_gamma = False

    def group_scores(self, graph, roots, *, reduction: str, rng) -> dict:
        """``{root: per-channel scores}`` for the given groups."""
        raise NotImplementedError


class UnitCriterion(Criterion):
    """Scores each unit with ``fn(UnitContext)`` and reduces over a group's
    units (``"mean"`` for ranking, ``"max"`` for thresholds)."""

    needs_gamma = True

    def __init__(self, fn: Callable, name: str | None = None):
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "custom")

    def __call__(self, unit: UnitContext) -> np.ndarray:
        return self.fn(unit)

    def unit_scores(self, graph, rng) -> dict:
        out = {}
        for name, unit in graph.units.items():
            producer = None
            m = unit.map
            if len(m.sources) == 1 and m.reps == 1:
                g = graph.groups.get(graph.find(m.sources[0]))
                if g is not None and len(g.producers) == 1:
                    p = g.producers[0]
                    if getattr(p, "weights", None):
                        producer = p
            ctx = UnitContext(name, unit.layer, producer, unit.wrapper, graph.model, rng)
            s = np.asarray(self.fn(ctx), dtype=np.float64).reshape(-1)
            n = graph.size(m)
            if s.shape[0] != n:
                raise ValueError(
                    f"Criterion {self.name!r} returned {s.shape[0]} scores for unit {name!r}, "
                    f"which has {n} channels."
                )
            if not np.all(np.isfinite(s)):
                bad = int((~np.isfinite(s)).sum())
                raise ValueError(
                    f"Criterion {self.name!r} gave {bad} non-finite score(s) for unit {name!r} "
                    "(NaN or inf gammas: the training diverged). Fix the weights, or pass "
                    f"ignored_layers=[{name!r}] to keep its channels. Received: unit={name!r}"
                )
            out[name] = s
        return out

    def group_scores(self, graph, roots, *, reduction, rng):
        us = self.unit_scores(graph, rng)
        res = {}
        for r in roots:
            size = graph.groups[r].size
            vals = [us[u][off : off + size] for u, off in graph.unit_offsets(r)]
            res[r] = _reduce(np.stack(vals), reduction)
        return res


class WeightCriterion(Criterion):
    """Scores a group from its producers' weights.

    Args:
        norm: ``"l1"``, ``"l2"``, ``"fpgm"`` or ``"random"``.
        reduction: How the scores of several producers of one group combine
            (``"mean"``, ``"max"``, ``"sum"``, ``"prod"``).
        normalize: Divide each producer's scores by their ``"mean"`` /
            ``"max"`` first (None: raw).
        name: Registered name.
    """

    needs_gamma = False

    def __init__(self, norm: str, *, reduction: str = "mean", normalize=None, name=None):
        if norm not in ("l1", "l2", "fpgm", "random"):
            raise ValueError(
                f"norm must be one of 'l1', 'l2', 'fpgm', 'random'. Received: norm={norm!r}"
            )
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}. Received: {reduction!r}")
        if normalize not in NORMALIZATIONS:
            raise ValueError(
                f"normalize must be one of {NORMALIZATIONS}. Received: normalize={normalize!r}"
            )
        self.norm = norm
        self.reduction = reduction
        self.normalize = normalize
        self.name = name or norm

    def producer_scores(self, graph, op) -> np.ndarray | None:
        h = graph.handler(op)
        k = h.kernel_view(op) if h is not None else None
        if k is None:
            return None
        k = np.asarray(k)  # (out, fan-in), usually a transposed view of the kernel
        if not np.isfinite(k).all():
            raise ValueError(
                f"Layer {graph.name(op)!r} has NaN or inf weights; a weight criterion cannot "
                "rank its channels. Received: layer=" + repr(graph.name(op))
            )
        if self.norm == "l1":  # |k| is exact in the kernel's dtype; the sum in float64
            s = np.abs(k).sum(axis=1, dtype=np.float64)
        elif self.norm == "l2":
            k = k.astype(np.float64)
            s = np.sqrt((k * k).sum(axis=1))
        else:  # fpgm: summed distance to the other filters
            k = k.astype(np.float64)
            sq = (k * k).sum(axis=1)
            d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * k @ k.T, 0.0)
            s = np.sqrt(d2).sum(axis=1)
        if self.normalize:
            ref = float(s.mean() if self.normalize == "mean" else s.max())
            s = s / ref if ref > 0 else np.ones_like(s)
        return s

    def group_scores(self, graph, roots, *, reduction, rng):
        res = {}
        for r in roots:
            g = graph.groups[r]
            if self.norm == "random":
                res[r] = rng.random(g.size)
                continue
            vals = []
            for op in g.producers:
                s = self.producer_scores(graph, op)
                if s is not None and s.shape[0] == g.size:
                    vals.append(s)
            if not vals:
                raise ValueError(
                    f"Criterion {self.name!r} found no producer weights to score a group of "
                    f"{g.size} channels ({', '.join(n for n, _ in g.members[:4])}). Use "
                    "criterion='gamma', or add its layers to ignored_layers."
                )
            res[r] = _reduce(np.stack(vals), self.reduction)
        return res


class TaylorCriterion(Criterion):
    """First-order Taylor importance (Molchanov et al. 2019): for each output
    channel of a group's producers, ``|sum over positions of a * dL/da|``
    averaged over the data, reduced over the producers.

    Args:
        data: ``(x, y)`` arrays (a few batches are enough).
        loss: A Keras loss (name, function or object) of the model's output
            and ``y``.
        batch_size: Batch size of the passes.
        reduction: Over several producers of a group (as WeightCriterion).

    Example:
        >>> crit = acsl_tf.criteria.TaylorCriterion((x[:512], y[:512]),
        ...                                         "sparse_categorical_crossentropy")
        >>> small = acsl_tf.shrink(model, target_flops=0.5, criterion=crit)
    """

    needs_gamma = False
    name = "taylor"

    def __init__(self, data, loss, *, batch_size: int = 64, reduction: str = "mean"):
        if not isinstance(data, (tuple, list)) or len(data) != 2:
            raise TypeError(f"data must be a tuple (x, y). Received: data of type {type(data)}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}. Received: {reduction!r}")
        import keras

        self.x, self.y = data
        self.loss = keras.losses.get(loss)
        self.batch_size = int(batch_size)
        self.reduction = reduction

    def _producer_scores(self, graph) -> dict:
        import keras
        import tensorflow as tf

        from acsl_tf import _keras

        tr = graph.trace
        wanted = {id(op) for g in graph.groups.values() if g.prunable for op in g.producers}
        sums: dict = {}
        n = len(self.x)
        for start in range(0, n, self.batch_size):
            xb = self.x[start : start + self.batch_size]
            yb = self.y[start : start + self.batch_size]
            with tf.GradientTape() as tape:
                values = {tr.input_keys[0]: tf.convert_to_tensor(xb)}
                watched = {}
                for call in tr.calls:
                    fill = {
                        id(kt): values[k] for kt, k in zip(call.node.input_tensors, call.in_keys)
                    }
                    args, kwargs = _keras.call_arguments(call.node, fill)
                    if isinstance(call.op, keras.layers.Layer):
                        kwargs["training"] = False
                    out = keras.tree.flatten(call.op(*args, **kwargs))
                    if id(call.op) in wanted:
                        tape.watch(out[0])
                        watched.setdefault(id(call.op), []).append(out[0])
                    for k, t in zip(call.out_keys, out):
                        values[k] = t
                loss = self.loss(yb, values[tr.output_keys[0]])
            ops = list(watched)
            grads = tape.gradient(loss, [watched[o] for o in ops])
            for o, acts, gs in zip(ops, [watched[o] for o in ops], grads):
                for a, g in zip(acts, gs):
                    if g is None:
                        continue
                    ag = np.asarray(a * g, np.float64)
                    per = np.abs(ag.reshape(ag.shape[0], -1, ag.shape[-1]).sum(axis=1)).sum(0)
                    sums[o] = sums.get(o, 0.0) + per
        return {o: v / max(n, 1) for o, v in sums.items()}

    def group_scores(self, graph, roots, *, reduction, rng):
        if len(graph.trace.input_keys) != 1 or len(graph.trace.output_keys) != 1:
            raise ValueError(
                "TaylorCriterion supports models with one input and one output. Received: "
                f"{len(graph.trace.input_keys)} inputs, {len(graph.trace.output_keys)} outputs"
            )
        per_op = self._producer_scores(graph)
        res = {}
        for r in roots:
            g = graph.groups[r]
            vals = [per_op[id(op)] for op in g.producers if id(op) in per_op]
            vals = [v for v in vals if v.shape[0] == g.size]
            if not vals:
                raise ValueError(
                    f"TaylorCriterion found no gradient for the group of "
                    f"{', '.join(m for m, _ in g.members[:3])}: channels inside a composite "
                    "layer have no tensor to differentiate. Use criterion='gamma' or a weight "
                    "criterion, or add the layer to ignored_layers."
                )
            res[r] = _reduce(np.stack(vals), self.reduction)
        return res


def _reduce(stack, how):
    if how == "max":
        return stack.max(axis=0)
    if how == "sum":
        return stack.sum(axis=0)
    if how == "prod":
        return stack.prod(axis=0)
    return stack.mean(axis=0)


def _gamma(unit: UnitContext) -> np.ndarray:
    return unit.gamma


_CRITERIA: dict = {
    "gamma": UnitCriterion(_gamma, "gamma"),
    "l1": WeightCriterion("l1"),
    "l2": WeightCriterion("l2"),
    "fpgm": WeightCriterion("fpgm"),
    "l1_layer": WeightCriterion("l1", normalize="mean", name="l1_layer"),
    "fpgm_layer": WeightCriterion("fpgm", normalize="mean", name="fpgm_layer"),
    "random": WeightCriterion("random"),
}


def register_criterion(name: str, fn) -> None:
    """Register an importance criterion under ``name``.

    Args:
        name: Name to use as ``plan_shrink(criterion=name)``.
        fn: A :class:`Criterion`, or ``fn(unit: UnitContext) -> scores`` (a
            unit criterion: higher = keep).

    Raises:
        TypeError: If ``name`` is not a string or ``fn`` is not callable.
        ValueError: If ``name`` is empty.

    Example:
        >>> def bn_beta(unit):
        ...     return np.abs(np.asarray(unit.bn.beta))
        >>> acsl_tf.criteria.register_criterion("beta", bn_beta)
    """
    if not isinstance(name, str):
        raise TypeError(f"Criterion name must be a string. Received: name={name!r}")
    if not name:
        raise ValueError(f"Criterion name must be non-empty. Received: name={name!r}")
    if not isinstance(fn, Criterion) and not callable(fn):
        raise TypeError(f"Criterion must be callable or a Criterion. Received: fn={fn!r}")
    _CRITERIA[name] = fn if isinstance(fn, Criterion) else UnitCriterion(fn, name)


def get_criterion(name_or_callable) -> Criterion:
    """Resolve a criterion name, callable or :class:`Criterion`.

    Raises:
        ValueError: For an unknown name (lists the registered ones).
        TypeError: For anything else.
    """
    if isinstance(name_or_callable, Criterion):
        return name_or_callable
    if isinstance(name_or_callable, str):
        if name_or_callable in _CRITERIA:
            return _CRITERIA[name_or_callable]
        raise ValueError(
            f"Unknown criterion. Registered: {sorted(_CRITERIA)}; or pass a callable. "
            f"Received: criterion={name_or_callable!r}"
        )
    if callable(name_or_callable):
        return UnitCriterion(name_or_callable)
    raise TypeError(
        "criterion must be a name, a callable fn(UnitContext) or a Criterion. "
        f"Received: criterion={name_or_callable!r}"
    )


def list_criteria() -> list:
    """Names of the registered criteria."""
    return sorted(_CRITERIA)
