"""acsl_tf: structured channel pruning for Keras 3.

Wrap a model with :func:`prune_low_correlation`, train it with ``model.fit``
(an adaptive, correlation-driven L1 penalty on BatchNorm gammas), physically
remove the sparse channels with :func:`shrink`, fine-tune (optionally with
:class:`Distiller`), and export with :mod:`acsl_tf.export`.
"""

# Before anything imports Keras' internals: a missing TensorFlow or another
# Keras backend is reported with the install command.
from acsl_tf import _keras

_keras.check_backend()

__version__ = "0.1.0"

# oneDNN's CPU kernels crash on the filter gradient of strided 1x1
# convolutions; route those around it (exactly) so oneDNN can stay on.
from acsl_tf import onednn  # noqa: E402

onednn._auto_install()

__all__ = ["__version__", "onednn"]

# --- ACSL sparsity training (acsl_tf.sparsity) ---
from acsl_tf.sparsity import affinity, callbacks, schedules  # noqa: E402
from acsl_tf.sparsity.api import get_wrappers, prune_low_correlation, strip_pruning  # noqa: E402
from acsl_tf.sparsity.batchnorm import recalibrate_batchnorm  # noqa: E402
from acsl_tf.sparsity.callbacks import (  # noqa: E402
    BudgetStrength,
    CoupledStrength,
    PenaltyMetrics,
    SparsityTensorBoard,
)
from acsl_tf.sparsity.cap import cap_criterion, prune_context_aware  # noqa: E402
from acsl_tf.sparsity.regularizer import CorrelationSparsity  # noqa: E402
from acsl_tf.sparsity.report import sparsity_report  # noqa: E402
from acsl_tf.sparsity.schedules import ConstantStrength, PolynomialStrength  # noqa: E402
from acsl_tf.sparsity.wrapper import PruneLowCorrelation  # noqa: E402

__all__ += [
    "affinity",
    "callbacks",
    "schedules",
    "BudgetStrength",
    "SparsityTensorBoard",
    "PenaltyMetrics",
    "CoupledStrength",
    "get_wrappers",
    "prune_low_correlation",
    "strip_pruning",
    "CorrelationSparsity",
    "ConstantStrength",
    "PolynomialStrength",
    "sparsity_report",
    "PruneLowCorrelation",
    "cap_criterion",
    "prune_context_aware",
    "recalibrate_batchnorm",
]
# --- end ACSL ---

# --- dependency graph and pruning (acsl_tf.graph, acsl_tf.pruning) ---
from acsl_tf import graph  # noqa: E402
from acsl_tf.graph import DependencyGraph, register_layer_handler  # noqa: E402
from acsl_tf.pruning import (  # noqa: E402
    ApproximateShrinkWarning,
    LayerCollapseWarning,
    Profile,
    ShrinkPlan,
    ShrinkReport,
    ShrinkResult,
    apply_plan,
    criteria,  # noqa: E402
    plan_shrink,
    profile,
    shrink,
    shrink_report,
)

__all__ += [
    "graph",
    "criteria",
    "DependencyGraph",
    "register_layer_handler",
    "ApproximateShrinkWarning",
    "LayerCollapseWarning",
    "Profile",
    "ShrinkPlan",
    "ShrinkReport",
    "ShrinkResult",
    "apply_plan",
    "plan_shrink",
    "profile",
    "shrink",
    "shrink_report",
]
# --- end shrink ---

# --- export (acsl_tf.export) ---
from acsl_tf import export  # noqa: E402
from acsl_tf.export import benchmark_tflite, compare_tflite  # noqa: E402

__all__ += ["export", "benchmark_tflite", "compare_tflite"]
# --- end export ---

# --- tasks: datasets, metrics, models (acsl_tf.datasets, acsl_tf.metrics, acsl_tf.models) ---
from acsl_tf import datasets, models  # noqa: E402

__all__ += ["datasets", "metrics", "models"]
# --- end tasks ---

# --- modules written with TensorFlow ops: metrics, distillation ---
# On the JAX backend without TensorFlow installed, `import acsl_tf` still
# works; these names then raise an ImportError that says what to install.
_TF_ONLY_ERROR = None
try:
    from acsl_tf import metrics  # noqa: E402
    from acsl_tf.distill.distiller import Distiller  # noqa: E402
    from acsl_tf.distill.losses import (  # noqa: E402
        DistillationKLDivergence,
        SpatialAffinityLoss,
        affinity_distillation_loss,
        density_distillation_loss,
        distillation_kl_divergence,
        masked_sparse_categorical_crossentropy,
        spatial_affinity,
    )
except ImportError as _err:
    if _keras.backend() == "tensorflow" or not _keras._module_missing("tensorflow"):
        raise
    _TF_ONLY_ERROR = _err

__all__ += [
    "Distiller",
    "DistillationKLDivergence",
    "SpatialAffinityLoss",
    "affinity_distillation_loss",
    "density_distillation_loss",
    "distillation_kl_divergence",
    "masked_sparse_categorical_crossentropy",
    "spatial_affinity",
]
# --- end distillation ---

# --- interop: tf_keras models in and out, QAT through tfmot (acsl_tf.interop) ---
# tf_keras and tfmot are imported only when one of these functions runs.
from acsl_tf import interop  # noqa: E402
from acsl_tf.interop import from_tf_keras, quantize_aware, shrink_tf_keras, to_tf_keras  # noqa: E402

__all__ += ["interop", "from_tf_keras", "quantize_aware", "shrink_tf_keras", "to_tf_keras"]
# --- end interop ---

# --- DCP / DKP: discrimination-aware channel and kernel pruning (acsl_tf.dcp) ---
from acsl_tf import dcp  # noqa: E402
from acsl_tf.dcp import (  # noqa: E402
    discrimination_aware_prune,
    select_channels,
    select_kernels,
    with_auxiliary_heads,
)

__all__ += [
    "dcp",
    "discrimination_aware_prune",
    "select_channels",
    "select_kernels",
    "with_auxiliary_heads",
]
# --- end DCP ---


_TF_ONLY_NAMES = (
    "metrics",
    "Distiller",
    "DistillationKLDivergence",
    "SpatialAffinityLoss",
    "affinity_distillation_loss",
    "density_distillation_loss",
    "distillation_kl_divergence",
    "masked_sparse_categorical_crossentropy",
    "spatial_affinity",
)


def __getattr__(name):
    # Reached only for names the imports above did not bind: the
    # TensorFlow-written modules when TensorFlow is not installed.
    if _TF_ONLY_ERROR is not None and name in _TF_ONLY_NAMES:
        raise ImportError(
            f"acsl_tf.{name} is written with TensorFlow ops and TensorFlow is not installed "
            f"(Keras runs on {_keras.backend()!r}). Install it next to JAX with "
            f"{_keras.INSTALL_HINT}; the JAX backend keeps working. "
            f"Received: {_TF_ONLY_ERROR}",
            name="tensorflow",
        )
    raise AttributeError(f"module 'acsl_tf' has no attribute {name!r}")
