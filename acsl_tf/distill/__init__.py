"""Recovering accuracy after pruning: the ``Distiller`` model and the
distillation losses."""
