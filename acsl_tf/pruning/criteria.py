"""Channel importance criteria for :func:`acsl_tf.plan_shrink`.

A criterion is a callable ``fn(unit) -> np.ndarray`` that receives a
:class:`UnitContext` (one per BatchNormalization, i.e. per prunable unit)
and returns one non-negative importance per channel of that BN. Higher means
more important. Built-ins:

- ``"gamma"``: ``|gamma|`` of the BN (Network Slimming / ACSL).
- ``"l1"``: L1 norm of each output filter of the layer producing the BN's
  input (Li et al. 2017); falls back to ``|gamma|`` when the BN input has no
  single Conv/Dense producer (e.g. after a concatenation).
- ``"l1_layer"``: the ``"l1"`` norms divided by their mean over the unit, so
  a global ranking removes a similar fraction from every layer (Li et al.
  prune each layer separately; raw norms ranked globally strip the layers
  whose filters have small norms, often the early ones).
- ``"random"``: uniform random scores from ``unit.rng`` (seeded by
  ``plan_shrink(seed=...)``) — a sanity floor.

Register more with :func:`register_criterion`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["UnitContext", "register_criterion", "get_criterion", "list_criteria"]


@dataclass(frozen=True)
class UnitContext:
    """What a criterion sees for one prunable unit.

    Attributes:
        name: The BatchNormalization's name (the key used by ``keep=``).
        bn: The ``keras.layers.BatchNormalization`` layer.
        producer: The Conv/Dense layer whose output the BN normalises, or
            None (several producers, e.g. after a concatenation).
        wrapper: The ``acsl_tf.PruneLowCorrelation`` wrapper around ``bn`` when
            the model is wrapped, else None.
        model: The model being planned.
        rng: A ``numpy.random.Generator`` seeded from ``seed``.
    """

    name: str
    bn: Any
    producer: Any
    wrapper: Any
    model: Any
    rng: Any

    @property
    def gamma(self) -> np.ndarray:
        """``|gamma|`` as float64 (ones when the BN has ``scale=False``)."""
        g = getattr(self.bn, "gamma", None)
        if g is None:
            n = int(self.bn.moving_mean.shape[0])
            return np.ones(n)
        return np.abs(np.asarray(g, dtype=np.float64))


def _gamma(unit: UnitContext) -> np.ndarray:
    return unit.gamma


def _l1(unit: UnitContext) -> np.ndarray:
    p = unit.producer
    n = unit.gamma.shape[0]
    if p is None or not getattr(p, "weights", None):
        return unit.gamma
    k = np.asarray(p.weights[0])
    if type(p).__name__.endswith("Transpose"):
        k = np.swapaxes(k, -1, -2)
    if type(p).__name__.startswith("Separable"):
        k = np.asarray(p.weights[1])
    s = np.abs(k).reshape(-1, k.shape[-1]).sum(axis=0)
    if s.shape[0] != n:
        return unit.gamma
    return s


def _l1_layer(unit: UnitContext) -> np.ndarray:
    s = _l1(unit)
    m = float(s.mean()) if s.size else 0.0
    return s / m if m > 0 else np.ones_like(s)


def _random(unit: UnitContext) -> np.ndarray:
    return unit.rng.random(unit.gamma.shape[0])


_CRITERIA: dict = {"gamma": _gamma, "l1": _l1, "l1_layer": _l1_layer, "random": _random}


def register_criterion(name: str, fn: Callable) -> None:
    """Register an importance criterion under ``name``.

    Args:
        name: Name to use as ``plan_shrink(criterion=name)``.
        fn: ``fn(unit: UnitContext) -> np.ndarray`` of per-channel
            importances (higher = keep).

    Raises:
        ValueError: If ``name`` is not a non-empty string or ``fn`` is not
            callable.

    Example:
        >>> def bn_beta(unit):
        ...     return np.abs(np.asarray(unit.bn.beta))
        >>> acsl_tf.criteria.register_criterion("beta", bn_beta)
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"Criterion name must be a non-empty string. Received: name={name!r}")
    if not callable(fn):
        raise ValueError(f"Criterion must be callable. Received: fn={fn!r}")
    _CRITERIA[name] = fn


def get_criterion(name_or_callable) -> Callable:
    """Resolve a criterion name (or pass a callable through).

    Raises:
        ValueError: For an unknown name (lists the registered ones).
    """
    if callable(name_or_callable):
        return name_or_callable
    if name_or_callable in _CRITERIA:
        return _CRITERIA[name_or_callable]
    raise ValueError(
        f"Unknown criterion. Registered: {sorted(_CRITERIA)}; or pass a callable. "
        f"Received: criterion={name_or_callable!r}"
    )


def list_criteria() -> list:
    """Names of the registered criteria."""
    return sorted(_CRITERIA)
