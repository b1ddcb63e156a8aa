"""Training callbacks: the budget-driven adaptive strength and TensorBoard
summaries of the sparsity state."""

from __future__ import annotations

import math

import keras
import numpy as np

from acsl_tf.prune import get_wrappers


def _wrappers_or_raise(model, who):
    wrappers = get_wrappers(model)
    if not wrappers:
        raise ValueError(
            f"{who} needs a model wrapped by acsl_tf.prune_low_correlation; "
            f"{getattr(model, 'name', model)!r} has no PruneLowCorrelation units."
        )
    return wrappers


class BudgetStrength(keras.callbacks.Callback):
    """Budget-driven adaptive strength (method spec, section 2 step 6).

    Once per epoch it measures which reduction the channels with
    ``|gamma| < threshold`` would give if they were removed (with
    :func:`acsl_tf.plan_shrink`, i.e. the same dependency analysis and FLOPs
    accounting that :func:`acsl_tf.shrink` uses). While that reduction is
    below the target it multiplies the global strength of every unit by
    ``factor``; once the target is met it holds the strength, and if the
    reduction overshoots the target by more than ``tolerance`` it divides it
    by ``factor`` again. This replaces the hand-tuning of lambda.

    The target comes from the argument or, if omitted, from
    ``prune_low_correlation(..., target=...)``.

    Args:
        target_flops: fraction of FLOPs to remove, in (0, 1).
        target_params: fraction of parameters to remove, in (0, 1).
        threshold: |gamma| below which a channel counts as removable.
        factor: multiplicative step of the strength (> 1).
        tolerance: allowed overshoot before the strength is eased.
        max_scale: upper bound of the multiplier.
        verbose: print one line per epoch.

    Logs ``acsl_budget_scale`` and ``acsl_reduction`` into the epoch logs.
    """

    def __init__(
        self,
        target_flops=None,
        target_params=None,
        *,
        threshold: float = 1e-2,
        factor: float = 2.0,
        tolerance: float = 0.05,
        max_scale: float = 1e4,
        verbose: int = 1,
    ):
        super().__init__()
        if target_flops is not None and target_params is not None:
            raise ValueError(
                "Give at most one of `target_flops` and `target_params`. "
                f"Received: target_flops={target_flops}, target_params={target_params}"
            )
        for name, v in (("target_flops", target_flops), ("target_params", target_params)):
            if v is not None and not (0.0 < float(v) < 1.0):
                raise ValueError(f"`{name}` must be in (0, 1). Received: {name}={v}")
        if not threshold > 0:
            raise ValueError(f"`threshold` must be > 0. Received: threshold={threshold}")
        if not factor > 1:
            raise ValueError(f"`factor` must be > 1. Received: factor={factor}")
        if not tolerance >= 0:
            raise ValueError(f"`tolerance` must be >= 0. Received: tolerance={tolerance}")
        self.target_flops = target_flops
        self.target_params = target_params
        self.threshold = float(threshold)
        self.factor = float(factor)
        self.tolerance = float(tolerance)
        self.max_scale = float(max_scale)
        self.verbose = verbose
        self.history = []

    def _resolve_target(self, wrappers):
        if self.target_flops is not None:
            return "flops", float(self.target_flops)
        if self.target_params is not None:
            return "params", float(self.target_params)
        flops = {w.target_flops for w in wrappers if w.target_flops is not None}
        params = {w.target_params for w in wrappers if w.target_params is not None}
        if len(flops) == 1 and not params:
            return "flops", flops.pop()
        if len(params) == 1 and not flops:
            return "params", params.pop()
        raise ValueError(
            "BudgetStrength needs a budget: pass target_flops= or target_params=, or wrap the "
            "model with prune_low_correlation(..., target=...)."
        )

    def on_train_begin(self, logs=None):
        self._wrappers = _wrappers_or_raise(self.model, "BudgetStrength")
        self._kind, self._target = self._resolve_target(self._wrappers)

    def measure(self) -> float:
        """Reduction (fraction) the sub-threshold channels would give now."""
        from acsl_tf.shrink import plan_shrink

        plan = plan_shrink(self.model, threshold=self.threshold)
        if self._kind == "flops":
            before, after = plan.flops_before, plan.flops_after
        else:
            before, after = plan.params_before, plan.params_after
        return 1.0 - after / before if before else 0.0

    def on_epoch_end(self, epoch, logs=None):
        reduction = self.measure()
        scale = float(keras.ops.convert_to_numpy(self._wrappers[0].budget_scale))
        target = self._target
        # Proportional multiplicative control: a full `factor` step when far
        # from the budget, smaller steps close to it (the gammas respond with
        # a lag, so bang-bang steps overshoot).
        if reduction < target:
            scale *= self.factor ** min(1.0, (target - reduction) / target)
        elif reduction > target + self.tolerance:
            excess = (reduction - target - self.tolerance) / max(1.0 - target, 1e-6)
            scale /= self.factor ** min(1.0, excess)
        scale = float(min(max(scale, 1e-6), self.max_scale))
        for w in self._wrappers:
            w.budget_scale.assign(scale)
        self.history.append({"epoch": epoch, "reduction": reduction, "scale": scale})
        if logs is not None:
            logs["acsl_reduction"] = reduction
            logs["acsl_budget_scale"] = scale
        if self.verbose:
            print(
                f"BudgetStrength: epoch {epoch + 1}: removable {self._kind} {reduction:.1%} "
                f"(target {self._target:.1%}), strength multiplier -> {scale:g}"
            )


class SparsityTensorBoard(keras.callbacks.Callback):
    """Writes the sparsity state to TensorBoard once per epoch.

    Per unit: a histogram of |gamma|, the fraction of channels below
    ``threshold``, the mean strength weight, and the running channel affinity
    as an image (a C x C heat map). Totals: overall sparsity and the mean
    penalty.

    Args:
        log_dir: directory of the event files (e.g. the same one as
            ``keras.callbacks.TensorBoard``).
        threshold: |gamma| threshold of the sparsity figures.
        affinity_images: also write the affinity heat maps.
        max_images: write heat maps of at most this many units.
    """

    def __init__(
        self,
        log_dir: str,
        *,
        threshold: float = 1e-2,
        affinity_images: bool = True,
        max_images: int = 16,
    ):
        super().__init__()
        if not threshold > 0:
            raise ValueError(f"`threshold` must be > 0. Received: threshold={threshold}")
        self.log_dir = str(log_dir)
        self.threshold = float(threshold)
        self.affinity_images = affinity_images
        self.max_images = int(max_images)
        self._writer = None

    def on_train_begin(self, logs=None):
        import tensorflow as tf

        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise ImportError(
                "SparsityTensorBoard writes histograms and images, which needs the "
                "`tensorboard` package: pip install tensorboard  (or acsl_tf[tensorboard])"
            ) from None
        self._wrappers = _wrappers_or_raise(self.model, "SparsityTensorBoard")
        self._writer = tf.summary.create_file_writer(self.log_dir)

    def on_epoch_end(self, epoch, logs=None):
        import tensorflow as tf

        total = below = 0
        penalties = []
        with self._writer.as_default(step=epoch):
            for i, w in enumerate(self._wrappers):
                name = w.layer.name
                g = np.abs(keras.ops.convert_to_numpy(w.layer.gamma))
                n_below = int((g < self.threshold).sum())
                total += g.size
                below += n_below
                lam = w.channel_penalties()
                penalties.append(lam)
                tf.summary.histogram(f"gamma/{name}", g)
                tf.summary.scalar(f"sparsity/{name}", n_below / g.size)
                tf.summary.scalar(
                    f"strength/{name}", float(keras.ops.convert_to_numpy(w.strength).mean())
                )
                if self.affinity_images and w.tracks_affinity and i < self.max_images:
                    a = np.abs(keras.ops.convert_to_numpy(w.affinity))
                    a = a / max(float(a.max()), 1e-12)
                    tf.summary.image(f"affinity/{name}", a[None, :, :, None].astype("float32"))
            tf.summary.scalar("sparsity/total", below / max(total, 1))
            tf.summary.scalar("penalty/mean", float(np.mean(np.concatenate(penalties))))
            if logs:
                for key, value in logs.items():
                    if isinstance(value, (int, float)) and math.isfinite(value):
                        tf.summary.scalar(f"epoch/{key}", value)
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
