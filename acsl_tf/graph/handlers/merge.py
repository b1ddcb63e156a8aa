"""Element-wise merges and concatenation."""

from __future__ import annotations

import keras
import numpy as np

from acsl_tf.graph.handlers.base import Barrier, LayerHandler, _n


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
