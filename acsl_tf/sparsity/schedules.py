"""Schedules of the global sparsity strength.

A schedule maps the training step to a multiplier of the base penalty
``lambda``. They are evaluated inside the training graph by
:class:`acsl_tf.PruneLowCorrelation` (no callback is needed for them). The
budget-driven adaptive strength, which needs a whole-model view, lives in
:class:`acsl_tf.callbacks.BudgetStrength`.
"""

from __future__ import annotations

import keras
from keras import ops

from acsl_tf._keras import register


class StrengthSchedule:
    """Base class: ``schedule(step) -> multiplier`` (a float32 scalar tensor)."""

    def __call__(self, step):
        raise NotImplementedError

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@register
class ConstantStrength(StrengthSchedule):
    """Constant multiplier (default 1: the strength is exactly ``penalty``)."""

    def __init__(self, value: float = 1.0):
        value = float(value)
        if value < 0:
            raise ValueError(f"`value` must be >= 0. Received: value={value}")
        self.value = value

    def __call__(self, step):
        return ops.convert_to_tensor(self.value, "float32")

    def get_config(self):
        return {"value": self.value}


@register
class PolynomialStrength(StrengthSchedule):
    """Polynomial ramp from ``initial`` to ``final`` between ``begin_step`` and
    ``end_step``; constant outside.

    ``m(s) = final + (initial - final) * (1 - p)^power`` with
    ``p = clip((s - begin_step) / (end_step - begin_step), 0, 1)``.
    """

    def __init__(
        self,
        initial: float = 0.0,
        final: float = 1.0,
        begin_step: int = 0,
        end_step: int = 1000,
        power: float = 3.0,
    ):
        if initial < 0 or final < 0:
            raise ValueError(
                f"`initial` and `final` must be >= 0. Received: initial={initial}, final={final}"
            )
        if int(end_step) <= int(begin_step) or int(begin_step) < 0:
            raise ValueError(
                "Need 0 <= begin_step < end_step. "
                f"Received: begin_step={begin_step}, end_step={end_step}"
            )
        if power <= 0:
            raise ValueError(f"`power` must be > 0. Received: power={power}")
        self.initial = float(initial)
        self.final = float(final)
        self.begin_step = int(begin_step)
        self.end_step = int(end_step)
        self.power = float(power)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        p = (step - self.begin_step) / float(self.end_step - self.begin_step)
        p = ops.clip(p, 0.0, 1.0)
        return self.final + (self.initial - self.final) * ops.power(1.0 - p, self.power)

    def get_config(self):
        return {
            "initial": self.initial,
            "final": self.final,
            "begin_step": self.begin_step,
            "end_step": self.end_step,
            "power": self.power,
        }


def get(identifier) -> StrengthSchedule:
    """Resolve ``None`` / a number / a config dict / a schedule instance."""
    if identifier is None:
        return ConstantStrength(1.0)
    if isinstance(identifier, StrengthSchedule):
        return identifier
    if isinstance(identifier, (int, float)):
        return ConstantStrength(float(identifier))
    if isinstance(identifier, dict):
        obj = keras.saving.deserialize_keras_object(identifier)
        if isinstance(obj, StrengthSchedule):
            return obj
    raise ValueError(
        "`schedule` must be None, a number, or an acsl_tf.schedules.StrengthSchedule "
        f"(ConstantStrength, PolynomialStrength). Received: schedule={identifier!r}"
    )
