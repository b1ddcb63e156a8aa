"""CAP: context-aware pruning (the non-adaptive ancestor of ACSL).

Training: the same affinity machinery as ACSL, with a uniform L1 penalty
(``prune_context_aware`` = ``prune_low_correlation(method="cap")``). Each
wrapped unit is a context-aware guiding module: it keeps the running channel
affinity of its Conv-BN-activation block.

Pruning: the ``"cap"`` criterion of :func:`acsl_tf.shrink` combines |gamma|
with the context guiding vector ``g_i = 1 - r_i`` (``r`` = redundancy of the
running affinity): a channel whose context nothing else explains is kept.
"""

from __future__ import annotations

import numpy as np

from acsl_tf.pruning import criteria
from acsl_tf.sparsity.api import prune_low_correlation

COMBINATIONS = ("product", "sum")


def prune_context_aware(model, *, penalty: float = 1e-4, **kwargs):
    """Wrap a model for CAP sparsity training (uniform penalty, affinity tracked).

    Equivalent to ``prune_low_correlation(model, method="cap", direction="uniform", ...)``;
    prune afterwards with ``acsl_tf.shrink(model, criterion="cap", ...)``.
    """
    direction = kwargs.pop("direction", "uniform")
    return prune_low_correlation(
        model, penalty=penalty, method="cap", direction=direction, **kwargs
    )


def cap_criterion(combine: str = "product", alpha: float = 1.0):
    """Build a CAP importance criterion.

    Args:
        combine: ``"product"``: ``s_i = |gamma_i| * g_i^alpha``;
            ``"sum"``: ``s_i = |gamma_i| / max|gamma| + alpha * g_i``.
        alpha: weight (exponent for ``"product"``) of the guiding vector.

    Returns:
        ``fn(unit) -> np.ndarray`` usable as ``shrink(criterion=fn)``.
    """
    if combine not in COMBINATIONS:
        raise ValueError(f"`combine` must be one of {COMBINATIONS}. Received: combine={combine!r}")
    if not alpha >= 0:
        raise ValueError(f"`alpha` must be >= 0. Received: alpha={alpha}")

    def cap(unit):
        w = unit.wrapper
        if w is None or not getattr(w, "tracks_affinity", False):
            raise ValueError(
                f"The 'cap' criterion needs the channel affinity that a wrapped unit tracks, "
                f"but unit {unit.name!r} is not wrapped (or is wrapped with plain "
                "direction='uniform'). Pass the model returned by "
                "prune_context_aware(...) / prune_low_correlation(...) after training, "
                "before strip_pruning."
            )
        if int(np.asarray(w.updates)) == 0:
            raise ValueError(
                f"Unit {unit.name!r} has not seen any training batch yet, so its context "
                "guiding vector is undefined. Train the wrapped model first."
            )
        g = 1.0 - np.asarray(w.redundancy(), dtype=np.float64)
        gamma = unit.gamma
        if combine == "product":
            return gamma * np.power(np.clip(g, 0.0, None), alpha)
        return gamma / max(float(gamma.max()), 1e-12) + alpha * g

    cap.__name__ = f"cap_{combine}"
    return cap


criteria.register_criterion("cap", cap_criterion())
