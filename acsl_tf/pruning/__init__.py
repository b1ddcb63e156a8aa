"""Channel pruning on the dependency graph: importance criteria, the planner,
applying a plan, folding removed channels, parameter/FLOPs profiling and the
report."""

from acsl_tf.pruning.apply import ApproximateShrinkWarning, ShrinkResult, apply_plan, shrink
from acsl_tf.pruning.plan import (
    ChannelGroup,
    LayerCollapseWarning,
    PlanFile,
    ShrinkPlan,
    plan_shrink,
)
from acsl_tf.pruning.profile import LayerProfile, Profile, call_cost, profile
from acsl_tf.pruning.report import ReportRow, ShrinkReport, shrink_report

__all__ = [
    "ApproximateShrinkWarning",
    "ShrinkResult",
    "apply_plan",
    "shrink",
    "ChannelGroup",
    "LayerCollapseWarning",
    "PlanFile",
    "ShrinkPlan",
    "plan_shrink",
    "LayerProfile",
    "Profile",
    "call_cost",
    "profile",
    "ReportRow",
    "ShrinkReport",
    "shrink_report",
]
