"""Interoperability with tf_keras (Keras 2) and tensorflow-model-optimization.

- :func:`to_tf_keras` / :func:`from_tf_keras`: rebuild a functional or
  Sequential model in the other Keras, weights included.
- :func:`shrink_tf_keras`: remove channels from a tf_keras model with
  ``acsl_tf.shrink``; :func:`maybe_from_tf_keras` / :func:`maybe_to_tf_keras`
  for entry points that accept both kinds of model.
- :func:`quantize_aware`: quantization-aware fine-tuning with tfmot and a
  verified int8 TFLite export.
- :func:`import_tfmot` / :func:`import_tf_keras`: the modules, imported without
  changing ``tf.keras`` or ``TF_USE_LEGACY_KERAS``.

tf_keras and tfmot are optional and imported only when one of these functions
runs; the process's ``keras``, ``tf.keras`` and ``TF_USE_LEGACY_KERAS`` are left
as they were. Install them with ``pip install "acsl_tf[bench]"``.
"""

from acsl_tf.interop._legacy import tf_keras as import_tf_keras
from acsl_tf.interop._legacy import tfmot as import_tfmot
from acsl_tf.interop.qat import QATResult, quantize_aware
from acsl_tf.interop.tf_keras import (
    from_tf_keras,
    is_tf_keras_model,
    maybe_from_tf_keras,
    maybe_to_tf_keras,
    shrink_tf_keras,
    to_tf_keras,
)

__all__ = [
    "QATResult",
    "from_tf_keras",
    "import_tf_keras",
    "import_tfmot",
    "is_tf_keras_model",
    "maybe_from_tf_keras",
    "maybe_to_tf_keras",
    "quantize_aware",
    "shrink_tf_keras",
    "to_tf_keras",
]
