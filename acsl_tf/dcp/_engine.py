"""Running a traced model call by call, with some layers' kernels replaced.

Discrimination-aware pruning re-optimises the kernels of the layers that read
a channel group while everything upstream stays fixed. The engine runs the
calls of a :class:`~acsl_tf.graph.DependencyGraph` trace on concrete data,
computes the *linear* output of a consuming layer (Conv or Dense before its
activation) with a kernel passed in, and can start from cached tensors so
only the calls downstream of the consumers run inside a gradient tape.
"""

from __future__ import annotations

import keras
import numpy as np

from acsl_tf import _keras

__all__ = ["is_consumer_layer", "linear", "activate", "slot_channels", "Engine"]


def is_consumer_layer(op) -> bool:
    """A layer whose kernel DCP can re-optimise: Conv1D/2D/3D with
    ``groups=1`` (not causal) or Dense."""
    if isinstance(op, keras.layers.Dense):
        return True
    conv_types = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
    if isinstance(op, conv_types) and not isinstance(
        op,
        (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose),
    ):
        return (
            int(getattr(op, "groups", 1)) == 1
            and op.padding != "causal"
            and op.data_format == "channels_last"
        )
    return False


def linear(op, x, kernel):
    """The output of ``op`` before its activation, computed with ``kernel``."""
    if isinstance(op, keras.layers.Dense):
        y = keras.ops.matmul(x, kernel)
    else:
        y = op.convolution_op(x, kernel)
    if op.use_bias:
        y = y + op.bias
    return y


def activate(op, y):
    """Apply ``op``'s activation to its linear output."""
    act = getattr(op, "activation", None)
    return y if act is None else act(y)


def slot_channels(graph, call, root) -> np.ndarray:
    """For each input feature of ``call`` (its kernel's input axis), the
    channel of group ``root`` it carries, or -1 for features of other
    groups."""
    m = graph.call_in_maps[call.index][0]
    per = []
    for s in m.sources:
        n = graph.source_size(s)
        per.append(np.arange(n) if graph.find(s) == root else np.full(n, -1))
    one = np.concatenate(per) if per else np.zeros(0, np.int64)
    return np.tile(one, m.reps).astype(np.int64)


class Engine:
    """Run a model's trace on concrete inputs.

    Args:
        graph: The :class:`~acsl_tf.graph.DependencyGraph` of the model.
    """

    def __init__(self, graph):
        self.graph = graph
        self.trace = graph.trace
        self.producer_of = {}
        for call in self.trace.calls:
            for k in call.out_keys:
                self.producer_of[k] = call

    def inputs_of(self, x) -> dict:
        """``{input key: tensor}`` for the model input(s) ``x``."""
        xs = x if isinstance(x, (list, tuple)) else [x]
        if isinstance(x, dict):
            xs = [x[n] for n in self.trace.input_names]
        if len(xs) != len(self.trace.input_keys):
            raise ValueError(
                f"The model has {len(self.trace.input_keys)} inputs; got {len(xs)} arrays. "
                f"Received: x of type {type(x).__name__}"
            )
        return {k: keras.ops.convert_to_tensor(v) for k, v in zip(self.trace.input_keys, xs)}

    def run(self, values, calls, *, kernels=None, linear_out=None, masks=None, keep=None):
        """Run ``calls`` in order, reading and extending ``values``.

        Args:
            values: ``{tensor key: tensor}``; must hold every input the calls
                read that they do not produce themselves. Extended in place.
            calls: Calls of the trace, in topological order.
            kernels: ``{id(op): kernel}``: consumer layers computed with this
                kernel instead of their own.
            linear_out: Dict filled with ``{call index: linear output}`` for
                the calls in ``kernels``.
            masks: ``{tensor key: mask}`` multiplied onto a tensor when it is
                produced.
            keep: When given, the set of keys to retain; others are dropped
                once no later call of ``calls`` reads them.

        Returns:
            ``values``.
        """
        kernels = kernels or {}
        masks = masks or {}
        last_use = {}
        if keep is not None:
            for i, call in enumerate(calls):
                for k in call.in_keys:
                    last_use[k] = i
        for i, call in enumerate(calls):
            op = call.op
            if id(op) in kernels:
                y = linear(op, values[call.in_keys[0]], kernels[id(op)])
                if linear_out is not None:
                    linear_out[call.index] = y
                outs = [activate(op, y)]
            else:
                fill = {id(kt): values[k] for kt, k in zip(call.node.input_tensors, call.in_keys)}
                args, kwargs = _keras.call_arguments(call.node, fill)
                if "training" in kwargs or _takes_training(op):
                    kwargs["training"] = False
                outs = keras.tree.flatten(op(*args, **kwargs))
            for k, t in zip(call.out_keys, outs):
                if k in masks:
                    t = t * keras.ops.cast(masks[k], t.dtype)
                values[k] = t
            if keep is not None:
                for k in call.in_keys:
                    if last_use.get(k) == i and k not in keep:
                        values.pop(k, None)
        return values

    def downstream(self, start_calls, stop_key) -> list:
        """The calls on a path from the outputs of ``start_calls`` to the
        tensor ``stop_key`` (excluding the start calls), in order."""
        starts = {c.index for c in start_calls}
        reach = set()
        for c in start_calls:
            reach.update(c.out_keys)
        fwd = []
        for call in self.trace.calls:
            if call.index in starts:
                continue
            if any(k in reach for k in call.in_keys):
                reach.update(call.out_keys)
                fwd.append(call)
        if stop_key not in reach:
            return None
        need = {stop_key}
        out = []
        for call in reversed(fwd):
            if any(k in need for k in call.out_keys):
                out.append(call)
                need.update(call.in_keys)
        out.reverse()
        return out

    def upto(self, index: int) -> list:
        """The calls before position ``index``."""
        return [c for c in self.trace.calls if c.index < index]


def _takes_training(op) -> bool:
    return isinstance(op, keras.layers.Layer) and bool(getattr(op, "_call_has_training_arg", False))
