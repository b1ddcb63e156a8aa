"""Crowd-counting networks that predict a density map at 1/8 input resolution.

The predicted count of an image is the sum of the map. Train with an MSE loss
against :func:`~acsl_tf.datasets.downsample_density` of the ground truth
(factor 8) and report :class:`~acsl_tf.metrics.CountMAE` /
:class:`~acsl_tf.metrics.CountMSE`. Every convolution is followed by a
BatchNormalization layer, so ACSL sparsity training and ``shrink`` apply to all
of them (except the final 1x1 density convolution).
"""

from __future__ import annotations

import os

import keras

from acsl_tf.models._blocks import (
    channels,
    check_input_shape,
    check_width,
    conv_bn_relu,
    small_resnet_features,
)

__all__ = ["resnet101_counter", "resnet_counter", "vgg16_decoder"]

_VGG16_FRONTEND = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512))
_CSRNET_BACKEND = (512, 512, 512, 256, 128, 64)


def _check_activation(output_activation):
    if output_activation not in ("relu", "linear", None):
        raise ValueError(
            f'`output_activation` must be "relu", "linear" or None. Received: output_activation={output_activation!r}'
        )
    return output_activation or "linear"


def _density_head(x, output_activation):
    return keras.layers.Conv2D(
        1, 1, activation=_check_activation(output_activation), name="density"
    )(x)


def vgg16_decoder(
    input_shape: tuple = (None, None, 3),
    *,
    width: float = 1.0,
    backend_dilation: int = 2,
    output_activation: str | None = "relu",
    name: str = "vgg16_decoder",
) -> keras.Model:
    """VGG16-Decoder (CSRNet-style) density regressor.

    Front end: the 10 convolutions of VGG16 up to ``conv4_3`` (3 max-pools, so
    stride 8), each Conv-BN-ReLU. Back end: six 3x3 dilated Conv-BN-ReLU layers
    with 512, 512, 512, 256, 128, 64 channels (dilation 2, as CSRNet's
    configuration B). Output: 1x1 Conv to one channel named ``density``.

    Layer names: ``block{b}_conv{i}_conv/_bn/_relu`` (front end),
    ``block{b}_pool``, ``backend{i}_conv/_bn/_relu``, ``density``.

    Args:
        input_shape: ``(H, W, C)``; ``H``/``W`` may be None (any size; use
            multiples of 8 so the map is exactly 1/8).
        width: Channel multiplier (1.0 = 16.3M params; 0.125 trains on a CPU).
        backend_dilation: Dilation of the back-end convolutions.
        output_activation: ``"relu"`` (non-negative density) or ``"linear"``.
        name: Model name.

    Returns:
        A functional ``keras.Model`` mapping ``(B, H, W, C)`` to ``(B, H/8, W/8, 1)``.

    Raises:
        ValueError: On invalid arguments.

    Example:
        >>> m = vgg16_decoder((96, 96, 3), width=0.25)
        >>> m.output_shape
        (None, 12, 12, 1)
    """
    input_shape = check_input_shape(input_shape)
    width = check_width(width)
    inputs = keras.Input(input_shape, name="image")
    x = inputs
    for b, block in enumerate(_VGG16_FRONTEND, start=1):
        for i, c in enumerate(block, start=1):
            x = conv_bn_relu(x, channels(c, width), f"block{b}_conv{i}")
        if b < len(_VGG16_FRONTEND):
            x = keras.layers.MaxPooling2D(2, name=f"block{b}_pool")(x)
    for i, c in enumerate(_CSRNET_BACKEND, start=1):
        x = conv_bn_relu(x, channels(c, width), f"backend{i}", dilation_rate=backend_dilation)
    return keras.Model(inputs, _density_head(x, output_activation), name=name)


def resnet101_counter(
    input_shape: tuple = (None, None, 3),
    *,
    weights: str | os.PathLike | None = None,
    stage: str = "conv3",
    head_width: float = 1.0,
    output_activation: str | None = "relu",
    name: str = "resnet101_counter",
) -> keras.Model:
    """ResNet101 backbone (``keras.applications``) with a 1/8-resolution density head.

    The backbone is truncated at ``conv3_block4_out`` (stride 8, 512 channels;
    ``stage="conv3"``) or at ``conv4_block23_out`` (stride 16, 1024 channels,
    followed by a 2x bilinear ``UpSampling2D``; ``stage="conv4"``). The head is
    Conv3x3-BN-ReLU (256), Conv3x3-BN-ReLU (128) and a 1x1 ``density`` conv.
    Backbone layers keep the Keras names (``conv2_block1_1_conv`` ...), so a
    ResNet101 weights file can be loaded.

    Args:
        input_shape: ``(H, W, C)``; H/W may be None.
        weights: None (random init) or the path of a Keras ResNet101 weights
            file without top (``*_notop.h5``), loaded into the full backbone
            with ``load_weights`` before truncation. No weights are downloaded.
        stage: ``"conv3"`` or ``"conv4"``.
        head_width: Channel multiplier of the head.
        output_activation: ``"relu"`` or ``"linear"``.
        name: Model name.

    Returns:
        A functional ``keras.Model`` ``(B, H, W, C) -> (B, H/8, W/8, 1)``.

    Raises:
        ValueError: On invalid arguments; FileNotFoundError for a missing
            weights file.

    Example:
        >>> m = resnet101_counter((64, 64, 3))
        >>> m.output_shape
        (None, 8, 8, 1)
    """
    input_shape = check_input_shape(input_shape)
    head_width = check_width(head_width)
    if stage not in ("conv3", "conv4"):
        raise ValueError(f'`stage` must be "conv3" or "conv4". Received: stage={stage!r}')
    if weights is not None and not os.path.isfile(weights):
        raise FileNotFoundError(
            f"The ResNet101 weights file does not exist. Pass weights=None or the path of a "
            f"Keras ResNet101 (include_top=False) weights file. Received: weights={str(weights)!r}"
        )
    base = keras.applications.ResNet101(include_top=False, weights=None, input_shape=input_shape)
    if weights is not None:
        base.load_weights(weights)
    layer = "conv3_block4_out" if stage == "conv3" else "conv4_block23_out"
    x = base.get_layer(layer).output
    if stage == "conv4":
        x = keras.layers.UpSampling2D(2, interpolation="bilinear", name="head_upsample")(x)
    x = conv_bn_relu(x, channels(256, head_width), "head1")
    x = conv_bn_relu(x, channels(128, head_width), "head2")
    return keras.Model(base.input, _density_head(x, output_activation), name=name)


def resnet_counter(
    input_shape: tuple = (None, None, 3),
    *,
    width: float = 1.0,
    blocks: tuple[int, int, int] = (1, 1, 1),
    output_activation: str | None = "relu",
    name: str = "resnet_counter",
) -> keras.Model:
    """Small ResNet density regressor (fast on a CPU; stands in for ResNet101).

    Stem Conv3x3-BN-ReLU (16 x width), three stages of basic blocks with 32,
    64, 128 (x width) channels, each starting with stride 2 and a Conv1x1-BN
    projection shortcut, then a Conv3x3-BN-ReLU head (64 x width) and a 1x1
    ``density`` conv. Layer names: ``backbone_stem_*``,
    ``backbone_stage{s}_block{b}_{1,2,shortcut}_{conv,bn,relu}``,
    ``backbone_stage{s}_block{b}_add/_out``, ``head_*``, ``density``.

    Args:
        input_shape: ``(H, W, C)``; H/W may be None (multiples of 8).
        width: Channel multiplier.
        blocks: Basic blocks per stage.
        output_activation: ``"relu"`` or ``"linear"``.
        name: Model name.

    Returns:
        A functional ``keras.Model`` ``(B, H, W, C) -> (B, H/8, W/8, 1)``.

    Raises:
        ValueError: On invalid arguments.

    Example:
        >>> resnet_counter((32, 32, 1), width=0.5).output_shape
        (None, 4, 4, 1)
    """
    input_shape = check_input_shape(input_shape)
    width = check_width(width)
    if len(blocks) != 3 or any(int(b) < 1 for b in blocks):
        raise ValueError(f"`blocks` must be three positive integers. Received: blocks={blocks!r}")
    inputs = keras.Input(input_shape, name="image")
    x = small_resnet_features(
        inputs, width, stages=(32, 64, 128), blocks=tuple(int(b) for b in blocks)
    )
    x = conv_bn_relu(x, channels(64, width), "head")
    return keras.Model(inputs, _density_head(x, output_activation), name=name)
