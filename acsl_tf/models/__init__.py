"""Reference models for the three vision tasks (functional Keras 3, BN after every conv).

Counting (density map at 1/8 resolution): :func:`vgg16_decoder`,
:func:`resnet101_counter`, :func:`resnet_counter`.
Segmentation (per-pixel logits): :func:`unet`, :func:`pspnet`.
Classification (logits): :func:`cifar_resnet`, :func:`vgg_small`,
:func:`mobilenet_v2`.

Every builder takes a ``width`` (or ``alpha``) multiplier and an input size, so
the same architecture trains at small scale on a CPU and at full size on real
hardware. Layer names are fixed and documented per builder.
"""

from acsl_tf.models.classification import cifar_resnet, mobilenet_v2, vgg_small
from acsl_tf.models.counting import resnet101_counter, resnet_counter, vgg16_decoder
from acsl_tf.models.segmentation import psp_branch_names, pspnet, unet

__all__ = [
    "cifar_resnet",
    "mobilenet_v2",
    "psp_branch_names",
    "pspnet",
    "resnet101_counter",
    "resnet_counter",
    "unet",
    "vgg16_decoder",
    "vgg_small",
]
