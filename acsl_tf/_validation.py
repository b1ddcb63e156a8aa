"""Argument validation shared by every public function.

Types are checked with ``TypeError``, values with ``ValueError``; messages
say what was expected and end with ``Received: name=value`` (Keras' voice).
"""

from __future__ import annotations

import math
import numbers

__all__ = ["number", "fraction", "non_negative", "positive_int", "choice", "names"]


def number(value, name: str) -> float:
    """A real number (Python or NumPy; not bool, not a string), finite."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number. Received: {name}={value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite. Received: {name}={value!r}")
    return v


def fraction(value, name: str) -> float:
    """A number in [0, 1)."""
    v = number(value, name)
    if not 0.0 <= v < 1.0:
        raise ValueError(f"{name} must be in [0, 1). Received: {name}={value!r}")
    return v


def non_negative(value, name: str) -> float:
    v = number(value, name)
    if v < 0:
        raise ValueError(f"{name} must be >= 0. Received: {name}={value!r}")
    return v


def positive_int(value, name: str) -> int:
    """An integer >= 1 (Python or NumPy integer; not bool)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer. Received: {name}={value!r}")
    if int(value) < 1:
        raise ValueError(f"{name} must be >= 1. Received: {name}={value!r}")
    return int(value)


def choice(value, name: str, options) -> str:
    if value not in options:
        raise ValueError(f"{name} must be one of {tuple(options)}. Received: {name}={value!r}")
    return value


def names(value, name: str) -> tuple:
    """A layer name, a layer, or an iterable of them (a single string is one
    name, never split into characters)."""
    if value is None:
        return ()
    if isinstance(value, str) or hasattr(value, "name") and not isinstance(value, (list, tuple)):
        return (value,)
    try:
        out = tuple(value)
    except TypeError:
        raise TypeError(
            f"{name} must be a layer name or a list of names. Received: {name}={value!r}"
        ) from None
    for v in out:
        if not isinstance(v, str) and not hasattr(v, "name"):
            raise TypeError(
                f"{name} must hold layer names (strings) or layers. Received: {name}={value!r}"
            )
    return out
