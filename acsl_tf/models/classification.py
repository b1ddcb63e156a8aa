"""Image-classification networks: CIFAR ResNet, a small VGG, MobileNetV2.

All return logits by default (``classifier_activation=None``): compile with
``keras.losses.SparseCategoricalCrossentropy(from_logits=True)``; pass
``classifier_activation="softmax"`` for probabilities. Every convolution is
followed by BatchNormalization.
"""

from __future__ import annotations

import keras

from acsl_tf.models._blocks import (
    basic_block,
    channels,
    check_input_shape,
    check_num_classes,
    check_width,
    conv_bn_relu,
)

__all__ = ["cifar_resnet", "mobilenet_v2", "vgg_small"]


def _head(x, num_classes, classifier_activation):
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.layers.Dense(num_classes, activation=classifier_activation, name="predictions")(x)


def cifar_resnet(
    depth: int = 20,
    num_classes: int = 10,
    input_shape: tuple = (32, 32, 3),
    *,
    width: float = 1.0,
    classifier_activation: str | None = None,
    name: str | None = None,
) -> keras.Model:
    """ResNet for CIFAR (He et al. 2016, section 4.2): depth = 6n + 2.

    Stem Conv3x3-BN-ReLU (16 x width), three stages of ``n`` basic blocks with
    16, 32, 64 (x width) channels (stages 2 and 3 start with stride 2), global
    average pooling and a Dense classifier. Shortcuts that change shape are
    Conv1x1-BN projections (option B), so every Add joins two BN outputs and
    forms a well-formed pruning group. ResNet-20: 0.27M params at width 1;
    ResNet-56: 0.86M.

    Layer names: ``stem_*``, ``stage{s}_block{b}_{1,2,shortcut}_{conv,bn,relu}``,
    ``stage{s}_block{b}_add/_out``, ``gap``, ``predictions``.

    Args:
        depth: 6n + 2 (20, 32, 44, 56, 110, ...).
        num_classes: Number of classes.
        input_shape: ``(H, W, C)``.
        width: Channel multiplier.
        classifier_activation: None (logits) or e.g. ``"softmax"``.
        name: Model name (default ``resnet{depth}``).

    Returns:
        A functional ``keras.Model`` ``(B, H, W, C) -> (B, num_classes)``.

    Raises:
        ValueError: If ``depth`` is not 6n + 2 or other arguments are invalid.

    Example:
        >>> cifar_resnet(20).count_params() < 300_000
        True
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(
            f"`depth` must be 6n + 2 with n >= 1 (20, 32, 44, 56, 110). Received: depth={depth!r}"
        )
    input_shape = check_input_shape(input_shape)
    num_classes = check_num_classes(num_classes)
    width = check_width(width)
    n = (depth - 2) // 6
    inputs = keras.Input(input_shape, name="image")
    x = conv_bn_relu(inputs, channels(16, width), "stem")
    for s, c in enumerate((16, 32, 64), start=1):
        for b in range(1, n + 1):
            strides = 2 if (s > 1 and b == 1) else 1
            x = basic_block(x, channels(c, width), f"stage{s}_block{b}", strides=strides)
    return keras.Model(
        inputs, _head(x, num_classes, classifier_activation), name=name or f"resnet{depth}"
    )


def vgg_small(
    input_shape: tuple = (28, 28, 1),
    num_classes: int = 10,
    *,
    width: float = 1.0,
    classifier_activation: str | None = None,
    name: str = "vgg_small",
) -> keras.Model:
    """Small VGG: six Conv3x3-BN-ReLU (32, 32, 64, 64, 128, 128 x width), a max-pool
    after each pair, global average pooling and a Dense classifier (289k params at
    width 1 on 28x28x1).

    Layer names: ``block{b}_conv{i}_conv/_bn/_relu``, ``block{b}_pool``, ``gap``,
    ``predictions``.

    Args:
        input_shape: ``(H, W, C)``.
        num_classes: Number of classes.
        width: Channel multiplier.
        classifier_activation: None (logits) or e.g. ``"softmax"``.
        name: Model name.

    Returns:
        A functional ``keras.Model`` ``(B, H, W, C) -> (B, num_classes)``.

    Raises:
        ValueError: On invalid arguments.

    Example:
        >>> vgg_small().count_params()
        289066
    """
    input_shape = check_input_shape(input_shape)
    num_classes = check_num_classes(num_classes)
    width = check_width(width)
    inputs = keras.Input(input_shape, name="image")
    x = inputs
    for b, c in enumerate((32, 64, 128), start=1):
        for i in (1, 2):
            x = conv_bn_relu(x, channels(c, width), f"block{b}_conv{i}")
        x = keras.layers.MaxPooling2D(2, name=f"block{b}_pool")(x)
    return keras.Model(inputs, _head(x, num_classes, classifier_activation), name=name)


def mobilenet_v2(
    input_shape: tuple = (96, 96, 3),
    num_classes: int = 10,
    *,
    alpha: float = 1.0,
    classifier_activation: str | None = None,
    weights: str | None = None,
    name: str | None = None,
) -> keras.Model:
    """MobileNetV2 from ``keras.applications`` (random init; no download).

    Args:
        input_shape: ``(H, W, C)``, H and W >= 32.
        num_classes: Number of classes.
        alpha: Width multiplier (0.35, 0.5, 0.75, 1.0, 1.3, 1.4 or any > 0).
        classifier_activation: None (logits) or e.g. ``"softmax"``.
        weights: Optional path of a MobileNetV2 weights file with the same
            ``num_classes`` head, loaded with ``load_weights``.
        name: Model name (default: Keras' ``mobilenetv2_{alpha}_{rows}``).

    Returns:
        The functional ``keras.Model`` (layer names as in Keras).

    Raises:
        ValueError: On invalid arguments.

    Example:
        >>> mobilenet_v2((32, 32, 3), 10, alpha=0.35).output_shape
        (None, 10)
    """
    input_shape = check_input_shape(input_shape)
    num_classes = check_num_classes(num_classes)
    if input_shape[0] is not None and min(input_shape[:2]) < 32:
        raise ValueError(
            f"MobileNetV2 needs inputs of at least 32x32. Received: input_shape={input_shape}"
        )
    check_width(alpha)
    kwargs = {"name": name} if name else {}
    model = keras.applications.MobileNetV2(
        input_shape=input_shape,
        alpha=alpha,
        include_top=True,
        weights=None,
        classes=num_classes,
        classifier_activation=classifier_activation,
        **kwargs,
    )
    if weights is not None:
        model.load_weights(weights)
    return model
