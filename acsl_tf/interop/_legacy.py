"""Lazy, side-effect-free imports of tf_keras and tensorflow-model-optimization.

Importing ``tensorflow_model_optimization`` sets ``TF_USE_LEGACY_KERAS=1`` in
``os.environ``. TensorFlow resolves ``tf.keras`` (a lazy loader) on first use
from that variable, so an import at the wrong moment would turn ``tf.keras``
into tf_keras for the rest of the process. :func:`keras_guard` prevents that:
it resolves ``tf.keras`` under the process's own setting first and restores the
variable afterwards. Every entry point of :mod:`acsl_tf.interop` that touches
tf_keras or tfmot runs inside it.
"""

from __future__ import annotations

import contextlib
import importlib
import os

ENV_KEY = "TF_USE_LEGACY_KERAS"


def install_hint() -> str:
    """The pip command that installs tf_keras and tfmot for the running TensorFlow."""
    try:
        import tensorflow as tf

        major_minor = ".".join(tf.__version__.split(".")[:2])
        tfk = f"tf_keras=={major_minor}.*"
    except ImportError:  # pragma: no cover - TensorFlow is the backend
        tfk = "tf_keras"
    return (
        'pip install "acsl_tf[bench]", or, next to tensorflow-cpu: '
        f'pip install --no-deps "{tfk}" tensorflow-model-optimization==0.8.1 dm-tree attrs mock'
    )


def _resolve_tf_keras():
    """Make TensorFlow bind ``tf.keras`` now, under the current environment."""
    import tensorflow as tf

    with contextlib.suppress(Exception):
        getattr(tf.keras, "Model", None)


@contextlib.contextmanager
def keras_guard():
    """Run a block that may import tf_keras/tfmot without changing the process's Keras.

    On exit ``TF_USE_LEGACY_KERAS`` has its value from before the block (or is
    unset again), and ``tf.keras`` is what it was bound to before.
    """
    before = os.environ.get(ENV_KEY)
    _resolve_tf_keras()
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ENV_KEY, None)
        else:
            os.environ[ENV_KEY] = before


def _require(module: str, what: str):
    with keras_guard():
        try:
            return importlib.import_module(module)
        except ImportError as e:
            raise ImportError(
                f"{what} needs the optional package `{module}`. Install it with: "
                f"{install_hint()}. Received: ImportError({e})"
            ) from e


def tf_keras():
    """The ``tf_keras`` module (imported lazily, with an install hint on failure).

    Public as ``acsl_tf.interop.import_tf_keras``.
    """
    return _require("tf_keras", "Converting between Keras 3 and tf_keras")


def tfmot():
    """The ``tensorflow_model_optimization`` module, imported without changing ``tf.keras``.

    Public as ``acsl_tf.interop.import_tfmot``. Importing tfmot directly sets
    ``TF_USE_LEGACY_KERAS=1`` in the process; this import restores the
    variable and keeps ``tf.keras`` bound as it was.

    Raises:
        ImportError: tf_keras or tfmot is missing; the message has the pip command.
    """
    tf_keras()
    return _require("tensorflow_model_optimization", "Quantization-aware training through tfmot")


def is_tf_keras_object(obj) -> bool:
    """True if ``obj`` is an instance of a tf_keras class (checked without importing tf_keras)."""
    return any(c.__module__.split(".")[0] == "tf_keras" for c in type(obj).__mro__)
