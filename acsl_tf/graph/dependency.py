"""Channel dependency analysis of Keras 3 functional models.

A functional model is read into a flat list of *calls* (one per node; nested
functional/Sequential models are inlined, raw ``keras.ops`` are included).
Every tensor's last (channel) axis is described by a :class:`ChanMap`: an
ordered list of *channel sources*, each opened by a producer (Conv, Dense,
model input, ...), optionally repeated ``reps`` times (after ``Flatten``).
Layers that must lose the same channel indices (the inputs of a residual
``Add``, a depthwise conv's input and output, ...) have their sources joined
in a union-find; a *channel group* is one such class (Torch-Pruning's
"group"). A group can be pruned iff it is scaled by at least one
BatchNormalization and touches no model input/output, grouped conv, ignored
or channel-mixing layer (those *fix* it).

Per-layer behaviour lives in :class:`LayerHandler` objects looked up by class
(following the MRO, then the class name); add your own with
:func:`register_layer_handler`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from acsl_tf import _keras

__all__ = [
    "LayerHandler",
    "register_layer_handler",
    "get_layer_handler",
    "supported_layers",
    "trace_model",
    "analyze",
]


# ---------------------------------------------------------------------------
# Tracing
# ---------------------------------------------------------------------------


@dataclass
class Call:
    """One call of an operation inside the (flattened) graph."""

    op: Any
    node: Any
    in_keys: list  # keys of the KerasTensors in ``node.input_tensors``
    out_keys: list  # keys of ``node.outputs``
    index: int  # position in topological order

    @property
    def name(self) -> str:
        return self.op.name


@dataclass
class Trace:
    model: Any
    calls: list
    input_keys: list
    output_keys: list
    shapes: dict  # key -> tuple shape (batch dim first)
    dtypes: dict
    input_names: list


def _functional_of(model):
    if isinstance(model, keras.Sequential):
        fn = getattr(model, "_functional", None)
        if fn is None:
            raise ValueError(
                "The Sequential model is not built. Build it (call it once or give it "
                f"an Input) before pruning. Received: model={model.name!r}"
            )
        return fn
    return model


def _is_graph_model(op) -> bool:
    return _keras.is_functional(op)


def trace_model(model) -> Trace:
    """Read ``model`` into a flat, topologically ordered list of calls.

    Nested functional or Sequential models are inlined (their layers appear
    as calls of the outer graph). Raw ``keras.ops`` applied to symbolic
    tensors are included.

    Args:
        model: A built functional or Sequential ``keras.Model``.

    Returns:
        A :class:`Trace`.

    Raises:
        ValueError: If ``model`` is not a graph (functional) model.
    """
    if not _is_graph_model(model):
        raise ValueError(
            "acsl_tf can only analyse functional or Sequential Keras models "
            "(subclassed models have no graph to read). Received: "
            f"model={type(model).__name__}"
        )
    fn = _functional_of(model)
    counter = [0]
    shapes: dict = {}
    dtypes: dict = {}

    def new_key(kt):
        k = counter[0]
        counter[0] += 1
        shapes[k] = tuple(kt.shape)
        dtypes[k] = getattr(kt, "dtype", "float32")
        return k

    calls: list = []
    input_keys = [new_key(x) for x in fn.inputs]

    def walk(graph, in_keys, stack):
        graph = _functional_of(graph)
        local = {id(x): k for x, k in zip(graph.inputs, in_keys)}
        depth_keys = sorted(graph._nodes_by_depth.keys(), reverse=True)
        for depth in depth_keys:
            for node in graph._nodes_by_depth[depth]:
                if not node.operation or node.is_input:
                    continue
                if any(id(x) not in local for x in node.input_tensors):
                    continue
                op = node.operation
                ins = [local[id(x)] for x in node.input_tensors]
                if _is_graph_model(op):
                    if id(op) in stack:
                        raise ValueError(f"Recursive model nesting. Received: model={op.name!r}")
                    outs = walk(op, ins, stack | {id(op)})
                    for x, k in zip(node.outputs, outs):
                        local[id(x)] = k
                    continue
                outs = [new_key(x) for x in node.outputs]
                for x, k in zip(node.outputs, outs):
                    local[id(x)] = k
                calls.append(Call(op, node, ins, outs, len(calls)))
        return [local[id(x)] for x in graph.outputs]

    output_keys = walk(fn, input_keys, {id(fn)})
    input_names = _keras.input_layer_names(fn)
    return Trace(model, calls, input_keys, output_keys, shapes, dtypes, input_names)


# ---------------------------------------------------------------------------
# Channel sources and maps
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ChanMap:
    """Layout of a tensor's last axis: ``reps`` repetitions of the channels
    of ``sources`` (concatenated in order)."""

    sources: tuple
    reps: int = 1


@dataclass
class Source:
    id: int
    size: int
    producer: str
    parent: int
    fixed: str | None = None  # reason, if fixed
    members: list = field(default_factory=list)  # (layer name, role)
    units: list = field(default_factory=list)  # (bn name, offset, call_index)


class Analysis:
    """Union-find of channel sources built while propagating maps through a
    :class:`Trace`. Handlers talk to it in :meth:`LayerHandler.propagate`."""

    def __init__(self, trace: Trace, ignored=()):
        self.trace = trace
        self.ignored = set(ignored)
        self.sources: list[Source] = []
        self.maps: dict = {}
        self._producer_src: dict = {}
        self._first_in_maps: dict = {}  # layer name -> list of input maps
        self.bn_maps: dict = {}  # bn (unit) name -> ChanMap of its input
        self.bn_layers: dict = {}  # unit name -> (bn layer, wrapper or None)
        self.call_in_maps: dict = {}
        self.call_out_maps: dict = {}

    # union-find ------------------------------------------------------------
    def find(self, s: int) -> int:
        src = self.sources
        while src[s].parent != s:
            src[s].parent = src[src[s].parent].parent
            s = src[s].parent
        return s

    def union(self, a: int, b: int, where: str):
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        A, B = self.sources[ra], self.sources[rb]
        if A.size != B.size:
            raise ValueError(f"Channel count mismatch at {where!r}: {A.size} vs {B.size}.")
        B.parent = ra
        A.fixed = A.fixed or B.fixed
        A.members.extend(B.members)
        A.units.extend(B.units)
        B.members, B.units = [], []

    def new_source(self, size: int, producer: str, *, key=None, fixed: str | None = None) -> int:
        """A new channel source of ``size`` channels. With ``key`` (e.g. a
        layer name), later calls with the same key get the same source
        (shared layers keep one channel set)."""
        if key is not None and key in self._producer_src:
            s = self._producer_src[key]
            if self.sources[s].size != size:
                raise ValueError(f"Shared layer {producer!r} changes channel count.")
            return s
        s = len(self.sources)
        self.sources.append(Source(s, int(size), producer, s, fixed))
        if key is not None:
            self._producer_src[key] = s
        return s

    def new_map(self, size: int, producer: str, *, key=None, fixed=None) -> ChanMap:
        return ChanMap((self.new_source(size, producer, key=key, fixed=fixed),))

    def size(self, m: ChanMap) -> int:
        return m.reps * sum(self.sources[s].size for s in m.sources)

    def fix(self, m: ChanMap, reason: str):
        for s in m.sources:
            r = self.find(s)
            if self.sources[r].fixed is None:
                self.sources[r].fixed = reason

    def unify(self, maps, where: str) -> bool:
        """Require the channels of ``maps`` to be removed together. Returns
        False (and fixes them) when the layouts cannot be aligned."""
        maps = [m for m in maps if m is not None]
        if len(maps) < 2:
            return True
        first = maps[0]
        sizes0 = [self.sources[s].size for s in first.sources]
        ok = True
        for m in maps[1:]:
            sizes = [self.sources[s].size for s in m.sources]
            if m.reps != first.reps or sizes != sizes0:
                ok = False
        if not ok:
            for m in maps:
                self.fix(m, f"misaligned channel layouts at {where!r}")
            return False
        for m in maps[1:]:
            for a, b in zip(first.sources, m.sources):
                self.union(a, b, where)
        return True

    def add_member(self, m: ChanMap, name: str, role: str):
        for s in m.sources:
            self.sources[self.find(s)].members.append((name, role))

    def add_unit(self, unit: str, m: ChanMap, layer, wrapper=None):
        """Register a BatchNormalization (a prunable unit) reading ``m``."""
        if unit in self.bn_maps:
            self.unify([self.bn_maps[unit], m], unit)
            return
        self.bn_maps[unit] = m
        self.bn_layers[unit] = (layer, wrapper)
        if m.reps != 1:
            self.fix(m, f"BatchNormalization {unit!r} on flattened features")
            return
        off = 0
        for s in m.sources:
            self.sources[self.find(s)].units.append((unit, off))
            off += self.sources[s].size

    def shared_inputs(self, call: Call, maps: list) -> list:
        """For a layer with weights called several times: unify the input maps
        of every call with the first call's maps."""
        name = call.op.name
        if name not in self._first_in_maps:
            self._first_in_maps[name] = maps
        else:
            for a, b in zip(self._first_in_maps[name], maps):
                self.unify([a, b], name)
        return self._first_in_maps[name]

    def in_maps(self, call: Call) -> list:
        return [self.maps[k] for k in call.in_keys]

    def out_size(self, call: Call, i: int = 0) -> int:
        shp = self.trace.shapes[call.out_keys[i]]
        return int(shp[-1]) if len(shp) and shp[-1] is not None else 1


# ---------------------------------------------------------------------------
# Handler base class and registry
# ---------------------------------------------------------------------------


class LayerHandler:
    """How one layer (or op) class moves, couples and slices channels.

    Subclasses override:

    - :meth:`propagate` (analysis): return the output :class:`ChanMap`\\ s from
      the input maps (``an.in_maps(call)``), calling ``an.unify`` /
      ``an.fix`` / ``an.new_map`` / ``an.add_unit`` as needed.
    - :meth:`rebuild` (apply): return ``(config, weights)`` of the thin layer
      given kept input feature indices (one array per input, or None when
      unchanged) and kept output indices.
    - :meth:`params` (accounting): parameter count for given input/output
      channel counts, or None when it cannot change.
    """

    #: True when channels flow through unchanged (index i in -> index i out).
    passthrough = False

    def propagate(self, an: Analysis, call: Call) -> list:
        raise NotImplementedError

    def rebuild(self, layer, in_keep: list, out_keep):
        return layer.get_config(), [np.asarray(w) for w in layer.get_weights()]

    def params(self, layer, in_c: list, out_c: int):
        return None


_REGISTRY: dict = {}
_REGISTRY_BY_NAME: dict = {}


def register_layer_handler(layer_class, handler: LayerHandler) -> None:
    """Register how acsl_tf treats a layer (or ``keras.ops`` operation) class.

    Lookup follows subclassing, so registering a base class covers its
    subclasses. A string registers by class name (for classes you cannot
    import).

    Args:
        layer_class: A class, or a class name string.
        handler: A :class:`LayerHandler` instance (e.g. ``PassThrough()`` for
            element-wise layers without weights).

    Example:
        >>> from acsl_tf.graph.dependency import PassThrough, register_layer_handler
        >>> class MyAct(keras.layers.Layer):
        ...     def call(self, x): return x * keras.ops.sigmoid(x)
        >>> register_layer_handler(MyAct, PassThrough())
    """
    if not isinstance(handler, LayerHandler):
        raise ValueError(f"handler must be a LayerHandler instance. Received: handler={handler!r}")
    if isinstance(layer_class, str):
        _REGISTRY_BY_NAME[layer_class] = handler
    elif isinstance(layer_class, type):
        _REGISTRY[layer_class] = handler
    else:
        raise ValueError(
            f"layer_class must be a class or a class name. Received: layer_class={layer_class!r}"
        )


def get_layer_handler(op) -> LayerHandler | None:
    """The handler registered for ``op``'s class (or a base class), or None."""
    for cls in type(op).__mro__:
        if cls in _REGISTRY:
            return _REGISTRY[cls]
        if cls.__name__ in _REGISTRY_BY_NAME:
            return _REGISTRY_BY_NAME[cls.__name__]
    return None


def supported_layers() -> list:
    """Names of the layer / op classes with a registered handler."""
    names = {c.__name__ for c in _REGISTRY} | set(_REGISTRY_BY_NAME)
    return sorted(names)


def _channels_last(layer) -> bool:
    return getattr(layer, "data_format", "channels_last") in ("channels_last", None)


def _check_channels_last(layer):
    if not _channels_last(layer):
        raise ValueError(
            f"Layer {layer.name!r} ({type(layer).__name__}) uses "
            f"data_format={layer.data_format!r}; acsl_tf supports channels_last only. "
            "Add it to ignored_layers to keep its channels."
        )


def _idx(keep, n):
    return np.arange(n) if keep is None else np.asarray(keep, dtype=np.int64)


# ---------------------------------------------------------------------------
# Built-in handlers
# ---------------------------------------------------------------------------


class PassThrough(LayerHandler):
    """Element-wise / spatial layers without channel weights: the output
    channels are the first input's channels."""

    passthrough = True

    def propagate(self, an, call):
        ins = an.in_maps(call)
        m = ins[0]
        if an.size(m) != an.out_size(call) and an.out_size(call) != 1:
            raise ValueError(
                f"Layer {call.name!r} ({type(call.op).__name__}) changes the channel "
                "axis; it cannot be treated as pass-through. Add it to ignored_layers."
            )
        for extra in ins[1:]:
            an.fix(extra, f"extra input of {call.name!r}")
        outs = [m]
        for i in range(1, len(call.out_keys)):
            outs.append(an.new_map(an.out_size(call, i), call.name, fixed="secondary output"))
        return outs


class Barrier(LayerHandler):
    """Layers that mix channels (LayerNormalization over the channel axis,
    Softmax, ...): their input channels are kept, output has the same
    (now fixed) channels."""

    def __init__(self, reason="mixes channels"):
        self.reason = reason

    def propagate(self, an, call):
        ins = an.in_maps(call)
        for m in ins:
            an.fix(m, f"{call.name!r} {self.reason}")
        if len(ins) == 1 and an.size(ins[0]) == an.out_size(call) and len(call.out_keys) == 1:
            return [ins[0]]
        return [
            an.new_map(an.out_size(call, i), call.name, fixed=self.reason)
            for i in range(len(call.out_keys))
        ]


class InputOnly(Barrier):
    """Rescaling / Normalization: allowed on input channels only (which are
    never pruned)."""

    def __init__(self):
        super().__init__("normalises per input channel")


class ElementwiseMerge(LayerHandler):
    """Add/Subtract/Multiply/Average/Maximum/Minimum (layers and raw ops):
    all inputs with the full channel count are coupled; broadcast inputs
    (last dim 1) and Python constants are left alone; a constant array with a
    channel axis fixes the channels."""

    passthrough = True

    def propagate(self, an, call):
        out_c = an.out_size(call)
        ins = an.in_maps(call)
        full = [m for m in ins if an.size(m) == out_c]
        for m in ins:
            if an.size(m) not in (out_c, 1):
                raise ValueError(
                    f"Operation {call.name!r} ({type(call.op).__name__}) broadcasts "
                    "over channels in an unsupported way. Add it to ignored_layers."
                )
        if not full:
            return [an.new_map(out_c, call.name, fixed="broadcast result")]
        # Constant operands (numpy / tensors that are not graph tensors).
        for v in _constant_args(call):
            shp = np.shape(v)
            if len(shp) and shp[-1] != 1:
                an.fix(full[0], f"constant per-channel operand in {call.name!r}")
        an.unify(full, call.name)
        return [full[0]]


def _constant_args(call):
    args = call.node.arguments
    out = []

    def walk(x):
        if isinstance(x, (list, tuple)):
            for v in x:
                walk(v)
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, keras.KerasTensor):
            return
        elif isinstance(x, (np.ndarray,)) or hasattr(x, "shape"):
            out.append(x)

    walk(list(args.args))
    walk(dict(args.kwargs))
    return out


class ConcatenateHandler(LayerHandler):
    def propagate(self, an, call):
        layer = call.op
        ins = an.in_maps(call)
        rank = len(an.trace.shapes[call.out_keys[0]])
        axis = layer.axis if hasattr(layer, "axis") else -1
        if axis in (-1, rank - 1):
            if any(m.reps != 1 for m in ins):
                for m in ins:
                    an.fix(m, f"concatenation of flattened features at {call.name!r}")
                return [an.new_map(an.out_size(call), call.name, fixed="concat of flattened")]
            return [ChanMap(tuple(s for m in ins for s in m.sources))]
        an.unify(ins, call.name)
        return [ins[0]]


class BatchNormHandler(LayerHandler):
    passthrough = True

    def propagate(self, an, call):
        bn = call.op
        (m,) = an.in_maps(call)[:1] or [None]
        m = an.shared_inputs(call, [m])[0]
        rank = len(an.trace.shapes[call.in_keys[0]])
        axis = bn.axis if isinstance(bn.axis, int) else bn.axis[0]
        if axis not in (-1, rank - 1):
            an.fix(m, f"BatchNormalization {bn.name!r} on axis {axis}")
            return [m]
        an.add_member(m, bn.name, "bn")
        an.add_unit(bn.name, m, bn)
        return [m]

    def rebuild(self, layer, in_keep, out_keep):
        keep = in_keep[0]
        ws = [np.asarray(w) for w in layer.get_weights()]
        if keep is None:
            return layer.get_config(), ws
        return layer.get_config(), [w[keep] for w in ws]

    def params(self, layer, in_c, out_c):
        return len(layer.weights) * in_c[0]


class WrappedBNHandler(BatchNormHandler):
    """A ``keras.layers.Wrapper`` around a BatchNormalization (e.g.
    ``acsl_tf.PruneLowCorrelation``): channels pass through as in BN; the
    unit is keyed by the inner BN's name."""

    def propagate(self, an, call):
        w = call.op
        bn = w.layer
        m = an.shared_inputs(call, [an.in_maps(call)[0]])[0]
        an.add_member(m, bn.name, "bn")
        an.add_unit(bn.name, m, bn, wrapper=w)
        return [m]

    def rebuild(self, layer, in_keep, out_keep):
        raise ValueError(
            f"Wrapped layer {layer.name!r} must be stripped (acsl_tf.strip_pruning) before "
            "rebuilding."
        )

    def params(self, layer, in_c, out_c):
        # counted as the plain BN that strip_pruning leaves
        return len(layer.layer.weights) * in_c[0]


class ProducerHandler(LayerHandler):
    """Base for layers whose output channels are a new source (Conv, Dense)."""

    out_key = "filters"

    def _in_fixed(self, layer) -> str | None:
        return None

    def propagate(self, an, call):
        layer = call.op
        _check_channels_last(layer)
        ins = an.shared_inputs(call, an.in_maps(call))
        an.add_member(ins[0], layer.name, "in")
        why = self._in_fixed(layer)
        if why:
            an.fix(ins[0], why)
        m = an.new_map(an.out_size(call), layer.name, key=layer.name, fixed=why)
        an.add_member(m, layer.name, "out")
        return [m]

    def rebuild(self, layer, in_keep, out_keep):
        cfg = layer.get_config()
        ws = [np.asarray(w) for w in layer.get_weights()]
        if out_keep is not None:
            cfg[self.out_key] = len(out_keep)
        return cfg, self.slice(layer, ws, in_keep[0], out_keep)

    def slice(self, layer, ws, ik, ok):
        raise NotImplementedError


class ConvHandler(ProducerHandler):
    def _in_fixed(self, layer):
        if getattr(layer, "groups", 1) != 1:
            return f"grouped convolution {layer.name!r} (groups={layer.groups})"
        return None

    def slice(self, layer, ws, ik, ok):
        k = ws[0]
        if ik is not None:
            k = k[..., ik, :]
        if ok is not None:
            k = k[..., ok]
        out = [k]
        if layer.use_bias:
            out.append(ws[1] if ok is None else ws[1][ok])
        return out

    def params(self, layer, in_c, out_c):
        ks = int(np.prod(layer.kernel_size))
        return ks * (in_c[0] // layer.groups) * out_c + (out_c if layer.use_bias else 0)


class ConvTransposeHandler(ConvHandler):
    def slice(self, layer, ws, ik, ok):
        k = ws[0]  # (..., out, in)
        if ik is not None:
            k = k[..., ik]
        if ok is not None:
            k = k[..., ok, :]
        out = [k]
        if layer.use_bias:
            out.append(ws[1] if ok is None else ws[1][ok])
        return out

    def params(self, layer, in_c, out_c):
        ks = int(np.prod(layer.kernel_size))
        return ks * in_c[0] * out_c + (out_c if layer.use_bias else 0)


class DenseHandler(ProducerHandler):
    out_key = "units"

    def slice(self, layer, ws, ik, ok):
        k = ws[0]
        if ik is not None:
            k = k[ik]
        if ok is not None:
            k = k[:, ok]
        out = [k]
        if layer.use_bias:
            out.append(ws[1] if ok is None else ws[1][ok])
        return out

    def params(self, layer, in_c, out_c):
        return in_c[0] * out_c + (out_c if layer.use_bias else 0)


class SeparableConvHandler(ProducerHandler):
    def slice(self, layer, ws, ik, ok):
        dw, pw = ws[0], ws[1]
        m = dw.shape[-1]
        if ik is not None:
            dw = dw[..., ik, :]
            rows = (np.asarray(ik)[:, None] * m + np.arange(m)[None, :]).reshape(-1)
            pw = pw[..., rows, :]
        if ok is not None:
            pw = pw[..., ok]
        out = [dw, pw]
        if layer.use_bias:
            out.append(ws[2] if ok is None else ws[2][ok])
        return out

    def params(self, layer, in_c, out_c):
        ks = int(np.prod(layer.kernel_size))
        m = layer.depth_multiplier
        return ks * in_c[0] * m + in_c[0] * m * out_c + (out_c if layer.use_bias else 0)


class DepthwiseHandler(LayerHandler):
    """Couples input and output channels (depth_multiplier=1). With
    depth_multiplier>1 the channels are kept (fixed)."""

    passthrough = True

    def propagate(self, an, call):
        layer = call.op
        _check_channels_last(layer)
        m = an.shared_inputs(call, an.in_maps(call))[0]
        an.add_member(m, layer.name, "depthwise")
        if layer.depth_multiplier != 1:
            an.fix(m, f"DepthwiseConv {layer.name!r} has depth_multiplier={layer.depth_multiplier}")
            return [
                an.new_map(an.out_size(call), layer.name, key=layer.name, fixed="depth_multiplier")
            ]
        return [m]

    def rebuild(self, layer, in_keep, out_keep):
        ws = [np.asarray(w) for w in layer.get_weights()]
        ik = in_keep[0]
        if ik is None:
            return layer.get_config(), ws
        out = [ws[0][..., ik, :]]
        if layer.use_bias:
            out.append(ws[1][ik])
        return layer.get_config(), out

    def params(self, layer, in_c, out_c):
        ks = int(np.prod(layer.kernel_size))
        m = layer.depth_multiplier
        return ks * in_c[0] * m + (in_c[0] * m if layer.use_bias else 0)


class PerChannelWeights(PassThrough):
    """Pass-through layers whose weights have a per-channel last axis
    (PReLU alpha, ConvNeXt LayerScale): weights whose last dim equals the
    channel count are sliced."""

    def propagate(self, an, call):
        ins = an.shared_inputs(call, an.in_maps(call))
        an.add_member(ins[0], call.name, "per-channel")
        return super().propagate(an, call)

    def rebuild(self, layer, in_keep, out_keep):
        ws = [np.asarray(w) for w in layer.get_weights()]
        ik = in_keep[0]
        if ik is None:
            return layer.get_config(), ws
        c = _input_channels(layer)
        out = []
        for w in ws:
            if w.ndim and (c is None or w.shape[-1] == c) and w.shape[-1] > 1:
                out.append(w[..., ik])
            else:
                out.append(w)
        return layer.get_config(), out

    def params(self, layer, in_c, out_c):
        total = 0
        c_old = _input_channels(layer)
        for w in layer.weights:
            shp = list(w.shape)
            if shp and shp[-1] == c_old and shp[-1] > 1:
                shp[-1] = in_c[0]
            total += int(np.prod(shp)) if shp else 1
        return total


def _input_channels(layer):
    try:
        return layer.input.shape[-1]
    except (AttributeError, ValueError):  # shared layer: several inputs
        return _keras.first_call_input_channels(layer)


class FlattenHandler(LayerHandler):
    def propagate(self, an, call):
        (m,) = an.in_maps(call)
        shp = an.trace.shapes[call.in_keys[0]]
        if len(shp) <= 2:
            return [m]
        spatial = shp[1:-1]
        if any(d is None for d in spatial):
            an.fix(m, f"Flatten {call.name!r} of unknown spatial size")
            return [an.new_map(an.out_size(call), call.name, fixed="flatten")]
        return [ChanMap(m.sources, m.reps * int(np.prod(spatial)))]


class ReshapeHandler(LayerHandler):
    """Allowed only when the channel (last) axis is untouched."""

    def propagate(self, an, call):
        (m,) = an.in_maps(call)
        c_in = an.trace.shapes[call.in_keys[0]][-1]
        c_out = an.trace.shapes[call.out_keys[0]][-1]
        if m.reps != 1 or c_in != c_out:
            if call.name in an.ignored:
                an.fix(m, f"ignored {call.name!r}")
                return [an.new_map(an.out_size(call), call.name, fixed="ignored")]
            an.fix(m, f"Reshape {call.name!r} moves the channel axis")
            return [an.new_map(an.out_size(call), call.name, fixed="reshape")]
        return [m]

    def rebuild(self, layer, in_keep, out_keep):
        cfg = layer.get_config()
        if in_keep[0] is not None:
            ts = list(cfg["target_shape"])
            ts[-1] = len(in_keep[0])
            cfg["target_shape"] = tuple(ts)
        return cfg, []


# registrations --------------------------------------------------------------
L = keras.layers
for _cls in (L.Conv1D, L.Conv2D, L.Conv3D):
    register_layer_handler(_cls, ConvHandler())
for _cls in (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose):
    register_layer_handler(_cls, ConvTransposeHandler())
register_layer_handler(L.Dense, DenseHandler())
for _cls in (L.SeparableConv1D, L.SeparableConv2D):
    register_layer_handler(_cls, SeparableConvHandler())
for _cls in (L.DepthwiseConv1D, L.DepthwiseConv2D):
    register_layer_handler(_cls, DepthwiseHandler())
register_layer_handler(L.BatchNormalization, BatchNormHandler())
register_layer_handler(L.PReLU, PerChannelWeights())
register_layer_handler("LayerScale", PerChannelWeights())
for _cls in (
    L.Activation, L.ReLU, L.LeakyReLU, L.ELU, L.Dropout, L.SpatialDropout1D,
    L.SpatialDropout2D, L.SpatialDropout3D, L.GaussianNoise, L.GaussianDropout,
    L.AlphaDropout, L.ActivityRegularization, L.Identity,
    L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D, L.AveragePooling1D,
    L.AveragePooling2D, L.AveragePooling3D, L.GlobalAveragePooling1D,
    L.GlobalAveragePooling2D, L.GlobalAveragePooling3D, L.GlobalMaxPooling1D,
    L.GlobalMaxPooling2D, L.GlobalMaxPooling3D, L.UpSampling1D, L.UpSampling2D,
    L.UpSampling3D, L.ZeroPadding1D, L.ZeroPadding2D, L.ZeroPadding3D,
    L.Cropping1D, L.Cropping2D, L.Cropping3D,
):  # fmt: skip
    register_layer_handler(_cls, PassThrough())
register_layer_handler("StochasticDepth", PassThrough())
for _cls in (L.Add, L.Subtract, L.Multiply, L.Average, L.Maximum, L.Minimum):
    register_layer_handler(_cls, ElementwiseMerge())
register_layer_handler(L.Concatenate, ConcatenateHandler())
# keras.applications.InceptionResNetV2: inputs[0] + inputs[1] * scale
register_layer_handler("CustomScaleLayer", ElementwiseMerge())
register_layer_handler(L.Flatten, FlattenHandler())
register_layer_handler(L.Reshape, ReshapeHandler())
register_layer_handler(L.Rescaling, InputOnly())
register_layer_handler(L.Normalization, InputOnly())
for _cls in (L.LayerNormalization, L.GroupNormalization, L.UnitNormalization, L.Softmax):
    register_layer_handler(_cls, Barrier())


class _ActivationHandler(PassThrough):
    """Activation layers: softmax-like activations mix channels."""

    def propagate(self, an, call):
        act = getattr(call.op, "activation", None)
        name = getattr(act, "__name__", str(act))
        if name in ("softmax", "log_softmax"):
            return Barrier().propagate(an, call)
        return super().propagate(an, call)


register_layer_handler(L.Activation, _ActivationHandler())


class _Reduction(PassThrough):
    """Raw mean/max/min/sum: pass-through when the channel axis is kept
    (e.g. spatial mean = global pooling), channel-mixing otherwise."""

    def propagate(self, an, call):
        axis = getattr(call.op, "axis", None)
        rank = len(an.trace.shapes[call.in_keys[0]])
        axes = [axis] if isinstance(axis, int) else axis
        if axes is None or any(a % rank == rank - 1 for a in axes):
            return Barrier("reduces over channels").propagate(an, call)
        return super().propagate(an, call)


# Raw keras.ops (they show up in model.operations, not model.layers).
_nn, _np_ops = _keras.raw_op_modules()
if _nn is not None:
    for _n in (
        "Relu", "Relu6", "Sigmoid", "HardSigmoid", "HardSilu", "Silu", "Gelu", "Elu",
        "Selu", "Celu", "Softplus", "Softsign", "LeakyRelu", "LogSigmoid", "HardTanh",
        "Glu",
    ):  # fmt: skip
        if _n != "Glu" and hasattr(_nn, _n):
            register_layer_handler(getattr(_nn, _n), PassThrough())
    for _n in (
        "Tanh", "Abs", "Absolute", "Negative", "Exp", "Sqrt", "Square", "Clip", "Sign",
        "Round", "Floor", "Ceil", "Sin", "Cos", "Log", "Reciprocal", "Cast",
    ):  # fmt: skip
        if hasattr(_np_ops, _n):
            register_layer_handler(getattr(_np_ops, _n), PassThrough())
    for _n in (
        "Add",
        "Subtract",
        "Multiply",
        "Divide",
        "TrueDivide",
        "Maximum",
        "Minimum",
        "Power",
    ):
        if hasattr(_np_ops, _n):
            register_layer_handler(getattr(_np_ops, _n), ElementwiseMerge())
    if hasattr(_nn, "Softmax"):
        register_layer_handler(_nn.Softmax, Barrier())
    if hasattr(_np_ops, "Concatenate"):
        register_layer_handler(_np_ops.Concatenate, ConcatenateHandler())
    for _n in ("Mean", "Max", "Min", "Sum"):
        if hasattr(_np_ops, _n):
            register_layer_handler(getattr(_np_ops, _n), _Reduction())


# ---------------------------------------------------------------------------
# Analysis driver
# ---------------------------------------------------------------------------


def _is_wrapped_bn(op) -> bool:
    return isinstance(op, keras.layers.Wrapper) and isinstance(
        getattr(op, "layer", None), keras.layers.BatchNormalization
    )


_WRAPPED = WrappedBNHandler()


def handler_for(op, ignored=()) -> LayerHandler | None:
    if _is_wrapped_bn(op):
        return _WRAPPED
    return get_layer_handler(op)


def analyze(trace: Trace, ignored_layers=()) -> Analysis:
    """Propagate channel maps through ``trace`` and build channel groups.

    Args:
        trace: A :class:`Trace` from :func:`trace_model`.
        ignored_layers: Layer names whose channels are kept; unsupported layers
            listed here fix their neighbours' channels instead of raising.

    Returns:
        An :class:`Analysis`.

    Raises:
        ValueError: For an unsupported layer on a channel path (names it, its
            class and the supported classes).
    """
    an = Analysis(trace, ignored_layers)
    for k, name in zip(trace.input_keys, trace.input_names):
        an.maps[k] = an.new_map(_last(trace.shapes[k]), name, fixed="model input")
    for call in trace.calls:
        op = call.op
        ins = an.in_maps(call)
        an.call_in_maps[call.index] = ins
        h = handler_for(op)
        ignored = op.name in an.ignored
        if h is None and not ignored:
            raise ValueError(
                f"Layer {op.name!r} of class {type(op).__name__} is not supported by the "
                "channel dependency analysis. Add it to ignored_layers=[...] to keep the "
                "channels around it, or register a handler with "
                "acsl_tf.register_layer_handler(). Supported: "
                f"{', '.join(supported_layers())}. Received: layer={op.name!r}"
            )
        if h is None or ignored:
            for m in ins:
                an.fix(m, f"ignored layer {op.name!r}")
            outs = [
                an.new_map(_last(trace.shapes[k]), op.name, key=(op.name, i), fixed="ignored")
                for i, k in enumerate(call.out_keys)
            ]
        else:
            outs = h.propagate(an, call)
        if len(outs) != len(call.out_keys):
            raise ValueError(f"Handler for {op.name!r} returned {len(outs)} outputs.")
        for k, m in zip(call.out_keys, outs):
            if an.size(m) != _last(trace.shapes[k]):
                raise ValueError(
                    f"Channel bookkeeping mismatch after {op.name!r} "
                    f"({type(op).__name__}): {an.size(m)} vs shape {trace.shapes[k]}. "
                    "Add it to ignored_layers."
                )
            an.maps[k] = m
        an.call_out_maps[call.index] = outs
    for k in trace.output_keys:
        an.fix(an.maps[k], "model output")
    return an


def _last(shape) -> int:
    if not shape or shape[-1] is None:
        return 1
    return int(shape[-1])


def groups(an: Analysis) -> dict:
    """Root source id -> Source, for every group."""
    out = {}
    for s in an.sources:
        r = an.find(s.id)
        out.setdefault(r, an.sources[r])
    return out


def keep_features(an: Analysis, m: ChanMap, keep: dict):
    """Kept indices along a tensor's last axis for the group keep-arrays
    ``keep`` (root -> sorted indices; a missing root keeps all). Returns None
    when nothing is removed."""
    sizes = [an.sources[s].size for s in m.sources]
    roots = [an.find(s) for s in m.sources]
    if not any(r in keep for r in roots):
        return None
    per = []
    off = 0
    for r, n in zip(roots, sizes):
        per.append(off + (np.asarray(keep[r]) if r in keep else np.arange(n)))
        off += n
    one = np.concatenate(per) if per else np.zeros(0, np.int64)
    if m.reps == 1:
        return one.astype(np.int64)
    return (np.arange(m.reps)[:, None] * off + one[None, :]).reshape(-1).astype(np.int64)
