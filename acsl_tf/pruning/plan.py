"""Plan which channels to remove, without building anything.

:func:`plan_shrink` reads the model's :class:`~acsl_tf.graph.DependencyGraph`,
scores the channels of every prunable group with a criterion
(:mod:`acsl_tf.pruning.criteria`), decides what each group keeps and
computes the thin model's parameter and FLOPs counts analytically, through
the same handlers that later rebuild the layers. The result is an immutable
:class:`ShrinkPlan` that can be saved as JSON and re-applied to a model of
the same architecture (:meth:`ShrinkPlan.save`, :meth:`ShrinkPlan.load`).
"""

from __future__ import annotations

import json
import math
import types
import warnings
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from acsl_tf import _io, _validation
from acsl_tf.graph.dependency import DependencyGraph
from acsl_tf.pruning import criteria as _criteria

__all__ = ["ChannelGroup", "LayerCollapseWarning", "ShrinkPlan", "plan_shrink"]


class LayerCollapseWarning(UserWarning):
    """A plan left channel groups at their floor (``min_channels``): a layer
    of one or two channels is an information bottleneck that fine-tuning
    rarely recovers from. Typical cause: a raw weight criterion (``"l1"``,
    ``"l2"``, ``"fpgm"``) ranked globally, whose scores grow with a layer's
    fan-in and so empty the early, high-resolution layers first.

    Attributes:
        groups: ``(layer name, channels before, channels kept)`` of every
            group cut down to ``min_channels``.
    """

    def __init__(self, message: str, groups: tuple = ()):
        super().__init__(message)
        self.groups = tuple(groups)


# Groups of at least this many channels cut to their floor are reported.
_COLLAPSE_MIN_SIZE = 4

PLAN_FORMAT = "acsl_tf.ShrinkPlan/1"


@dataclass(frozen=True)
class ChannelGroup:
    """A set of layers that must lose the same channel indices.

    Attributes:
        id: Group id (its position in the graph; stable for an architecture).
        size: Channels before pruning.
        members: ``(layer name, role)`` pairs; role is ``"out"`` (producer
            output channels), ``"in"`` (consumer input channels), ``"bn"``,
            ``"depthwise"`` or ``"per-channel"``.
        units: Names of the BatchNormalization layers scaling the group.
        prunable: Whether this plan's criterion may remove channels of it.
        reason: Why it may not (when not prunable).
        keep: Kept channel indices (sorted).
        covered: Zero gammas of ``units`` make every channel constant for all
            readers (pruning by gamma is exact there).
    """

    id: int
    size: int
    members: tuple
    units: tuple
    prunable: bool
    reason: str | None
    keep: tuple
    covered: bool = False

    @property
    def removed(self) -> int:
        return self.size - len(self.keep)


@dataclass(frozen=True)
class ShrinkPlan:
    """Immutable result of :func:`plan_shrink`.

    Attributes:
        groups: Every :class:`ChannelGroup`.
        bn_keep: Read-only ``{BatchNormalization name: tuple of kept channel
            indices}`` for every BN that reads a prunable group.
        params_before, params_after: Parameter counts (analytic; equal to
            ``count_params()`` of the plain model before and of the result of
            :func:`acsl_tf.shrink` after).
        flops_before, flops_after: FLOPs (see :mod:`acsl_tf.pruning.profile`).
        macs_before, macs_after: Multiply-accumulates.
        criterion: Name of the criterion used.
        fingerprint: Hash of the architecture the plan was made for.
        unknown_layers: Layers without a channel handler (their channels
            were kept).
        notes: Known approximations of applying this plan (channel-axis
            LayerNormalization, squeeze-and-excitation gates, ...).
    """

    groups: tuple
    bn_keep: Any
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int
    macs_before: int
    macs_after: int
    criterion: str
    fingerprint: str = ""
    unknown_layers: tuple = ()
    notes: tuple = ()
    _graph: Any = field(default=None, repr=False, compare=False)
    _keep: Any = field(default=None, repr=False, compare=False)

    @property
    def channels_before(self) -> int:
        return int(sum(g.size for g in self.groups if g.prunable))

    @property
    def channels_removed(self) -> int:
        return int(sum(g.removed for g in self.groups))

    @property
    def params_reduction(self) -> float:
        return 1.0 - self.params_after / max(self.params_before, 1)

    @property
    def flops_reduction(self) -> float:
        return 1.0 - self.flops_after / max(self.flops_before, 1)

    def summary(self) -> str:
        """Printable description: prunable groups, totals, kept layers."""
        lines = [
            f"ShrinkPlan (criterion={self.criterion!r}): "
            f"{self.channels_removed}/{self.channels_before} prunable channels removed",
            f"  params {self.params_before:,} -> {self.params_after:,} "
            f"(-{100 * self.params_reduction:.1f}%)",
            f"  FLOPs  {self.flops_before:,} -> {self.flops_after:,} "
            f"(-{100 * self.flops_reduction:.1f}%)",
            f"  groups: {len(self.groups)} ({sum(g.prunable for g in self.groups)} prunable)",
        ]
        for g in self.groups:
            if not g.prunable:
                continue
            names = sorted({m[0] for m in g.members})
            shown = ", ".join(names[:4]) + (f", +{len(names) - 4}" if len(names) > 4 else "")
            lines.append(f"  [{g.id}] {g.size} -> {len(g.keep)}  ({shown})")
        if self.unknown_layers:
            lines.append(
                "  layers without a handler (channels kept): " + ", ".join(self.unknown_layers)
            )
        for n in self.notes:
            lines.append(f"  approximate: {n}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    # ------------------------------------------------------------ persistence
    def to_dict(self) -> dict:
        """A JSON-ready dict: kept indices per group plus the fingerprint."""
        return {
            "format": PLAN_FORMAT,
            "fingerprint": self.fingerprint,
            "criterion": self.criterion,
            "groups": [
                {
                    "id": g.id,
                    "size": g.size,
                    "keep": list(g.keep),
                    "members": [m[0] for m in g.members[:8]],
                }
                for g in self.groups
                if g.removed
            ],
            "params": [self.params_before, self.params_after],
            "flops": [self.flops_before, self.flops_after],
        }

    def save(self, path, *, overwrite: bool = True) -> None:
        """Write the plan as JSON (atomically).

        Raises:
            FileExistsError: If ``path`` exists and ``overwrite`` is False.
        """
        import os

        if not overwrite and os.path.exists(path):
            raise FileExistsError(
                f"{path} exists; pass overwrite=True to replace it. Received: path={path!r}"
            )
        _io.atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n", overwrite=True)

    @classmethod
    def load(cls, path) -> PlanFile:
        """Read a plan saved with :meth:`save`; apply it with
        ``acsl_tf.shrink(model, plan=loaded)``."""
        with open(path, encoding="utf-8") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} is not a plan file (invalid JSON: {e}).") from None
        return PlanFile.from_dict(data, source=str(path))


@dataclass(frozen=True)
class PlanFile:
    """A plan read from JSON: kept indices per group id and the fingerprint
    of the architecture it was made for."""

    fingerprint: str
    criterion: str
    keep: dict  # group id -> tuple of kept indices
    sizes: dict  # group id -> size
    source: str = ""
    params: tuple = (None, None)  # (before, after) of the model the plan was made for
    flops: tuple = (None, None)

    @classmethod
    def from_dict(cls, data, source=""):
        if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
            raise ValueError(
                f"{source or 'data'} is not an acsl_tf plan (expected format {PLAN_FORMAT!r}). "
                f"Received: format={data.get('format') if isinstance(data, dict) else None!r}"
            )
        keep = {int(g["id"]): tuple(int(i) for i in g["keep"]) for g in data["groups"]}
        sizes = {int(g["id"]): int(g["size"]) for g in data["groups"]}
        return cls(
            str(data["fingerprint"]),
            str(data.get("criterion", "")),
            keep,
            sizes,
            source,
            tuple(data.get("params", (None, None))),
            tuple(data.get("flops", (None, None))),
        )

    def resolve(self, graph: DependencyGraph) -> dict:
        """``{root: kept indices}`` on ``graph``; raises when the model is not
        the architecture the plan was made for."""
        fp = graph.fingerprint()
        if fp != self.fingerprint:
            raise ValueError(
                f"The plan {self.source or ''} was made for another architecture (fingerprint "
                f"{self.fingerprint}, this model has {fp}). A plan re-applies only to a model "
                "built the same way (same layers, shapes and connections). "
                f"Received: model={graph.model.name!r}"
            )
        roots = list(graph.groups)
        out = {}
        for gid, k in self.keep.items():
            r = roots[gid]
            if graph.groups[r].size != self.sizes[gid]:
                raise ValueError(
                    f"Plan group {gid} has {self.sizes[gid]} channels, model has "
                    f"{graph.groups[r].size}."
                )
            out[r] = np.asarray(k, np.int64)
        return out


# ---------------------------------------------------------------------------
# Analytic cost model
# ---------------------------------------------------------------------------


class CostModel:
    """Params/FLOPs of the thin model as a function of the kept counts per
    group root, without building anything."""

    def __init__(self, graph: DependencyGraph, variable_roots):
        self.graph = graph
        tr = graph.trace
        self.tensor_roots = {
            k: ([(graph.find(s), graph.source_size(s)) for s in m.sources], m.reps)
            for k, m in graph.maps.items()
        }
        variable = set(variable_roots)
        self.fixed_flops = self.fixed_macs = self.fixed_params = 0
        self.params_dead = 0
        self.var_calls = []
        self.var_layers = []
        live = {id(c.op) for c in tr.calls}
        seen = set()
        for op in tr.all_ops:
            if id(op) not in live:
                self.params_dead += _layer_params(op)
        for call in tr.calls:
            keys = list(call.in_keys) + list(call.out_keys)
            # channels inside a composite layer (DependencyGraph.inner_map)
            inner = list(graph.call_in_maps[call.index][len(call.in_keys) :])
            var = any(r in variable for k in keys for r, _ in self.tensor_roots[k][0]) or any(
                graph.find(s) in variable for m in inner for s in m.sources
            )
            h = graph.handler(call.op)
            if var:
                self.var_calls.append((call, h, inner))
            else:
                ins = [tr.shapes[k] for k in call.in_keys]
                outs = [tr.shapes[k] for k in call.out_keys]
                macs, flops = h.cost(call.op, ins, outs)
                self.fixed_macs += macs
                self.fixed_flops += flops
            op = call.op
            if id(op) in seen:
                continue
            seen.add(id(op))
            if not isinstance(op, keras.layers.Layer):
                continue
            if var:
                self.var_layers.append((op, h, list(call.in_keys), call.out_keys, inner))
            else:
                self.fixed_params += _layer_params(op)

    def _dim(self, k, counts):
        roots, reps = self.tensor_roots[k]
        return reps * sum(counts.get(r, n) for r, n in roots)

    def _map_dim(self, m, counts):
        g = self.graph
        return m.reps * sum(counts.get(g.find(s), g.source_size(s)) for s in m.sources)

    def evaluate(self, counts: dict, *, include_dead: bool = False):
        tr = self.graph.trace
        macs_t, flops_t = self.fixed_macs, self.fixed_flops
        for call, h, inner in self.var_calls:
            ins = [tr.shapes[k][:-1] + (self._dim(k, counts),) for k in call.in_keys]
            ins += [(self._map_dim(m, counts),) for m in inner]  # counts inside the layer
            outs = [tr.shapes[k][:-1] + (self._dim(k, counts),) for k in call.out_keys]
            macs, flops = h.cost(call.op, ins, outs)
            macs_t += macs
            flops_t += flops
        params = self.fixed_params + (self.params_dead if include_dead else 0)
        for op, h, in_keys, out_keys, inner in self.var_layers:
            out_c = self._dim(out_keys[0], counts) if out_keys else 0
            in_c = [self._dim(k, counts) for k in in_keys] + [
                self._map_dim(m, counts) for m in inner
            ]
            params += int(h.params(op, in_c, out_c))
        return int(params), int(flops_t), int(macs_t)


def _layer_params(op) -> int:
    inner = getattr(op, "layer", None)
    if isinstance(op, keras.layers.Wrapper) and isinstance(inner, keras.layers.BatchNormalization):
        op = inner  # counted as the plain BN that strip_pruning leaves
    return int(sum(int(np.prod(w.shape)) for w in getattr(op, "weights", [])))


# ---------------------------------------------------------------------------
# Planning
# ---------------------------------------------------------------------------


def plan_shrink(
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
    seed: int = 0,
    graph: DependencyGraph | None = None,
    max_fraction: float | None = None,
) -> ShrinkPlan:
    """Decide which channels to remove, without building anything.

    Exactly one of ``threshold``, ``ratio``, ``target_flops``,
    ``target_params``, ``keep`` must be given.

    Args:
        model: A functional or Sequential Keras model, plain or wrapped with
            ``acsl_tf.prune_low_correlation``, or a tf_keras model (converted
            with ``acsl_tf.interop.from_tf_keras``).
        threshold: Remove channels whose score (``|gamma|`` for the default
            criterion) is below this in every BN of their group.
        ratio: Global fraction (0..1) of the prunable channels to remove, lowest
            scores first.
        target_flops: Fraction (0..1) of the model's FLOPs to remove, by removing
            the lowest-scoring channels globally until it is met.
        target_params: Same for the parameter count.
        keep: ``{layer name: channel indices (or a boolean mask) to keep}``,
            naming BatchNormalization units or producer layers (Conv,
            Dense); channels of layers not listed are kept.
        criterion: ``"gamma"`` (default), ``"l1"``, ``"l2"``, ``"fpgm"``,
            ``"l1_layer"``, ``"random"``, ``"cap"``, a registered name, a
            :class:`~acsl_tf.pruning.criteria.Criterion`, or a callable
            ``fn(UnitContext) -> scores``. Gamma-based criteria prune only
            groups whose gammas cover them; weight criteria also prune
            models without BatchNormalization.
        min_channels: Channels every group keeps at least (>= 1).
        max_fraction: The largest fraction (0..1] of any group's channels the
            plan may remove, e.g. 0.9 keeps at least 10% of every layer
            (rounded up, and never fewer than ``min_channels``). None
            (default): only ``min_channels`` limits a group. A global
            ranking that empties whole layers down to ``min_channels``
            warns (:class:`LayerCollapseWarning`); this caps it.
        round_to: Kept counts are rounded up to a multiple of this (never above
            the original count), and of what a group's layers need (keras-hub's
            inverted residual blocks: 8).
        ignored_layers: Layer names (or layer objects) whose channels are kept.
        handlers: ``{layer class or name: LayerHandler}`` for layers of your
            own (scoped to this call).
        strict: Raise for a layer without a handler instead of keeping its
            channels.
        seed: Seed for random criteria.
        graph: A ready :class:`~acsl_tf.graph.DependencyGraph` of ``model``
            (skips the analysis).

    Returns:
        A frozen :class:`ShrinkPlan`.

    Raises:
        TypeError: For arguments of the wrong type.
        ValueError: For invalid values, or a target that cannot be met.

    Example:
        >>> plan = acsl_tf.plan_shrink(model, target_flops=0.5)
        >>> print(plan.flops_reduction)
        >>> plan.save("plan.json")
    """
    given = {
        k: v
        for k, v in dict(
            threshold=threshold,
            ratio=ratio,
            target_flops=target_flops,
            target_params=target_params,
            keep=keep,
        ).items()
        if v is not None
    }
    if len(given) != 1:
        raise ValueError(
            "Pass exactly one of threshold=, ratio=, target_flops=, target_params=, keep=. "
            f"Received: {sorted(given) or 'none'}"
        )
    mode, value = next(iter(given.items()))
    if mode in ("ratio", "target_flops", "target_params"):
        value = _validation.fraction(value, mode)
    elif mode == "threshold":
        value = _validation.non_negative(value, "threshold")
    min_channels = _validation.positive_int(min_channels, "min_channels")
    if max_fraction is not None:
        max_fraction = _validation.fraction(
            max_fraction, "max_fraction", low_open=True, high_open=False
        )
    round_to = _validation.positive_int(round_to, "round_to")
    crit = _criteria.get_criterion(criterion)
    source = model
    model = _from_tf_keras(model)
    if graph is None:
        graph = DependencyGraph(
            model, ignored_layers=ignored_layers, handlers=handlers, strict=strict
        )
        graph.source_model = source
    elif graph.model is not model and getattr(graph, "source_model", None) is not source:
        raise ValueError(
            "graph= was built for another model. Received: graph of "
            f"{graph.model.name!r} for model {model.name!r}"
        )
    need_cover = crit.needs_gamma and mode != "keep"
    roots = graph.prunable_groups(need_cover=need_cover)
    cost = CostModel(graph, roots)
    sizes = {r: graph.groups[r].size for r in roots}
    # kept counts are multiples of round_to and of what the group's layers need
    rounds = {r: math.lcm(round_to, graph.groups[r].multiple) for r in roots}

    keep_idx: dict = {}
    if mode == "keep":
        keep_idx = _keep_from_dict(graph, value)
    elif not roots:
        _nothing_prunable(graph, crit, mode)
    else:
        rng = np.random.default_rng(seed)
        how = "max" if mode == "threshold" else "mean"
        gs = crit.group_scores(graph, roots, reduction=how, rng=rng)
        floors = {r: _floor(sizes[r], min_channels, max_fraction) for r in roots}
        if mode == "threshold":
            removed = {}
            for r in roots:
                below = int((gs[r] < value).sum())
                removed[r] = min(below, sizes[r] - floors[r])
            keep_idx = _keep_from_counts(gs, removed, sizes, rounds)
        else:
            floor_desc = f"min_channels={min_channels}" + (
                f", max_fraction={max_fraction}" if max_fraction is not None else ""
            )
            keep_idx = _rank_globally(
                gs, roots, sizes, mode, value, cost, floors, rounds, floor_desc
            )
    plan = _make_plan(graph, cost, keep_idx, crit.name, roots)
    if mode != "keep":
        _warn_collapsed(plan, crit.name, mode, value, min_channels, max_fraction)
    return plan


def _fraction_floor(size: int, max_fraction: float | None) -> int:
    """Channels ``max_fraction`` makes a group of ``size`` keep (0 without a cap)."""
    if max_fraction is None:
        return 0
    return min(size, int(math.ceil(size * (1.0 - max_fraction) - 1e-9)))


def _floor(size: int, min_channels: int, max_fraction: float | None) -> int:
    """Channels a group of ``size`` keeps at least."""
    return max(min(min_channels, size), _fraction_floor(size, max_fraction))


def _warn_collapsed(plan, crit_name, mode, value, min_channels, max_fraction) -> None:
    """Warn when the plan cut groups of >= _COLLAPSE_MIN_SIZE channels down to
    ``min_channels`` (not to a floor the user set with ``max_fraction``)."""
    hit = [
        g
        for g in plan.groups
        if g.prunable
        and g.size >= max(_COLLAPSE_MIN_SIZE, 2 * min_channels)
        and len(g.keep) <= min_channels
        and _fraction_floor(g.size, max_fraction) < len(g.keep)
    ]
    if not hit:
        return
    groups = []
    for g in hit:
        outs = [n for n, role in g.members if role == "out"] or [g.members[0][0]]
        groups.append((outs[0], g.size, len(g.keep)))
    names = [f"{n} {size}->{kept}" for n, size, kept in groups[:6]]
    more = f" and {len(hit) - 6} more" if len(hit) > 6 else ""
    raw = crit_name in ("l1", "l2", "fpgm")
    why = (
        f" Criterion {crit_name!r} is not normalised per layer: its scores grow with a "
        "layer's fan-in, so a global ranking empties the early layers first; use "
        f"criterion={'fpgm_layer' if crit_name == 'fpgm' else 'l1_layer'!r} (the same "
        "scores normalised per layer), or"
        if raw
        else " If this is not intended,"
    )
    msg = (
        f"plan_shrink({mode}={value!r}, criterion={crit_name!r}) cut {len(hit)} of "
        f"{sum(g.prunable for g in plan.groups)} prunable channel groups down to "
        f"min_channels={min_channels} ({', '.join(names)}{more}). A layer of so few "
        "channels is an information bottleneck that fine-tuning rarely recovers from "
        f"(a U-Net pruned this way predicts one class everywhere).{why} cap the cut per "
        "group with max_fraction= (e.g. 0.9 keeps 10% of every layer) or raise "
        "min_channels=."
    )
    warnings.warn(LayerCollapseWarning(msg, groups), stacklevel=3)


def _from_tf_keras(model):
    """A tf_keras model converted to Keras 3 (``acsl_tf.interop``); anything
    else unchanged."""
    from acsl_tf.interop import _legacy

    if not _legacy.is_tf_keras_object(model):
        return model
    from acsl_tf import _keras

    # tf_keras models live in TensorFlow; their conversion builds Keras 3
    # layers from TensorFlow variables.
    _keras.require_tensorflow("acsl_tf.interop.from_tf_keras")
    from acsl_tf.interop.tf_keras import from_tf_keras

    return from_tf_keras(model)


def _nothing_prunable(graph, crit, mode):
    reasons: dict = {}
    for g in graph.groups.values():
        why = g.fixed or (g.uncovered_reason if crit.needs_gamma else None) or "?"
        key = why.split(":")[0][:90]
        reasons[key] = reasons.get(key, 0) + 1
    top = "; ".join(f"{n}x {w}" for w, n in sorted(reasons.items(), key=lambda t: -t[1])[:4])
    hint = (
        " The criterion scores BatchNormalization gammas; for a model without (covering) "
        "BatchNormalization use a weight criterion, e.g. criterion='l1'."
        if crit.needs_gamma
        else ""
    )
    msg = (
        f"Nothing in model {graph.model.name!r} can be pruned with criterion={crit.name!r}: "
        f"{len(graph.groups)} channel groups, none prunable ({top}).{hint}"
    )
    if mode in ("target_flops", "target_params"):
        raise ValueError(msg + f" Received: {mode}")
    warnings.warn(msg, UserWarning, stacklevel=3)


def _rank_globally(gs, roots, sizes, mode, value, cost, floors, rounds, floor_desc):
    cands = []
    for r in roots:
        n = sizes[r]
        prot = floors[r]
        order = np.argsort(gs[r], kind="stable")[: n - prot]
        # ties (e.g. BNs with scale=False) are broken by the relative rank
        # inside the group, so they spread evenly
        cands.extend((gs[r][i], j / n, r) for j, i in enumerate(order))
    cands.sort(key=lambda t: (t[0], t[1]))
    cand_roots = [r for _, _, r in cands]

    def keep_for(kk):
        removed = dict.fromkeys(roots, 0)
        for r in cand_roots[:kk]:
            removed[r] += 1
        return _keep_from_counts(gs, removed, sizes, rounds)

    if mode == "ratio":
        total = sum(sizes.values())
        kk = min(int(math.floor(value * total)), len(cand_roots))
        return keep_for(kk)
    p0, f0, _ = cost.evaluate({})
    idx = 1 if mode == "target_flops" else 0
    base = (p0, f0)[idx]

    def reduction(kk):
        kp = keep_for(kk)
        v = cost.evaluate({r: len(x) for r, x in kp.items()})
        return 1.0 - (v[0], v[1])[idx] / max(base, 1), kp

    if value <= 0:
        return {}
    best, _ = reduction(len(cand_roots))
    if best < value:
        raise ValueError(
            f"{mode}={value} cannot be met: removing every prunable channel ({floor_desc}) "
            f"reduces it by {best:.4f}. Lower the target, or "
            "use a criterion that can prune more groups (a weight criterion such as 'l1' "
            f"also prunes groups without BatchNormalization). Received: {mode}={value!r}"
        )
    lo, hi = 0, len(cand_roots)
    while lo < hi:
        mid = (lo + hi) // 2
        if reduction(mid)[0] >= value:
            hi = mid
        else:
            lo = mid + 1
    red, keep_idx = reduction(lo)
    while red < value and lo < len(cand_roots):  # rounding can break monotonicity
        lo += 1
        red, keep_idx = reduction(lo)
    return keep_idx


def _keep_from_counts(scores, removed: dict, sizes: dict, rounds: dict):
    """Kept indices (highest scores) per group; ``rounds[r]``: the kept
    count is rounded up to a multiple of it (never above the group's size)."""
    keep = {}
    for r, rem in removed.items():
        n = sizes[r]
        k = n - rem
        step = rounds.get(r, 1)
        if step > 1:
            k = min(n, int(math.ceil(k / step) * step))
        if k >= n:
            continue
        order = np.argsort(-scores[r], kind="stable")
        keep[r] = np.sort(order[:k])
    return keep


def _keep_from_dict(graph, keep) -> dict:
    if not isinstance(keep, dict):
        raise TypeError(
            f"keep must be a dict {{layer name: indices}}. Received: keep of type "
            f"{type(keep).__name__}"
        )
    maps = {name: unit.map for name, unit in graph.units.items()}
    producers = {graph.name(op): op for g in graph.groups.values() for op in g.producers}
    for name in keep:
        if name not in maps and name in producers:
            maps[name] = _out_map(graph, producers[name])
    # Collect every entry's demand per group first: the result does not
    # depend on the order of the dict.
    demands: dict = {}
    for name in keep:
        if name not in maps or maps[name] is None:
            raise ValueError(
                "keep names a layer that is neither a BatchNormalization unit nor a producer "
                f"(Conv/Dense) of the model. Known units: {sorted(graph.units)[:12]}. "
                f"Received: {name!r}"
            )
        m = maps[name]
        n = graph.size(m)
        idx = _indices(keep[name], n, name)
        off = 0
        for s in m.sources:
            r = graph.find(s)
            size = graph.source_size(s)
            part = idx[(idx >= off) & (idx < off + size)] - off
            off += size
            demands.setdefault(r, []).append((name, part, size))
    out = {}
    for r, items in demands.items():
        first_name, first, size = items[0]
        for name, part, _ in items[1:]:
            if not np.array_equal(part, first):
                raise ValueError(
                    f"keep[{first_name!r}] and keep[{name!r}] name the same channel group but "
                    "keep different channels; coupled layers must keep the same indices. "
                    f"Received: {first.tolist()} vs {part.tolist()}"
                )
        if first.size == size:
            continue
        g = graph.groups[r]
        if g.fixed:
            raise ValueError(
                f"keep[{first_name!r}] removes channels of a group that cannot be pruned "
                f"({g.fixed}). Received: keep[{first_name!r}]"
            )
        if first.size == 0:
            raise ValueError(
                f"keep[{first_name!r}] would remove every channel of a group. "
                f"Received: keep[{first_name!r}]=[]"
            )
        if first.size % g.multiple:
            raise ValueError(
                f"keep[{first_name!r}] keeps {first.size} channels of a group whose layers "
                f"need a multiple of {g.multiple} ({', '.join(n for n, _ in g.members[:3])}). "
                f"Keep a multiple of {g.multiple}. Received: {first.size} channels"
            )
        out[r] = first
    return out


def _out_map(graph, op):
    for c in graph.trace.calls:
        if c.op is op:
            return graph.call_out_maps[c.index][0]
    return None


def _indices(v, n, name) -> np.ndarray:
    arr = np.asarray(list(v) if not isinstance(v, np.ndarray) else v)
    if arr.dtype == bool:
        if arr.shape != (n,):
            raise ValueError(
                f"keep[{name!r}] is a boolean mask of shape {arr.shape}; the layer has {n} "
                f"channels. Received: mask of length {arr.size}"
            )
        return np.flatnonzero(arr).astype(np.int64)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(
            f"keep[{name!r}] must hold integer channel indices or a boolean mask. "
            f"Received: dtype={arr.dtype}"
        )
    idx = np.unique(arr.astype(np.int64))
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise ValueError(f"keep[{name!r}] has indices outside [0, {n}). Received: {idx.tolist()}")
    return idx


def _make_plan(graph, cost, keep_idx, crit_name, roots) -> ShrinkPlan:
    from acsl_tf.pruning.fold import handler_fold_note

    p0 = cost.evaluate({}, include_dead=True)[0]
    _, f0, m0 = cost.evaluate({})
    p1, f1, m1 = cost.evaluate({r: len(x) for r, x in keep_idx.items()})
    allowed = set(roots) | set(keep_idx)
    groups = []
    for gid, (r, g) in enumerate(graph.groups.items()):
        k = keep_idx.get(r)
        reason = None
        if r not in allowed:
            reason = g.fixed or g.uncovered_reason or "not prunable by this criterion"
        groups.append(
            ChannelGroup(
                id=gid,
                size=g.size,
                members=g.members,
                units=g.units,
                prunable=r in allowed,
                reason=reason,
                keep=tuple(int(i) for i in (np.arange(g.size) if k is None else k)),
                covered=g.covered,
            )
        )
    bn_keep = {}
    for name, unit in graph.units.items():
        if not any(graph.find(s) in allowed for s in unit.map.sources):
            continue
        f = graph.keep_features(unit.map, keep_idx)
        bn_keep[name] = tuple(int(i) for i in (np.arange(graph.size(unit.map)) if f is None else f))
    return ShrinkPlan(
        groups=tuple(groups),
        bn_keep=types.MappingProxyType(bn_keep),
        params_before=p0,
        params_after=p1,
        flops_before=f0,
        flops_after=f1,
        macs_before=m0,
        macs_after=m1,
        criterion=crit_name,
        fingerprint=graph.fingerprint(),
        unknown_layers=tuple(graph.name(op) for op in graph.unknown),
        notes=tuple(handler_fold_note(graph, keep_idx)),
        _graph=graph,
        _keep={r: np.asarray(v) for r, v in keep_idx.items()},
    )
