"""The channel dependency graph of a Keras 3 functional model.

A :class:`DependencyGraph` is built once per model and shared by everything
that reasons about channels: the sparsity wrapper (which BatchNorms to wrap),
the budget controller, ``profile``, the planner, applying a plan and folding
removed channels.

Every tensor's last (channel) axis is described by a :class:`ChanMap`: an
ordered list of *channel sources*, each opened by a producer (Conv, Dense,
model input, a layer whose channels are kept, ...), optionally repeated
``reps`` times (after ``Flatten``). Layers that must lose the same channel
indices (the inputs of a residual ``Add``, a depthwise conv's input and
output, ...) have their sources joined in a union-find; a *channel group* is
one such class (Torch-Pruning's "group").

A group is **fixed** (never pruned) when it touches a model input or output,
a channel-mixing layer, a grouped conv, an ignored layer or a layer without a
handler. A prunable group is **covered** by its BatchNormalization gammas when
every path from every producer of the group to every reader passes through a
BatchNormalization of the group: then zero gammas make the channels constant
and removing them is exact. Uncovered groups (a BN-less skip conv added to a
BN branch, a model without BN) can only be pruned by a weight criterion.

A composite layer (one ``call`` holding convolutions and BatchNormalizations,
e.g. keras-hub's MobileNet blocks) can open channel groups that no tensor of
the model carries: its handler declares them with
:meth:`DependencyGraph.inner_map`; they are planned, counted and sliced like
any other group.

Per-layer behaviour lives in one handler per layer family
(:mod:`acsl_tf.graph.handlers`); the registry is copied per graph, so
handlers passed with ``handlers=`` never leak into other graphs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from acsl_tf.graph import handlers as _h
from acsl_tf.graph.handlers import base as _hb
from acsl_tf.graph.trace import Call, Trace, trace_model

__all__ = ["ChanMap", "Group", "Unit", "DependencyGraph"]

LIVE, COND, CONST = _hb.LIVE, _hb.COND, _hb.CONST
_RANK = {CONST: 0, COND: 1, LIVE: 2}


@dataclass(frozen=True)
class ChanMap:
    """Layout of a tensor's last axis: ``reps`` repetitions of the channels
    of ``sources`` (concatenated in order)."""

    sources: tuple
    reps: int = 1


@dataclass
class _Source:
    id: int
    size: int
    producer: Any  # the op that opened it (or an input name)
    parent: int
    fixed: str | None = None
    members: list = field(default_factory=list)  # (op, role)
    units: list = field(default_factory=list)  # (unit key, offset)
    multiple: int = 1  # kept counts must be a multiple of this


@dataclass
class Unit:
    """A BatchNormalization (``scale=True``) reading group channels: its gamma
    is what sparsity training drives to zero.

    Attributes:
        name: Unique display name (the BN's name unless inlined nested
            models collide).
        layer: The BatchNormalization layer.
        wrapper: The ``PruneLowCorrelation`` wrapper around it, or None.
        map: The :class:`ChanMap` of its input.
    """

    name: str
    layer: Any
    wrapper: Any
    map: ChanMap


@dataclass(frozen=True)
class Group:
    """One channel group: channels that must be removed together.

    Attributes:
        root: Internal id of the group (stable for one graph).
        size: Channels.
        members: ``(layer name, role)`` pairs; roles ``"out"`` (producer
            output channels), ``"in"`` (consumer input channels), ``"bn"``,
            ``"depthwise"``, ``"per-channel"``.
        producers: The ops whose output channels form the group.
        units: Names of the BatchNormalization units scaling the group.
        fixed: Why the group cannot be pruned, or None.
        covered: True when zero gammas of ``units`` make every channel
            constant for every reader (exact pruning by gamma).
        conditional: True when coverage goes through a product (e.g. a
            squeeze-and-excitation gate): exact only where the removed
            channels' constant is 0; the rest is measured and reported.
        uncovered_reason: Why gamma does not cover the group (when not
            covered).
        multiple: Kept channel counts must be a multiple of this (a layer
            that rounds its own width, e.g. to multiples of 8).
    """

    root: int
    size: int
    members: tuple
    producers: tuple
    units: tuple
    fixed: str | None
    covered: bool
    conditional: bool
    uncovered_reason: str | None
    multiple: int = 1

    @property
    def prunable(self) -> bool:
        """Prunable by some criterion (not fixed)."""
        return self.fixed is None and self.size > 0


class DependencyGraph:
    """Channel groups of a functional model, built once and shared.

    Args:
        model: A built Functional or Sequential ``keras.Model`` (plain or
            wrapped by ``acsl_tf.prune_low_correlation``).
        ignored_layers: Layers (objects or names) whose channels are kept.
        handlers: Optional ``{layer class or class name: LayerHandler}``
            that extends or overrides the default handlers for this graph
            only.
        strict: With True an operation without a handler raises; by default
            its input and output channels are kept and it is listed in
            :attr:`unknown`.

    Attributes:
        trace: The :class:`acsl_tf.graph.trace.Trace`.
        units: ``{unit name: Unit}``.
        unknown: Names of the operations without a handler (channels kept).
        notes: ``{op name: text}`` of approximations the graph knows of
            (e.g. LayerNormalization over pruned channels).
    """

    def __init__(self, model, *, ignored_layers=(), handlers=None, strict: bool = False):
        self.model = model
        self.trace: Trace = trace_model(model)
        if isinstance(handlers, _h.Registry):
            self.registry = handlers.copy()
            handlers = None
        else:
            self.registry = _h.default_registry().copy()
        if handlers:
            for cls, h in dict(handlers).items():
                self.registry.register(cls, h)
        self.strict = bool(strict)
        self.ignored = self._resolve_ignored(ignored_layers)
        self._sources: list[_Source] = []
        self.maps: dict = {}
        self._producer_src: dict = {}
        self._first_in_maps: dict = {}
        self.units: dict = {}
        self._unit_by_layer: dict = {}
        self.call_in_maps: dict = {}
        self.call_out_maps: dict = {}
        self.unknown: list = []
        self.notes: dict = {}
        self.handler_of: dict = {}
        self._propagate()
        self._groups = self._make_groups()

    # ------------------------------------------------------------------ names
    def name(self, op) -> str:
        """Unique display name of an op of this graph."""
        return self.trace.names.get(id(op), getattr(op, "name", str(op)))

    def _resolve_ignored(self, ignored):
        if ignored is None:
            return set()
        if isinstance(ignored, str):
            ignored = (ignored,)
        by_name: dict = {}
        for op in self.trace.all_ops:
            by_name.setdefault(op.name, []).append(op)
            by_name.setdefault(self.name(op), []).append(op)
            inner = getattr(op, "layer", None)
            if inner is not None and hasattr(inner, "name"):
                by_name.setdefault(inner.name, []).append(op)
        out = set()
        missing = []
        for item in ignored:
            if isinstance(item, str):
                ops = by_name.get(item)
                if not ops:
                    missing.append(item)
                    continue
                out.update(id(o) for o in ops)
            else:
                out.add(id(item))
                inner = getattr(item, "layer", None)
                if inner is not None:
                    out.add(id(inner))
        if missing:
            raise ValueError(
                f"ignored_layers names layers that are not in the model: {missing}. "
                f"Received: ignored_layers={list(ignored)}"
            )
        return out

    def is_ignored(self, op) -> bool:
        if id(op) in self.ignored:
            return True
        inner = getattr(op, "layer", None)
        return inner is not None and id(inner) in self.ignored

    # ------------------------------------------------------------ union-find
    def find(self, s: int) -> int:
        src = self._sources
        while src[s].parent != s:
            src[s].parent = src[src[s].parent].parent
            s = src[s].parent
        return s

    def _union(self, a: int, b: int, where: str):
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        A, B = self._sources[ra], self._sources[rb]
        if A.size != B.size:
            raise ValueError(f"Channel count mismatch at {where!r}: {A.size} vs {B.size}.")
        B.parent = ra
        A.fixed = A.fixed or B.fixed
        A.multiple = math.lcm(A.multiple, B.multiple)
        A.members.extend(B.members)
        A.units.extend(B.units)
        B.members, B.units = [], []

    def new_source(self, size: int, producer, *, key=None, fixed: str | None = None) -> int:
        """A new channel source. With ``key``, later calls with the same key
        get the same source (a shared layer keeps one channel set)."""
        if key is not None and key in self._producer_src:
            s = self._producer_src[key]
            if self._sources[s].size != size:
                raise ValueError(f"Shared layer {self.name(producer)!r} changes channel count.")
            return s
        s = len(self._sources)
        self._sources.append(_Source(s, int(size), producer, s, fixed))
        if key is not None:
            self._producer_src[key] = s
        return s

    def new_map(self, size: int, producer, *, key=None, fixed=None) -> ChanMap:
        return ChanMap((self.new_source(size, producer, key=key, fixed=fixed),))

    def inner_map(self, call: Call, size: int, *, index: int = 0, fixed=None) -> ChanMap:
        """A channel source inside a composite layer that no tensor of the
        model carries (e.g. the expanded channels of an inverted residual
        block).

        It is appended to ``call_in_maps[call.index]`` after the inputs'
        maps, so the handler's ``rebuild`` receives its kept indices, and
        ``params`` / ``cost`` its kept count, after those of the inputs (in
        the order the handler declares them). Every call of a shared layer
        gets the same source.

        Args:
            call: The composite layer's call.
            size: Channels.
            index: Position among the layer's inner maps.
            fixed: Why the channels cannot be pruned, or None.
        """
        m = self.new_map(size, call.op, key=(id(call.op), "inner", index), fixed=fixed)
        self.call_in_maps[call.index].append(m)
        return m

    def require_multiple(self, m: ChanMap, n: int):
        """Kept counts of the groups of ``m`` must be multiples of ``n`` (a
        layer that rounds its width; the planner rounds up to it)."""
        for s in m.sources:
            src = self._sources[self.find(s)]
            src.multiple = math.lcm(src.multiple, int(n))

    def size(self, m: ChanMap) -> int:
        return m.reps * sum(self._sources[s].size for s in m.sources)

    def source_size(self, s: int) -> int:
        return self._sources[s].size

    def fix(self, m: ChanMap, reason: str):
        for s in m.sources:
            r = self.find(s)
            if self._sources[r].fixed is None:
                self._sources[r].fixed = reason

    def unify(self, maps, where: str) -> bool:
        """Require the channels of ``maps`` to be removed together. Returns
        False (and fixes them) when the layouts cannot be aligned."""
        maps = [m for m in maps if m is not None]
        if len(maps) < 2:
            return True
        first = maps[0]
        sizes0 = [self._sources[s].size for s in first.sources]
        ok = all(
            m.reps == first.reps and [self._sources[s].size for s in m.sources] == sizes0
            for m in maps[1:]
        )
        if not ok:
            for m in maps:
                self.fix(m, f"misaligned channel layouts at {where!r}")
            return False
        for m in maps[1:]:
            for a, b in zip(first.sources, m.sources):
                self._union(a, b, where)
        return True

    def add_member(self, m: ChanMap, op, role: str):
        for s in m.sources:
            self._sources[self.find(s)].members.append((op, role))

    def add_unit(self, call: Call, m: ChanMap, layer, wrapper=None):
        """Register a BatchNormalization reading ``m`` as a unit."""
        key = id(layer)
        if key in self._unit_by_layer:
            self.unify([self._unit_by_layer[key].map, m], layer.name)
            return
        name = self.name(wrapper if wrapper is not None else layer)
        if wrapper is not None and name == wrapper.name:
            name = layer.name if layer.name not in self.units else name
        if name in self.units:  # a BN inside a composite layer: name it by its layer
            base = f"{self.name(call.op)}/{layer.name}"
            name, i = base, 1
            while name in self.units:
                name = f"{base}_{i}"
                i += 1
        unit = Unit(name, layer, wrapper, m)
        self.units[name] = unit
        self._unit_by_layer[key] = unit
        if m.reps != 1:
            self.fix(m, f"BatchNormalization {name!r} on flattened features")
            return
        off = 0
        for s in m.sources:
            self._sources[self.find(s)].units.append((name, off))
            off += self._sources[s].size

    def unit_of(self, layer) -> Unit | None:
        """The unit of a BatchNormalization layer (or its wrapper)."""
        inner = getattr(layer, "layer", layer)
        return self._unit_by_layer.get(id(inner))

    def shared_inputs(self, call: Call, maps: list) -> list:
        """For a layer called several times: unify every call's input maps
        with the first call's."""
        key = id(call.op)
        if key not in self._first_in_maps:
            self._first_in_maps[key] = maps
        else:
            for a, b in zip(self._first_in_maps[key], maps):
                self.unify([a, b], self.name(call.op))
        return self._first_in_maps[key]

    def in_maps(self, call: Call) -> list:
        return [self.maps[k] for k in call.in_keys]

    def out_size(self, call: Call, i: int = 0) -> int:
        return _last(self.trace.shapes[call.out_keys[i]])

    def in_shape(self, call: Call, i: int = 0) -> tuple:
        return self.trace.shapes[call.in_keys[i]]

    def out_shape(self, call: Call, i: int = 0) -> tuple:
        return self.trace.shapes[call.out_keys[i]]

    def handler(self, op):
        """The handler for ``op`` in this graph (None when unknown)."""
        return self.handler_of.get(id(op)) or self.registry.lookup(op)

    # ----------------------------------------------------------- propagation
    def _propagate(self):
        tr = self.trace
        for k, name in zip(tr.input_keys, tr.input_names):
            self.maps[k] = self.new_map(_last(tr.shapes[k]), name, fixed="model input")
        for call in tr.calls:
            op = call.op
            ins = self.in_maps(call)
            self.call_in_maps[call.index] = ins
            h = self.registry.lookup(op)
            if h is None and self.strict and not self.is_ignored(op):
                raise ValueError(
                    f"Layer {self.name(op)!r} of class {type(op).__name__} has no channel "
                    "handler and strict=True. Register one with handlers={"
                    f"{type(op).__name__}: ...}} (see docs/SHRINK.md, 'Custom layers'), add it "
                    "to ignored_layers, or pass strict=False to keep its channels. "
                    f"Received: layer={self.name(op)!r}"
                )
            if h is None or self.is_ignored(op):
                if h is None and id(op) not in {id(u) for u in self.unknown}:
                    self.unknown.append(op)
                h = _h.KEEP
            self.handler_of[id(op)] = h
            outs = h.propagate(self, call)
            if len(outs) != len(call.out_keys):
                raise ValueError(
                    f"Handler {type(h).__name__} for {self.name(op)!r} returned {len(outs)} "
                    f"output maps for {len(call.out_keys)} outputs."
                )
            for k, m in zip(call.out_keys, outs):
                if self.size(m) != _last(tr.shapes[k]):
                    raise ValueError(
                        f"Channel bookkeeping mismatch after {self.name(op)!r} "
                        f"({type(op).__name__}): {self.size(m)} vs shape {tr.shapes[k]}. "
                        "Add it to ignored_layers or register a handler for it."
                    )
                self.maps[k] = m
            self.call_out_maps[call.index] = outs
        for k in tr.output_keys:
            self.fix(self.maps[k], "model output")
        self._coverage()

    # -------------------------------------------------------------- coverage
    def _coverage(self):
        """For every tensor and group: is the group's content constant once
        the group's unit gammas are zero? Records, per root, the first reader
        that sees live (raw producer) channels."""
        tr = self.trace
        state: dict = {}
        self._uncovered: dict = {}
        self._conditional: set = set()
        for k in tr.input_keys:
            state[k] = {self.find(s): LIVE for s in self.maps[k].sources}
        for call in tr.calls:
            h = self.handler_of[id(call.op)]
            ins = [state[k] for k in call.in_keys]
            custom = h.coverage_states(self, call, ins)
            if custom is not None:
                outs, reads = custom
                for r, v in reads.items():
                    r = self.find(r)
                    if v == LIVE:
                        self._uncovered.setdefault(r, call.op)
                    elif v == COND:
                        self._conditional.add(r)
                for k, st in zip(call.out_keys, outs):
                    state[k] = {self.find(r): v for r, v in st.items()}
                continue
            in_roots = [self._roots(self.maps[k]) for k in call.in_keys]
            kind = h.coverage_kind(self, call)
            outs = []
            for i, k in enumerate(call.out_keys):
                roots = self._roots(self.maps[k])
                st = {}
                for r in roots:
                    if kind == "unit":
                        st[r] = CONST if any(r in x for x in in_roots) else LIVE
                    elif kind in ("pass", "merge", "product"):
                        vals = [x[r] for x in ins if r in x]
                        other = [
                            v
                            for j, x in enumerate(ins)
                            if r not in x and self._is_broadcast(call, j, i)
                            for v in x.values()
                        ]
                        st[r] = _combine(kind, vals, other)
                    else:  # "producer" / "keep": new channels
                        st[r] = LIVE
                outs.append(st)
            if kind in ("producer", "keep"):
                for x in ins:
                    for r, v in x.items():
                        if v == LIVE:
                            self._uncovered.setdefault(r, call.op)
                        elif v == COND:
                            self._conditional.add(r)
            for k, st in zip(call.out_keys, outs):
                state[k] = st
        for k in tr.output_keys:
            for r, v in state[k].items():
                if v == LIVE:
                    self._uncovered.setdefault(r, "model output")

    def _is_broadcast(self, call, j: int, i: int) -> bool:
        """Input ``j`` is broadcast over the channels of output ``i`` (its
        channel axis has size 1 while the output's does not)."""
        return _last(self.trace.shapes[call.in_keys[j]]) == 1 and self.out_size(call, i) > 1

    def _roots(self, m: ChanMap) -> list:
        return [self.find(s) for s in m.sources]

    # ---------------------------------------------------------------- groups
    def _make_groups(self) -> dict:
        out = {}
        for s in self._sources:
            r = self.find(s.id)
            if r in out:
                continue
            src = self._sources[r]
            units = tuple(dict.fromkeys(u for u, _ in src.units))
            why = None
            covered = bool(units) and r not in self._uncovered
            if not units:
                why = "no BatchNormalization with a gamma scales these channels"
            elif r in self._uncovered:
                reader = self._uncovered[r]
                where = reader if isinstance(reader, str) else repr(self.name(reader))
                prods = [self.name(m[0]) for m in src.members if m[1] == "out"]
                why = (
                    f"raw output of a producer ({', '.join(repr(p) for p in prods[:3])}) reaches "
                    f"{where} without passing a BatchNormalization of the group, so zero gammas "
                    "would not make the channels constant"
                )
            seen = set()
            members = []
            for op, role in src.members:
                if (id(op), role) in seen:
                    continue
                seen.add((id(op), role))
                members.append((self.name(op), role))
            producers = tuple(dict.fromkeys(op for op, role in src.members if role == "out"))
            out[r] = Group(
                root=r,
                size=src.size,
                members=tuple(members),
                producers=producers,
                units=units,
                fixed=src.fixed,
                covered=covered,
                conditional=covered and r in self._conditional,
                uncovered_reason=why,
                multiple=src.multiple,
            )
        return out

    @property
    def groups(self) -> dict:
        """``{root: Group}`` for every channel group, in creation order."""
        return self._groups

    def prunable_groups(self, *, need_cover: bool) -> list:
        """Roots of the groups a criterion may prune: not fixed, and covered by
        gammas when ``need_cover`` (gamma-based criteria)."""
        out = []
        for r, g in self._groups.items():
            if not g.prunable:
                continue
            if need_cover and not g.covered:
                continue
            out.append(r)
        return out

    def unit_offsets(self, root: int) -> list:
        """``(unit name, offset)`` of the units reading group ``root``."""
        return list(self._sources[root].units)

    def keep_features(self, m: ChanMap, keep: dict):
        """Kept indices along a tensor's last axis for the group keep-arrays
        ``keep`` (root -> sorted indices; a missing root keeps all). None
        when nothing is removed."""
        sizes = [self._sources[s].size for s in m.sources]
        roots = [self.find(s) for s in m.sources]
        if not any(r in keep for r in roots):
            return None
        per = []
        off = 0
        for r, n in zip(roots, sizes):
            per.append(off + (np.asarray(keep[r], np.int64) if r in keep else np.arange(n)))
            off += n
        one = np.concatenate(per) if per else np.zeros(0, np.int64)
        if m.reps == 1:
            return one.astype(np.int64)
        return (np.arange(m.reps)[:, None] * off + one[None, :]).reshape(-1).astype(np.int64)

    def prunable_units(self, *, need_cover: bool = True) -> list:
        """Units that read at least one prunable group (what the sparsity
        wrapper wraps)."""
        ok = set(self.prunable_groups(need_cover=need_cover))
        return [u for u in self.units.values() if any(self.find(s) in ok for s in u.map.sources)]

    def fingerprint(self) -> str:
        """A hash of the architecture (op classes, call structure, shapes and
        group sizes, not names or weights): a plan made for one model can be
        re-applied to another with the same fingerprint."""
        import hashlib

        h = hashlib.sha256()
        tr = self.trace
        order = {}
        for c in tr.calls:
            order.setdefault(id(c.op), len(order))
            h.update(
                repr(
                    (
                        type(c.op).__name__,
                        order[id(c.op)],
                        tuple(c.in_keys),
                        tuple(tr.shapes[k] for k in c.out_keys),
                    )
                ).encode()
            )
        h.update(repr([(g.size, g.fixed is None) for g in self._groups.values()]).encode())
        return h.hexdigest()[:16]


def _combine(kind, vals, other):
    """Coverage state of one group in an op's output."""
    allv = list(vals) + list(other)
    if not allv:
        return LIVE
    if kind == "product":
        if all(v == CONST for v in allv):
            return CONST
        if any(v in (CONST, COND) for v in vals):
            return COND
        return LIVE
    worst = max(allv, key=lambda v: _RANK[v])
    return worst


def _last(shape) -> int:
    if not shape or shape[-1] is None:
        return 1
    return int(shape[-1])
