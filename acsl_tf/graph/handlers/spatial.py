"""Activations, softmax, reductions, padding, splitting, flattening,
reshaping and rescaling."""

from __future__ import annotations

import numpy as np

from acsl_tf.graph.handlers.base import (
    Barrier,
    LayerHandler,
    PassThrough,
    activation_name,
    is_elementwise_activation,
)


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
