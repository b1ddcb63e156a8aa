"""Per-layer comparison of a model and its shrunk version."""

from __future__ import annotations

from dataclasses import dataclass

from acsl_tf.pruning.profile import profile as _profile_fn

__all__ = ["ReportRow", "ShrinkReport", "shrink_report"]


@dataclass(frozen=True)
class ReportRow:
    name: str
    cls: str
    channels_before: int | None
    channels_after: int | None
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int


@dataclass(frozen=True)
class ShrinkReport:
    """Per-layer comparison of a model and its shrunk version.

    Attributes:
        rows: :class:`ReportRow` per layer of the original (matched by name).
        params_before, params_after, flops_before, flops_after: Totals.
    """

    rows: tuple
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int

    def summary(self, only_changed: bool = True) -> str:
        """Printable table (by default only the layers that changed)."""
        rows = [
            r
            for r in self.rows
            if not only_changed
            or r.params_before != r.params_after
            or r.channels_before != r.channels_after
            or r.flops_before != r.flops_after
        ]
        w = max([len(r.name) for r in rows] + [5])
        head = f"{'layer':<{w}}  {'channels':>13}  {'params':>23}  {'FLOPs':>27}"
        lines = [head, "-" * len(head)]
        for r in rows:
            ch = f"{r.channels_before}->{r.channels_after}"
            lines.append(
                f"{r.name:<{w}}  {ch:>13}  {r.params_before:>11,}->{r.params_after:<11,}"
                f"  {r.flops_before:>13,}->{r.flops_after:<13,}"
            )
        lines.append("-" * len(head))
        lines.append(
            f"{'total':<{w}}  {'':>13}  {self.params_before:>11,}->{self.params_after:<11,}"
            f"  {self.flops_before:>13,}->{self.flops_after:<13,}"
        )
        pr = 100 * (1 - self.params_after / max(self.params_before, 1))
        fr = 100 * (1 - self.flops_after / max(self.flops_before, 1))
        lines.append(f"params -{pr:.1f}%, FLOPs -{fr:.1f}%")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def shrink_report(original, shrunk) -> ShrinkReport:
    """Compare ``original`` and ``shrunk`` layer by layer.

    Args:
        original: The model before :func:`shrink` (plain or wrapped).
        shrunk: The model returned by :func:`shrink`.

    Returns:
        A :class:`ShrinkReport` (print it for a table).

    Example:
        >>> small = acsl_tf.shrink(model, ratio=0.5)
        >>> print(acsl_tf.shrink_report(model, small))
    """
    pa = _profile_fn(original)
    pb = _profile_fn(shrunk)
    after = {r.name: r for r in pb.layers}
    rows = []
    for r in pa.layers:
        name = r.name
        b = after.get(name)
        if b is None and name.startswith("acsl_"):
            b = after.get(name[5:])
        cb = r.output_shape[-1] if r.output_shape else None
        ca = (b.output_shape[-1] if b.output_shape else None) if b else None
        rows.append(
            ReportRow(
                name, r.cls, cb, ca, r.params, b.params if b else 0, r.flops, b.flops if b else 0
            )
        )
    return ShrinkReport(
        rows=tuple(rows),
        params_before=pa.total_params,
        params_after=pb.total_params,
        flops_before=pa.total_flops,
        flops_after=pb.total_flops,
    )
