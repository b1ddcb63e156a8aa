"""DCP and DKP: discrimination-aware channel and kernel pruning.

Liu, Zhuang, Tan et al., "Discrimination-aware Network Pruning for Deep Model
Compression" (TPAMI 2021; NeurIPS 2018 for DCP). See docs/DCP.md.

* :func:`with_auxiliary_heads`: auxiliary heads at stage boundaries, trained
  with ``fit`` (task loss + all auxiliary losses).
* :func:`select_channels`: greedy channel selection by gradient norm on the
  channel groups of the dependency graph; returns a plan for ``shrink`` and
  the re-optimised kernels.
* :func:`select_channels_stagewise`: the published stage-wise schedule:
  per stage, fine-tuning with the stage's head, selection, pruning.
* :func:`select_kernels`: the same with single kernels as the unit (DKP).
* :func:`discrimination_aware_prune`: heads, fine-tuning, selection and the
  thin model in one call.
"""

from acsl_tf.dcp.api import discrimination_aware_prune
from acsl_tf.dcp.heads import (
    AuxiliaryHeads,
    ResizedDensityMSE,
    ResizedSparseCategoricalCrossentropy,
    auxiliary_head_points,
    with_auxiliary_heads,
)
from acsl_tf.dcp.report import dcp_report, dkp_report, plot_widths
from acsl_tf.dcp.select import (
    DCPResult,
    DKPResult,
    KeepPrunedKernels,
    LayerSelection,
    apply_dcp,
    greedy_select,
    select_channels,
    select_kernels,
)
from acsl_tf.dcp.stagewise import StageRecord, select_channels_stagewise

__all__ = [
    "AuxiliaryHeads",
    "DCPResult",
    "DKPResult",
    "KeepPrunedKernels",
    "LayerSelection",
    "ResizedDensityMSE",
    "ResizedSparseCategoricalCrossentropy",
    "StageRecord",
    "apply_dcp",
    "auxiliary_head_points",
    "dcp_report",
    "discrimination_aware_prune",
    "dkp_report",
    "greedy_select",
    "plot_widths",
    "select_channels",
    "select_channels_stagewise",
    "select_kernels",
    "with_auxiliary_heads",
]
