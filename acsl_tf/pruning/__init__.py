"""Channel pruning on the dependency graph: importance criteria, the planner,
applying a plan, folding removed channels, parameter/FLOPs profiling and the
report."""
