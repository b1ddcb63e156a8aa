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

from acsl_tf.datasets.fashion_mnist import CLASS_NAMES, load_fashion_mnist, read_idx, write_idx

__all__ = ["CLASS_NAMES", "load_fashion_mnist", "read_idx", "write_idx"]
