"""Compare BatchNormalization moving statistics with the statistics of real data.

A model whose BatchNorm moving statistics are stale (e.g. right after sparsity
training, when the penalty moved the activations faster than the moving
averages followed) gives wrong outputs in inference mode. An exported artifact
reproduces those wrong outputs faithfully, so parity against Keras does not
reveal it. :func:`check_batchnorm_statistics` measures, for every
BatchNormalization layer, how far its moving mean and variance are from the
mean and variance of its inputs on the representative data.
"""

from __future__ import annotations

import numpy as np

# A layer is stale when its score (see check_batchnorm_statistics) exceeds this.
# A channel whose mean is off by one moving standard deviation scores 1.
# Measured on vgg_small(width=0.5), Fashion-MNIST, 6,000 training images, 200
# of them as representative data: after 3 epochs of plain SGD training (moving
# averages not yet converged; 73 % test accuracy) the layers score 0.48-0.60;
# after 3 epochs of ACSL sparsity training without recalibration (11.5 %) they
# score 0.68-3.07, five of six above 2.2; after recalibrate_batchnorm (72 %)
# 0.007-0.03.
STALE_THRESHOLD = 1.0


def _batchnorm_layers(model):
    import keras

    flatten = getattr(model, "_flatten_layers", None)
    if flatten is not None:
        layers = list(flatten(include_self=False, recursive=True))
    else:  # pragma: no cover - Keras versions without _flatten_layers
        layers, stack = [], list(getattr(model, "layers", []))
        while stack:
            layer = stack.pop(0)
            layers.append(layer)
            stack.extend(getattr(layer, "layers", []))
    return [
        layer
        for layer in layers
        if isinstance(layer, keras.layers.BatchNormalization) and layer.built
    ]


def check_batchnorm_statistics(
    model, x, *, threshold: float = STALE_THRESHOLD, batch_size: int = 32
) -> dict | None:
    """Measure how far BatchNorm moving statistics are from those of ``x``.

    The model runs in inference mode on ``x`` while each BatchNormalization
    layer records the per-channel mean ``m`` and variance ``v`` of its input.
    With the layer's moving mean ``mu`` and variance ``var`` and its epsilon,
    each channel gets the deviation

        ``|m - mu| / sqrt(var + eps) + |log(sqrt(v + eps) / sqrt(var + eps))|``

    (0 when the statistics agree; 1 for a shift by one standard deviation or a
    scale off by a factor e). The layer's score is the mean deviation over its
    channels weighted by ``|gamma|`` (channels with gamma 0 do not matter).

    Args:
        model: A Keras model.
        x: Float inputs of shape ``(N,) + input_shape`` (the representative
            data, preprocessed like training inputs).
        threshold: Score above which a layer is reported as stale.
        batch_size: Batch size of the inference pass.

    Returns:
        ``None`` when the model has no BatchNormalization layer, else a dict
        with ``layers`` (the number checked), ``threshold``, ``max_score``,
        ``scores`` (layer path -> score) and ``stale`` (a list of
        ``{"layer", "score", "mean_shift", "std_ratio"}`` for the layers above
        ``threshold``, worst first; ``mean_shift`` is the gamma-weighted mean of
        ``|m - mu| / sqrt(var + eps)`` and ``std_ratio`` that of
        ``sqrt(v + eps) / sqrt(var + eps)``).
    """
    import keras

    layers = _batchnorm_layers(model)
    if not layers:
        return None
    sums = {id(layer): None for layer in layers}

    def recorder(layer, original):
        def call(inputs, *args, **kwargs):
            axis = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
            rank = len(inputs.shape)
            axes = [a % rank for a in axis]
            reduce = tuple(i for i in range(rank) if i not in axes)
            t = keras.ops.cast(inputs, "float32")
            count = float(np.prod([int(keras.ops.shape(t)[i]) for i in reduce]))
            s1 = keras.ops.convert_to_numpy(keras.ops.sum(t, axis=reduce)).astype(np.float64)
            s2 = keras.ops.convert_to_numpy(keras.ops.sum(t * t, axis=reduce)).astype(np.float64)
            prev = sums[id(layer)]
            sums[id(layer)] = (
                (s1, s2, count) if prev is None else (prev[0] + s1, prev[1] + s2, prev[2] + count)
            )
            return original(inputs, *args, **kwargs)

        return call

    patched = []
    try:
        for layer in layers:
            original = layer.call
            layer.call = recorder(layer, original)
            patched.append(layer)
        for start in range(0, len(x), batch_size):
            model(x[start : start + batch_size], training=False)
    finally:
        for layer in patched:
            vars(layer).pop("call", None)

    scores, stale = {}, []
    for layer in layers:
        record = sums[id(layer)]
        if record is None:  # the layer was not reached (e.g. an unused branch)
            continue
        s1, s2, count = record
        mean = s1 / count
        var = np.maximum(s2 / count - mean**2, 0.0)
        eps = float(layer.epsilon)
        mu = np.asarray(keras.ops.convert_to_numpy(layer.moving_mean), np.float64).reshape(-1)
        mvar = np.asarray(keras.ops.convert_to_numpy(layer.moving_variance), np.float64)
        mstd = np.sqrt(np.maximum(mvar.reshape(-1), 0.0) + eps)
        bstd = np.sqrt(var.reshape(-1) + eps)
        mean = mean.reshape(-1)
        if mean.shape != mu.shape:
            continue
        shift = np.abs(mean - mu) / mstd
        ratio = bstd / mstd
        deviation = shift + np.abs(np.log(ratio))
        if layer.scale and layer.gamma is not None:
            weight = np.abs(np.asarray(keras.ops.convert_to_numpy(layer.gamma), np.float64))
            weight = weight.reshape(-1)
        else:
            weight = np.ones_like(deviation)
        if not weight.sum() > 0:
            weight = np.ones_like(deviation)
        score = float(np.sum(weight * deviation) / np.sum(weight))
        scores[layer.path] = round(score, 4)
        if score > threshold:
            stale.append(
                {
                    "layer": layer.path,
                    "score": round(score, 4),
                    "mean_shift": round(float(np.sum(weight * shift) / np.sum(weight)), 4),
                    "std_ratio": round(float(np.sum(weight * ratio) / np.sum(weight)), 4),
                }
            )
    stale.sort(key=lambda s: -s["score"])
    return {
        "layers": len(scores),
        "threshold": float(threshold),
        "max_score": max(scores.values()) if scores else 0.0,
        "scores": scores,
        "stale": stale,
    }


def stale_message(check: dict, quantization: str) -> str:
    """The warning text for a check with stale layers."""
    stale = check["stale"]
    names = ", ".join(
        f"{s['layer']} (mean off by {s['mean_shift']:.2g} moving std, batch std / moving std "
        f"= {s['std_ratio']:.2g})"
        for s in stale[:3]
    )
    more = f" and {len(stale) - 3} more" if len(stale) > 3 else ""
    return (
        f"The BatchNormalization moving statistics of {len(stale)} of {check['layers']} layers "
        f"differ from the batch statistics of `representative_data`: {names}{more}. The model "
        "is stale (typical right after sparsity training) and its inference-mode outputs are "
        "likely wrong. The exported artifact reproduces the Keras model, so the parity check "
        "(quantization="
        f"{quantization!r}) cannot reveal this. Re-estimate the statistics with "
        "`acsl_tf.recalibrate_batchnorm(model, x_train[:2048])` and export again, or pass "
        "check_batchnorm=False if the representative data is not from the training "
        f"distribution. Received: max score={check['max_score']:.3g} > "
        f"threshold={check['threshold']:g}"
    )
