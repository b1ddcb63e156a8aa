"""Read a Keras 3 functional model into a flat, topologically ordered list of
calls.

Nested functional and Sequential models are inlined (their layers become
calls of the outer graph), raw ``keras.ops`` applied to symbolic tensors are
included, and calls whose outputs the model never reads are dropped. Every
call is identified by its operation *object* and the index of the call, never
by a name: two nested models may hold layers of the same name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from acsl_tf import _keras


@dataclass
class Call:
    """One call of an operation inside the flattened graph.

    Attributes:
        op: The operation (a ``keras.layers.Layer`` or a raw ``keras.ops``
            operation).
        node: The Keras node of this call.
        in_keys: Keys of the tensors in ``node.input_tensors``.
        out_keys: Keys of ``node.outputs`` (flattened).
        index: Position in topological order.
        scope: Names of the nested models this call sits in (outermost
            first; empty for the top level).
        call_index: This is the n-th call of ``op`` in the trace.
    """

    op: Any
    node: Any
    in_keys: list
    out_keys: list
    index: int
    scope: tuple = ()
    call_index: int = 0

    @property
    def name(self) -> str:
        return self.op.name


@dataclass
class Trace:
    """A traced model: its calls, tensor shapes and input/output keys."""

    model: Any
    calls: list
    input_keys: list
    output_keys: list
    shapes: dict  # key -> tuple shape (batch dim first)
    dtypes: dict
    input_names: list
    all_ops: list = field(default_factory=list)  # every op, read or not (for count_params)
    names: dict = field(default_factory=dict)  # id(op) -> unique display name


def trace_model(model) -> Trace:
    """Read ``model`` into a flat, topologically ordered list of calls.

    Args:
        model: A built functional or Sequential ``keras.Model``.

    Returns:
        A :class:`Trace`.

    Raises:
        ValueError: If ``model`` is not a graph (functional) model.
    """
    _keras.check_graph_model(model, "trace_model")
    fn = _keras.functional_of(model)
    counter = [0]
    shapes: dict = {}
    dtypes: dict = {}

    def new_key(kt):
        k = counter[0]
        counter[0] += 1
        shapes[k] = tuple(kt.shape)
        dtypes[k] = getattr(kt, "dtype", "float32")
        return k

    calls: list = []
    all_ops: list = []
    seen_ops: set = set()
    input_keys = [new_key(x) for x in fn.inputs]

    def walk(graph, in_keys, stack, scope):
        graph = _keras.functional_of(graph)
        local = {id(x): k for x, k in zip(graph.inputs, in_keys)}
        for node in _keras.nodes_in_order(graph):
            inputs = node.input_tensors
            if any(id(x) not in local for x in inputs):
                continue
            op = node.operation
            ins = [local[id(x)] for x in inputs]
            if _keras.is_functional(op):
                if id(op) in stack:
                    raise ValueError(f"Recursive model nesting. Received: model={op.name!r}")
                outs = walk(op, ins, stack | {id(op)}, scope + (op.name,))
                for x, k in zip(node.outputs, outs):
                    local[id(x)] = k
                continue
            outs = [new_key(x) for x in node.outputs]
            refined = _refined_output_shapes(node, inputs, [shapes[k] for k in ins], op)
            if refined is not None:
                for k, shp in zip(outs, refined):
                    shapes[k] = shp
            for x, k in zip(node.outputs, outs):
                local[id(x)] = k
            if id(op) not in seen_ops:
                seen_ops.add(id(op))
                all_ops.append((op, scope))
            calls.append(Call(op, node, ins, outs, len(calls), scope))
        return [local[id(x)] for x in graph.outputs]

    output_keys = walk(fn, input_keys, {id(fn)}, ())
    calls = _live_calls(calls, output_keys)
    counts: dict = {}
    for c in calls:
        c.call_index = counts.get(id(c.op), 0)
        counts[id(c.op)] = c.call_index + 1
    input_names = _keras.input_layer_names(fn)
    return Trace(
        model,
        calls,
        input_keys,
        output_keys,
        shapes,
        dtypes,
        input_names,
        all_ops=[op for op, _ in all_ops],
        names=_unique_names(all_ops, input_names),
    )


def _refined_output_shapes(node, inputs, in_shapes, op):
    """Output shapes of a call inside a nested model whose own inputs are less
    specific than what the outer model feeds it (e.g. a backbone built for
    ``(None, None, 3)`` images called on 64x64 ones); None when the node's
    recorded shapes already hold."""
    if all(tuple(x.shape) == tuple(s) for x, s in zip(inputs, in_shapes)):
        return None
    import keras

    fill = {id(x): keras.KerasTensor(s, dtype=x.dtype) for x, s in zip(inputs, in_shapes)}
    args, kwargs = _keras.call_arguments(node, fill)
    try:
        spec = op.compute_output_spec(*args, **kwargs)
    except Exception:  # noqa: BLE001 - keep the recorded shapes when a layer cannot say
        return None
    flat = keras.tree.flatten(spec)
    if len(flat) != len(node.outputs):
        return None
    return [tuple(t.shape) for t in flat]


def _live_calls(calls, output_keys):
    """Calls whose outputs reach a model output, renumbered in order."""
    needed = set(output_keys)
    live = []
    for c in reversed(calls):
        if any(k in needed for k in c.out_keys):
            live.append(c)
            needed.update(c.in_keys)
    live.reverse()
    for i, c in enumerate(live):
        c.index = i
    return live


def _unique_names(ops_scopes, taken) -> dict:
    """``id(op) -> name``: the layer's own name, or ``scope/name`` (then a
    numeric suffix) where two inlined layers share a name."""
    count: dict = {}
    for op, _ in ops_scopes:
        count[op.name] = count.get(op.name, 0) + 1
    used = set(taken)
    out = {}
    for op, scope in ops_scopes:
        name = op.name
        if count[name] > 1 or name in used:
            base = "_".join(scope + (name,)) if scope else name
            name, i = base, 1
            while name in used:
                name = f"{base}_{i}"
                i += 1
        used.add(name)
        out[id(op)] = name
    return out
