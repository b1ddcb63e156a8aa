"""Building blocks shared by the reference models (private)."""

from __future__ import annotations

import keras


def channels(c: int, width: float) -> int:
    """Scale a channel count by ``width`` (at least 1)."""
    return max(1, int(round(c * width)))


def check_width(width) -> float:
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not width > 0:
        raise ValueError(f"`width` must be a positive number. Received: width={width!r}")
    return float(width)


def check_input_shape(input_shape, *, channels_required: bool = True) -> tuple:
    try:
        shape = tuple(None if d is None else int(d) for d in input_shape)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"`input_shape` must be a tuple (height, width, channels). Received: input_shape={input_shape!r}"
        ) from e
    if len(shape) != 3 or (channels_required and shape[-1] is None):
        raise ValueError(
            "`input_shape` must be (height, width, channels) with a known channel count. "
            f"Received: input_shape={input_shape!r}"
        )
    return shape


def check_num_classes(num_classes) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(
            f"`num_classes` must be a positive integer. Received: num_classes={num_classes!r}"
        )
    return num_classes


def conv_bn_relu(
    x, filters: int, name: str, *, kernel_size=3, strides=1, dilation_rate=1, relu=True
):
    """Conv2D (no bias) -> BatchNormalization -> ReLU, named ``{name}_conv/_bn/_relu``."""
    x = keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        dilation_rate=dilation_rate,
        use_bias=False,
        kernel_initializer="he_normal",
        name=f"{name}_conv",
    )(x)
    x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    if relu:
        x = keras.layers.ReLU(name=f"{name}_relu")(x)
    return x


def basic_block(x, filters: int, name: str, *, strides: int = 1):
    """ResNet basic block (two 3x3 Conv-BN) with a Conv1x1-BN projection shortcut
    whenever the shape changes (option B), so every Add joins two BN outputs."""
    shortcut = x
    y = conv_bn_relu(x, filters, f"{name}_1", strides=strides)
    y = conv_bn_relu(y, filters, f"{name}_2", relu=False)
    if strides != 1 or x.shape[-1] != filters:
        shortcut = conv_bn_relu(
            x, filters, f"{name}_shortcut", kernel_size=1, strides=strides, relu=False
        )
    y = keras.layers.Add(name=f"{name}_add")([y, shortcut])
    return keras.layers.ReLU(name=f"{name}_out")(y)


def small_resnet_features(
    x, width: float, *, name: str = "backbone", stages=(32, 64, 128), blocks=(1, 1, 1)
):
    """Stem (stride 1) + one stride-2 stage per entry of ``stages``: output stride 2**len(stages)."""
    x = conv_bn_relu(x, channels(max(stages[0] // 2, 1), width), f"{name}_stem")
    for s, (c, n) in enumerate(zip(stages, blocks), start=1):
        for b in range(1, n + 1):
            x = basic_block(
                x, channels(c, width), f"{name}_stage{s}_block{b}", strides=2 if b == 1 else 1
            )
    return x
