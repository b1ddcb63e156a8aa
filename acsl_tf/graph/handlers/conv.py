"""Convolutions and Dense: the producers of channels, and depthwise convs."""

from __future__ import annotations

import numpy as np

from acsl_tf.graph.handlers.base import (
    Barrier,
    LayerHandler,
    _channels_last,
    _check_channels_last,
    _n,
    _weights,
    activation_name,
    is_elementwise_activation,
)


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

    def _fan_in(self, layer, cin):
        if layer.groups > 1 and layer.groups == layer.filters:  # depthwise: one channel each
            return 1
        return cin // layer.groups

    def params(self, layer, in_c, out_c):
        ks = int(np.prod(layer.kernel_size))
        return ks * self._fan_in(layer, in_c[0]) * out_c + (out_c if layer.use_bias else 0)

    def cost(self, op, ins, outs):
        macs = _n(outs[0]) * int(np.prod(op.kernel_size)) * self._fan_in(op, ins[0][-1])
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
    out_key = "units"  # on a rank > 2 tensor Dense acts on the last axis, like a 1x1 conv

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
