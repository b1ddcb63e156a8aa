"""Physically remove channels from a Keras 3 functional model.

Plan, then apply: :func:`plan_shrink` analyses the graph (channel groups, see
:mod:`acsl_tf.graph`), scores channels with a criterion
(:mod:`acsl_tf.criteria`) and decides which channels each group keeps; it
also computes the parameter and FLOPs counts of the thin model analytically,
without building it. :func:`shrink` applies a plan and returns a NEW model
(the input model is never modified); :func:`shrink_report` compares two
models layer by layer.

Group scores: each BatchNormalization reading a group's channels (a *unit*)
gives a per-channel score; for ``ratio`` / ``target_flops`` /
``target_params`` the scores of a group's units are averaged, for
``threshold`` the maximum is used (a channel goes only if it is below the
threshold in every unit).
"""

from __future__ import annotations

import math
import types
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from acsl_tf.graph import dependency as _graph
from acsl_tf.pruning import criteria as _criteria
from acsl_tf.pruning.profile import call_cost as _call_cost
from acsl_tf.pruning.profile import profile as _profile_fn

__all__ = ["ShrinkPlan", "ChannelGroup", "ShrinkReport", "plan_shrink", "shrink", "shrink_report"]


@dataclass(frozen=True)
class ChannelGroup:
    """A set of layers that must lose the same channel indices.

    Attributes:
        id: Group id (stable within one plan).
        size: Channels before pruning.
        members: ``(layer name, role)`` pairs; role is ``"out"`` (producer
            output channels), ``"in"`` (consumer input channels), ``"bn"``,
            ``"depthwise"`` or ``"per-channel"``.
        units: Names of the BatchNormalization layers scaling the group.
        prunable: Whether channels of this group may be removed.
        reason: Why the group is fixed (when not prunable).
        keep: Kept channel indices (sorted).
    """

    id: int
    size: int
    members: tuple
    units: tuple
    prunable: bool
    reason: str | None
    keep: tuple

    @property
    def removed(self) -> int:
        return self.size - len(self.keep)


@dataclass(frozen=True)
class ShrinkPlan:
    """Immutable result of :func:`plan_shrink`.

    Attributes:
        groups: Every :class:`ChannelGroup`.
        bn_keep: Read-only ``{BatchNormalization name: tuple of kept channel
            indices}`` for every BN whose channels can be pruned.
        params_before, params_after: Parameter counts (analytic; equal to
            ``count_params()`` of the plain model before and of the result of
            :func:`shrink` after).
        flops_before, flops_after: FLOPs (see the ``acsl_tf.profile`` module).
        macs_before, macs_after: Multiply-accumulates.
        criterion: Name of the criterion used.
    """

    groups: tuple
    bn_keep: dict
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int
    macs_before: int
    macs_after: int
    criterion: str
    _analysis: Any = field(default=None, repr=False, compare=False)
    _keep: Any = field(default=None, repr=False, compare=False)

    @property
    def channels_before(self) -> int:
        return int(sum(g.size for g in self.groups if g.prunable))

    @property
    def channels_removed(self) -> int:
        return int(sum(g.removed for g in self.groups if g.prunable))

    @property
    def params_reduction(self) -> float:
        return 1.0 - self.params_after / max(self.params_before, 1)

    @property
    def flops_reduction(self) -> float:
        return 1.0 - self.flops_after / max(self.flops_before, 1)

    def summary(self) -> str:
        """Printable description: prunable groups and totals."""
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
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


# ---------------------------------------------------------------------------
# Analytic cost model
# ---------------------------------------------------------------------------


class _CostModel:
    """Params/FLOPs of the thin model as a function of the kept counts per
    group root, without building anything."""

    def __init__(self, an: _graph.Analysis):
        self.an = an
        tr = an.trace
        self.tensor_roots = {}
        for k, m in an.maps.items():
            self.tensor_roots[k] = (
                [(an.find(s), an.sources[s].size) for s in m.sources],
                m.reps,
            )
        self.fixed_flops = 0
        self.fixed_macs = 0
        self.fixed_params = 0
        self.var_calls = []  # (call, in keys, out keys)
        self.var_layers = []  # (layer, handler, in keys, out key)
        seen = set()
        prunable = {r for r, s in _graph.groups(an).items() if _is_prunable(s)}
        self.prunable = prunable
        for call in tr.calls:
            keys = list(call.in_keys) + list(call.out_keys)
            var = any(r in prunable for k in keys for r, _ in self.tensor_roots[k][0])
            if var:
                self.var_calls.append(call)
            else:
                ins = [tr.shapes[k] for k in call.in_keys]
                outs = [tr.shapes[k] for k in call.out_keys]
                macs, flops = _call_cost(call.op, ins, outs)
                self.fixed_macs += macs
                self.fixed_flops += flops
            op = call.op
            if id(op) in seen or not isinstance(op, keras.layers.Layer):
                continue
            seen.add(id(op))
            h = _graph.handler_for(op)
            if var and h is not None and op.name not in an.ignored:
                self.var_layers.append((op, h, list(call.in_keys), call.out_keys[0]))
            else:
                self.fixed_params += _layer_params(op)

    def _dim(self, k, counts):
        roots, reps = self.tensor_roots[k]
        return reps * sum(counts.get(r, n) for r, n in roots)

    def evaluate(self, counts: dict):
        tr = self.an.trace
        macs_t, flops_t = self.fixed_macs, self.fixed_flops
        for call in self.var_calls:
            ins = [tr.shapes[k][:-1] + (self._dim(k, counts),) for k in call.in_keys]
            outs = [tr.shapes[k][:-1] + (self._dim(k, counts),) for k in call.out_keys]
            macs, flops = _call_cost(call.op, ins, outs)
            macs_t += macs
            flops_t += flops
        params = self.fixed_params
        for op, h, in_keys, out_key in self.var_layers:
            p = h.params(op, [self._dim(k, counts) for k in in_keys], self._dim(out_key, counts))
            params += _layer_params(op) if p is None else int(p)
        return int(params), int(flops_t), int(macs_t)


def _layer_params(op) -> int:
    if _graph._is_wrapped_bn(op):
        op = op.layer
    return int(sum(int(np.prod(w.shape)) for w in op.weights))


def _is_prunable(src) -> bool:
    return src.fixed is None and len(src.units) > 0


# ---------------------------------------------------------------------------
# Planning
# ---------------------------------------------------------------------------

_MODES = ("threshold", "ratio", "target_flops", "target_params", "keep")


def _unit_scores(an, crit, model, seed) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    ops = {}
    for call in an.trace.calls:
        ops.setdefault(call.op.name, call.op)
    for unit in sorted(an.bn_layers):
        bn, wrapper = an.bn_layers[unit]
        m = an.bn_maps[unit]
        producer = None
        if len(m.sources) == 1 and m.reps == 1:
            producer = ops.get(an.sources[m.sources[0]].producer)
            if not isinstance(producer, keras.layers.Layer) or not producer.weights:
                producer = None
        ctx = _criteria.UnitContext(unit, bn, producer, wrapper, model, rng)
        s = np.asarray(crit(ctx), dtype=np.float64).reshape(-1)
        n = an.size(m)
        if s.shape[0] != n:
            raise ValueError(
                f"Criterion returned {s.shape[0]} scores for {unit!r}, which has {n} channels."
            )
        out[unit] = s
    return out


def _group_scores(an, roots, unit_scores, how):
    res = {}
    for r in roots:
        src = an.sources[r]
        vals = [unit_scores[u][off : off + src.size] for u, off in src.units]
        stack = np.stack(vals)
        res[r] = stack.max(axis=0) if how == "max" else stack.mean(axis=0)
    return res


def _keep_from_counts(scores, removed: dict, sizes: dict, round_to: int):
    keep = {}
    for r, rem in removed.items():
        n = sizes[r]
        k = n - rem
        if round_to > 1:
            k = min(n, int(math.ceil(k / round_to) * round_to))
        if k >= n:
            continue
        order = np.argsort(-scores[r], kind="stable")
        keep[r] = np.sort(order[:k])
    return keep


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
    seed: int = 0,
) -> ShrinkPlan:
    """Decide which channels to remove, without building anything.

    Exactly one of ``threshold``, ``ratio``, ``target_flops``,
    ``target_params``, ``keep`` must be given.

    Args:
        model: A functional or Sequential Keras model, plain or wrapped with
            ``acsl_tf.prune_low_correlation``.
        threshold: Remove channels whose score (``|gamma|`` for the default
            criterion) is below this in every BN of their group.
        ratio: Global fraction (0..1) of the prunable channels to remove, lowest
            scores first.
        target_flops: Fraction (0..1) of the model's FLOPs to remove, by removing
            the lowest-scoring channels globally until it is met.
        target_params: Same for the parameter count.
        keep: ``{BatchNormalization name: channel indices to keep}``; BNs not
            listed keep all their channels.
        criterion: Name of a registered criterion (``"gamma"``, ``"l1"``,
            ``"random"``, ...) or a callable ``fn(UnitContext) -> scores``.
        min_channels: Channels every group keeps at least (>= 1).
        round_to: Kept counts are rounded up to a multiple of this (never above
            the original count).
        ignored_layers: Layer names whose channels are kept.
        seed: Seed for random criteria.

    Returns:
        A frozen :class:`ShrinkPlan`.

    Raises:
        ValueError: For invalid arguments, unsupported layers, or a target that
            cannot be met.

    Example:
        >>> plan = acsl_tf.plan_shrink(model, threshold=1e-2)
        >>> print(plan.flops_reduction)
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
    for nm, v in (
        ("ratio", ratio),
        ("target_flops", target_flops),
        ("target_params", target_params),
    ):
        if v is not None and not (0.0 <= float(v) < 1.0):
            raise ValueError(f"{nm} must be in [0, 1). Received: {nm}={v!r}")
    if threshold is not None and not float(threshold) >= 0:
        raise ValueError(f"threshold must be >= 0. Received: threshold={threshold!r}")
    if not isinstance(min_channels, int) or min_channels < 1:
        raise ValueError(
            f"min_channels must be an integer >= 1. Received: min_channels={min_channels!r}"
        )
    if not isinstance(round_to, int) or round_to < 1:
        raise ValueError(f"round_to must be an integer >= 1. Received: round_to={round_to!r}")
    if isinstance(ignored_layers, str):
        ignored_layers = (ignored_layers,)
    crit = _criteria.get_criterion(criterion)
    crit_name = (
        criterion if isinstance(criterion, str) else getattr(criterion, "__name__", "custom")
    )

    trace = _graph.trace_model(model)
    names = {c.op.name for c in trace.calls}
    unknown = [n for n in ignored_layers if n not in names]
    if unknown:
        raise ValueError(f"ignored_layers contains names not in the model. Received: {unknown}")
    an = _graph.analyze(trace, ignored_layers)
    cost = _CostModel(an)
    allg = _graph.groups(an)
    roots = sorted(cost.prunable)
    sizes = {r: allg[r].size for r in roots}

    keep_idx: dict = {}
    if mode == "keep":
        keep_idx = _keep_from_dict(an, value, allg)
    else:
        scores_u = _unit_scores(an, crit, model, seed)
        how = "max" if mode == "threshold" else "mean"
        gs = _group_scores(an, roots, scores_u, how)
        if mode == "threshold":
            removed = {}
            for r in roots:
                below = int((gs[r] < float(threshold)).sum())
                removed[r] = min(below, sizes[r] - min(min_channels, sizes[r]))
            keep_idx = _keep_from_counts(gs, removed, sizes, round_to)
        else:
            cands = []
            for r in roots:
                n = sizes[r]
                prot = min(min_channels, n)
                order = np.argsort(gs[r], kind="stable")[: n - prot]
                # ties (e.g. BNs with scale=False score 1) are broken by the
                # relative rank inside the group, so they spread evenly
                cands.extend((gs[r][i], j / n, r) for j, i in enumerate(order))
            cands.sort(key=lambda t: (t[0], t[1]))
            cand_roots = [r for _, _, r in cands]

            def keep_for(kk):
                removed = dict.fromkeys(roots, 0)
                for r in cand_roots[:kk]:
                    removed[r] += 1
                return _keep_from_counts(gs, removed, sizes, round_to)

            if mode == "ratio":
                total = sum(sizes.values())
                kk = min(int(math.floor(float(ratio) * total)), len(cand_roots))
                keep_idx = keep_for(kk)
            else:
                p0, f0, _ = cost.evaluate({})
                idx = 1 if mode == "target_flops" else 0
                base = (p0, f0)[idx]
                goal = float(value)

                def reduction(kk):
                    kp = keep_for(kk)
                    v = cost.evaluate({r: len(x) for r, x in kp.items()})
                    return 1.0 - (v[0], v[1])[idx] / max(base, 1), kp

                if goal > 0:
                    best, kp_max = reduction(len(cand_roots))
                    if best < goal:
                        raise ValueError(
                            f"{mode}={goal} cannot be met: removing every prunable channel "
                            f"(min_channels={min_channels}) reduces it by {best:.4f}. Lower the "
                            f"target. Received: {mode}={value!r}"
                        )
                    lo, hi = 0, len(cand_roots)
                    while lo < hi:
                        mid = (lo + hi) // 2
                        if reduction(mid)[0] >= goal:
                            hi = mid
                        else:
                            lo = mid + 1
                    red, keep_idx = reduction(lo)
                    while red < goal and lo < len(cand_roots):  # round_to can break monotonicity
                        lo += 1
                        red, keep_idx = reduction(lo)

    return _make_plan(an, cost, allg, keep_idx, crit_name)


def _keep_from_dict(an, keep, allg):
    if not isinstance(keep, dict):
        raise ValueError(f"keep must be a dict {{bn_name: indices}}. Received: keep={keep!r}")
    out: dict = {}
    for name, idx in keep.items():
        if name not in an.bn_maps:
            raise ValueError(
                f"keep names an unknown BatchNormalization. Known: {sorted(an.bn_maps)[:20]}... "
                f"Received: {name!r}"
            )
        m = an.bn_maps[name]
        n = an.size(m)
        idx = np.unique(np.asarray(list(idx), dtype=np.int64))
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise ValueError(
                f"keep[{name!r}] has indices outside [0, {n}). Received: {idx.tolist()}"
            )
        off = 0
        for s in m.sources:
            r = an.find(s)
            size = an.sources[s].size
            part = idx[(idx >= off) & (idx < off + size)] - off
            off += size
            if part.size == size:
                if r in out and out[r].size != size:
                    raise ValueError(f"keep for {name!r} conflicts with another BN of its group.")
                continue
            src = allg[r]
            if not _is_prunable(src):
                raise ValueError(
                    f"keep[{name!r}] removes channels of a group that cannot be pruned "
                    f"({src.fixed or 'no BatchNormalization'}). Received: keep[{name!r}]"
                )
            if part.size == 0:
                raise ValueError(f"keep[{name!r}] would remove every channel of a group.")
            if r in out and not np.array_equal(out[r], part):
                raise ValueError(
                    f"keep[{name!r}] conflicts with another BN of the same channel group; "
                    "coupled BNs must keep the same indices."
                )
            out[r] = part
    return out


def _make_plan(an, cost, allg, keep_idx, crit_name) -> ShrinkPlan:
    p0, f0, m0 = cost.evaluate({})
    p1, f1, m1 = cost.evaluate({r: len(x) for r, x in keep_idx.items()})
    groups = []
    for gid, (r, src) in enumerate(sorted(allg.items())):
        k = keep_idx.get(r)
        groups.append(
            ChannelGroup(
                id=gid,
                size=src.size,
                members=tuple(src.members),
                units=tuple(sorted({u for u, _ in src.units})),
                prunable=_is_prunable(src),
                reason=src.fixed if src.fixed else (None if src.units else "no BatchNormalization"),
                keep=tuple(int(i) for i in (np.arange(src.size) if k is None else k)),
            )
        )
    bn_keep = {}
    for unit, m in an.bn_maps.items():
        if not any(_is_prunable(allg[an.find(s)]) for s in m.sources):
            continue
        f = _graph.keep_features(an, m, keep_idx)
        bn_keep[unit] = tuple(int(i) for i in (np.arange(an.size(m)) if f is None else f))
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
        _analysis=an,
        _keep={r: np.asarray(v) for r, v in keep_idx.items()},
    )


# ---------------------------------------------------------------------------
# Apply
# ---------------------------------------------------------------------------


def _has_wrappers(trace) -> bool:
    return any(_graph._is_wrapped_bn(c.op) for c in trace.calls)


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
    fold_removed: bool = True,
    seed: int = 0,
    plan: ShrinkPlan | None = None,
):
    """Return a NEW model with the low-importance channels physically removed.

    Exactly one of ``threshold``, ``ratio``, ``target_flops``,
    ``target_params``, ``keep`` (see :func:`plan_shrink`), or a ready
    ``plan``. The input model is not modified. Nested functional models are
    inlined into the result. A model wrapped with
    ``acsl_tf.prune_low_correlation`` is stripped (``acsl_tf.strip_pruning``)
    first.

    Args:
        model: A functional or Sequential Keras model.
        threshold, ratio, target_flops, target_params, keep, criterion,
        min_channels, round_to, ignored_layers, seed: See :func:`plan_shrink`.
        fold_removed: A removed channel is not always zero: with gamma ~ 0 a BN
            channel outputs the constant ``act(beta)``. With True, that
            constant's contribution is folded into the consumer's bias (or the
            following BN's moving mean). Exact for Dense, 1x1 / valid-padded
            convs and global pooling; approximate at the borders of
            same-padded kxk convs (see docs/SHRINK.md).
        plan: A :class:`ShrinkPlan` from :func:`plan_shrink` for this model
            (then no other selection argument may be given).

    Returns:
        A new ``keras.Model``.

    Raises:
        ValueError: For invalid arguments or unsupported layers.

    Example:
        >>> small = acsl_tf.shrink(model, ratio=0.3)
        >>> print(acsl_tf.shrink_report(model, small))
    """
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
            seed=seed,
        )
    elif any(v is not None for v in (threshold, ratio, target_flops, target_params, keep)):
        raise ValueError("Pass either plan= or a selection argument, not both.")
    elif not isinstance(plan, ShrinkPlan):
        raise ValueError(f"plan must be a ShrinkPlan. Received: plan={type(plan).__name__}")
    an = plan._analysis
    if an.trace.model is not model:
        raise ValueError(
            "plan was computed for a different model; call plan_shrink(model, ...) again."
        )
    if _has_wrappers(an.trace):
        from acsl_tf.sparsity import api as _prune  # lazy: optional at import time

        stripped = _prune.strip_pruning(model)
        names = {c.op.name for c in _graph.trace_model(stripped).calls}
        ignored = []
        for n in an.ignored:  # wrapper names are "acsl_" + the BN's name
            n = n[5:] if n not in names and n.startswith("acsl_") else n
            if n in names:
                ignored.append(n)
        plan = plan_shrink(stripped, keep=dict(plan.bn_keep), ignored_layers=tuple(ignored))
        an = plan._analysis
    return _apply(an, plan._keep, fold_removed)


def _pack(struct, flat):
    try:
        return keras.tree.pack_sequence_as(struct, flat)
    except Exception:
        return flat[0] if len(flat) == 1 else flat


def _apply(an: _graph.Analysis, keep: dict, fold_removed: bool):
    tr = an.trace
    model = tr.model
    fn = _graph._functional_of(model)
    new_inputs = []
    tensors = {}
    for k, nm in zip(tr.input_keys, tr.input_names):
        x = keras.Input(batch_shape=tr.shapes[k], dtype=tr.dtypes[k], name=nm)
        new_inputs.append(x)
        tensors[k] = x
    new_ops: dict = {}
    pending = []
    used_names = set(tr.input_names)
    folds = _fold_plan(an, keep) if fold_removed else {}
    for call in tr.calls:
        op = call.op
        new = new_ops.get(id(op))
        if new is None:
            new = _rebuild_op(an, call, keep, pending, folds)
            nm = getattr(new, "name", None)
            if isinstance(new, keras.layers.Layer) and nm in used_names:
                raise ValueError(
                    f"Layer name {nm!r} occurs twice after inlining nested models; rename one."
                )
            used_names.add(nm)
            new_ops[id(op)] = new
        fill = {id(kt): tensors[k] for kt, k in zip(call.node.input_tensors, call.in_keys)}
        args, kwargs = call.node.arguments.fill_in(fill)
        out = new(*args, **kwargs)
        flat = keras.tree.flatten(out)
        for k, t in zip(call.out_keys, flat):
            tensors[k] = t
    outs = [tensors[k] for k in tr.output_keys]
    ins = (
        _pack(getattr(fn, "_inputs_struct", None), new_inputs)
        if len(new_inputs) > 1
        else new_inputs[0]
    )
    outputs = _pack(getattr(fn, "_outputs_struct", None), outs) if len(outs) > 1 else outs[0]
    result = keras.Model(ins, outputs, name=model.name)
    for layer, ws, saved in pending:
        if saved is None:
            layer.set_weights(ws)
            continue
        # weights were created directly from their values; restore the
        # configured initializers and check
        for attr, init in saved.items():
            setattr(layer, attr, init)
        if not all(np.array_equal(np.asarray(v), w) for v, w in zip(layer.weights, ws)):
            layer.set_weights(ws)  # the layer did not use its initializer attributes
    return result


class _ValueInit:
    """Initializer returning a fixed array (weights are created with their
    final values: one op per variable instead of init + assign)."""

    def __init__(self, value):
        self.value = value

    def __call__(self, shape, dtype=None):
        if tuple(shape) != tuple(self.value.shape):
            raise ValueError(f"shape {tuple(shape)} != {self.value.shape}")
        return self.value.astype(dtype or self.value.dtype)


_INIT_ATTR = {
    "depthwise_kernel": "depthwise_initializer",
    "pointwise_kernel": "pointwise_initializer",
}


def _preset_initializers(orig, new, ws):
    """Point ``new``'s initializers at the values ``ws``; returns the saved
    initializers, or None when the weights do not map one to one."""
    names = [v.name for v in orig.weights]
    if len(names) != len(ws) or len(set(names)) != len(names):
        return None
    attrs = [_INIT_ATTR.get(n, f"{n}_initializer") for n in names]
    if not all(hasattr(new, a) for a in attrs):
        return None
    saved = {a: getattr(new, a) for a in attrs}
    for a, w in zip(attrs, ws):
        setattr(new, a, _ValueInit(np.asarray(w)))
    return saved


def _rebuild_op(an, call, keep, pending, folds):
    op = call.op
    if not isinstance(op, keras.layers.Layer):
        return op.__class__.from_config(op.get_config())
    h = _graph.handler_for(op)
    in_maps = an.call_in_maps[call.index]
    out_maps = an.call_out_maps[call.index]
    in_keep = [_graph.keep_features(an, m, keep) for m in in_maps]
    out_keep = _graph.keep_features(an, out_maps[0], keep) if out_maps else None
    if h is None or op.name in an.ignored or (all(k is None for k in in_keep) and out_keep is None):
        cfg, ws = op.get_config(), [np.asarray(w) for w in op.get_weights()]
    else:
        cfg, ws = h.rebuild(op, in_keep, out_keep)
    if op.name in folds:
        cfg, ws = _apply_fold(op, cfg, ws, folds[op.name], out_keep)
    new = op.__class__.from_config(cfg)
    saved = None
    if type(op).__module__.startswith("keras.") and len(ws) == len(op.weights):
        saved = _preset_initializers(op, new, ws)
    pending.append((new, ws, saved))
    return new


# ---------------------------------------------------------------------------
# Folding removed channels' constant output
# ---------------------------------------------------------------------------


def _fold_plan(an, keep) -> dict:
    """Estimate the constant value each removed channel carries into each
    consumer, and return ``{consumer name: delta of its output (per out
    channel)}``. The constant of a removed BN channel is ``act(beta)``,
    computed by running a probe copy of the original graph in which the
    removed channels' gammas are 0."""
    if not keep:
        return {}
    removed_units = {}
    any_nonzero = False
    for unit, m in an.bn_maps.items():
        f = _graph.keep_features(an, m, keep)
        if f is None:
            continue
        mask = np.ones(an.size(m), bool)
        mask[f] = False
        removed_units[unit] = mask
        bn = an.bn_layers[unit][0]
        beta = getattr(bn, "beta", None)
        if beta is not None and np.any(np.abs(np.asarray(beta)[mask]) > 0):
            any_nonzero = True
    if not any_nonzero:
        return {}
    tr = an.trace
    # consumers: Conv/Dense/Separable/Transposed whose input features shrink.
    consumers = []
    for call in tr.calls:
        op = call.op
        h = _graph.handler_for(op)
        if not isinstance(h, _graph.ProducerHandler):
            continue
        ik = _graph.keep_features(an, an.call_in_maps[call.index][0], keep)
        if ik is None:
            continue
        consumers.append((call, ik))
    if not consumers:
        return {}
    # Probe: execute the original graph eagerly (original layers, nothing is
    # modified) with the removed channels' gammas taken as 0, and capture
    # every consumer's input.
    rng = np.random.default_rng(0)
    values = {}
    for k in tr.input_keys:
        shp = tuple(d if d is not None else 32 for d in tr.shapes[k][1:])
        values[k] = keras.ops.convert_to_tensor(
            rng.standard_normal((2,) + shp).astype(tr.dtypes[k] or "float32")
        )
    for call in tr.calls:
        op = call.op
        fill = {id(kt): values[k] for kt, k in zip(call.node.input_tensors, call.in_keys)}
        a, kw = call.node.arguments.fill_in(fill)
        base = op.layer if _graph._is_wrapped_bn(op) else op
        if isinstance(base, keras.layers.BatchNormalization) and base.name in removed_units:
            out = _bn_zeroed(base, a[0], removed_units[base.name])
        else:
            if isinstance(op, keras.layers.Layer) and "training" in kw:
                kw["training"] = False
            out = op(*a, **kw)
        for k, t in zip(call.out_keys, keras.tree.flatten(out)):
            values[k] = t
    vals = [values[c.in_keys[0]] for c, _ in consumers]
    folds = {}
    for (call, ik), v in zip(consumers, vals):
        v = np.asarray(v, dtype=np.float64)
        c = v.reshape(-1, v.shape[-1]).mean(axis=0)  # per input feature
        mask = np.ones(c.shape[0], bool)
        mask[ik] = False
        cr = np.where(mask, c, 0.0)
        if not np.any(np.abs(cr) > 1e-12):
            continue
        op = call.op
        ws = [np.asarray(w, dtype=np.float64) for w in op.get_weights()]
        if isinstance(op, keras.layers.Dense):
            delta = cr @ ws[0]
        elif isinstance(op, (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)):
            dw, pw = ws[0], ws[1]
            mlt = dw.shape[-1]
            d1 = (cr[:, None] * dw.reshape(-1, dw.shape[-2], mlt).sum(axis=0)).reshape(-1)
            delta = d1 @ pw.reshape(-1, pw.shape[-1])
        elif "Transpose" in type(op).__name__:
            k = ws[0]  # (..., out, in)
            delta = k.reshape(-1, k.shape[-2], k.shape[-1]).sum(axis=0) @ cr
        else:
            k = ws[0]
            if getattr(op, "groups", 1) != 1:
                continue
            delta = cr @ k.reshape(-1, k.shape[-2], k.shape[-1]).sum(axis=0)
        target = ("bias", op.name)
        if not getattr(op, "use_bias", False):
            nxt = [c for c in tr.calls if call.out_keys[0] in c.in_keys]
            if len(nxt) == 1 and type(nxt[0].op) is keras.layers.BatchNormalization:
                target = ("mean", nxt[0].op.name)
        folds[target[1]] = (target[0], delta)
    return folds


def _bn_zeroed(bn, x, mask):
    """Inference-mode BN with gamma set to 0 on ``mask``."""
    gamma = np.asarray(bn.gamma) if bn.scale else np.ones(mask.shape[0], "float32")
    gamma = np.where(mask, 0.0, gamma).astype("float32")
    beta = np.asarray(bn.beta) if bn.center else np.zeros(mask.shape[0], "float32")
    inv = gamma / np.sqrt(np.asarray(bn.moving_variance) + bn.epsilon)
    shift = beta - np.asarray(bn.moving_mean) * inv
    dt = keras.backend.standardize_dtype(x.dtype)
    return x * inv.astype(dt) + shift.astype(dt)


def _apply_fold(op, cfg, ws, fold, out_keep):
    kind, delta = fold
    d = delta if out_keep is None else delta[out_keep]
    if kind == "mean":  # BatchNormalization after a bias-free consumer
        ws = list(ws)
        i = len(ws) - 2  # moving_mean
        ws[i] = (ws[i] - d).astype(ws[i].dtype)
        return cfg, ws
    if cfg.get("use_bias"):
        ws = list(ws)
        ws[-1] = (ws[-1] + d).astype(ws[-1].dtype)
        return cfg, ws
    cfg = dict(cfg)
    cfg["use_bias"] = True
    return cfg, list(ws) + [d.astype("float32")]


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportRow:
    name: str
    cls: str
    channels_before: int | None
    channels_after: int | None
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int


@dataclass(frozen=True)
class ShrinkReport:
    """Per-layer comparison of a model and its shrunk version.

    Attributes:
        rows: :class:`ReportRow` per layer of the original (matched by name).
        params_before, params_after, flops_before, flops_after: Totals.
    """

    rows: tuple
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int

    def summary(self, only_changed: bool = True) -> str:
        """Printable table (by default only the layers that changed)."""
        rows = [
            r
            for r in self.rows
            if not only_changed
            or r.params_before != r.params_after
            or r.channels_before != r.channels_after
            or r.flops_before != r.flops_after
        ]
        w = max([len(r.name) for r in rows] + [5])
        head = f"{'layer':<{w}}  {'channels':>13}  {'params':>23}  {'FLOPs':>27}"
        lines = [head, "-" * len(head)]
        for r in rows:
            ch = f"{r.channels_before}->{r.channels_after}"
            lines.append(
                f"{r.name:<{w}}  {ch:>13}  {r.params_before:>11,}->{r.params_after:<11,}"
                f"  {r.flops_before:>13,}->{r.flops_after:<13,}"
            )
        lines.append("-" * len(head))
        lines.append(
            f"{'total':<{w}}  {'':>13}  {self.params_before:>11,}->{self.params_after:<11,}"
            f"  {self.flops_before:>13,}->{self.flops_after:<13,}"
        )
        pr = 100 * (1 - self.params_after / max(self.params_before, 1))
        fr = 100 * (1 - self.flops_after / max(self.flops_before, 1))
        lines.append(f"params -{pr:.1f}%, FLOPs -{fr:.1f}%")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def shrink_report(original, shrunk) -> ShrinkReport:
    """Compare ``original`` and ``shrunk`` layer by layer.

    Args:
        original: The model before :func:`shrink` (plain or wrapped).
        shrunk: The model returned by :func:`shrink`.

    Returns:
        A :class:`ShrinkReport` (print it for a table).

    Example:
        >>> small = acsl_tf.shrink(model, ratio=0.5)
        >>> print(acsl_tf.shrink_report(model, small))
    """
    pa = _profile_fn(original)
    pb = _profile_fn(shrunk)
    after = {r.name: r for r in pb.layers}
    rows = []
    for r in pa.layers:
        name = r.name
        b = after.get(name)
        if b is None and name.startswith("acsl_"):
            b = after.get(name[5:])
        cb = r.output_shape[-1] if r.output_shape else None
        ca = (b.output_shape[-1] if b.output_shape else None) if b else None
        rows.append(
            ReportRow(
                name, r.cls, cb, ca, r.params, b.params if b else 0, r.flops, b.flops if b else 0
            )
        )
    return ShrinkReport(
        rows=tuple(rows),
        params_before=pa.total_params,
        params_after=pb.total_params,
        flops_before=pa.total_flops,
        flops_after=pb.total_flops,
    )
