"""Argument validation shared by every public function.

Types are checked with ``TypeError``, values with ``ValueError``; messages
name the argument, say what it must be and end with
``Received: name=value`` (Keras' voice). Numbers are Python or NumPy
scalars, never ``bool`` (``True`` is not a count or a rate) and never
strings; a number's ``ValueError`` shows the value as the float it was read
as (``Received: factor=inf``).

A few entry points raised ``ValueError`` for a wrong type before these
helpers existed; they pass ``type_error=ValueError`` so that code catching
their errors keeps working.
"""

from __future__ import annotations

import math
import numbers
import os

__all__ = [
    "number",
    "positive",
    "fraction",
    "non_negative",
    "integer",
    "positive_int",
    "choice",
    "path",
    "names",
]


def _interval(low, high, low_open, high_open) -> str:
    lo = "(-inf" if low is None else ("(" if low_open else "[") + f"{low:g}"
    hi = "inf)" if high is None else f"{high:g}" + (")" if high_open else "]")
    return f"{lo}, {hi}"


def number(
    value,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    type_error: type[Exception] = TypeError,
) -> float:
    """A finite real number, optionally inside an interval; returns a float.

    Args:
        value: The argument.
        name: Its name in the message.
        low, high: Bounds of the interval (``None``: unbounded).
        low_open, high_open: Exclude the bound itself.
        type_error: Exception class for a value that is not a number.

    Raises:
        TypeError (or ``type_error``): a bool, a string, ``None`` or another
            non-number.
        ValueError: NaN, an infinity, or a value outside the interval.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise type_error(f"`{name}` must be a number (int or float). Received: {name}={value!r}")
    v = float(value)
    bad = not math.isfinite(v)
    if not bad and low is not None:
        bad = v <= low if low_open else v < low
    if not bad and high is not None:
        bad = v >= high if high_open else v > high
    if bad:
        where = (
            ""
            if low is None and high is None
            else f" in {_interval(low, high, low_open, high_open)}"
        )
        raise ValueError(f"`{name}` must be a finite number{where}. Received: {name}={v!r}")
    return v


def positive(value, name: str, **kwargs) -> float:
    """A finite number > 0."""
    return number(value, name, low=0.0, low_open=True, **kwargs)


def non_negative(value, name: str, **kwargs) -> float:
    """A finite number >= 0."""
    return number(value, name, low=0.0, **kwargs)


def fraction(value, name: str, *, low_open: bool = False, high_open: bool = True) -> float:
    """A number in [0, 1) by default; ``low_open``/``high_open`` choose the
    other intervals between 0 and 1 ((0, 1), (0, 1], [0, 1])."""
    return number(value, name, low=0.0, high=1.0, low_open=low_open, high_open=high_open)


def integer(
    value,
    name: str,
    *,
    minimum: int | None = None,
    type_error: type[Exception] = TypeError,
    expected: str | None = None,
) -> int:
    """An integer (Python or NumPy; not bool, not a float such as ``2.0``),
    optionally ``>= minimum``; returns an int.

    Args:
        value: The argument.
        name: Its name in the message.
        minimum: Smallest accepted value (``None``: any).
        type_error: Exception class for a value that is not an integer.
        expected: What the argument must be, replacing the default wording
            (e.g. ``'"auto" or an integer >= 1'``).

    Raises:
        TypeError (or ``type_error``): not an integer.
        ValueError: below ``minimum``.
    """
    if expected is None:
        expected = "an integer" if minimum is None else f"an integer >= {minimum}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise type_error(f"`{name}` must be {expected}. Received: {name}={value!r}")
    v = int(value)
    if minimum is not None and v < minimum:
        raise ValueError(f"`{name}` must be {expected}. Received: {name}={v!r}")
    return v


def positive_int(value, name: str, **kwargs) -> int:
    """An integer >= 1."""
    return integer(value, name, minimum=1, **kwargs)


def choice(value, name: str, options, *, kind: type | None = None, expected: str | None = None):
    """One of ``options`` (compared with ``==``); returns ``value``.

    Args:
        value: The argument.
        name: Its name in the message.
        options: The accepted values.
        kind: If given, a value that is not an instance of it is a
            ``TypeError`` (e.g. ``kind=str`` for a mode name); otherwise every
            rejected value is a ``ValueError``.
        expected: What the argument must be, replacing ``one of (...)``.
    """
    options = tuple(options)
    expected = f"one of {options}" if expected is None else expected
    message = f"`{name}` must be {expected}. Received: {name}={value!r}"
    if kind is not None and not isinstance(value, kind):
        raise TypeError(message)
    try:
        # bool apart: True == 1, but True is not the option 1.
        ok = any(
            isinstance(value, bool) == isinstance(o, bool) and bool(value == o) for o in options
        )
    except (TypeError, ValueError):  # e.g. an array compared with a string
        ok = False
    if not ok:
        raise ValueError(message)
    return value


def path(
    value,
    name: str,
    *,
    allow_empty: bool = True,
    type_error: type[Exception] = TypeError,
    expected: str = "a path (str or os.PathLike)",
) -> str:
    """A file system path as a str (``bytes`` from an ``os.PathLike`` are
    decoded).

    Args:
        value: The argument.
        name: Its name in the message.
        allow_empty: Accept ``""`` (callers that check more, such as
            ``_io.check_writable``, give their own message for it).
        type_error: Exception class for a value that is not a path.
        expected: What the argument must be (e.g. ``"a directory path (str or
            os.PathLike), e.g. 'firmware/src'"``).

    Raises:
        TypeError (or ``type_error``): not a str or ``os.PathLike``.
        ValueError: an empty path when ``allow_empty`` is False.
    """
    if not isinstance(value, (str, os.PathLike)):
        raise type_error(f"`{name}` must be {expected}. Received: {name}={value!r}")
    p = os.fspath(value)
    if not isinstance(p, str):
        p = os.fsdecode(p)
    if not allow_empty and not p.strip():
        raise ValueError(
            f"`{name}` must be {expected}, not an empty string. Received: {name}={p!r}"
        )
    return p


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
            f"`{name}` must be a layer name or a list of names. Received: {name}={value!r}"
        ) from None
    for v in out:
        if not isinstance(v, str) and not hasattr(v, "name"):
            raise TypeError(
                f"`{name}` must hold layer names (strings) or layers. Received: {name}={value!r}"
            )
    return out
