"""The channel dependency graph of a Keras 3 functional model.

Everything in acsl_tf that reasons about channels (sparsity training, the
budget controller, ``profile``, planning, applying and folding) reads it from
one :class:`DependencyGraph`; per-layer knowledge lives in one handler per
layer family (:mod:`acsl_tf.graph.handlers`).
"""
