"""DCP channel selection and DKP kernel selection.

For each prunable channel group of the dependency graph (in graph order, so
stage by stage and layer by layer), the layers that read the group (its
*consumers*: Conv and Dense layers) are re-fitted on a calibration batch:

* loss ``L(W) = sum_c MSE(conv_c(X_c; W_c), Y_c) + lambda * L_aux``, where
  ``X_c`` is the consumer's input in the network pruned so far, ``Y_c`` its
  linear output in the baseline network, and ``L_aux`` the loss of the first
  auxiliary head downstream of the consumers (the task loss of the model's
  output when no head is downstream);
* greedy: starting with no channel of the group, repeatedly compute the
  gradient ``G = dL/dW`` (unselected channels held at zero), add the channel
  ``k`` with the largest ``sqrt(sum_c ||G_c[..., k, :]||_F^2)``, copy its
  original weights in (warm start) and re-optimise the selected weights with
  a few SGD steps;
* stop at a fixed count, or adaptively when
  ``|L(t-1) - L(t)| / L(0) <= epsilon``; when a step adds ``k > 1`` units
  (``per_step``) the decrease is divided by ``k``, so ``epsilon`` keeps the
  published per-unit meaning whatever the step size.

Coupled channels (a residual ``Add``, a ``Concatenate``) are one group: all
their consumers are fitted together and lose the same channels. The result
is a :class:`~acsl_tf.ShrinkPlan` that ``shrink`` applies, plus the
re-optimised kernels (:meth:`DCPResult.apply`).

DKP uses the same loop with single kernels (input ``k``, output ``j``) of
one layer as the unit; the pruned kernels stay zero.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field

import keras
import numpy as np

from acsl_tf import _keras, _validation
from acsl_tf.dcp import heads as _heads
from acsl_tf.dcp._engine import Engine, activate, is_consumer_layer, linear, slot_channels
from acsl_tf.graph import DependencyGraph

__all__ = [
    "DCPResult",
    "DKPResult",
    "KeepPrunedKernels",
    "LayerSelection",
    "greedy_select",
    "select_channels",
    "select_kernels",
]

logger = logging.getLogger("acsl_tf.dcp")


# ---------------------------------------------------------------------------
# The greedy core
# ---------------------------------------------------------------------------


@dataclass
class GreedyTrace:
    """What one greedy run did.

    Attributes:
        order: Units in the order they were added.
        losses: ``L(0), L(1), ...``: the loss with no unit and after each
            addition (after its re-optimisation).
        scores: The gradient norms of every unit at each step (``steps x
            units``; the chosen one is the largest not yet chosen).
        before_reopt: The loss right after each addition, before the SGD
            steps.
        kernels: The final kernels (unselected entries zero).
        rejected: Additions whose SGD steps were discarded because they left
            the loss higher than (or not finite, unlike) the warm start: a
            learning rate too large for the loss's curvature diverges, and
            the warm-started kernels are kept instead.
    """

    order: list
    losses: list
    scores: list
    before_reopt: list
    kernels: list
    rejected: int = 0


def _mask_of(unit_of, selected_flags):
    """Keep-mask (F_in, C_out) of one kernel: entries of no unit, or of a
    selected unit."""
    m = unit_of < 0
    sel = unit_of >= 0
    m[sel] = selected_flags[unit_of[sel]]
    return m


def greedy_select(
    value_and_grad,
    origins,
    unit_of,
    n_units: int,
    *,
    count: int | None = None,
    epsilon: float | None = None,
    steps: int = 5,
    learning_rate: float = 0.01,
    momentum: float = 0.9,
    per_step: int = 1,
    min_units: int = 1,
    progress=None,
    on_select=None,
) -> GreedyTrace:
    """Greedy selection of units by gradient norm with warm-started SGD.

    Args:
        value_and_grad: ``fn(list of kernels) -> (loss, list of gradients)``.
        origins: The kernels before selection (numpy), one per layer.
        unit_of: For each kernel, an int array of shape ``(F_in, C_out)``
            (the kernel's last two axes) giving the unit of each entry, or
            -1 for entries that are always kept.
        n_units: Number of units.
        count: Stop after this many units.
        epsilon: Stop when ``|L(t-1) - L(t)| / (k L(0)) <= epsilon``, with
            ``k`` the units the last step added (1 as published).
        steps: SGD steps after each addition.
        learning_rate: SGD learning rate.
        momentum: SGD momentum (the velocity restarts at each addition).
        per_step: Units added per greedy step (published: 1).
        min_units: Units kept at least (adaptive stopping).
        progress: ``fn(n_selected, loss)`` called after each step.
        on_select: ``fn(order)`` called after each addition, before the
            re-optimisation.

    Returns:
        A :class:`GreedyTrace`.
    """
    origins = [np.asarray(o, np.float32) for o in origins]
    shapes = [o.shape for o in origins]
    flags = np.zeros(n_units, bool)

    def masks():
        return [
            _mask_of(u, flags).reshape((1,) * (len(s) - 2) + u.shape).astype(np.float32)
            for u, s in zip(unit_of, shapes)
        ]

    m = masks()
    W = [o * mk for o, mk in zip(origins, m)]
    loss, grads = value_and_grad(W)
    losses, scores, before, order = [float(loss)], [], [], []
    rejected = 0
    limit = n_units if count is None else min(int(count), n_units)
    while len(order) < limit:
        sc = np.zeros(n_units)
        for g, u in zip(grads, unit_of):
            g2 = np.square(np.asarray(g, np.float64))
            g2 = g2.reshape((-1,) + u.shape).sum(axis=0)
            sel = u >= 0
            sc += np.bincount(u[sel], weights=g2[sel], minlength=n_units)
        sc = np.sqrt(sc)
        scores.append(sc)
        cand = np.where(flags, -np.inf, sc)
        take = min(per_step, limit - len(order))
        new = [int(i) for i in np.argsort(-cand, kind="stable")[:take]]
        flags[new] = True
        order.extend(new)
        if on_select is not None:
            on_select(list(order))
        m = masks()
        newmask = [
            np.isin(u, new).reshape((1,) * (len(s) - 2) + u.shape) for u, s in zip(unit_of, shapes)
        ]
        W = [np.where(nm, o, w) for w, o, nm in zip(W, origins, newmask)]
        vel = [np.zeros_like(w) for w in W]
        first = True
        start = None
        with np.errstate(over="ignore", invalid="ignore"):
            for _ in range(int(steps)):
                loss_s, grads = value_and_grad(W)
                if first:
                    before.append(float(loss_s))
                    start = ([w.copy() for w in W], loss_s, grads)
                    first = False
                for i in range(len(W)):
                    vel[i] = momentum * vel[i] - learning_rate * np.asarray(grads[i]) * m[i]
                    W[i] = W[i] + vel[i]
        loss, grads = value_and_grad(W)
        if first:
            before.append(float(loss))
        elif not np.isfinite(loss) or loss > before[-1]:
            # the steps diverged: keep the warm-started kernels
            W, loss, grads = start
            rejected += 1
        losses.append(float(loss))
        if progress is not None:
            progress(len(order), float(loss))
        if (
            epsilon is not None
            and len(order) >= min_units
            and abs(losses[-2] - losses[-1]) <= epsilon * abs(losses[0]) * len(new)
        ):
            break
    return GreedyTrace(order, losses, scores, before, [np.asarray(w) for w in W], rejected)


# ---------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------


@dataclass
class LayerSelection:
    """The selection of one channel group (DCP) or one layer's kernels (DKP).

    Attributes:
        name: The group's producer(s) (DCP) or the layer (DKP).
        consumers: Layers whose kernels were re-optimised.
        size: Channels (kernels for DKP) before.
        kept: Kept channel indices, sorted (DKP: flat kernel indices
            ``k * C_out + j``).
        order: Units in the order they were chosen.
        losses: ``L(0), L(1), ...`` (see :class:`GreedyTrace`).
        loss_head: The auxiliary head whose loss entered (its layer name),
            ``"output"`` for the model's own loss, or None
            (reconstruction only).
        seconds: Wall time.
        stage: Index of the stage (the head) the layer belongs to.
        rejected: Additions whose SGD re-fit diverged and was discarded
            (see :class:`GreedyTrace`).
    """

    name: str
    consumers: tuple
    size: int
    kept: tuple
    order: tuple
    losses: tuple
    loss_head: str | None
    seconds: float
    stage: int = 0
    rejected: int = 0


@dataclass
class DCPResult:
    """What :func:`select_channels` chose.

    Attributes:
        keep: ``{producer layer name: kept channel indices}`` (the
            ``keep=`` argument of :func:`acsl_tf.plan_shrink`).
        plan: The :class:`~acsl_tf.ShrinkPlan` of ``keep``.
        layers: One :class:`LayerSelection` per selected group, in order.
        kernels: ``{consumer layer name: re-optimised kernel}`` at full size
            (zero on removed input channels).
        skipped: ``{group name: reason}`` for prunable groups that were not
            selected.
        seconds: Wall time of the selection (stage-wise: with the
            fine-tuning).
        model: The model the plan and kernels apply to: the model selected
            on, or for the stage-wise schedule its fine-tuned copy.
        heads: The auxiliary heads (set by
            :func:`~acsl_tf.discrimination_aware_prune` and the stage-wise
            schedule).
        schedule: ``"once"`` (:func:`select_channels`) or ``"stagewise"``
            (:func:`~acsl_tf.dcp.select_channels_stagewise`).
        stages: For the stage-wise schedule, one
            :class:`~acsl_tf.dcp.StageRecord` per stage, in the order run.
    """

    keep: dict
    plan: object
    layers: list
    kernels: dict
    skipped: dict = field(default_factory=dict)
    seconds: float = 0.0
    model: object = field(default=None, repr=False)
    heads: object = field(default=None, repr=False)
    schedule: str = "once"
    stages: list = field(default_factory=list)

    def apply(self, model=None, *, verify="warn"):
        """The thin model: ``plan`` applied with the re-optimised kernels.

        Args:
            model: The model the selection ran on (default: that one).
            verify: As for :func:`acsl_tf.apply_plan`.

        Returns:
            A new ``keras.Model``.
        """
        return apply_dcp(self.model if model is None else model, self, verify=verify)

    def summary(self) -> str:
        """A per-layer table: channels before and kept, losses."""
        from acsl_tf.dcp.report import dcp_report

        return dcp_report(self)

    def __str__(self) -> str:
        return self.summary()


@dataclass
class DKPResult:
    """What :func:`select_kernels` chose.

    Attributes:
        model: A copy of the model with the pruned kernels zero and the kept
            ones re-optimised (same architecture).
        layers: One :class:`LayerSelection` per layer.
        sparsity: Zero kernel entries over all entries of the selected
            layers' kernels.
        model_sparsity: Zero weights over all weights of the model.
        dense_bytes: Size of the float32 weights, dense.
        sparse_bytes: Size with the selected layers' kernels stored sparsely
            (a bitmap of the ``C_in x C_out`` kernels plus the kept kernels'
            float32 values; the other weights dense).
        seconds: Wall time.
    """

    model: object
    layers: list
    sparsity: float
    model_sparsity: float
    dense_bytes: int
    sparse_bytes: int
    seconds: float = 0.0

    @property
    def masks(self) -> dict:
        """``{layer name: (C_in, C_out) float mask}``: 1 for kept kernels."""
        out = {}
        for sel in self.layers:
            k = self.model.get_layer(sel.name).kernel
            f_in, c_out = int(k.shape[-2]), int(k.shape[-1])
            m = np.zeros(f_in * c_out, np.float32)
            m[list(sel.kept)] = 1.0
            out[sel.name] = m.reshape(f_in, c_out)
        return out

    def keep_zeros(self):
        """A callback for ``fit`` that keeps the pruned kernels at zero."""
        return KeepPrunedKernels(self.masks)

    def summary(self) -> str:
        from acsl_tf.dcp.report import dkp_report

        return dkp_report(self)

    def __str__(self) -> str:
        return self.summary()


# ---------------------------------------------------------------------------
# Shared set-up
# ---------------------------------------------------------------------------


@dataclass
class _Stage:
    key: object  # tensor key read by the head
    name: str
    head: object  # callable on the tensor, or None (identity: model output)
    loss: object


class _Context:
    """The graph, data, heads and working kernels of one selection run."""

    def __init__(self, model, x, y, heads, aux_weight, task_loss, n_samples, graph, reference=None):
        _keras.check_graph_model(model, "acsl_tf.dcp")
        self.model = model
        self.g = graph if graph is not None else DependencyGraph(model)
        self.engine = Engine(self.g)
        tr = self.g.trace
        if isinstance(x, (list, tuple)):
            n = len(x[0])
            x = [np.asarray(v)[:n_samples] for v in x]
        elif isinstance(x, dict):
            n = len(next(iter(x.values())))
            x = {k: np.asarray(v)[:n_samples] for k, v in x.items()}
        else:
            x = np.asarray(x)[:n_samples]
            n = len(x)
        if n == 0:
            raise ValueError("x holds no samples. Received: x with 0 samples")
        self.inputs = self.engine.inputs_of(x)
        # the baseline of the reconstruction: ``model`` itself, or a model of
        # the same architecture holding the baseline weights
        self.ref_engine, self.ref_inputs, self.ref_calls = self.engine, self.inputs, None
        if reference is not None:
            self.ref_engine = Engine(DependencyGraph(reference))
            self.ref_inputs = self.ref_engine.inputs_of(x)
            self.ref_calls = _aligned_calls(tr, self.ref_engine.trace, model, reference)
        self.y = None if y is None else keras.ops.convert_to_tensor(np.asarray(y)[:n_samples])
        self.aux_weight = float(aux_weight)
        self.stages = []
        if heads is not None:
            if not isinstance(heads, _heads.AuxiliaryHeads):
                raise TypeError(
                    "heads must be the AuxiliaryHeads model of with_auxiliary_heads(model). "
                    f"Received: heads of type {type(heads).__name__}"
                )
            if heads.model is not model:
                raise ValueError(
                    "heads wraps another model; pass the model that with_auxiliary_heads "
                    f"wrapped. Received: heads.model={heads.model.name!r}, model={model.name!r}"
                )
            if self.y is None:
                raise ValueError("Auxiliary heads need the targets. Received: y=None")
            by_name = {c.op.name: c for c in tr.calls if not c.scope}
            for p, h in zip(heads.points, heads.heads):
                self.stages.append(_Stage(by_name[p].out_keys[0], p, h, heads.aux_loss))
            task_loss = task_loss if task_loss is not None else heads.task_loss
        if self.y is not None:
            if task_loss is None:
                task_loss = _heads.default_loss(_heads.infer_task(model))
            self.stages.append(_Stage(tr.output_keys[0], "output", None, task_loss))
        self.kernels = {}  # id(op) -> working kernel (numpy)
        self.removed = {}  # root -> kept indices (groups done)

    def kernel(self, op):
        k = self.kernels.get(id(op))
        return np.asarray(op.kernel) if k is None else k

    def head_masks(self, extra=None):
        """``{key: mask}`` zeroing removed channels where heads read them
        (all ones where nothing is removed, so the structure never changes)."""
        keep = dict(self.removed)
        if extra:
            keep.update(extra)
        out = {}
        for st in self.stages:
            if st.head is None:
                continue
            m = self.g.maps[st.key]
            f = self.g.keep_features(m, keep)
            if f is None:
                mask = np.ones(self.g.size(m), np.float32)
            else:
                mask = np.zeros(self.g.size(m), np.float32)
                mask[f] = 1.0
            out[st.key] = mask
        return out

    def stage_for(self, calls):
        """The first stage whose head tensor the consumers' outputs reach,
        with the calls in between."""
        for i, st in enumerate(self.stages):
            down = self.engine.downstream(calls, st.key)
            if down is not None:
                return i, st, down
            if any(st.key in c.out_keys for c in calls):
                return i, st, []
        return None, None, None

    def prepare(self, calls, down):
        """Cached tensors of the pruned network (consumer inputs and what the
        downstream calls read) and the baseline's linear outputs."""
        produced = set()
        for c in list(calls) + list(down or []):
            produced.update(c.out_keys)
        need = {c.in_keys[0] for c in calls}
        for c in down or []:
            need.update(k for k in c.in_keys if k not in produced)
        last = max(
            [c.index for c in calls]
            + [self.engine.producer_of[k].index for k in need if k in self.engine.producer_of]
        )
        before = [c for c in self.g.trace.calls if c.index <= last]
        work = {
            id(c.op): keras.ops.convert_to_tensor(self.kernel(c.op))
            for c in before
            if id(c.op) in self.kernels
        }
        values = self.engine.run(
            dict(self.inputs), before, kernels=work, masks=self.head_masks(), keep=need
        )
        cache = {k: values[k] for k in need}
        last = max(x.index for x in calls)
        ref_calls = [c for c in self.ref_engine.trace.calls if c.index <= last]
        mine = [c if self.ref_calls is None else self.ref_calls[c.index] for c in calls]
        lin = {}
        base_k = {id(c.op): c.op.kernel for c in mine}
        self.ref_engine.run(
            dict(self.ref_inputs), ref_calls, kernels=base_k, linear_out=lin, keep=set()
        )
        base = {c.index: lin[c.index] for c in calls}
        return cache, base


def _aligned_calls(trace, ref_trace, model, reference):
    """``{call index: call of ref_trace}``: the same layer at the same
    position in both traces (a model and its clone)."""
    a, b = trace.calls, ref_trace.calls
    same = len(a) == len(b) and all(
        type(x.op) is type(y.op) and x.op.name == y.op.name and x.index == y.index
        for x, y in zip(a, b)
    )
    if not same:
        raise ValueError(
            "The reference model must have the same architecture as the model (a clone of "
            f"it). Received: model={model.name!r}, reference={reference.name!r}"
        )
    return {y.index: y for y in b}


def _value_and_grad_fn(ctx, calls, ops, stage, down, cache, base, head_mask_fn, compiled=True):
    """``fn(kernels) -> (loss, grads)`` for the consumers ``calls``.

    With ``compiled`` the loss and its gradient run as one ``tf.function``
    (traced once per group: the kernels and head masks are its arguments);
    if tracing fails, the group falls back to eager execution.
    """
    import tensorflow as tf

    work = {
        id(c.op): tf.constant(ctx.kernel(c.op))
        for c in down
        if id(c.op) in ctx.kernels and id(c.op) not in {id(o) for o in ops}
    }
    index_of = {id(o): i for i, o in enumerate(ops)}
    lam = ctx.aux_weight
    use_aux = stage is not None and lam != 0.0

    def core(ws, masks):
        with tf.GradientTape() as tape:
            for w in ws:
                tape.watch(w)
            recon = 0.0
            values = dict(cache)
            for c in calls:
                y = linear(c.op, cache[c.in_keys[0]], ws[index_of[id(c.op)]])
                recon = recon + tf.reduce_mean(tf.square(y - base[c.index]))
                values[c.out_keys[0]] = activate(c.op, y)
            loss = recon
            if use_aux:
                for k, mk in masks.items():
                    if k in values:
                        values[k] = values[k] * mk
                kern = dict(work)
                for c in down:
                    if id(c.op) in index_of:
                        kern[id(c.op)] = ws[index_of[id(c.op)]]
                ctx.engine.run(values, down, kernels=kern, masks=masks)
                feat = values[stage.key]
                pred = feat if stage.head is None else stage.head(feat, training=False)
                loss = loss + lam * stage.loss(ctx.y, pred)
        grads = tape.gradient(loss, ws)
        grads = [tf.zeros_like(w) if g is None else g for w, g in zip(ws, grads)]
        return loss, grads

    state = {"fn": tf.function(core) if compiled else core}

    def fn(kernels):
        ws = [tf.convert_to_tensor(np.asarray(k, np.float32)) for k in kernels]
        masks = head_mask_fn() if use_aux else {}
        try:
            loss, grads = state["fn"](ws, masks)
        except Exception:  # noqa: BLE001 - retried eagerly; a real error raises there
            if state["fn"] is core:
                raise
            state["fn"] = core
            loss, grads = core(ws, masks)
        return float(loss), [g.numpy() for g in grads]

    return fn


# ---------------------------------------------------------------------------
# DCP
# ---------------------------------------------------------------------------


def _check_optim(steps, learning_rate, momentum, n_samples, aux_weight):
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0. Received: steps={steps!r}")
    _validation.non_negative(learning_rate, "learning_rate")
    _validation.non_negative(momentum, "momentum")
    _validation.non_negative(aux_weight, "aux_weight")
    _validation.positive_int(n_samples, "n_samples")


def _group_label(g, group) -> str:
    names = [g.name(p) for p in group.producers]
    return "+".join(names) if names else (group.units[0] if group.units else f"group{group.root}")


def _consumers(g, root):
    return [
        c
        for c in g.trace.calls
        if c.in_keys
        and len(g.call_in_maps[c.index]) >= 1
        and any(g.find(s) == root for s in g.call_in_maps[c.index][0].sources)
        and g.handler(c.op).coverage_kind(g, c) in ("producer", "keep")
    ]


def _resolve_layers(g, layers, what="layers"):
    if layers is None:
        return None
    if isinstance(layers, str):
        layers = [layers]
    names = {g.name(op) for op in g.trace.all_ops} | {op.name for op in g.trace.all_ops}
    missing = [n for n in layers if n not in names]
    if missing:
        raise ValueError(
            f"`{what}` names layers that are not in the model: {missing}. "
            f"Received: {what}={list(layers)}"
        )
    return set(layers)


def _group_names(group) -> set:
    """Names of the layers whose own channels form the group (producers,
    BatchNormalization, depthwise and per-channel layers; not its readers)."""
    return {n for n, role in group.members if role != "in"}


def _uniform_counts(model, g, roots, sizes, mode, value, min_channels):
    """Counts per group for one keep ratio, found by bisection so that the
    plan removes at least ``value`` of the FLOPs/params."""
    from acsl_tf.pruning import plan_shrink

    def plan_for(rho):
        keep = {}
        for r in roots:
            n = max(min_channels, int(math.ceil(rho * sizes[r])))
            keep[_keep_name(g, r)] = np.arange(min(n, sizes[r]))
        return plan_shrink(model, keep=keep, graph=g, criterion="l1")

    def red(p):
        if mode == "target_flops":
            return 1.0 - p.flops_after / max(p.flops_before, 1)
        return 1.0 - p.params_after / max(p.params_before, 1)

    lo, hi = 0.0, 1.0
    if red(plan_for(0.0)) < value - 1e-12:
        raise ValueError(
            f"{mode}={value} cannot be met: removing all but {min_channels} channel(s) of every "
            f"prunable group removes {red(plan_for(0.0)):.3f}. Received: {mode}={value}"
        )
    for _ in range(20):
        mid = 0.5 * (lo + hi)
        if red(plan_for(mid)) >= value:
            lo = mid
        else:
            hi = mid
    return {r: max(min_channels, min(sizes[r], int(math.ceil(lo * sizes[r])))) for r in roots}


def _keep_name(g, root) -> str:
    group = g.groups[root]
    if group.producers:
        return g.name(group.producers[0])
    return group.units[0]


def _count_of(spec, size, name):
    if isinstance(spec, bool) or not isinstance(spec, (int, float, np.integer, np.floating)):
        raise TypeError(
            f"A channel count must be an int (channels) or a float in (0, 1] (fraction). "
            f"Received: {name}={spec!r}"
        )
    if isinstance(spec, (int, np.integer)):
        if spec < 1:
            raise ValueError(f"A channel count must be >= 1. Received: {name}={spec!r}")
        return min(int(spec), size)
    if not 0.0 < float(spec) <= 1.0:
        raise ValueError(f"A fraction must lie in (0, 1]. Received: {name}={spec!r}")
    return max(1, int(math.ceil(float(spec) * size)))


def select_channels(
    model,
    x,
    y=None,
    *,
    heads=None,
    channels=None,
    target_flops: float | None = None,
    target_params: float | None = None,
    epsilon: float | None = None,
    aux_weight: float = 1.0,
    task_loss=None,
    steps: int = 5,
    learning_rate: float = 0.01,
    momentum: float = 0.9,
    n_samples: int = 256,
    min_channels: int = 1,
    layers=None,
    ignored_layers=(),
    verbose: int = 1,
    per_step: int | float = 1,
) -> DCPResult:
    """Discrimination-aware channel selection (DCP) on the model's channel
    groups.

    Exactly one stopping rule: ``channels``, ``target_flops``,
    ``target_params`` or ``epsilon``.

    Args:
        model: A functional ``keras.Model`` (fine-tuned with its auxiliary
            heads, see :func:`with_auxiliary_heads`).
        x: Calibration inputs (the first ``n_samples`` are used).
        y: Their targets (needed for the discrimination-aware term).
        heads: The :class:`AuxiliaryHeads` of ``model``: each group's loss
            uses the first head downstream of its consumers (the task loss of
            the model's output after the last head). Without heads and with
            ``y``, every group uses the model's task loss; without ``y`` the
            loss is the reconstruction alone.
        channels: Kept channels per group: an int, a fraction in (0, 1], or
            ``{layer name: int or fraction}`` naming a producer, consumer or
            BatchNormalization of each group to select (others are kept).
        target_flops: Fraction of the FLOPs to remove: one keep fraction for
            all groups, found on the plan's analytic counts.
        target_params: Same for the parameters.
        epsilon: Adaptive stopping: stop adding channels when
            ``|L(t-1) - L(t)| / L(0) <= epsilon``, the decrease taken per
            channel when ``per_step`` adds several at once (so one
            ``epsilon`` means the same for any ``per_step``).
        aux_weight: lambda, the weight of the discrimination-aware loss
            (published: 1).
        task_loss: Loss of the model's output (default: from ``heads`` or by
            task).
        steps: SGD steps re-optimising the selected weights after each
            addition.
        learning_rate: Their learning rate.
        momentum: Their momentum.
        n_samples: Calibration samples used.
        min_channels: Channels every group keeps at least.
        per_step: Channels added per greedy step (published: 1): an int, or
            a fraction in (0, 1] of each group's size (rounded up), e.g.
            ``1/16`` for at most 16 steps per group. Larger steps cost
            proportionally fewer loss evaluations.
        layers: Restrict the selection to the groups of these layer names.
        ignored_layers: Layers whose channels are kept (as for
            :func:`acsl_tf.plan_shrink`).
        verbose: 0 silent, 1 a progress bar per group, 2 also log lines.

    Returns:
        A :class:`DCPResult`; ``result.apply()`` builds the thin model with
        the re-optimised kernels, ``result.plan`` works with ``shrink``,
        ``save`` and ``shrink_report``.

    Raises:
        ValueError: For a non-functional model, a layer name not in the
            model, a group that cannot be pruned, or several or no stopping
            rules.

    Example:
        >>> aux = acsl_tf.dcp.with_auxiliary_heads(model)
        >>> aux.compile("adam"); aux.fit(x, y, epochs=1)
        >>> res = acsl_tf.dcp.select_channels(model, x, y, heads=aux, target_flops=0.5)
        >>> small = res.apply()
    """
    t0 = time.perf_counter()
    run = _setup(
        model,
        x,
        y,
        heads=heads,
        channels=channels,
        target_flops=target_flops,
        target_params=target_params,
        epsilon=epsilon,
        aux_weight=aux_weight,
        task_loss=task_loss,
        steps=steps,
        learning_rate=learning_rate,
        momentum=momentum,
        n_samples=n_samples,
        min_channels=min_channels,
        layers=layers,
        ignored_layers=ignored_layers,
        per_step=per_step,
        caller="select_channels",
    )
    for i in range(len(run.cands)):
        _select_group(run, i, verbose)
    return _finish(run, t0)


@dataclass
class _Run:
    """The state of one selection: graph, context, candidate groups in graph
    order ``(first consumer index, root, calls, label)``, their target
    counts, the settings and what was selected so far."""

    g: object
    ctx: object
    cands: list
    skipped: dict
    sizes: dict
    counts: dict
    epsilon: object
    steps: int
    learning_rate: float
    momentum: float
    per_step: object
    min_channels: int
    keep: dict = field(default_factory=dict)
    layers: list = field(default_factory=list)


def _setup(
    model,
    x,
    y,
    *,
    heads,
    channels,
    target_flops,
    target_params,
    epsilon,
    aux_weight,
    task_loss,
    steps,
    learning_rate,
    momentum,
    n_samples,
    min_channels,
    layers,
    ignored_layers,
    per_step,
    caller,
    reference=None,
) -> _Run:
    """Check the arguments of a channel selection, find the candidate
    groups and their target counts."""
    _keras.check_graph_model(model, caller)
    rules = dict(
        channels=channels, target_flops=target_flops, target_params=target_params, epsilon=epsilon
    )
    given = [k for k, v in rules.items() if v is not None]
    if len(given) != 1:
        raise ValueError(
            "Pass exactly one of channels=, target_flops=, target_params=, epsilon=. "
            f"Received: {given or 'none'}"
        )
    if epsilon is not None and not (isinstance(epsilon, (int, float)) and epsilon >= 0):
        raise ValueError(f"epsilon must be a number >= 0. Received: epsilon={epsilon!r}")
    _check_optim(steps, learning_rate, momentum, n_samples, aux_weight)
    min_channels = _validation.positive_int(min_channels, "min_channels")
    if isinstance(per_step, float):
        if not 0.0 < per_step <= 1.0:
            raise ValueError(
                "per_step must be an int >= 1 or a fraction in (0, 1] of the group. "
                f"Received: per_step={per_step!r}"
            )
    else:
        per_step = _validation.positive_int(per_step, "per_step")
    g = DependencyGraph(model, ignored_layers=ignored_layers)
    ctx = _Context(model, x, y, heads, aux_weight, task_loss, n_samples, g, reference)
    only = _resolve_layers(g, layers)
    per_layer = None
    if isinstance(channels, dict):
        per_layer = dict(channels)
        _resolve_layers(g, list(per_layer), "channels")
    named = (only or set()) | set(per_layer or ())
    owned = set()
    for group in g.groups.values():
        owned |= _group_names(group)
    if named - owned:
        raise ValueError(
            f"{sorted(named - owned)} own no channel group; name the Conv/Dense layers or "
            "BatchNormalizations whose output channels are to be selected. Received: "
            + (f"layers={sorted(only)}" if only is not None else f"channels={channels}")
        )
    # candidate groups, in graph order of their first consumer
    cands, skipped = [], {}
    for r, group in g.groups.items():
        names = _group_names(group)
        label = _group_label(g, group)
        wanted = only is None or bool(names & only)
        if per_layer is not None:
            wanted = wanted and bool(names & set(per_layer))
        if not wanted:
            continue
        if not group.prunable:
            if only is not None or per_layer is not None:
                raise ValueError(
                    f"The channel group of {sorted(names & (only or set(per_layer)))} cannot be "
                    f"pruned ({group.fixed}). Received: "
                    + (f"layers={sorted(only)}" if only is not None else f"channels={channels}")
                )
            continue
        calls = _consumers(g, r)
        bad = [g.name(c.op) for c in calls if not is_consumer_layer(c.op)]
        if not calls or bad:
            skipped[label] = (
                f"read by layers whose kernels DCP cannot re-fit: {bad}"
                if bad
                else "no Conv/Dense layer reads the group"
            )
            continue
        cands.append((min(c.index for c in calls), r, calls, label))
    cands.sort(key=lambda t: t[0])
    sizes = {r: g.groups[r].size for _, r, _, _ in cands}
    counts = {}
    if target_flops is not None or target_params is not None:
        mode = "target_flops" if target_flops is not None else "target_params"
        value = target_flops if target_flops is not None else target_params
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < 1:
            raise ValueError(f"{mode} must be a fraction in (0, 1). Received: {mode}={value!r}")
        counts = _uniform_counts(model, g, list(sizes), sizes, mode, float(value), min_channels)
    elif channels is not None:
        for _, r, _, _label in cands:
            if per_layer is None:
                counts[r] = max(min_channels, _count_of(channels, sizes[r], "channels"))
            else:
                names = _group_names(g.groups[r])
                key = next(n for n in per_layer if n in names)
                counts[r] = _count_of(per_layer[key], sizes[r], f"channels[{key!r}]")
    return _Run(
        g=g,
        ctx=ctx,
        cands=cands,
        skipped=skipped,
        sizes=sizes,
        counts=counts,
        epsilon=epsilon,
        steps=steps,
        learning_rate=learning_rate,
        momentum=momentum,
        per_step=per_step,
        min_channels=min_channels,
    )


def _select_group(run: _Run, i: int, verbose) -> LayerSelection:
    """Greedy selection of candidate group ``i`` of ``run`` in the network
    pruned so far; records it in ``run`` (and its context)."""
    g, ctx, sizes, counts = run.g, run.ctx, run.sizes, run.counts
    epsilon, steps, learning_rate = run.epsilon, run.steps, run.learning_rate
    momentum, per_step, min_channels = run.momentum, run.per_step, run.min_channels
    cands = run.cands
    _, r, calls, label = cands[i]
    t1 = time.perf_counter()
    stage_i, stage, down = ctx.stage_for(calls)
    cache, base = ctx.prepare(calls, down)
    ops = list(dict.fromkeys(c.op for c in calls))
    slots = {}
    for c in calls:
        slots[id(c.op)] = slot_channels(g, c, r)
    unit_of = [
        np.broadcast_to(slots[id(o)][:, None], (len(slots[id(o)]), o.kernel.shape[-1])).copy()
        for o in ops
    ]
    selected_now = {}

    def head_mask_fn(sel=selected_now):
        return {k: keras.ops.convert_to_tensor(v) for k, v in ctx.head_masks(sel).items()}

    vg = _value_and_grad_fn(ctx, calls, ops, stage, down or [], cache, base, head_mask_fn)
    bar = None
    n_target = counts.get(r)
    if verbose:
        print(f"DCP [{i + 1}/{len(cands)}] {label}: {sizes[r]} channels", flush=True)
        bar = keras.utils.Progbar(n_target or sizes[r], verbose=1 if verbose else 0)

    def progress(n, loss, bar=bar):
        if bar is not None:
            bar.update(n, [("loss", loss)])

    def on_select(order, r=r, sel=selected_now):
        sel[r] = np.sort(np.asarray(order, np.int64))

    # the auxiliary head sees only the channels of the group chosen so far
    selected_now[r] = np.zeros(0, np.int64)
    trace = greedy_select(
        vg,
        [ctx.kernel(o) for o in ops],
        unit_of,
        sizes[r],
        on_select=on_select,
        count=n_target,
        epsilon=epsilon,
        steps=steps,
        learning_rate=learning_rate,
        momentum=momentum,
        per_step=(
            max(1, math.ceil(per_step * sizes[r])) if isinstance(per_step, float) else per_step
        ),
        min_units=min_channels,
        progress=progress,
    )
    if bar is not None and n_target is None:
        bar.update(sizes[r], [("loss", trace.losses[-1])], finalize=True)
    kept = np.sort(np.asarray(trace.order, np.int64))
    ctx.removed[r] = kept
    for o, w in zip(ops, trace.kernels):
        ctx.kernels[id(o)] = w
    run.keep[_keep_name(g, r)] = kept
    sel = LayerSelection(
        name=label,
        consumers=tuple(g.name(o) for o in ops),
        size=sizes[r],
        kept=tuple(int(k) for k in kept),
        order=tuple(trace.order),
        losses=tuple(trace.losses),
        loss_head=None if stage is None or ctx.aux_weight == 0 else stage.name,
        seconds=time.perf_counter() - t1,
        stage=-1 if stage_i is None else stage_i,
        rejected=trace.rejected,
    )
    run.layers.append(sel)
    if verbose > 1:
        logger.info(
            "DCP %s: kept %d of %d, loss %.4g -> %.4g",
            label,
            len(kept),
            sizes[r],
            trace.losses[0],
            trace.losses[-1],
        )
    return sel


def _finish(run: _Run, t0: float) -> DCPResult:
    """The :class:`DCPResult` of the groups selected in ``run``."""
    g, ctx, keep, model = run.g, run.ctx, run.keep, run.ctx.model
    from acsl_tf.pruning import plan_shrink

    plan = plan_shrink(model, keep=keep, graph=g, criterion="l1")
    plan = dataclasses.replace(plan, criterion="dcp")
    kernels = {g.name(op): ctx.kernels[id(op)] for op in _ops_with_kernels(g, ctx)}
    return DCPResult(
        keep={k: tuple(int(i) for i in v) for k, v in keep.items()},
        plan=plan,
        layers=run.layers,
        kernels=kernels,
        skipped=run.skipped,
        seconds=time.perf_counter() - t0,
        model=model,
    )


def _ops_with_kernels(g, ctx):
    return [op for op in g.trace.all_ops if id(op) in ctx.kernels]


def apply_dcp(model, result: DCPResult, *, verify="warn"):
    """Build the thin model of a DCP selection with its re-optimised kernels.

    Args:
        model: The model :func:`select_channels` ran on.
        result: Its :class:`DCPResult`.
        verify: As for :func:`acsl_tf.apply_plan`.

    Returns:
        A new ``keras.Model`` (``model`` is unchanged).
    """
    from acsl_tf.pruning import apply_plan

    by_name = {}
    for layer in _all_layers(model):
        by_name.setdefault(layer.name, layer)
    g = result.plan._graph
    if g is not None and g.model is model:
        for op in g.trace.all_ops:
            by_name[g.name(op)] = op
    saved = []
    try:
        for name, k in result.kernels.items():
            op = by_name.get(name)
            if op is None:
                raise ValueError(
                    f"The model has no layer {name!r} of the selection. Received: "
                    f"model={model.name!r}"
                )
            saved.append((op, np.asarray(op.kernel)))
            op.kernel.assign(k)
        return apply_plan(model, result.plan, verify=verify).model
    finally:
        for op, k in saved:
            op.kernel.assign(k)


def _all_layers(model):
    out = []
    for layer in model.layers:
        out.append(layer)
        if isinstance(layer, keras.Model):
            out.extend(_all_layers(layer))
    return out


# ---------------------------------------------------------------------------
# DKP
# ---------------------------------------------------------------------------


def select_kernels(
    model,
    x,
    y=None,
    *,
    heads=None,
    kernels=0.5,
    epsilon: float | None = None,
    aux_weight: float = 1.0,
    task_loss=None,
    steps: int = 5,
    learning_rate: float = 0.01,
    momentum: float = 0.9,
    per_step: int | None = None,
    n_samples: int = 256,
    layers=None,
    verbose: int = 1,
) -> DKPResult:
    """Discrimination-aware kernel pruning (DKP): DCP's greedy selection
    with single kernels (input channel ``k``, output channel ``j``) of each
    Conv/Dense layer as the unit. The pruned kernels are zero in a copy of
    the model; the architecture and the run time do not change (sparse
    kernels compress; they run faster only on runtimes with sparse kernels).

    Args:
        model: A functional ``keras.Model``.
        x, y, heads, aux_weight, task_loss, steps, learning_rate, momentum,
        n_samples: As for :func:`select_channels`.
        kernels: Kept kernels per layer: a fraction in (0, 1] or an int.
            Ignored with ``epsilon``.
        epsilon: Adaptive stopping, as for :func:`select_channels`.
        per_step: Kernels added per greedy step (published: 1; default
            ``max(1, C_out)``: one per output channel's worth, so a layer
            takes about ``C_in`` steps).
        layers: Layer names to prune (default: every Conv/Dense layer).
        verbose: 0 silent, 1 a progress bar per layer.

    Returns:
        A :class:`DKPResult`.

    Raises:
        ValueError: For a non-functional model or a layer name that is not
            in the model or has no prunable kernel.
    """
    t0 = time.perf_counter()
    _keras.check_graph_model(model, "select_kernels")
    _check_optim(steps, learning_rate, momentum, n_samples, aux_weight)
    if per_step is not None:
        per_step = _validation.positive_int(per_step, "per_step")
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    g = DependencyGraph(clone)
    ctx = _Context(
        clone, x, y, _rebind_heads(heads, model, clone), aux_weight, task_loss, n_samples, g
    )
    only = _resolve_layers(g, layers)
    by_op = {}
    for c in g.trace.calls:
        if is_consumer_layer(c.op):
            by_op.setdefault(id(c.op), []).append(c)
    if only is not None:
        bad = [n for n in only if not any(g.name(cs[0].op) == n for cs in by_op.values())]
        if bad:
            raise ValueError(
                f"`layers` names layers without a kernel DKP can prune (Conv with groups=1, "
                f"Dense): {bad}. Received: layers={sorted(only)}"
            )
    out = []
    todo = [cs for cs in by_op.values() if only is None or g.name(cs[0].op) in only]
    for i, calls in enumerate(todo):
        t1 = time.perf_counter()
        op = calls[0].op
        kshape = tuple(op.kernel.shape)
        f_in, c_out = kshape[-2], kshape[-1]
        n_units = f_in * c_out
        unit_of = [np.arange(n_units).reshape(f_in, c_out)]
        stage_i, stage, down = ctx.stage_for(calls)
        cache, base = ctx.prepare(calls, down)

        def no_mask():
            return {k: keras.ops.convert_to_tensor(v) for k, v in ctx.head_masks().items()}

        vg = _value_and_grad_fn(ctx, calls, [op], stage, down or [], cache, base, no_mask)
        count = None if epsilon is not None else _count_of(kernels, n_units, "kernels")
        bar = None
        name = g.name(op)
        if verbose:
            print(f"DKP [{i + 1}/{len(todo)}] {name}: {n_units} kernels", flush=True)
            bar = keras.utils.Progbar(count or n_units)

        def progress(n, loss, bar=bar):
            if bar is not None:
                bar.update(n, [("loss", loss)])

        trace = greedy_select(
            vg,
            [ctx.kernel(op)],
            unit_of,
            n_units,
            count=count,
            epsilon=epsilon,
            steps=steps,
            learning_rate=learning_rate,
            momentum=momentum,
            per_step=per_step or max(1, c_out),
            progress=progress,
        )
        w = trace.kernels[0]
        ctx.kernels[id(op)] = w
        op.kernel.assign(w)
        kept = np.sort(np.asarray(trace.order, np.int64))
        out.append(
            LayerSelection(
                name=name,
                consumers=(name,),
                size=n_units,
                kept=tuple(int(k) for k in kept),
                order=tuple(trace.order),
                losses=tuple(trace.losses),
                loss_head=None if stage is None or ctx.aux_weight == 0 else stage.name,
                seconds=time.perf_counter() - t1,
                stage=-1 if stage_i is None else stage_i,
                rejected=trace.rejected,
            )
        )
    zero = total = 0
    sparse_extra = 0
    pruned_ids = set()
    for sel in out:
        op = next(o for o in g.trace.all_ops if g.name(o) == sel.name)
        pruned_ids.add(id(op.kernel))
        k = np.asarray(op.kernel)
        zero += int((k == 0).sum())
        total += k.size
        kept_kernels = len(sel.kept)
        per_kernel = int(np.prod(k.shape[:-2])) if k.ndim > 2 else 1
        sparse_extra += math.ceil(sel.size / 8) + 4 * kept_kernels * per_kernel
    all_w = clone.weights
    dense_bytes = sum(4 * int(np.prod(w.shape)) for w in all_w)
    other = sum(4 * int(np.prod(w.shape)) for w in all_w if id(w) not in pruned_ids)
    model_zero = sum(int((np.asarray(w) == 0).sum()) for w in clone.trainable_weights)
    model_total = sum(int(np.prod(w.shape)) for w in clone.trainable_weights)
    return DKPResult(
        model=clone,
        layers=out,
        sparsity=zero / max(total, 1),
        model_sparsity=model_zero / max(model_total, 1),
        dense_bytes=dense_bytes,
        sparse_bytes=other + sparse_extra,
        seconds=time.perf_counter() - t0,
    )


class KeepPrunedKernels(keras.callbacks.Callback):
    """Re-apply DKP's kernel masks after every training batch, so fine-tuning
    keeps the pruned kernels at zero.

    Args:
        masks: ``{layer name: (C_in, C_out) mask}`` (see
            :attr:`DKPResult.masks`).
    """

    def __init__(self, masks):
        super().__init__()
        self.masks = {k: np.asarray(v, np.float32) for k, v in masks.items()}

    def _apply(self):
        for name, m in self.masks.items():
            k = self.model.get_layer(name).kernel
            shape = (1,) * (len(k.shape) - 2) + m.shape
            k.assign(k * keras.ops.convert_to_tensor(m.reshape(shape), k.dtype))

    def on_train_begin(self, logs=None):
        self._apply()

    def on_train_batch_end(self, batch, logs=None):
        self._apply()


def _rebind_heads(heads, model, clone):
    """The heads of ``model`` re-pointed at its clone (same layer names)."""
    if heads is None:
        return None
    if not isinstance(heads, _heads.AuxiliaryHeads) or heads.model is not model:
        raise ValueError(
            "heads must be the AuxiliaryHeads of with_auxiliary_heads(model) for this model. "
            f"Received: heads of type {type(heads).__name__}"
        )
    return _heads.AuxiliaryHeads(
        clone,
        heads.points,
        heads.heads,
        task=heads.task,
        task_loss=heads.task_loss,
        aux_loss=heads.aux_loss,
        aux_weight=heads.aux_weight,
    )
