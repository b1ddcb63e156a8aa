"""Parameter and FLOPs accounting for Keras 3 functional models.

Convention (batch size 1):

- MACs = multiply-accumulates of Conv1D/2D/3D, DepthwiseConv, SeparableConv
  (depthwise + pointwise), ConvTranspose and Dense layers (bias adds are not
  counted).
- FLOPs = 2 * MACs for those layers, plus 1 FLOP per output element for
  BatchNormalization, activations (layers and raw ``keras.ops``), pooling
  (per input element), element-wise merges ((n_inputs - 1) per output
  element) and LayerNormalization; everything else (reshape, padding,
  dropout, concatenation, ...) costs 0.
- Parameters = every weight, trainable or not (BN moving statistics
  included), each shared layer counted once — the same as
  ``model.count_params()``.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np

from acsl_tf.graph import dependency as _graph

__all__ = ["Profile", "LayerProfile", "profile", "call_cost"]

L = keras.layers

_ACTIVATION_OPS = {
    "Relu", "Relu6", "Sigmoid", "HardSigmoid", "HardSilu", "Silu", "Gelu", "Elu", "Selu",
    "Celu", "Softplus", "Softsign", "LeakyRelu", "LogSigmoid", "HardTanh", "Tanh",
    "Softmax", "Exp", "Sqrt", "Square", "Abs", "Absolute", "Negative", "Clip",
}  # fmt: skip
_MERGE_OPS = {"Add", "Subtract", "Multiply", "Divide", "TrueDivide", "Maximum", "Minimum", "Power"}


def _n(shape) -> int:
    """Elements of one sample (batch dim dropped; unknown dims count 1)."""
    return int(np.prod([d if d is not None else 1 for d in shape[1:]])) if shape else 1


def call_cost(op, in_shapes: list, out_shapes: list) -> tuple[int, int]:
    """``(macs, flops)`` of one call of ``op`` with the given shapes."""
    o = out_shapes[0] if out_shapes else ()
    if isinstance(op, (L.SeparableConv1D, L.SeparableConv2D)):
        ks = int(np.prod(op.kernel_size))
        cin = in_shapes[0][-1]
        m = op.depth_multiplier
        sp = _n(o) // max(o[-1], 1)
        macs = sp * cin * m * ks + sp * cin * m * o[-1]
        return macs, 2 * macs
    if isinstance(op, (L.DepthwiseConv1D, L.DepthwiseConv2D)):
        macs = _n(o) * int(np.prod(op.kernel_size))
        return macs, 2 * macs
    if isinstance(op, (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)):
        macs = _n(in_shapes[0]) * int(np.prod(op.kernel_size)) * o[-1]
        return macs, 2 * macs
    if isinstance(op, (L.Conv1D, L.Conv2D, L.Conv3D)):
        cin = in_shapes[0][-1]
        macs = _n(o) * int(np.prod(op.kernel_size)) * (cin // op.groups)
        return macs, 2 * macs
    if isinstance(op, L.Dense):
        macs = _n(in_shapes[0]) * o[-1]
        return macs, 2 * macs
    if isinstance(op, (L.BatchNormalization, L.LayerNormalization, L.GroupNormalization)):
        return 0, _n(o)
    if _graph._is_wrapped_bn(op):
        return 0, _n(o)
    if isinstance(
        op,
        (
            L.Activation, L.ReLU, L.LeakyReLU, L.ELU, L.PReLU, L.Softmax,
        ),
    ):  # fmt: skip
        return 0, _n(o)
    pools = (
        L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D, L.AveragePooling1D, L.AveragePooling2D,
        L.AveragePooling3D, L.GlobalAveragePooling1D, L.GlobalAveragePooling2D,
        L.GlobalAveragePooling3D, L.GlobalMaxPooling1D, L.GlobalMaxPooling2D,
        L.GlobalMaxPooling3D,
    )  # fmt: skip
    if isinstance(op, pools):
        return 0, _n(in_shapes[0])
    if isinstance(op, (L.Add, L.Subtract, L.Multiply, L.Average, L.Maximum, L.Minimum)):
        return 0, max(len(in_shapes) - 1, 1) * _n(o)
    cls = type(op).__name__
    if not isinstance(op, L.Layer):
        if cls in _ACTIVATION_OPS:
            return 0, _n(o)
        if cls in _MERGE_OPS:
            return 0, _n(o)
    return 0, 0


@dataclass(frozen=True)
class LayerProfile:
    """One row of a :class:`Profile`: a layer (summed over its calls)."""

    name: str
    cls: str
    params: int
    macs: int
    flops: int
    output_shape: tuple


@dataclass(frozen=True)
class Profile:
    """Parameters, MACs and FLOPs of a model (batch size 1).

    Attributes:
        total_params: All weights (``model.count_params()``).
        total_macs: Multiply-accumulates.
        total_flops: FLOPs (see the module docstring for the convention).
        layers: Per-layer :class:`LayerProfile` rows, in graph order.
    """

    total_params: int
    total_macs: int
    total_flops: int
    layers: tuple

    def summary(self, max_rows: int | None = None) -> str:
        """A printable per-layer table with totals."""
        rows = list(self.layers if max_rows is None else self.layers[:max_rows])
        w = max([len(r.name) for r in rows] + [5])
        c = max([len(r.cls) for r in rows] + [5])
        head = f"{'layer':<{w}}  {'class':<{c}}  {'output':<20} {'params':>12} {'MACs':>14} {'FLOPs':>14}"
        lines = [head, "-" * len(head)]
        for r in rows:
            shp = str(tuple(r.output_shape))
            lines.append(
                f"{r.name:<{w}}  {r.cls:<{c}}  {shp:<20} {r.params:>12,} {r.macs:>14,} {r.flops:>14,}"
            )
        lines.append("-" * len(head))
        lines.append(
            f"{'total':<{w}}  {'':<{c}}  {'':<20} {self.total_params:>12,} "
            f"{self.total_macs:>14,} {self.total_flops:>14,}"
        )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def profile(model, trace=None) -> Profile:
    """Count parameters, MACs and FLOPs of a functional / Sequential model.

    Nested functional models are recursed into and raw ``keras.ops`` calls are
    included. Spatial dimensions that are ``None`` count as 1; build the model
    with a fixed input size for meaningful FLOPs.

    Args:
        model: A built functional or Sequential ``keras.Model``.
        trace: Optional pre-computed :func:`acsl_tf.graph.trace_model` result.

    Returns:
        A :class:`Profile`.

    Example:
        >>> p = acsl_tf.profile(model)
        >>> print(p.total_params, p.total_flops)
        >>> print(p.summary())
    """
    tr = trace if trace is not None else _graph.trace_model(model)
    rows: dict = {}
    order = []
    seen_params = set()
    for call in tr.calls:
        op = call.op
        ins = [tr.shapes[k] for k in call.in_keys]
        outs = [tr.shapes[k] for k in call.out_keys]
        macs, flops = call_cost(op, ins, outs)
        key = id(op)
        if key not in rows:
            p = 0
            if isinstance(op, L.Layer) and key not in seen_params:
                p = int(sum(int(np.prod(w.shape)) for w in op.weights))
                seen_params.add(key)
            rows[key] = [op.name, type(op).__name__, p, 0, 0, outs[0] if outs else ()]
            order.append(key)
        rows[key][3] += macs
        rows[key][4] += flops
    layers = tuple(
        LayerProfile(r[0], r[1], r[2], r[3], r[4], tuple(r[5])) for r in (rows[k] for k in order)
    )
    return Profile(
        total_params=int(sum(r.params for r in layers)),
        total_macs=int(sum(r.macs for r in layers)),
        total_flops=int(sum(r.flops for r in layers)),
        layers=layers,
    )
