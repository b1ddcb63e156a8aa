"""Channel affinity, redundancy and adaptive strength: the math of ACSL.

Pure functions on tensors (``keras.ops``), no layers and no state, so each one
can be checked against a NumPy reference. Section numbers refer to the method
description (docs/ACSL.md).

Conventions: channels-last feature maps. A feature map of shape
``(B, H, W, C)`` (or any ``(B, ..., C)``) is flattened to ``(B, N, C)``; every
channel is a column of length ``N``. A rank-2 map ``(B, C)`` (a Dense unit) has
no spatial extent, so its batch is used as the sample axis: ``(1, B, C)``.
"""

from __future__ import annotations

from keras import ops

AFFINITIES = ("cosine", "attention")
DIRECTIONS = ("redundant", "informative", "uniform")


def _flatten(features):
    features = ops.convert_to_tensor(features)
    features = ops.cast(ops.stop_gradient(features), "float32")
    rank = len(features.shape)
    if rank < 2:
        raise ValueError(
            "A feature map needs a batch and a channel axis, i.e. rank >= 2. "
            f"Received: features.shape={tuple(features.shape)}"
        )
    channels = features.shape[-1]
    if rank == 2:
        return ops.expand_dims(features, 0)
    return ops.reshape(features, (ops.shape(features)[0], -1, channels))


def channel_affinity(
    features,
    kind: str = "cosine",
    *,
    center: bool = False,
    attention_scale: float = 0.1,
    epsilon: float = 1e-6,
):
    """Batch-averaged C x C channel affinity of a feature map (section 2, step 1).

    ``cosine``: each channel column is scaled to unit L2 norm (epsilon-guarded)
    and ``A_b = F_b^T F_b`` is the cosine similarity of every channel pair.
    ``attention``: ``A_b = softmax_rows(F_b^T F_b / attention_scale)`` on the
    same normalised columns (channel attention in the DANet style; the scale
    keeps the softmax from being flat on [-1, 1] similarities).

    No gradient flows through the result.

    Args:
        features: ``(B, ..., C)`` tensor.
        kind: ``"cosine"`` or ``"attention"``.
        center: subtract each channel's spatial mean before normalising
            (turns cosine similarity into Pearson correlation).
        attention_scale: softmax temperature for ``kind="attention"``.
        epsilon: guard for all-zero channels (a dead ReLU channel has
            affinity 0 with everything).

    Returns:
        ``(C, C)`` float32 tensor.
    """
    if kind not in AFFINITIES:
        raise ValueError(f"`kind` must be one of {AFFINITIES}. Received: kind={kind!r}")
    f = _flatten(features)
    if center:
        f = f - ops.mean(f, axis=1, keepdims=True)
    norm = ops.sqrt(ops.sum(ops.square(f), axis=1, keepdims=True) + epsilon)
    f = f / norm
    gram = ops.einsum("bnc,bnd->bcd", f, f)
    if kind == "attention":
        gram = ops.softmax(gram / attention_scale, axis=-1)
    return ops.mean(gram, axis=0)


def redundancy(affinity):
    """Per-channel redundancy ``r_i = mean_{j != i} |A_ij|`` (section 2, step 3).

    In ``[0, 1]`` for cosine and attention affinities. A unit with one channel
    has redundancy 0.
    """
    a = ops.abs(ops.cast(ops.convert_to_tensor(affinity), "float32"))
    c = a.shape[-1]
    if c is None:
        raise ValueError("The affinity must have a static channel count.")
    if c == 1:
        return ops.zeros((1,), "float32")
    off_diag = ops.sum(a, axis=-1) - ops.diagonal(a)
    return off_diag / float(c - 1)


def strength_weights(
    redundancy_scores,
    *,
    direction: str = "redundant",
    temperature: float = 1.0,
    clip=None,
    epsilon: float = 1e-6,
):
    """Per-channel penalty weights ``w`` with mean 1 inside the unit (step 4).

    ``redundant``: ``w_i = (r_i + eps)^t / mean((r + eps)^t)``: correlated
    channels are pushed harder towards zero.
    ``informative``: ``w_i = (r_i + eps)^-t / mean((r + eps)^-t)``: the inverse
    ranking.
    ``uniform``: ``w_i = 1`` (Network Slimming).

    ``clip=(lo, hi)`` clips the weights and renormalises them to mean 1 again
    (so after renormalisation the bounds hold only approximately).
    """
    if direction not in DIRECTIONS:
        raise ValueError(
            f"`direction` must be one of {DIRECTIONS}. Received: direction={direction!r}"
        )
    r = ops.cast(ops.convert_to_tensor(redundancy_scores), "float32")
    if direction == "uniform":
        return ops.ones_like(r)
    exponent = temperature if direction == "redundant" else -temperature
    w = ops.power(r + epsilon, exponent)
    w = w / ops.mean(w)
    if clip is not None:
        w = ops.clip(w, clip[0], clip[1])
        w = w / ops.mean(w)
    return w


def context_guidance(redundancy_scores):
    """CAP's context guiding vector ``g_i = 1 - r_i`` (section 3): how unique a
    channel's context is. High for channels that nothing else explains."""
    r = ops.cast(ops.convert_to_tensor(redundancy_scores), "float32")
    return 1.0 - r


def weighted_l1(gamma, weights, penalty):
    """``penalty * sum_i weights_i * |gamma_i|`` in float32."""
    gamma = ops.cast(gamma, "float32")
    return ops.cast(penalty, "float32") * ops.sum(ops.cast(weights, "float32") * ops.abs(gamma))


__all__ = [
    "AFFINITIES",
    "DIRECTIONS",
    "channel_affinity",
    "context_guidance",
    "redundancy",
    "strength_weights",
    "weighted_l1",
]
