"""Datasets for the three vision tasks: classification, segmentation, counting.

- :func:`load_fashion_mnist` - real Fashion-MNIST from local IDX files.
- :func:`make_segmentation_set` / :func:`segmentation_dataset` - composite
  segmentation scenes built from real Fashion-MNIST items.
- :func:`make_counting_set` / :func:`counting_dataset` - composite dense
  crowd-counting scenes with Gaussian density maps.
- :mod:`acsl_tf.datasets.density` - density maps and sum-preserving pooling.
- :mod:`acsl_tf.datasets.benchmarks` - loaders for the real benchmark layouts
  (Mall, ShanghaiTech, Cityscapes, CamVid).

Importing this package needs only NumPy; TensorFlow, SciPy and Pillow are
imported inside the functions that use them.
"""

from acsl_tf.datasets.benchmarks import (
    CAMVID_CLASSES,
    CITYSCAPES_CLASSES,
    Samples,
    cityscapes_train_ids,
    load_camvid,
    load_cityscapes,
    load_mall,
    load_shanghaitech,
)
from acsl_tf.datasets.composite import (
    BACKGROUND,
    SEGMENTATION_GROUPS,
    SEGMENTATION_NUM_CLASSES,
    counting_dataset,
    make_counting_set,
    make_segmentation_set,
    segmentation_dataset,
)
from acsl_tf.datasets.density import (
    adaptive_sigmas,
    density_map,
    downsample_density,
    gaussian_kernel,
)
from acsl_tf.datasets.fashion_mnist import CLASS_NAMES, load_fashion_mnist, read_idx, write_idx

__all__ = [
    "BACKGROUND",
    "CAMVID_CLASSES",
    "CITYSCAPES_CLASSES",
    "CLASS_NAMES",
    "Samples",
    "cityscapes_train_ids",
    "load_camvid",
    "load_cityscapes",
    "load_mall",
    "load_shanghaitech",
    "SEGMENTATION_GROUPS",
    "SEGMENTATION_NUM_CLASSES",
    "adaptive_sigmas",
    "counting_dataset",
    "density_map",
    "downsample_density",
    "gaussian_kernel",
    "load_fashion_mnist",
    "make_counting_set",
    "make_segmentation_set",
    "read_idx",
    "segmentation_dataset",
    "write_idx",
]
