"""Composite layers: one ``call`` that runs several convolutions,
BatchNormalizations, activations and merges (keras-hub's MobileNet blocks).

A :class:`CompositeHandler` describes such a layer as a short *program* of
steps over named channel sets: ``"in"`` (the layer's input channels),
``"out"`` (its output channels; the same set as ``"in"`` for a residual
block) and *inner* sets that no tensor of the model carries (the expanded
channels of an inverted residual block, the bottleneck of a
squeeze-and-excitation gate). From the program the handler derives what a
handler of a plain layer says:

- the channel groups (inner sets become groups of their own through
  :meth:`~acsl_tf.graph.DependencyGraph.inner_map`) and the
  BatchNormalizations inside that scale them (units, so that ``gamma``
  criteria and sparsity statistics see them);
- coverage: a group stays constant where a BatchNormalization inside zeroes
  it, and behind a squeeze-and-excitation product it is conditional;
- the thin layer (config and sliced weights), its parameters and FLOPs (the
  sum of what the default handlers of its sublayers count).

An inner set is pruned only where a BatchNormalization inside scales it:
the exactness check runs the composite layer as a whole, so it cannot
silence channels inside it any other way; inner sets without one (a
squeeze-and-excitation bottleneck) keep their channels.

The keras-hub classes are registered by qualified name
(``keras_hub.src.models.mobilenet.mobilenet_backbone.InvertedResidualBlock``,
...), so they apply when keras-hub is installed and nothing imports it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from acsl_tf.graph.handlers.base import (
    COND,
    CONST,
    LIVE,
    KeepChannels,
    LayerHandler,
    _channels_last,
    is_elementwise_activation,
)

__all__ = [
    "Step",
    "CompositeHandler",
    "ConvBnActBlockHandler",
    "DepthwiseConvBlockHandler",
    "InvertedResidualBlockHandler",
    "SqueezeAndExciteHandler",
    "KERAS_HUB_MOBILENET",
    "adjust_channels",
]

#: Module of keras-hub's MobileNet (V1-V3) blocks.
KERAS_HUB_MOBILENET = "keras_hub.src.models.mobilenet.mobilenet_backbone"

_RANK = {CONST: 0, COND: 1, LIVE: 2}

SE_FIXED = (
    "squeeze-and-excitation bottleneck inside {name!r}: no BatchNormalization scales it, and "
    "the exactness check runs the block as a whole, so its channels cannot be silenced"
)


def adjust_channels(x, divisor: int = 8, min_value=None) -> int:
    """keras-hub's MobileNet rounding of channel counts (a copy of
    ``keras_hub.src.models.mobilenet.util.adjust_channels``)."""
    if min_value is None:
        min_value = divisor
    new_x = max(min_value, int(x + divisor / 2) // divisor * divisor)
    if new_x < 0.9 * x:
        new_x += divisor
    return new_x


@dataclass(frozen=True)
class Step:
    """One step of a composite layer's program.

    Attributes:
        kind: ``"conv"`` (a Conv with ``groups=1``: reads ``src``, opens
            ``dst``), ``"dw"`` (a depthwise conv, written as a Conv with
            ``groups == filters``: per channel of ``src``), ``"bn"``
            (BatchNormalization of ``src``), ``"act"`` (an element-wise
            activation layer), ``"pad"`` (spatial padding), ``"se"`` (a
            squeeze-and-excitation layer gating ``src`` through the inner
            set ``dst``) or ``"add"`` (the residual: the input added to
            ``src``).
        attr: Attribute of the composite layer holding the sublayer (None
            for ``"add"``; ``""`` for the layer itself).
        src: Channel set read (and, for per-channel steps, written).
        dst: Channel set opened (``"conv"``) or the bottleneck (``"se"``).
    """

    kind: str
    attr: str | None
    src: str = "in"
    dst: str | None = None


def _get(layer, attr):
    return layer if attr == "" else getattr(layer, attr)


def _worst(*states):
    return max(states, key=lambda v: _RANK[v])


def _default_handler(sub):
    from acsl_tf.graph.handlers.registry import default_registry

    return default_registry().lookup(sub)


class CompositeHandler(LayerHandler):
    """Base class of the handlers of composite layers (see the module
    docstring). Subclasses give the program, the inner sets and how the
    layer's config encodes the widths.

    Attributes:
        inner: Names of the inner channel sets, in the order their maps are
            declared (the order of their entries in ``rebuild``'s
            ``in_keep`` and ``params``' ``in_c`` after the input's).
        multiples: ``{set: n}``: the layer rounds that set's width to
            multiples of ``n``.
    """

    inner: tuple = ()
    multiples: dict = {}

    # ------------------------------------------------------------ subclass API
    def steps(self, layer) -> list:
        """The program of ``layer`` (a list of :class:`Step`)."""
        raise NotImplementedError

    def residual(self, layer) -> bool:
        """The output carries the input's channels (``"out"`` is ``"in"``)."""
        return False

    def inner_fixed(self, layer, name: str) -> str | None:
        """Why inner set ``name`` keeps its channels (None: prunable where a
        BatchNormalization inside scales it)."""
        return None

    def config(self, layer, cfg: dict, widths: dict) -> dict:
        """``cfg`` (the layer's config) for the new ``widths`` per set."""
        raise NotImplementedError

    # ------------------------------------------------------------ helpers
    def _set_of(self, name, layer):
        return "in" if name == "out" and self.residual(layer) else name

    def _sets(self, layer):
        return ["in", *self.inner] + ([] if self.residual(layer) else ["out"])

    def _active_inner(self, layer):
        """Inner sets the program of this instance uses."""
        used = {s.src for s in self.steps(layer)} | {s.dst for s in self.steps(layer)}
        return [n for n in self.inner if n in used]

    def _supported(self, layer) -> str | None:
        for st in self.steps(layer):
            if st.kind in ("conv", "dw", "bn", "se", "act", "pad"):
                subs = [_get(layer, st.attr)]
                if st.kind == "se":
                    subs = [subs[0].conv_reduce, subs[0].conv_expand]
                for sub in subs:
                    if not _channels_last(sub):
                        return f"uses data_format={sub.data_format!r} (channels_last only)"
            if st.kind == "bn":
                bn = _get(layer, st.attr)
                axis = bn.axis if isinstance(bn.axis, int) else bn.axis[0]
                if axis not in (-1, 3):
                    return f"normalises axis {axis} (channels_last only)"
        return None

    def widths(self, layer) -> dict:
        """Channels of every set in the built layer."""
        w = {}
        for st in self.steps(layer):
            if st.kind == "conv":
                k = _get(layer, st.attr).kernel
                w.setdefault(self._set_of(st.src, layer), int(k.shape[-2]))
                w.setdefault(self._set_of(st.dst, layer), int(k.shape[-1]))
            elif st.kind == "dw":
                w.setdefault(
                    self._set_of(st.src, layer), int(_get(layer, st.attr).kernel.shape[-1])
                )
            elif st.kind == "bn":
                bn = _get(layer, st.attr)
                w.setdefault(self._set_of(st.src, layer), int(bn.moving_mean.shape[0]))
            elif st.kind == "se":
                se = _get(layer, st.attr)
                w.setdefault(self._set_of(st.src, layer), int(se.conv_reduce.kernel.shape[-2]))
                w.setdefault(st.dst, int(se.conv_reduce.kernel.shape[-1]))
        if self.residual(layer):
            w["out"] = w["in"]
        return w

    def _call_widths(self, layer, in_c, out_c):
        """Widths per set from ``params``' / ``cost``'s counts (inner counts
        follow the input's; missing ones are the built layer's)."""
        w = dict(self.widths(layer))
        if in_c:
            w["in"] = int(in_c[0])
        for name, c in zip(self._active_inner(layer), list(in_c)[1:]):
            w[name] = int(c)
        if out_c is not None:
            w["out"] = int(out_c)
        if self.residual(layer):
            w["out"] = w["in"]
        return w

    # ------------------------------------------------------------ analysis
    def propagate(self, g, call):
        layer = call.op
        why = self._supported(layer)
        if why:
            return KeepChannels(why).propagate(g, call)
        w = self.widths(layer)
        m_in = g.shared_inputs(call, g.in_maps(call))[0]
        maps = {"in": m_in}
        for i, name in enumerate(self._active_inner(layer)):
            maps[name] = g.inner_map(call, w[name], index=i, fixed=self.inner_fixed(layer, name))
            if name in self.multiples:
                g.require_multiple(maps[name], self.multiples[name])
        if self.residual(layer):
            maps["out"] = m_in
        else:
            maps["out"] = g.new_map(g.out_size(call), layer, key=(id(layer), "out", 0))
            g.add_member(maps["out"], layer, "out")
        scaled = set()
        for st in self.steps(layer):
            m = maps[st.src]
            sub = _get(layer, st.attr) if st.attr is not None else None
            if st.kind == "conv":
                g.add_member(m, sub, "in")
                g.add_member(maps[st.dst], sub, "out")
            elif st.kind == "dw":
                g.add_member(m, sub, "depthwise")
            elif st.kind == "bn":
                g.add_member(m, sub, "bn")
                if sub.scale:
                    g.add_unit(call, m, sub)
                    scaled.add(st.src)
            elif st.kind == "act":
                if not is_elementwise_activation(getattr(sub, "activation", None)):
                    g.fix(
                        m, f"{g.name(layer)!r} applies an activation not known to act per channel"
                    )
            elif st.kind == "se":
                g.add_member(m, sub.conv_reduce, "in")
                g.add_member(maps[st.dst], sub.conv_reduce, "out")
                g.add_member(maps[st.dst], sub.conv_expand, "in")
                g.add_member(m, sub.conv_expand, "out")
                for act in (sub.activation1, sub.gate):
                    if not is_elementwise_activation(getattr(act, "activation", None)):
                        g.fix(maps[st.dst], f"{g.name(layer)!r}: squeeze activation")
        for name in self._active_inner(layer):
            if name not in scaled:
                g.fix(
                    maps[name],
                    f"channels inside {g.name(layer)!r} that no BatchNormalization scales: the "
                    "exactness check runs the layer as a whole and cannot silence them",
                )
        return [maps["out"]]

    def coverage_kind(self, g, call):
        return "producer"

    def coverage_states(self, g, call, ins):
        layer = call.op
        if self._supported(layer):
            return None
        maps = self._maps(g, call)
        roots = {k: [g.find(s) for s in m.sources] for k, m in maps.items()}
        entry = {r: ins[0].get(r, LIVE) for r in roots["in"]}
        state = {"in": dict(entry)}
        for name in self._active_inner(layer):
            state[name] = {r: LIVE for r in roots[name]}
        reads: dict = {}

        def read(name):
            for r, v in state[name].items():
                reads[r] = _worst(reads.get(r, CONST), v)

        units = {id(b) for b in self._bns(layer) if g.unit_of(b) is not None}
        for st in self.steps(layer):
            src = self._set_of(st.src, layer)
            if st.kind == "conv":
                read(src)
                dst = self._set_of(st.dst, layer)
                state[dst] = {r: LIVE for r in roots[dst]}
            elif st.kind == "bn" and id(_get(layer, st.attr)) in units:
                state[src] = {r: CONST for r in roots[src]}
            elif st.kind == "se":
                read(src)  # conv_reduce reads the channels; the gate is live
                state[src] = {r: (LIVE if v == LIVE else COND) for r, v in state[src].items()}
            elif st.kind == "add":
                state[src] = {r: _worst(entry.get(r, LIVE), v) for r, v in state[src].items()}
        out = self._set_of("out", layer)
        for name in self._active_inner(layer):
            read(name)
        return [dict(state[out])], reads

    def _bns(self, layer):
        return [_get(layer, s.attr) for s in self.steps(layer) if s.kind == "bn"]

    def _maps(self, g, call):
        layer = call.op
        all_in = g.call_in_maps[call.index]
        maps = {"in": all_in[0]}
        for name, m in zip(self._active_inner(layer), all_in[1:]):
            maps[name] = m
        maps["out"] = g.call_out_maps[call.index][0] if call.index in g.call_out_maps else None
        if maps["out"] is None or self.residual(layer):
            maps["out"] = all_in[0]
        return maps

    # ------------------------------------------------------------ rebuild
    def rebuild(self, layer, in_keep, out_keep):
        if self._supported(layer):
            return layer.get_config(), [np.asarray(w) for w in layer.get_weights()]
        keep = {"in": in_keep[0]}
        for name, k in zip(self._active_inner(layer), list(in_keep)[1:]):
            keep[name] = k
        keep["out"] = keep["in"] if self.residual(layer) else out_keep
        old = self.widths(layer)
        widths = {n: (old[n] if keep.get(n) is None else len(keep[n])) for n in old}
        new: dict = {}

        def put(var, value):
            new[id(var)] = value

        def sl(arr, axis, k):
            return arr if k is None else np.take(arr, k, axis=axis)

        for st in self.steps(layer):
            if st.kind == "add" or st.kind in ("act", "pad"):
                continue
            sub = _get(layer, st.attr)
            src = keep[self._set_of(st.src, layer)]
            if st.kind == "conv":
                dst = keep[self._set_of(st.dst, layer)]
                put(sub.kernel, sl(sl(np.asarray(sub.kernel), -2, src), -1, dst))
                if sub.use_bias:
                    put(sub.bias, sl(np.asarray(sub.bias), 0, dst))
            elif st.kind == "dw":
                put(sub.kernel, sl(np.asarray(sub.kernel), -1, src))
                if sub.use_bias:
                    put(sub.bias, sl(np.asarray(sub.bias), 0, src))
            elif st.kind == "bn":
                for v in sub.weights:
                    put(v, sl(np.asarray(v), 0, src))
            elif st.kind == "se":
                red, exp = sub.conv_reduce, sub.conv_expand
                put(red.kernel, sl(np.asarray(red.kernel), -2, src))
                put(exp.kernel, sl(np.asarray(exp.kernel), -1, src))
                if exp.use_bias:
                    put(exp.bias, sl(np.asarray(exp.bias), 0, src))
        ws = [new.get(id(v), np.asarray(v)) for v in layer.weights]
        return self.config(layer, dict(layer.get_config()), widths), ws

    # ------------------------------------------------------------ counting
    def params(self, layer, in_c, out_c):
        if self._supported(layer):
            return super().params(layer, in_c, out_c)
        w = self._call_widths(layer, in_c, out_c)
        total = 0
        for st in self.steps(layer):
            if st.kind == "add":
                continue
            sub = _get(layer, st.attr)
            src = w[self._set_of(st.src, layer)]
            if st.kind == "conv":
                dst = w[self._set_of(st.dst, layer)]
                total += _default_handler(sub).params(sub, [src], dst)
            elif st.kind in ("dw", "bn"):
                total += _default_handler(sub).params(sub, [src], src)
            elif st.kind == "se":
                b = w[st.dst]
                for conv, a, c in ((sub.conv_reduce, src, b), (sub.conv_expand, b, src)):
                    total += _default_handler(conv).params(conv, [a], c)
            else:
                total += _default_handler(sub).params(sub, [src], src)
        return int(total)

    def cost(self, op, ins, outs):
        from acsl_tf.graph.handlers.base import PassThrough
        from acsl_tf.graph.handlers.merge import ElementwiseMerge

        layer = op
        if self._supported(layer):
            return 0, 0
        shape = tuple(ins[0])
        inner = [s[-1] for s in ins[1:]]
        w = self._call_widths(layer, [shape[-1], *inner], outs[0][-1] if outs else None)
        macs = flops = 0

        def add(h, sub, i, o):
            nonlocal macs, flops
            m, f = h.cost(sub, [i], [o])
            macs, flops = macs + m, flops + f

        x = shape
        for st in self.steps(layer):
            src = self._set_of(st.src, layer)
            if st.kind == "add":
                m, f = ElementwiseMerge().cost(None, [x, shape], [x])
                macs, flops = macs + m, flops + f
                continue
            sub = _get(layer, st.attr)
            if st.kind == "conv":
                y = tuple(sub.compute_output_shape(x))[:-1] + (w[self._set_of(st.dst, layer)],)
            elif st.kind in ("dw", "pad"):
                y = tuple(sub.compute_output_shape(x))[:-1] + (w[src],)
            elif st.kind == "se":
                c, b = w[src], w[st.dst]
                pooled = (x[0], 1, 1, c)
                squeezed = (x[0], 1, 1, b)
                add(PassThrough("out"), None, x, pooled)  # the spatial mean
                add(_default_handler(sub.conv_reduce), sub.conv_reduce, pooled, squeezed)
                add(_default_handler(sub.activation1), sub.activation1, squeezed, squeezed)
                add(_default_handler(sub.conv_expand), sub.conv_expand, squeezed, pooled)
                add(_default_handler(sub.gate), sub.gate, pooled, pooled)
                m, f = ElementwiseMerge(product=True).cost(None, [x, pooled], [x])
                macs, flops = macs + m, flops + f
                continue
            else:
                y = x[:-1] + (w[src],)
            add(_default_handler(sub), sub, x, y)
            x = y
        return int(macs), int(flops)


# ---------------------------------------------------------------------------
# keras-hub MobileNet (V1-V3) blocks
# ---------------------------------------------------------------------------


def _se_ratio(b: int, c: int) -> float:
    """A squeeze-and-excitation ratio for which keras-hub's
    ``adjust_channels(c * ratio)`` gives back the bottleneck ``b``."""
    ratio = b / c
    if adjust_channels(c * ratio) != b:  # pragma: no cover - b is a multiple of 8
        raise ValueError(
            f"no squeeze-and-excitation ratio keeps {b} bottleneck channels with {c} channels"
        )
    return ratio


class ConvBnActBlockHandler(CompositeHandler):
    """keras-hub ``ConvBnActBlock``: 1x1 Conv -> BatchNormalization ->
    activation. Opens its output channels like a Conv; the BatchNormalization
    is their unit."""

    def steps(self, layer):
        return [
            Step("conv", "conv", "in", "out"),
            Step("bn", "batch_normalization", "out"),
            Step("act", "activation_layer", "out"),
        ]

    def config(self, layer, cfg, widths):
        cfg["filter"] = widths["out"]
        return cfg


class DepthwiseConvBlockHandler(CompositeHandler):
    """keras-hub ``DepthwiseConvBlock``: padding -> depthwise conv ->
    BatchNormalization -> ReLU -> optional squeeze-and-excitation -> 1x1 Conv
    -> BatchNormalization (-> + input when ``residual``).

    The depthwise part keeps the input's channels (they are pruned with the
    group that produces them; its first BatchNormalization is a unit of that
    group); the 1x1 Conv opens the output channels. The squeeze-and-excitation
    bottleneck keeps its channels.
    """

    inner = ("se",)

    def residual(self, layer):
        return bool(layer.residual)

    def steps(self, layer):
        out = [
            Step("pad", "pad", "in"),
            Step("dw", "conv1", "in"),
            Step("bn", "batch_normalization1", "in"),
            Step("act", "activation1", "in"),
        ]
        if layer.squeeze_excite_ratio:
            out.append(Step("se", "se_layer", "in", "se"))
        out += [Step("conv", "conv2", "in", "out"), Step("bn", "batch_normalization2", "out")]
        if layer.residual:
            out.append(Step("add", None, "out"))
        return out

    def inner_fixed(self, layer, name):
        return SE_FIXED.format(name=layer.name)

    def config(self, layer, cfg, widths):
        cfg["infilters"] = widths["in"]
        cfg["filters"] = widths["out"]
        if layer.squeeze_excite_ratio and widths["in"] != int(layer.conv1.filters):
            cfg["squeeze_excite_ratio"] = _se_ratio(widths["se"], widths["in"])
        return cfg


class InvertedResidualBlockHandler(CompositeHandler):
    """keras-hub ``InvertedResidualBlock``: 1x1 Conv -> BatchNormalization ->
    activation -> padding -> depthwise conv -> BatchNormalization ->
    activation -> optional squeeze-and-excitation -> 1x1 Conv ->
    BatchNormalization (-> + input when ``stride == 1`` and ``infilters ==
    filters``).

    The expanded channels (inner set ``"hidden"``) are a group of their own
    with both inner BatchNormalizations as units; keras-hub rounds their
    count to a multiple of 8 (``adjust_channels``), so plans keep multiples
    of 8. The output channels are coupled with the input's in a residual
    block and opened by the last Conv otherwise. The squeeze-and-excitation
    bottleneck keeps its channels.
    """

    inner = ("hidden", "se")
    multiples = {"hidden": 8}

    def residual(self, layer):
        return layer.stride == 1 and layer.infilters == layer.filters

    def steps(self, layer):
        out = [
            Step("conv", "conv1", "in", "hidden"),
            Step("bn", "batch_normalization1", "hidden"),
            Step("act", "activation1", "hidden"),
            Step("pad", "pad", "hidden"),
            Step("dw", "conv2", "hidden"),
            Step("bn", "batch_normalization2", "hidden"),
            Step("act", "activation2", "hidden"),
        ]
        if layer.squeeze_excite:
            out.append(Step("se", "squeeze_excite", "hidden", "se"))
        out += [Step("conv", "conv3", "hidden", "out"), Step("bn", "batch_normalization3", "out")]
        if self.residual(layer):
            out.append(Step("add", None, "out"))
        return out

    def inner_fixed(self, layer, name):
        return SE_FIXED.format(name=layer.name) if name == "se" else None

    def config(self, layer, cfg, widths):
        hidden = widths["hidden"]
        if adjust_channels(hidden) != hidden:
            raise ValueError(
                f"InvertedResidualBlock {layer.name!r} rounds its expanded channels to "
                f"multiples of 8; the plan keeps {hidden}. Plans from plan_shrink respect "
                f"this; a `keep=` entry must keep a multiple of 8. Received: {hidden} channels"
            )
        cfg["expansion"] = hidden
        cfg["infilters"] = widths["in"]
        cfg["filters"] = widths["out"]
        if layer.squeeze_excite and hidden != int(layer.conv1.filters):
            cfg["squeeze_excite_ratio"] = _se_ratio(widths["se"], hidden)
        if not self.residual(layer) and layer.stride == 1 and widths["in"] == widths["out"]:
            # keras-hub adds the residual when `stride == 1 and infilters ==
            # filters`; a stride written as (1, 1) strides the same and adds none.
            cfg["stride"] = (1, 1)
        return cfg


class SqueezeAndExciteHandler(CompositeHandler):
    """keras-hub ``SqueezeAndExcite2D`` used on its own: ``x * gate(x)``.
    Its channels are those of its input; the bottleneck keeps its
    channels."""

    inner = ("se",)

    def residual(self, layer):
        return True  # the output carries the input's channels

    def steps(self, layer):
        return [Step("se", "", "in", "se")]

    def inner_fixed(self, layer, name):
        return SE_FIXED.format(name=layer.name)

    def config(self, layer, cfg, widths):
        cfg.pop("spatial_dims", None)  # in get_config, but not an argument of __init__
        cfg["filters"] = widths["in"]
        return cfg


def keras_hub_handlers() -> dict:
    """``{qualified class name: handler}`` for keras-hub's composite layers."""
    return {
        f"{KERAS_HUB_MOBILENET}.ConvBnActBlock": ConvBnActBlockHandler(),
        f"{KERAS_HUB_MOBILENET}.DepthwiseConvBlock": DepthwiseConvBlockHandler(),
        f"{KERAS_HUB_MOBILENET}.InvertedResidualBlock": InvertedResidualBlockHandler(),
        f"{KERAS_HUB_MOBILENET}.SqueezeAndExcite2D": SqueezeAndExciteHandler(),
    }
