"""Folding removed channels and measuring how exact a rewrite is.

A removed channel is not always zero. Its *reference* value is what the
original model computes once the channel is silenced:

- in a group covered by BatchNormalization gammas, the gammas of the removed
  channels are set to 0, so each BN outputs its constant ``beta`` and every
  reader sees ``act(beta)`` (softplus, sigmoid, ``x*2+1``... give non-zero
  constants);
- in any other group (pruned by a weight criterion) the producers' removed
  output channels are set to 0, and readers see whatever the layers in
  between make of 0.

:func:`probe` runs the original graph once on random inputs with those
channels silenced and records every consumer's input. :func:`fold_plan`
turns the removed features' constants into a per-output correction of the
consumer (its bias, or the moving mean of the BatchNormalization right after
a bias-free consumer), computed by the consumer's handler, which also says
whether the fold is exact (Dense, 1x1 and valid-padded convs) or not (the
borders of same-padded kxk convs, strided transposed convs, channels that
are not constant, e.g. behind a squeeze-and-excitation gate). After the
rewrite, :func:`measure` compares the new model with the reference outputs,
so every claim of exactness is checked on the model that is returned.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np

from acsl_tf import _keras
from acsl_tf.graph import handlers as _h

__all__ = ["Probe", "probe", "fold_plan", "measure"]

#: Relative deviation (max abs error / max abs output) under which a
#: rewrite counts as exact in float32.
EXACT_RTOL = 1e-4


@dataclass
class Probe:
    """Inputs and values of one reference run."""

    inputs: list
    values: dict  # tensor key -> np.ndarray
    outputs: list


def probe_inputs(trace, batch: int = 2, seed: int = 0, spatial: int = 32) -> list:
    rng = np.random.default_rng(seed)
    out = []
    for k in trace.input_keys:
        shp = tuple(d if d is not None else spatial for d in trace.shapes[k][1:])
        dt = keras.backend.standardize_dtype(trace.dtypes[k] or "float32")
        if "int" in dt:
            out.append(rng.integers(0, 2, (batch,) + shp).astype(dt))
        else:
            out.append(rng.standard_normal((batch,) + shp).astype(dt))
    return out


def _bn_silenced(bn, x, mask):
    """Inference-mode BatchNormalization with gamma 0 on ``mask``."""
    n = mask.shape[0]
    gamma = np.asarray(bn.gamma, np.float64) if bn.scale else np.ones(n)
    gamma = np.where(mask, 0.0, gamma)
    beta = np.asarray(bn.beta, np.float64) if bn.center else np.zeros(n)
    inv = gamma / np.sqrt(np.asarray(bn.moving_variance, np.float64) + bn.epsilon)
    shift = beta - np.asarray(bn.moving_mean, np.float64) * inv
    dt = keras.backend.standardize_dtype(x.dtype)
    return x * keras.ops.cast(inv, dt) + keras.ops.cast(shift, dt)


def removed_masks(graph, keep: dict):
    """``(unit masks, producer masks)``: the features to silence at each
    covering unit (by id of the BN layer) and at each producer of an
    uncovered group (by id of the op)."""
    unit_masks = {}
    prod_masks = {}
    covered = {r for r, g in graph.groups.items() if g.covered}
    for unit in graph.units.values():
        roots = [graph.find(s) for s in unit.map.sources]
        sub = {r: v for r, v in keep.items() if r in covered and r in roots}
        f = graph.keep_features(unit.map, sub)
        if f is None:
            continue
        mask = np.ones(graph.size(unit.map), bool)
        mask[f] = False
        unit_masks[id(unit.layer)] = mask
    for r, k in keep.items():
        if r in covered:
            continue
        g = graph.groups[r]
        for op in g.producers:
            prod_masks.setdefault(id(op), {})[r] = k
    return unit_masks, prod_masks


def probe(graph, keep: dict, *, batch: int = 2, seed: int = 0) -> Probe:
    """Run the original graph with the removed channels silenced.

    ``batch`` must be at least 2: a removed channel that is constant within
    one sample but not across samples (a constant times a squeeze-and-excitation
    gate, which is per sample) would look constant with a single sample.
    """
    if batch < 2:
        raise ValueError(
            f"probe needs batch >= 2 to see per-sample values. Received: batch={batch}"
        )
    tr = graph.trace
    inputs = probe_inputs(tr, batch, seed)
    unit_masks, prod_masks = removed_masks(graph, keep)
    values = {k: keras.ops.convert_to_tensor(x) for k, x in zip(tr.input_keys, inputs)}
    for call in tr.calls:
        op = call.op
        fill = {id(kt): values[k] for kt, k in zip(call.node.input_tensors, call.in_keys)}
        args, kwargs = _keras.call_arguments(call.node, fill)
        bn = getattr(op, "layer", op)
        if isinstance(bn, keras.layers.BatchNormalization) and id(bn) in unit_masks:
            out = _bn_silenced(bn, args[0], unit_masks[id(bn)])
        else:
            if isinstance(op, keras.layers.Layer):
                # also for layers whose call() has no `training` argument:
                # Keras hands it to the layers nested inside (their BNs)
                kwargs["training"] = False
            out = op(*args, **kwargs)
        flat = keras.tree.flatten(out)
        if id(op) in prod_masks:
            m = graph.call_out_maps[call.index][0]
            f = graph.keep_features(m, prod_masks[id(op)])
            mask = np.zeros(graph.size(m), np.float32)
            mask[f] = 1.0
            flat[0] = flat[0] * keras.ops.cast(mask, flat[0].dtype)
        for k, t in zip(call.out_keys, flat):
            values[k] = t
    return Probe(inputs, values, [np.asarray(values[k]) for k in tr.output_keys])


class _RemovedStats:
    """Per-channel mean and spread of the removed features of one probed
    tensor, in float64.

    Equal, bit for bit, to ``v.astype(float64).mean(axis=0)`` and
    ``abs(v - mean).max()`` of the ``(pixels, removed)`` matrix ``v``, without
    its float64 copies: the mean accumulates in float64 in the same order, and
    rounding is monotonic, so the largest ``abs(v - mean)`` of a column sits at
    its largest or smallest value.
    """

    def __init__(self, value, removed):
        v = np.asarray(value).reshape(-1, removed.shape[0])[:, removed]
        if v.shape[0] == 0 or v.shape[1] == 0:  # nothing to reduce: NumPy's own answers
            v = v.astype(np.float64)
            self.mean = v.mean(axis=0)
            self.spread = float(np.abs(v - self.mean).max()) if v.size else 0.0
            return
        self.mean = np.mean(v, axis=0, dtype=np.float64)
        hi = v.max(axis=0).astype(np.float64) - self.mean
        lo = self.mean - v.min(axis=0).astype(np.float64)
        self.spread = float(np.maximum(hi, lo).max())


def fold_plan(graph, keep: dict, pr: Probe) -> tuple[dict, list]:
    """Corrections for the consumers of removed channels.

    Returns:
        ``(folds, notes)``: ``folds`` maps ``id(op)`` to ``("bias", delta)``
        or ``("mean", delta, bn_op)`` (per original output channel);
        ``notes`` lists the approximate folds with the reason.
    """
    tr = graph.trace
    per_op: dict = {}
    notes: list = []
    readers_of: dict = {}
    ncalls: dict = {}
    for c in tr.calls:
        ncalls[id(c.op)] = ncalls.get(id(c.op), 0) + 1
        for k in c.in_keys:
            readers_of.setdefault(k, []).append(c)
    stats: dict = {}  # (tensor key, removed mask) -> _RemovedStats, shared by its readers
    for call in tr.calls:
        h = graph.handler(call.op)
        if h is None or not isinstance(call.op, keras.layers.Layer):
            continue
        m = graph.call_in_maps[call.index][0] if graph.call_in_maps[call.index] else None
        if m is None:
            continue
        ik = graph.keep_features(m, keep)
        if ik is None:
            continue
        if type(h).fold is _h.LayerHandler.fold and h.coverage_kind(graph, call) != "producer":
            continue  # an element-wise layer carries the removal on: nothing to fold or report
        n_feat = graph.size(m)
        removed = np.ones(n_feat, bool)
        removed[ik] = False
        skey = (call.in_keys[0], removed.tobytes())
        st = stats.get(skey)
        if st is None:
            st = stats[skey] = _RemovedStats(pr.values[call.in_keys[0]], removed)
        consts = np.zeros(n_feat)
        consts[removed] = st.mean
        res = h.fold(call.op, consts, removed)
        if res is None:
            # Only a consumer (a layer that opens new channels) drops the
            # removed channels; element-wise layers carry the removal on.
            big = float(np.abs(consts[removed]).max()) if removed.any() else 0.0
            if big > 1e-6 and h.coverage_kind(graph, call) == "producer":
                notes.append(
                    f"{graph.name(call.op)!r} ({type(call.op).__name__}) has no fold rule; the "
                    f"removed channels' constant (up to {big:.3g}) is dropped"
                )
            continue
        delta, note = res
        spread = st.spread if removed.any() else 0.0
        scale = float(np.abs(consts[removed]).max()) if removed.any() else 0.0
        if spread > 1e-6 * (1.0 + scale):
            note = (
                f"{graph.name(call.op)!r}: the removed input channels are not constant "
                f"(max deviation from their mean {spread:.3g}); their mean is folded"
            )
        per_op.setdefault(id(call.op), []).append((call, np.asarray(delta, np.float64), note))
    folds = {}
    for key, items in per_op.items():
        deltas = np.stack([d for _, d, _ in items])
        delta = deltas.mean(axis=0)
        call = items[0][0]
        op_notes = [n for _, _, n in items if n]
        if len(items) > 1 and np.abs(deltas - delta).max() > 1e-6 * (1 + np.abs(delta).max()):
            op_notes.append(
                f"{graph.name(call.op)!r} is shared and its calls read different constants; "
                "their mean is folded"
            )
        if not np.any(np.abs(delta) > 0):
            continue
        notes.extend(op_notes)
        target = ("bias", delta)
        if not getattr(call.op, "use_bias", True) and len(items) == 1:
            readers = readers_of.get(call.out_keys[0], [])
            if (
                len(readers) == 1
                and type(readers[0].op) is keras.layers.BatchNormalization
                and ncalls[id(readers[0].op)] == 1
            ):
                target = ("mean", delta, readers[0].op)
        folds[key] = target
    return folds, list(dict.fromkeys(notes))


def measure(model, pr: Probe) -> tuple[float, float]:
    """``(max abs error, relative error)`` of ``model`` against the probe's
    reference outputs (relative to the largest reference output)."""
    ins = pr.inputs if len(pr.inputs) > 1 else pr.inputs[0]
    out = model(ins, training=False)
    flat = [np.asarray(t, np.float64) for t in keras.tree.flatten(out)]
    err = 0.0
    scale = 0.0
    for a, b in zip(flat, pr.outputs):
        b = np.asarray(b, np.float64)
        if a.shape != b.shape:
            return float("inf"), float("inf")
        err = max(err, float(np.nanmax(np.abs(a - b))) if a.size else 0.0)
        scale = max(scale, float(np.nanmax(np.abs(b))) if b.size else 0.0)
    return err, err / max(scale, 1e-12)


def handler_fold_note(graph, keep, *, conditional: bool = True) -> list:
    """Approximations the graph knows before any probe (channel-axis
    normalisations reading removed channels and, with ``conditional``,
    coverage through a product, which the probe then checks)."""
    notes = []
    for call in graph.trace.calls:
        h = graph.handler(call.op)
        if isinstance(h, _h.NormHandler):
            m = graph.call_in_maps[call.index][0]
            if graph.keep_features(m, keep) is not None:
                notes.append(graph.notes.get(graph.name(call.op), graph.name(call.op)))
    for r in keep if conditional else ():
        g = graph.groups[r]
        if g.conditional:
            notes.append(
                f"group of {', '.join(n for n, _ in g.members[:3])}: covered through a product "
                "(e.g. a squeeze-and-excitation gate); exact only where the removed channels' "
                "constant is 0"
            )
    return notes
