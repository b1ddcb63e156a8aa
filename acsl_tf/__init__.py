"""acsl_tf: structured channel pruning for Keras 3.

Wrap a model with :func:`prune_low_correlation`, train it with ``model.fit``
(an adaptive, correlation-driven L1 penalty on BatchNorm gammas), physically
remove the sparse channels with :func:`shrink`, fine-tune (optionally with
:class:`Distiller`), and export with :mod:`acsl_tf.export`.
"""

from acsl_tf import _keras

_keras.check_backend()

__version__ = "0.1.0"

__all__ = ["__version__"]

# --- ACSL sparsity training (acsl_tf.affinity/regularizer/wrapper/prune/schedules/callbacks) ---
# (section owned by the core; do not edit from other sections)
# --- end ACSL ---

# --- shrink / profile (acsl_tf.graph, acsl_tf.profile, acsl_tf.criteria, acsl_tf.shrink) ---
# --- end shrink ---

# --- export (acsl_tf.export) ---
# --- end export ---

# --- tasks: datasets, metrics, models (acsl_tf.datasets, acsl_tf.metrics, acsl_tf.models) ---
from acsl_tf import datasets  # noqa: E402

__all__ += ["datasets"]
# --- end tasks ---

# --- distillation (acsl_tf.distill) ---
# --- end distillation ---
