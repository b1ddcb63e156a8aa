"""The handler base class, the shared helpers, and the handlers that keep
channels or pass them through."""

from __future__ import annotations

import keras
import numpy as np

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


#: Coverage states of a group's channels in a tensor once the group's unit
#: gammas are zero (see ``DependencyGraph``): raw producer output, constant
#: only where the constant is 0 (behind a product), constant.
LIVE, COND, CONST = "live", "conditional", "constant"


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

    def coverage_states(self, g, call, ins: list):
        """Coverage of a layer that ``coverage_kind`` cannot describe (a
        composite layer: convolutions, BatchNormalizations and merges in one
        ``call``); None uses ``coverage_kind``.

        Args:
            g: The graph.
            call: The call.
            ins: One ``{group root: state}`` per input (states ``LIVE``,
                ``COND``, ``CONST``).

        Returns:
            ``(outs, reads)``: one ``{root: state}`` per output (every root of
            the output's map), and ``{root: state}`` of the channels that a
            layer inside reads as a consumer (``LIVE`` there leaves the
            group uncovered, ``COND`` makes it conditional).
        """
        return None

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
