"""ACSL sparsity training: the wrapper, the correlation-driven regularizer,
strength schedules, the budget controller and the entry points
(``prune_low_correlation`` / ``strip_pruning``)."""
