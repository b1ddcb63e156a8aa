"""Reading the sparsity state of a model: per-unit gammas, strengths, reports."""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np

from acsl_tf.sparsity.api import get_wrappers


@dataclass(frozen=True)
class UnitSparsity:
    """Sparsity of one unit (a wrapped or plain BatchNormalization)."""

    name: str
    channels: int
    below_threshold: int
    mean_abs_gamma: float
    mean_strength: float
    min_penalty: float
    max_penalty: float

    @property
    def fraction(self) -> float:
        return self.below_threshold / max(self.channels, 1)


@dataclass(frozen=True)
class SparsityReport:
    threshold: float
    units: tuple

    @property
    def channels(self) -> int:
        return sum(u.channels for u in self.units)

    @property
    def below_threshold(self) -> int:
        return sum(u.below_threshold for u in self.units)

    @property
    def fraction(self) -> float:
        return self.below_threshold / max(self.channels, 1)

    def to_dict(self):
        return {
            "threshold": self.threshold,
            "channels": self.channels,
            "below_threshold": self.below_threshold,
            "fraction": self.fraction,
            "units": [dict(u.__dict__, fraction=u.fraction) for u in self.units],
        }

    def __str__(self):
        head = (
            f"{'unit':<28} {'channels':>8} {'|g|<thr':>8} {'sparsity':>9} "
            f"{'mean|g|':>9} {'lambda min..max':>21}"
        )
        lines = [f"Channel sparsity (|gamma| < {self.threshold:g})", head, "-" * len(head)]
        for u in self.units:
            lines.append(
                f"{u.name[:28]:<28} {u.channels:>8d} {u.below_threshold:>8d} "
                f"{u.fraction:>8.1%} {u.mean_abs_gamma:>9.4f} "
                f"{u.min_penalty:>10.2e}..{u.max_penalty:<9.2e}"
            )
        lines.append("-" * len(head))
        lines.append(
            f"{'total':<28} {self.channels:>8d} {self.below_threshold:>8d} {self.fraction:>8.1%}"
        )
        return "\n".join(lines)


def unit_gammas(model) -> dict:
    """``{bn_name: |gamma|}`` for every wrapped unit of the model."""
    return {
        w.layer.name: np.abs(keras.ops.convert_to_numpy(w.layer.gamma)) for w in get_wrappers(model)
    }


def sparsity_report(model, threshold: float = 1e-2) -> SparsityReport:
    """Per-unit channel sparsity of a model wrapped by ``prune_low_correlation``.

    A channel counts as sparse when ``|gamma| < threshold``.

    Example:

    ```python
    print(acsl_tf.sparsity_report(pruned, threshold=1e-2))
    ```
    """
    if threshold <= 0:
        raise ValueError(f"`threshold` must be > 0. Received: threshold={threshold}")
    wrappers = get_wrappers(model)
    if not wrappers:
        raise ValueError(
            f"Model {getattr(model, 'name', model)!r} has no PruneLowCorrelation units; wrap "
            "it with acsl_tf.prune_low_correlation first."
        )
    units = []
    for w in wrappers:
        g = np.abs(keras.ops.convert_to_numpy(w.layer.gamma))
        lam = w.channel_penalties()
        units.append(
            UnitSparsity(
                name=w.layer.name,
                channels=int(g.size),
                below_threshold=int((g < threshold).sum()),
                mean_abs_gamma=float(g.mean()),
                mean_strength=float(keras.ops.convert_to_numpy(w.strength).mean()),
                min_penalty=float(lam.min()),
                max_penalty=float(lam.max()),
            )
        )
    return SparsityReport(threshold=float(threshold), units=tuple(units))
