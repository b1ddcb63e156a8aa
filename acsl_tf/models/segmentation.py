"""Semantic-segmentation networks: U-Net/SegNet-style encoder-decoder and PSPNet.

Both return per-pixel class logits ``(B, H, W, num_classes)`` at input
resolution (no softmax): compile with
``keras.losses.SparseCategoricalCrossentropy(from_logits=True,
ignore_class=255)`` and :class:`~acsl_tf.metrics.MeanIoU`. Every convolution
except the final classifier is followed by BatchNormalization, and upsampling
uses ``UpSampling2D`` with integer factors, which the ``shrink`` rewriter
passes channels through.
"""

from __future__ import annotations

import keras

from acsl_tf.models._blocks import (
    channels,
    check_input_shape,
    check_num_classes,
    check_width,
    conv_bn_relu,
    small_resnet_features,
)

__all__ = ["psp_branch_names", "pspnet", "unet"]


def unet(
    input_shape: tuple = (None, None, 3),
    num_classes: int = 11,
    *,
    width: float = 1.0,
    depth: int = 4,
    base_filters: int = 64,
    name: str = "unet",
) -> keras.Model:
    """U-Net: a SegNet/U-Net encoder-decoder with skip connections.

    Encoder level ``i`` (0-based) has two Conv3x3-BN-ReLU with
    ``base_filters * 2**i * width`` channels, then a 2x2 max-pool; the
    bottleneck has ``base_filters * 2**depth * width``. Each decoder level
    upsamples (``UpSampling2D(2)``), applies a Conv3x3-BN-ReLU, concatenates the
    encoder skip, and applies two Conv3x3-BN-ReLU. A 1x1 conv named ``logits``
    gives the class scores.

    Layer names: ``enc{i}_conv{1,2}_*``, ``enc{i}_pool``, ``bottleneck_conv{1,2}_*``,
    ``dec{i}_up``, ``dec{i}_upconv_*``, ``dec{i}_concat``, ``dec{i}_conv{1,2}_*``,
    ``logits``.

    Args:
        input_shape: ``(H, W, C)``; H and W (if known) must be multiples of
            ``2**depth``.
        num_classes: Number of classes.
        width: Channel multiplier.
        depth: Number of pooling levels (>= 1).
        base_filters: Channels of the first level at ``width=1``.
        name: Model name.

    Returns:
        A functional ``keras.Model`` ``(B, H, W, C) -> (B, H, W, num_classes)``.

    Raises:
        ValueError: On invalid arguments.

    Example:
        >>> unet((64, 64, 1), 11, width=0.25, depth=3).output_shape
        (None, 64, 64, 11)
    """
    input_shape = check_input_shape(input_shape)
    num_classes = check_num_classes(num_classes)
    width = check_width(width)
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"`depth` must be a positive integer. Received: depth={depth!r}")
    for d in input_shape[:2]:
        if d is not None and d % (2**depth):
            raise ValueError(
                f"The input height and width must be multiples of 2**depth={2**depth}. "
                f"Received: input_shape={input_shape}, depth={depth}"
            )
    inputs = keras.Input(input_shape, name="image")
    x = inputs
    skips = []
    for i in range(depth):
        c = channels(base_filters * 2**i, width)
        x = conv_bn_relu(x, c, f"enc{i}_conv1")
        x = conv_bn_relu(x, c, f"enc{i}_conv2")
        skips.append(x)
        x = keras.layers.MaxPooling2D(2, name=f"enc{i}_pool")(x)
    c = channels(base_filters * 2**depth, width)
    x = conv_bn_relu(x, c, "bottleneck_conv1")
    x = conv_bn_relu(x, c, "bottleneck_conv2")
    for i in reversed(range(depth)):
        c = channels(base_filters * 2**i, width)
        x = keras.layers.UpSampling2D(2, name=f"dec{i}_up")(x)
        x = conv_bn_relu(x, c, f"dec{i}_upconv")
        x = keras.layers.Concatenate(name=f"dec{i}_concat")([skips[i], x])
        x = conv_bn_relu(x, c, f"dec{i}_conv1")
        x = conv_bn_relu(x, c, f"dec{i}_conv2")
    logits = keras.layers.Conv2D(num_classes, 1, name="logits")(x)
    return keras.Model(inputs, logits, name=name)


def psp_branch_names(model: keras.Model) -> list[str]:
    """Names of the pyramid-pooling branch BatchNormalization layers of a :func:`pspnet`
    model, in bin order (``psp_branch1_bn``, ...). CAP attaches one guiding module to each.

    Example:
        >>> psp_branch_names(pspnet((48, 48, 3), 5, backbone="resnet_small", width=0.25))
        ['psp_branch1_bn', 'psp_branch2_bn', 'psp_branch3_bn', 'psp_branch4_bn']
    """
    names = [layer.name for layer in model.layers]
    return [n for n in names if n.startswith("psp_branch") and n.endswith("_bn")]


def pspnet(
    input_shape: tuple = (96, 96, 3),
    num_classes: int = 11,
    *,
    backbone: str = "resnet_small",
    width: float = 1.0,
    bins: tuple[int, ...] = (1, 2, 3, 6),
    weights: str | None = None,
    name: str = "pspnet",
) -> keras.Model:
    """PSPNet: backbone + pyramid pooling module + classifier, upsampled to the input.

    Backbones:

    - ``"resnet_small"``: a small ResNet (basic blocks, projection shortcuts;
      32/64/128 x ``width`` channels), output stride 8.
    - ``"resnet50"``: ``keras.applications.ResNet50`` truncated at
      ``conv4_block6_out`` (1024 channels, output stride 16; Keras' ResNet has
      no dilated variant). ``width`` must be 1.0; ``weights`` may name a
      ResNet50 no-top weights file (nothing is downloaded).

    Pyramid pooling: for each bin ``b`` (branch ``i`` = 1, 2, ...),
    ``AveragePooling2D(s/b)`` -> 1x1 Conv -> BN -> ReLU -> ``UpSampling2D(s/b,
    bilinear)``, where ``s`` is the feature-map side; the branch layers are
    named ``psp_branch{i}_pool/_conv/_bn/_relu/_up``. Branch width is the
    feature channels divided by the number of bins. The feature map and the
    branches are concatenated (``psp_concat``), followed by ``psp_final``
    Conv3x3-BN-ReLU (512 x width, or 128 x width for resnet_small), a 1x1
    ``classifier`` conv and ``UpSampling2D`` (bilinear) named ``logits`` back
    to the input size.

    Train with batches of at least 2: the bin-1 branch pools to a single
    pixel, so with batch 1 its training-mode BN output is constant and gets no
    gradient.

    Args:
        input_shape: ``(H, W, C)``, fixed. The feature side (H / output stride)
            must be divisible by every bin: with bins (1, 2, 3, 6) use H, W
            multiples of 48 (resnet_small) or 96 (resnet50).
        num_classes: Number of classes.
        backbone: ``"resnet_small"`` or ``"resnet50"``.
        width: Channel multiplier (backbone and head; resnet50: head only if 1.0).
        bins: Pyramid bin sizes.
        weights: Optional ResNet50 weights file (resnet50 backbone only).
        name: Model name.

    Returns:
        A functional ``keras.Model`` ``(B, H, W, C) -> (B, H, W, num_classes)``.

    Raises:
        ValueError: On invalid arguments (with the nearest valid input size).

    Example:
        >>> pspnet((48, 48, 3), 11, width=0.25).output_shape
        (None, 48, 48, 11)
    """
    input_shape = check_input_shape(input_shape)
    num_classes = check_num_classes(num_classes)
    width = check_width(width)
    if backbone not in ("resnet_small", "resnet50"):
        raise ValueError(
            f'`backbone` must be "resnet_small" or "resnet50". Received: backbone={backbone!r}'
        )
    if not bins or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in bins):
        raise ValueError(
            f"`bins` must be a non-empty tuple of positive integers. Received: bins={bins!r}"
        )
    if input_shape[0] is None or input_shape[1] is None:
        raise ValueError(
            f"pspnet needs a fixed input height and width (pooling sizes depend on them). "
            f"Received: input_shape={input_shape}"
        )
    stride = 8 if backbone == "resnet_small" else 16
    lcm = 1
    for b in bins:
        lcm = lcm * b // _gcd(lcm, b)
    for d in input_shape[:2]:
        if d % (stride * lcm):
            raise ValueError(
                f"For backbone={backbone!r} and bins={tuple(bins)} the input height and width must be "
                f"multiples of {stride * lcm} (output stride {stride} x lcm of the bins), e.g. "
                f"{max(1, round(d / (stride * lcm))) * stride * lcm}. Received: input_shape={input_shape}"
            )
    if backbone == "resnet50":
        if width != 1.0:
            raise ValueError(
                f"The resnet50 backbone has a fixed width; use backbone='resnet_small' to scale it. "
                f"Received: width={width}"
            )
        base = keras.applications.ResNet50(include_top=False, weights=None, input_shape=input_shape)
        if weights is not None:
            base.load_weights(weights)
        inputs = base.input
        feat = base.get_layer("conv4_block6_out").output
        head_c = 512
    else:
        if weights is not None:
            raise ValueError(
                f"`weights` is only supported with backbone='resnet50'. Received: weights={weights!r}"
            )
        inputs = keras.Input(input_shape, name="image")
        feat = small_resnet_features(inputs, width, stages=(32, 64, 128), blocks=(1, 1, 1))
        head_c = channels(128, width)
    fh, fw = feat.shape[1], feat.shape[2]
    branch_c = max(1, feat.shape[-1] // len(bins))
    outs = [feat]
    for i, b in enumerate(bins, start=1):
        ph, pw = fh // b, fw // b
        y = keras.layers.AveragePooling2D((ph, pw), strides=(ph, pw), name=f"psp_branch{i}_pool")(
            feat
        )
        y = conv_bn_relu(y, branch_c, f"psp_branch{i}", kernel_size=1)
        y = keras.layers.UpSampling2D((ph, pw), interpolation="bilinear", name=f"psp_branch{i}_up")(
            y
        )
        outs.append(y)
    x = keras.layers.Concatenate(name="psp_concat")(outs)
    x = conv_bn_relu(x, head_c, "psp_final")
    x = keras.layers.Conv2D(num_classes, 1, name="classifier")(x)
    logits = keras.layers.UpSampling2D(stride, interpolation="bilinear", name="logits")(x)
    return keras.Model(inputs, logits, name=name)


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a
