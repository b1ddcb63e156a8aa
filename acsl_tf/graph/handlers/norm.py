"""BatchNormalization (the units of sparsity training), channel-axis
normalisations and per-channel weights."""

from __future__ import annotations

import numpy as np

from acsl_tf import _keras
from acsl_tf.graph.handlers.base import (
    Barrier,
    LayerHandler,
    PassThrough,
    _n,
    _weights,
)


def _slice_vectors(layer, keep):
    """Config and weights of a layer whose weights are all per-channel vectors."""
    ws = _weights(layer)
    return layer.get_config(), (ws if keep is None else [w[keep] for w in ws])


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
        g.add_member(m, bn, "bn")  # the BatchNormalization, also inside a wrapper
        if self._is_unit(g, call):
            g.add_unit(call, m, bn, wrapper=call.op if call.op is not bn else None)
        return [m]

    def coverage_kind(self, g, call):
        return "unit" if self._is_unit(g, call) else "pass"

    def rebuild(self, layer, in_keep, out_keep):
        return _slice_vectors(layer, in_keep[0])

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
        return _slice_vectors(layer, in_keep[0])

    def params(self, layer, in_c, out_c):
        return len(layer.weights) * in_c[0]

    def cost(self, op, ins, outs):
        return 0, _n(outs[0])


#: Config keys that hold a per-channel layer's channel count.
_WIDTH_KEYS = ("projection_dim", "channels", "num_channels")


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
        cfg = layer.get_config()
        # Layers that build their per-channel weights from a width in their
        # config (ConvNeXt's LayerScale: projection_dim) get the new width.
        for key in _WIDTH_KEYS:
            if isinstance(cfg.get(key), int) and cfg[key] == c:
                cfg[key] = len(ik)
        return cfg, out

    def params(self, layer, in_c, out_c):
        total = 0
        c_old = self._c(layer)
        for w in layer.weights:
            shp = list(w.shape)
            if shp and shp[-1] == c_old and c_old > 1:
                shp[-1] = in_c[0]
            total += int(np.prod(shp)) if shp else 1
        return total
