"""One handler per layer family: everything acsl_tf knows about a layer.

A :class:`LayerHandler` owns, for its layer family:

- ``propagate``: how channels flow through the layer and which channels must
  be removed together (analysis);
- ``coverage_kind``: how a constant (removed) channel flows through it
  (``"pass"`` element-wise per channel, ``"unit"`` a BatchNormalization whose
  zero gamma makes the channel constant, ``"merge"`` / ``"product"`` for
  element-wise merges, ``"producer"`` opens new channels, ``"mix"`` mixes
  channels, ``"keep"`` keeps its channels);
- ``rebuild``: the thin layer's config and weights for kept input/output
  channels;
- ``params`` and ``cost``: parameter count and (MACs, FLOPs) for given
  channel counts and shapes;
- ``fold``: the exact correction for removed channels whose value is a
  constant (added to the layer's bias), and whether it is exact;
- ``kernel_view``: the weights as an (output channel, fan-in) matrix for
  weight criteria (l1, l2, fpgm).

Register a handler for your own layer with ``handlers={MyLayer: h}`` on any
public function (scoped to that call), or process-wide with
:func:`register_layer_handler`.
"""

from __future__ import annotations

import keras
import numpy as np

from acsl_tf import _keras

__all__ = [
    "LayerHandler",
    "KeepChannels",
    "PassThrough",
    "ElementwiseMerge",
    "PerChannelWeights",
    "register_layer_handler",
    "get_layer_handler",
    "supported_layers",
    "ELEMENTWISE_ACTIVATIONS",
]

L = keras.layers

#: Activation names that act on each channel independently.
ELEMENTWISE_ACTIVATIONS = frozenset(
    {
        "linear", "relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu",
        "swish", "hard_silu", "hard_swish", "mish", "sigmoid", "hard_sigmoid", "log_sigmoid",
        "tanh", "hard_tanh", "tanh_shrink", "softplus", "softsign", "exponential",
        "squareplus", "sparse_plus", "soft_shrink", "hard_shrink", "threshold", "sparse_sigmoid",
    }
)  # fmt: skip


def activation_name(act) -> str | None:
    """Name of a Keras activation callable, or None for unknown callables."""
    if act is None:
        return "linear"
    if isinstance(act, str):
        return act
    name = getattr(act, "__name__", None)
    mod = getattr(act, "__module__", "") or ""
    if name and mod.startswith("keras."):
        return name
    return None


def is_elementwise_activation(act) -> bool:
    return activation_name(act) in ELEMENTWISE_ACTIVATIONS


def _n(shape) -> int:
    """Elements of one sample (batch dim dropped; unknown dims count 1)."""
    return int(np.prod([d if d is not None else 1 for d in shape[1:]])) if shape else 1


def _channels_last(layer) -> bool:
    return getattr(layer, "data_format", "channels_last") in ("channels_last", None)


def _check_channels_last(g, call) -> str | None:
    if not _channels_last(call.op):
        return f"{g.name(call.op)!r} uses data_format={call.op.data_format!r} (channels_last only)"
    return None


def _weights(layer):
    return [np.asarray(w) for w in layer.get_weights()]


def _weight_count(layer) -> int:
    return int(sum(int(np.prod(w.shape)) for w in getattr(layer, "weights", [])))


# ---------------------------------------------------------------------------
# Base class
# ---------------------------------------------------------------------------


class LayerHandler:
    """How one layer family moves, couples, slices, counts and folds channels.

    Subclasses override :meth:`propagate` and whatever else applies; the
    defaults describe a layer without channel-dependent weights or cost.
    """

    #: Output channel k depends only on input channel k (an element-wise or
    #: spatial op): a constant channel stays constant.
    elementwise = False

    def propagate(self, g, call) -> list:
        """Return the output ChanMaps from ``g.in_maps(call)``, calling
        ``g.unify`` / ``g.fix`` / ``g.new_map`` / ``g.add_unit`` as needed."""
        raise NotImplementedError

    def coverage_kind(self, g, call) -> str:
        return "pass" if self.elementwise else "keep"

    def rebuild(self, layer, in_keep: list, out_keep):
        """``(config, weights)`` of the thin layer; ``in_keep`` holds one
        index array (or None = unchanged) per input, ``out_keep`` the kept
        output channels (or None)."""
        return layer.get_config(), _weights(layer)

    def params(self, layer, in_c: list, out_c: int) -> int:
        """Parameters of the thin layer for input/output channel counts."""
        return _weight_count(layer)

    def cost(self, op, in_shapes: list, out_shapes: list) -> tuple:
        """``(MACs, FLOPs)`` of one call with the given shapes."""
        return 0, 0

    def fold(self, layer, consts, removed):
        """Correction for removed input features carrying constants.

        Args:
            layer: The consumer layer.
            consts: float64 array, one constant per input feature.
            removed: bool mask of the removed input features.

        Returns:
            ``(delta, exact_note)``: the per-output-channel change to add to
            the bias, and None when exact or a string saying why it is
            approximate; or None when the layer does not fold.
        """
        return None

    def kernel_view(self, layer):
        """``(output channels, fan-in)`` weight matrix, or None."""
        return None


class KeepChannels(LayerHandler):
    """Keeps the channels of its inputs and outputs (unknown, ignored or
    channel-mixing layers)."""

    def __init__(self, reason: str = "kept"):
        self.reason = reason

    def propagate(self, g, call):
        why = self._why(g, call)
        for m in g.in_maps(call):
            g.fix(m, why)
        return [
            g.new_map(g.out_size(call, i), call.op, key=(id(call.op), "out", i), fixed=why)
            for i in range(len(call.out_keys))
        ]

    def _why(self, g, call):
        op = call.op
        if g.is_ignored(op):
            return f"ignored layer {g.name(op)!r}"
        if g.registry.lookup(op) is None:
            return f"{g.name(op)!r} ({type(op).__name__}) has no channel handler; its channels are kept"
        return f"{g.name(op)!r} {self.reason}"

    def params(self, layer, in_c, out_c):
        return _weight_count(layer)


KEEP = KeepChannels()


class Barrier(KeepChannels):
    """Channel-mixing layers (Softmax over channels, GroupNormalization,
    channel reductions): input and output channels are kept. With a single
    same-sized output the channels stay one (fixed) set."""

    def __init__(self, reason="mixes channels", flops: str | None = "out"):
        super().__init__(reason)
        self.flops = flops

    def propagate(self, g, call):
        ins = g.in_maps(call)
        why = self._why(g, call)
        for m in ins:
            g.fix(m, why)
        if len(ins) == 1 and g.size(ins[0]) == g.out_size(call) and len(call.out_keys) == 1:
            return [ins[0]]
        return [
            g.new_map(g.out_size(call, i), call.op, key=(id(call.op), "out", i), fixed=why)
            for i in range(len(call.out_keys))
        ]

    def coverage_kind(self, g, call):
        return "mix"

    def cost(self, op, ins, outs):
        if self.flops == "out" and outs:
            return 0, _n(outs[0])
        return 0, 0


class PassThrough(LayerHandler):
    """Element-wise / spatial layers without channel weights: the output
    channels are the first input's channels.

    Args:
        flops: ``"out"`` (one FLOP per output element, activations), ``"in"``
            (per input element, pooling) or None.
    """

    elementwise = True

    def __init__(self, flops: str | None = None):
        self.flops = flops

    def propagate(self, g, call):
        ins = g.in_maps(call)
        m = ins[0]
        if g.size(m) != g.out_size(call) and g.out_size(call) != 1:
            return Barrier("changes the channel axis").propagate(g, call)
        for extra in ins[1:]:
            g.fix(extra, f"extra input of {g.name(call.op)!r}")
        outs = [m]
        for i in range(1, len(call.out_keys)):
            outs.append(
                g.new_map(
                    g.out_size(call, i),
                    call.op,
                    key=(id(call.op), "out", i),
                    fixed="secondary output",
                )
            )
        return outs

    def cost(self, op, ins, outs):
        if self.flops == "out" and outs:
            return 0, _n(outs[0])
        if self.flops == "in" and ins:
            return 0, _n(ins[0])
        return 0, 0


class ActivationHandler(PassThrough):
    """``Activation`` layers and raw activation ops: element-wise unless the
    activation mixes channels (softmax, log_softmax, an unknown callable)."""

    def __init__(self):
        super().__init__("out")

    def _act(self, op):
        return getattr(op, "activation", None)

    def propagate(self, g, call):
        act = self._act(call.op)
        if not is_elementwise_activation(act):
            name = activation_name(act) or getattr(act, "__name__", repr(act))
            return Barrier(f"applies activation {name!r}, not known to act per channel").propagate(
                g, call
            )
        return super().propagate(g, call)

    def coverage_kind(self, g, call):
        return "pass" if is_elementwise_activation(self._act(call.op)) else "mix"


class SoftmaxHandler(Barrier):
    """Softmax over the channel axis mixes channels; over another axis it is
    per channel."""

    def __init__(self):
        super().__init__("normalises over channels (softmax)")

    def _channel_axis(self, g, call):
        axis = getattr(call.op, "axis", -1)
        rank = len(g.in_shape(call))
        axes = axis if isinstance(axis, (list, tuple)) else [axis]
        return any(a % rank == rank - 1 for a in axes)

    def propagate(self, g, call):
        if self._channel_axis(g, call):
            return super().propagate(g, call)
        return PassThrough().propagate(g, call)

    def coverage_kind(self, g, call):
        return "mix" if self._channel_axis(g, call) else "pass"


class Reduction(PassThrough):
    """Raw mean/max/min/sum: per channel when the channel axis is kept,
    channel-mixing otherwise."""

    def _mixes(self, g, call):
        axis = getattr(call.op, "axis", None)
        rank = len(g.in_shape(call))
        axes = [axis] if isinstance(axis, int) else axis
        return axes is None or any(a % rank == rank - 1 for a in axes)

    def propagate(self, g, call):
        if self._mixes(g, call):
            return Barrier("reduces over channels").propagate(g, call)
        return super().propagate(g, call)

    def coverage_kind(self, g, call):
        return "mix" if self._mixes(g, call) else "pass"


class PadHandler(PassThrough):
    """Raw ``keras.ops.pad``: spatial padding passes channels; padding the
    channel axis keeps them."""

    def _pads_channels(self, g, call):
        pw = getattr(call.op, "pad_width", None)
        try:
            last = np.asarray(pw)[-1]
            return bool(np.any(last != 0))
        except (TypeError, ValueError, IndexError):
            return True

    def propagate(self, g, call):
        if self._pads_channels(g, call):
            return Barrier("pads the channel axis").propagate(g, call)
        return super().propagate(g, call)

    def coverage_kind(self, g, call):
        return "mix" if self._pads_channels(g, call) else "pass"


class SplitHandler(LayerHandler):
    """Raw ``keras.ops.split``: splitting a spatial axis passes the channels
    to every part; splitting the channel axis keeps them."""

    elementwise = True

    def _channel_axis(self, g, call):
        axis = getattr(call.op, "axis", 0)
        rank = len(g.in_shape(call))
        return axis % rank == rank - 1

    def propagate(self, g, call):
        (m,) = g.in_maps(call)[:1]
        if self._channel_axis(g, call):
            return Barrier("splits the channel axis").propagate(g, call)
        return [m for _ in call.out_keys]

    def coverage_kind(self, g, call):
        return "mix" if self._channel_axis(g, call) else "pass"


class FlattenHandler(LayerHandler):
    elementwise = True

    def propagate(self, g, call):
        (m,) = g.in_maps(call)
        shp = g.in_shape(call)
        if len(shp) <= 2:
            return [m]
        spatial = shp[1:-1]
        if any(d is None for d in spatial):
            return Barrier("flattens an unknown spatial size").propagate(g, call)
        return [_reps(m, int(np.prod(spatial)))]


def _reps(m, k):
    from acsl_tf.graph.dependency import ChanMap

    return ChanMap(m.sources, m.reps * k)


class ReshapeHandler(LayerHandler):
    """Allowed when the channel (last) axis is untouched."""

    elementwise = True

    def propagate(self, g, call):
        (m,) = g.in_maps(call)
        c_in = g.in_shape(call)[-1]
        c_out = g.out_shape(call)[-1]
        if m.reps != 1 or c_in != c_out:
            return Barrier("reshapes the channel axis").propagate(g, call)
        return [m]

    def rebuild(self, layer, in_keep, out_keep):
        cfg = layer.get_config()
        if in_keep[0] is not None:
            ts = list(cfg["target_shape"])
            ts[-1] = len(in_keep[0])
            cfg["target_shape"] = tuple(ts)
        return cfg, []


class PermuteHandler(LayerHandler):
    """Permute that leaves the last axis in place passes channels."""

    elementwise = True

    def propagate(self, g, call):
        dims = tuple(getattr(call.op, "dims", ()))
        rank = len(g.in_shape(call))
        if dims and dims[-1] == rank - 1:
            return [g.in_maps(call)[0]]
        return Barrier("permutes the channel axis").propagate(g, call)


class RescalingHandler(PassThrough):
    """``Rescaling`` with scalar scale/offset is element-wise; per-channel
    values keep the channels."""

    def _scalar(self, op):
        return all(np.size(np.asarray(getattr(op, a, 0.0))) == 1 for a in ("scale", "offset"))

    def propagate(self, g, call):
        if self._scalar(call.op):
            return super().propagate(g, call)
        return Barrier("normalises per channel with fixed constants").propagate(g, call)

    def coverage_kind(self, g, call):
        return "pass" if self._scalar(call.op) else "mix"


class ElementwiseMerge(LayerHandler):
    """Add/Subtract/Multiply/Average/Maximum/Minimum (layers and raw ops):
    full-width inputs are coupled; broadcast inputs (last dim 1) and Python
    scalars are left alone; a constant array with a channel axis keeps the
    channels."""

    elementwise = True

    def __init__(self, product: bool = False):
        self.product = product

    def propagate(self, g, call):
        out_c = g.out_size(call)
        ins = g.in_maps(call)
        full = [m for m in ins if g.size(m) == out_c]
        if any(g.size(m) not in (out_c, 1) for m in ins) or not full:
            return Barrier("broadcasts over channels").propagate(g, call)
        for v in _constant_args(call):
            shp = np.shape(v)
            if len(shp) and shp[-1] != 1:
                g.fix(full[0], f"constant per-channel operand in {g.name(call.op)!r}")
        g.unify(full, g.name(call.op))
        return [full[0]]

    def coverage_kind(self, g, call):
        return "product" if self.product else "merge"

    def cost(self, op, ins, outs):
        return 0, max(len(ins) - 1, 1) * _n(outs[0]) if outs else 0


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
        elif isinstance(x, np.ndarray) or hasattr(x, "shape"):
            out.append(x)

    walk(list(args.args))
    walk(dict(args.kwargs))
    return out


class ConcatenateHandler(LayerHandler):
    elementwise = True

    def propagate(self, g, call):
        from acsl_tf.graph.dependency import ChanMap

        ins = g.in_maps(call)
        rank = len(g.out_shape(call))
        axis = getattr(call.op, "axis", -1)
        if axis in (-1, rank - 1):
            if any(m.reps != 1 for m in ins):
                return Barrier("concatenates flattened features").propagate(g, call)
            return [ChanMap(tuple(s for m in ins for s in m.sources))]
        g.unify(ins, g.name(call.op))
        return [ins[0]]


class BatchNormHandler(LayerHandler):
    """BatchNormalization: slices every per-channel vector; a BN with
    ``scale=True`` is a *unit* (its gamma can make a channel constant)."""

    elementwise = True

    def _bn(self, op):
        return op

    def _is_unit(self, g, call):
        bn = self._bn(call.op)
        return bool(bn.scale) and not g.is_ignored(call.op) and self._axis_ok(g, call)

    def _axis_ok(self, g, call):
        bn = self._bn(call.op)
        rank = len(g.in_shape(call))
        axis = bn.axis if isinstance(bn.axis, int) else bn.axis[0]
        return axis % rank == rank - 1

    def propagate(self, g, call):
        bn = self._bn(call.op)
        m = g.shared_inputs(call, [g.in_maps(call)[0]])[0]
        if not self._axis_ok(g, call):
            g.fix(m, f"BatchNormalization {g.name(call.op)!r} on a non-channel axis")
            return [m]
        g.add_member(m, call.op, "bn")
        if self._is_unit(g, call):
            g.add_unit(call, m, bn, wrapper=call.op if call.op is not bn else None)
        return [m]

    def coverage_kind(self, g, call):
        return "unit" if self._is_unit(g, call) else "pass"

    def rebuild(self, layer, in_keep, out_keep):
        keep = in_keep[0]
        ws = _weights(layer)
        if keep is None:
            return layer.get_config(), ws
        return layer.get_config(), [w[keep] for w in ws]

    def params(self, layer, in_c, out_c):
        return len(self._bn(layer).weights) * in_c[0]

    def cost(self, op, ins, outs):
        return 0, _n(outs[0])


class WrappedBNHandler(BatchNormHandler):
    """A ``keras.layers.Wrapper`` around a BatchNormalization (e.g.
    ``acsl_tf.PruneLowCorrelation``): channels as in the BN; it must be
    stripped before rebuilding."""

    def _bn(self, op):
        return op.layer

    def rebuild(self, layer, in_keep, out_keep):
        raise ValueError(
            f"Wrapped layer {layer.name!r} must be stripped (acsl_tf.strip_pruning) before "
            "rebuilding."
        )


class NormHandler(LayerHandler):
    """LayerNormalization / UnitNormalization over the channel axis: gamma
    and beta are sliced; the statistics are taken over the remaining
    channels, so removing channels is approximate (measured by ``shrink``)."""

    def _channel_axis(self, g, call):
        axis = getattr(call.op, "axis", -1)
        rank = len(g.in_shape(call))
        axes = axis if isinstance(axis, (list, tuple)) else [axis]
        return [a % rank for a in axes] == [rank - 1]

    def propagate(self, g, call):
        if not self._channel_axis(g, call):
            return Barrier("normalises over several axes").propagate(g, call)
        m = g.shared_inputs(call, [g.in_maps(call)[0]])[0]
        g.add_member(m, call.op, "per-channel")
        g.notes[g.name(call.op)] = (
            f"{type(call.op).__name__} normalises over the channel axis: removing channels "
            "changes its statistics (approximate)"
        )
        return [m]

    def coverage_kind(self, g, call):
        return "mix" if self._channel_axis(g, call) else "keep"

    def rebuild(self, layer, in_keep, out_keep):
        keep = in_keep[0]
        ws = _weights(layer)
        if keep is None:
            return layer.get_config(), ws
        return layer.get_config(), [w[keep] for w in ws]

    def params(self, layer, in_c, out_c):
        return len(layer.weights) * in_c[0]

    def cost(self, op, ins, outs):
        return 0, _n(outs[0])


class PerChannelWeights(PassThrough):
    """Pass-through layers whose weights have a per-channel last axis
    (PReLU alpha, ConvNeXt LayerScale): weights whose last dim equals the
    channel count are sliced."""

    def propagate(self, g, call):
        ins = g.shared_inputs(call, g.in_maps(call))
        g.add_member(ins[0], call.op, "per-channel")
        return super().propagate(g, call)

    def _c(self, layer):
        return _keras.first_call_input_channels(layer)

    def rebuild(self, layer, in_keep, out_keep):
        ws = _weights(layer)
        ik = in_keep[0]
        if ik is None:
            return layer.get_config(), ws
        c = self._c(layer)
        out = [w[..., ik] if (w.ndim and w.shape[-1] == c and c > 1) else w for w in ws]
        return layer.get_config(), out

    def params(self, layer, in_c, out_c):
        total = 0
        c_old = self._c(layer)
        for w in layer.weights:
            shp = list(w.shape)
            if shp and shp[-1] == c_old and c_old > 1:
                shp[-1] = in_c[0]
            total += int(np.prod(shp)) if shp else 1
        return total


class DepthwiseHandler(LayerHandler):
    """Depthwise conv: couples input and output channels (depth_multiplier
    1). With depth_multiplier > 1 the channels are kept."""

    elementwise = True

    def propagate(self, g, call):
        layer = call.op
        why = _check_channels_last(g, call)
        if why:
            return Barrier(why).propagate(g, call)
        m = g.shared_inputs(call, g.in_maps(call))[0]
        g.add_member(m, layer, "depthwise")
        if layer.depth_multiplier != 1:
            why = f"{g.name(layer)!r} has depth_multiplier={layer.depth_multiplier}"
            g.fix(m, why)
            return [g.new_map(g.out_size(call), layer, key=(id(layer), "out", 0), fixed=why)]
        return [m]

    def coverage_kind(self, g, call):
        return "pass" if call.op.depth_multiplier == 1 else "keep"

    def rebuild(self, layer, in_keep, out_keep):
        ws = _weights(layer)
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

    def cost(self, op, ins, outs):
        macs = _n(outs[0]) * int(np.prod(op.kernel_size))
        return macs, 2 * macs


class ProducerHandler(LayerHandler):
    """Layers whose output channels are a new source (Conv, Dense)."""

    out_key = "filters"

    def _in_fixed(self, layer) -> str | None:
        return None

    def propagate(self, g, call):
        layer = call.op
        why = _check_channels_last(g, call)
        if why:
            return Barrier(why).propagate(g, call)
        ins = g.shared_inputs(call, g.in_maps(call))
        g.add_member(ins[0], layer, "in")
        fixed_in = self._in_fixed(layer)
        if fixed_in:
            g.fix(ins[0], fixed_in)
        act = getattr(layer, "activation", None)
        fixed_out = fixed_in
        if not is_elementwise_activation(act):
            name = activation_name(act) or getattr(act, "__name__", repr(act))
            fixed_out = (
                f"{g.name(layer)!r} applies activation {name!r}, not known to act per channel"
            )
        m = g.new_map(g.out_size(call), layer, key=(id(layer), "out", 0), fixed=fixed_out)
        g.add_member(m, layer, "out")
        return [m]

    def coverage_kind(self, g, call):
        return "producer"

    def rebuild(self, layer, in_keep, out_keep):
        cfg = layer.get_config()
        ws = _weights(layer)
        if out_keep is not None:
            cfg[self.out_key] = len(out_keep)
        return cfg, self.slice(layer, ws, in_keep[0], out_keep)

    def slice(self, layer, ws, ik, ok):
        raise NotImplementedError

    def _bias(self, layer, ws, i, ok):
        return [ws[i] if ok is None else ws[i][ok]] if layer.use_bias else []

    def _padding_note(self, layer):
        ks = tuple(np.atleast_1d(layer.kernel_size))
        if all(k == 1 for k in ks) or layer.padding == "valid":
            return None
        return (
            f"{layer.name!r} ({'x'.join(map(str, ks))}, padding={layer.padding!r}): the removed "
            "channels' constant is folded into the bias; exact away from the borders only"
        )


class ConvHandler(ProducerHandler):
    """Conv1D/2D/3D. A grouped conv with ``groups == filters == input
    channels`` is a depthwise conv (ConvNeXt writes it so): it couples its
    input and output channels; other grouped convs keep their channels."""

    def _depthwise(self, g, call):
        layer = call.op
        cin = g.in_shape(call)[-1]
        return layer.groups > 1 and layer.groups == layer.filters == cin

    def propagate(self, g, call):
        if self._depthwise(g, call) and _channels_last(call.op):
            m = g.shared_inputs(call, g.in_maps(call))[0]
            g.add_member(m, call.op, "depthwise")
            if not is_elementwise_activation(getattr(call.op, "activation", None)):
                g.fix(m, f"{g.name(call.op)!r} applies an activation not known to act per channel")
            return [m]
        return super().propagate(g, call)

    def coverage_kind(self, g, call):
        return "pass" if self._depthwise(g, call) else "producer"

    def rebuild(self, layer, in_keep, out_keep):
        if layer.groups > 1 and layer.groups == layer.filters and in_keep[0] is not None:
            keep = in_keep[0]
            cfg = layer.get_config()
            cfg["filters"] = cfg["groups"] = len(keep)
            ws = _weights(layer)
            return cfg, [ws[0][..., keep]] + self._bias(layer, ws, 1, keep)
        return super().rebuild(layer, in_keep, out_keep)

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
        return [k] + self._bias(layer, ws, 1, ok)

    def params(self, layer, in_c, out_c):
        ks = int(np.prod(layer.kernel_size))
        return ks * (in_c[0] // layer.groups) * out_c + (out_c if layer.use_bias else 0)

    def cost(self, op, ins, outs):
        cin = ins[0][-1]
        macs = _n(outs[0]) * int(np.prod(op.kernel_size)) * (cin // op.groups)
        return macs, 2 * macs

    def fold(self, layer, consts, removed):
        if getattr(layer, "groups", 1) != 1:
            return None
        k = np.asarray(layer.get_weights()[0], np.float64)
        c = np.where(removed, consts, 0.0)
        delta = c @ k.reshape(-1, k.shape[-2], k.shape[-1]).sum(axis=0)
        return delta, self._padding_note(layer)

    def kernel_view(self, layer):
        k = np.asarray(layer.get_weights()[0])
        return k.reshape(-1, k.shape[-1]).T


class ConvTransposeHandler(ProducerHandler):
    def slice(self, layer, ws, ik, ok):
        k = ws[0]  # (..., out, in)
        if ik is not None:
            k = k[..., ik]
        if ok is not None:
            k = k[..., ok, :]
        return [k] + self._bias(layer, ws, 1, ok)

    def params(self, layer, in_c, out_c):
        ks = int(np.prod(layer.kernel_size))
        return ks * in_c[0] * out_c + (out_c if layer.use_bias else 0)

    def cost(self, op, ins, outs):
        macs = _n(ins[0]) * int(np.prod(op.kernel_size)) * outs[0][-1]
        return macs, 2 * macs

    def fold(self, layer, consts, removed):
        k = np.asarray(layer.get_weights()[0], np.float64)
        c = np.where(removed, consts, 0.0)
        strides = int(np.prod(layer.strides))
        delta = (k.reshape(-1, k.shape[-2], k.shape[-1]).sum(axis=0) @ c) / strides
        ks = tuple(np.atleast_1d(layer.kernel_size))
        exact = all(s == 1 for s in np.atleast_1d(layer.strides)) and all(x == 1 for x in ks)
        note = None
        if not exact:
            note = (
                f"{layer.name!r} (transposed {'x'.join(map(str, ks))}, strides "
                f"{tuple(np.atleast_1d(layer.strides))}): each output pixel sees other kernel "
                "taps, so the removed channels' constant is folded as its mean contribution"
            )
        return delta, note

    def kernel_view(self, layer):
        k = np.asarray(layer.get_weights()[0])
        return np.swapaxes(k, -1, -2).reshape(-1, k.shape[-2]).T


class DenseHandler(ProducerHandler):
    out_key = "units"

    def _in_fixed(self, layer):
        return None

    def propagate(self, g, call):
        if len(g.in_shape(call)) > 2:
            # Dense on a rank>2 tensor acts on the last axis like a 1x1 conv.
            pass
        return super().propagate(g, call)

    def slice(self, layer, ws, ik, ok):
        k = ws[0]
        if ik is not None:
            k = k[ik]
        if ok is not None:
            k = k[:, ok]
        return [k] + self._bias(layer, ws, 1, ok)

    def params(self, layer, in_c, out_c):
        return in_c[0] * out_c + (out_c if layer.use_bias else 0)

    def cost(self, op, ins, outs):
        macs = _n(ins[0]) * outs[0][-1]
        return macs, 2 * macs

    def fold(self, layer, consts, removed):
        k = np.asarray(layer.get_weights()[0], np.float64)
        return np.where(removed, consts, 0.0) @ k, None

    def kernel_view(self, layer):
        return np.asarray(layer.get_weights()[0]).T


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
        return [dw, pw] + self._bias(layer, ws, 2, ok)

    def params(self, layer, in_c, out_c):
        ks = int(np.prod(layer.kernel_size))
        m = layer.depth_multiplier
        return ks * in_c[0] * m + in_c[0] * m * out_c + (out_c if layer.use_bias else 0)

    def cost(self, op, ins, outs):
        ks = int(np.prod(op.kernel_size))
        cin = ins[0][-1]
        m = op.depth_multiplier
        o = outs[0]
        sp = _n(o) // max(o[-1], 1)
        macs = sp * cin * m * ks + sp * cin * m * o[-1]
        return macs, 2 * macs

    def fold(self, layer, consts, removed):
        ws = [np.asarray(w, np.float64) for w in layer.get_weights()]
        dw, pw = ws[0], ws[1]
        mlt = dw.shape[-1]
        c = np.where(removed, consts, 0.0)
        d1 = (c[:, None] * dw.reshape(-1, dw.shape[-2], mlt).sum(axis=0)).reshape(-1)
        return d1 @ pw.reshape(-1, pw.shape[-1]), self._padding_note(layer)

    def kernel_view(self, layer):
        pw = np.asarray(layer.get_weights()[1])
        return pw.reshape(-1, pw.shape[-1]).T


# ---------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------


class Registry:
    """Layer class (or class name) -> handler; lookup follows the MRO."""

    def __init__(self):
        self.by_class: dict = {}
        self.by_name: dict = {}

    def copy(self) -> Registry:
        r = Registry()
        r.by_class = dict(self.by_class)
        r.by_name = dict(self.by_name)
        return r

    def register(self, layer_class, handler) -> None:
        if not isinstance(handler, LayerHandler):
            raise TypeError(
                f"handler must be a LayerHandler instance. Received: handler={handler!r}"
            )
        if isinstance(layer_class, str):
            self.by_name[layer_class] = handler
        elif isinstance(layer_class, type):
            self.by_class[layer_class] = handler
        else:
            raise TypeError(
                "layer_class must be a class or a class name. "
                f"Received: layer_class={layer_class!r}"
            )

    def lookup(self, op):
        if isinstance(op, L.Wrapper) and isinstance(
            getattr(op, "layer", None), L.BatchNormalization
        ):
            return _WRAPPED
        for cls in type(op).__mro__:
            if cls in self.by_class:
                return self.by_class[cls]
            if cls.__name__ in self.by_name:
                return self.by_name[cls.__name__]
        return None

    def names(self) -> list:
        return sorted({c.__name__ for c in self.by_class} | set(self.by_name))


_WRAPPED = WrappedBNHandler()
_DEFAULT = Registry()


def default_registry() -> Registry:
    """The process-wide default registry (copied by every graph)."""
    return _DEFAULT


def register_layer_handler(layer_class, handler: LayerHandler) -> None:
    """Register a handler process-wide (every later graph copies it).

    Prefer ``handlers={LayerClass: handler}`` on ``plan_shrink`` / ``shrink``
    / ``profile`` / ``prune_low_correlation``, which is scoped to the call.

    Args:
        layer_class: A class (lookup follows subclassing) or a class name.
        handler: A :class:`LayerHandler` instance.

    Raises:
        TypeError: For a handler that is not a LayerHandler or a
            ``layer_class`` that is neither a class nor a string.

    Example:
        >>> from acsl_tf.graph.handlers import PassThrough
        >>> class MyAct(keras.layers.Layer):
        ...     def call(self, x): return x * keras.ops.sigmoid(x)
        >>> acsl_tf.register_layer_handler(MyAct, PassThrough(flops="out"))
    """
    _DEFAULT.register(layer_class, handler)


def get_layer_handler(op):
    """The default handler for ``op`` (None when unknown)."""
    return _DEFAULT.lookup(op)


def supported_layers() -> list:
    """Names of the layer / op classes with a default handler."""
    return _DEFAULT.names()


def _register_defaults():
    r = _DEFAULT.register
    for cls in (L.Conv1D, L.Conv2D, L.Conv3D):
        r(cls, ConvHandler())
    for cls in (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose):
        r(cls, ConvTransposeHandler())
    r(L.Dense, DenseHandler())
    for cls in (L.SeparableConv1D, L.SeparableConv2D):
        r(cls, SeparableConvHandler())
    for cls in (L.DepthwiseConv1D, L.DepthwiseConv2D):
        r(cls, DepthwiseHandler())
    r(L.BatchNormalization, BatchNormHandler())
    r(L.PReLU, PerChannelWeights("out"))
    r("LayerScale", PerChannelWeights())
    for cls in (L.ReLU, L.LeakyReLU, L.ELU):
        r(cls, PassThrough("out"))
    r(L.Activation, ActivationHandler())
    for cls in (
        L.Dropout, L.SpatialDropout1D, L.SpatialDropout2D, L.SpatialDropout3D,
        L.GaussianNoise, L.GaussianDropout, L.AlphaDropout, L.ActivityRegularization,
        L.Identity, L.UpSampling1D, L.UpSampling2D, L.UpSampling3D, L.ZeroPadding1D,
        L.ZeroPadding2D, L.ZeroPadding3D, L.Cropping1D, L.Cropping2D, L.Cropping3D,
        L.Resizing, L.CenterCrop, L.RandomFlip, L.RandomRotation, L.RandomZoom,
        L.RandomTranslation, L.RandomCrop,
    ):  # fmt: skip
        r(cls, PassThrough())
    for cls in (
        L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D, L.AveragePooling1D,
        L.AveragePooling2D, L.AveragePooling3D, L.GlobalAveragePooling1D,
        L.GlobalAveragePooling2D, L.GlobalAveragePooling3D, L.GlobalMaxPooling1D,
        L.GlobalMaxPooling2D, L.GlobalMaxPooling3D,
    ):  # fmt: skip
        r(cls, PassThrough("in"))
    r("StochasticDepth", PassThrough())
    for cls in (L.Add, L.Subtract, L.Average, L.Maximum, L.Minimum):
        r(cls, ElementwiseMerge())
    r(L.Multiply, ElementwiseMerge(product=True))
    r(L.Concatenate, ConcatenateHandler())
    # keras.applications.InceptionResNetV2: inputs[0] + inputs[1] * scale
    r("CustomScaleLayer", ElementwiseMerge())
    r(L.Flatten, FlattenHandler())
    r(L.Reshape, ReshapeHandler())
    r(L.Permute, PermuteHandler())
    r(L.Rescaling, RescalingHandler())
    r(L.Normalization, Barrier("normalises per channel with fixed statistics"))
    for cls in (L.LayerNormalization, L.UnitNormalization):
        r(cls, NormHandler())
    r(L.GroupNormalization, Barrier("normalises groups of channels"))
    r(L.Softmax, SoftmaxHandler())

    from keras.src.ops import image as _img
    from keras.src.ops import nn as _nn
    from keras.src.ops import numpy as _np

    acts = (
        "Relu", "Relu6", "Sigmoid", "HardSigmoid", "HardSilu", "Silu", "Gelu", "Elu", "Selu",
        "Celu", "Softplus", "Softsign", "LeakyRelu", "LogSigmoid", "HardTanh", "SoftShrink",
        "HardShrink", "TanhShrink", "Squareplus", "SparsePlus", "SparseSigmoid", "Mish",
    )  # fmt: skip
    for n in acts:
        if hasattr(_nn, n):
            r(getattr(_nn, n), PassThrough("out"))
    unary = (
        "Tanh", "Abs", "Absolute", "Negative", "Exp", "Expm1", "Log", "Log1p", "Sqrt", "Square",
        "Clip", "Sign", "Round", "Floor", "Ceil", "Sin", "Cos", "Reciprocal", "Cast",
        "Erf", "Sigmoid", "Rsqrt",
    )  # fmt: skip
    for n in unary:
        if hasattr(_np, n):
            r(getattr(_np, n), PassThrough("out"))
    for n in ("Add", "Subtract", "Maximum", "Minimum"):
        if hasattr(_np, n):
            r(getattr(_np, n), ElementwiseMerge())
    for n in ("Multiply", "Divide", "TrueDivide", "Power"):
        if hasattr(_np, n):
            r(getattr(_np, n), ElementwiseMerge(product=True))
    for n in ("Softmax", "LogSoftmax"):
        if hasattr(_nn, n):
            r(getattr(_nn, n), SoftmaxHandler())
    if hasattr(_np, "Concatenate"):
        r(_np.Concatenate, ConcatenateHandler())
    for n in ("Mean", "Max", "Min", "Sum"):
        if hasattr(_np, n):
            r(getattr(_np, n), Reduction("out"))
    if hasattr(_np, "Pad"):
        r(_np.Pad, PadHandler())
    if hasattr(_np, "Split"):
        r(_np.Split, SplitHandler())
    if hasattr(_img, "Resize"):
        r(_img.Resize, PassThrough())


_register_defaults()
