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

The MACs and FLOPs of each layer come from its handler
(:mod:`acsl_tf.graph.handlers`), the same object that prunes it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from acsl_tf.graph import handlers as _handlers
from acsl_tf.graph.trace import trace_model

__all__ = ["Profile", "LayerProfile", "profile", "call_cost"]


def call_cost(op, in_shapes: list, out_shapes: list, registry=None) -> tuple[int, int]:
    """``(macs, flops)`` of one call of ``op`` with the given shapes (from
    the op's handler; 0 for operations without one)."""
    reg = registry if registry is not None else _handlers.default_registry()
    h = reg.lookup(op)
    if h is None:
        return 0, 0
    macs, flops = h.cost(op, in_shapes, out_shapes)
    return int(macs), int(flops)


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


def profile(model, trace=None, *, handlers=None, graph=None) -> Profile:
    """Count parameters, MACs and FLOPs of a functional / Sequential model.

    Nested functional models are recursed into and raw ``keras.ops`` calls are
    included. Spatial dimensions that are ``None`` count as 1; build the model
    with a fixed input size for meaningful FLOPs.

    Args:
        model: A built functional or Sequential ``keras.Model``.
        trace: Optional pre-computed :func:`acsl_tf.graph.trace_model` result.
        handlers: Optional ``{layer class: LayerHandler}`` for layers of your
            own (scoped to this call).
        graph: Optional :class:`acsl_tf.graph.DependencyGraph` of ``model``
            (its trace and handlers are reused).

    Returns:
        A :class:`Profile`.

    Example:
        >>> p = acsl_tf.profile(model)
        >>> print(p.total_params, p.total_flops)
        >>> print(p.summary())
    """
    if trace is None and handlers is None and graph is not None:
        trace = graph.trace
    if trace is None:
        from acsl_tf.pruning.plan import _from_tf_keras

        model = _from_tf_keras(model)
    tr = trace if trace is not None else trace_model(model)
    reg = graph.registry if graph is not None else _handlers.default_registry().copy()
    for cls, h in dict(handlers or {}).items():
        reg.register(cls, h)
    rows: dict = {}
    order = []
    for op in tr.all_ops:
        p = int(sum(int(np.prod(w.shape)) for w in getattr(op, "weights", [])))
        rows[id(op)] = [tr.names.get(id(op), op.name), type(op).__name__, p, 0, 0, ()]
        order.append(id(op))
    for call in tr.calls:
        op = call.op
        ins = [tr.shapes[k] for k in call.in_keys]
        outs = [tr.shapes[k] for k in call.out_keys]
        macs, flops = call_cost(op, ins, outs, reg)
        row = rows[id(op)]
        row[3] += macs
        row[4] += flops
        if not row[5] and outs:
            row[5] = outs[0]
    layers = tuple(
        LayerProfile(r[0], r[1], r[2], r[3], r[4], tuple(r[5])) for r in (rows[k] for k in order)
    )
    return Profile(
        total_params=int(sum(r.params for r in layers)),
        total_macs=int(sum(r.macs for r in layers)),
        total_flops=int(sum(r.flops for r in layers)),
        layers=layers,
    )
