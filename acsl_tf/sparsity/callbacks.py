"""Training callbacks: the budget-driven adaptive strength and TensorBoard
summaries of the sparsity state."""

from __future__ import annotations

import math

import keras
import numpy as np

from acsl_tf.sparsity.api import get_wrappers


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

    It scales the strength of every unit with one shared multiplier so that,
    by a chosen point of the training, the channels with ``|gamma| <
    threshold`` meet the budget (a fraction of FLOPs or parameters to
    remove). "Meets the budget" is measured with :func:`acsl_tf.plan_shrink`,
    i.e. the same dependency analysis and FLOPs accounting that
    :func:`acsl_tf.shrink` uses. This replaces the hand-tuning of lambda.

    Two controllers are available:

    - ``controller="rate"`` (default). Every ``update_every`` steps it
      measures the *budget level*: the largest ``|gamma|`` among the channels
      that the budget needs (``plan_shrink(target_flops=...)``; the level is
      below ``threshold`` exactly when the budget is met). Under an L1
      penalty that level falls at a rate roughly proportional to the
      strength, so the controller compares the rate observed since the last
      check with the rate needed to reach ``threshold`` by ``reach_at`` of
      the training (past that point: by the end of the training), and
      multiplies the strength by the ratio. A raise is bounded by
      ``factor ** min(1, (level - threshold) / threshold)`` (small steps
      near the threshold, where the level is noisy) and a cut by
      ``sqrt(factor)``. The strength therefore rises only while the gammas
      are too slow, and falls before they overshoot; once the budget is met
      it is held, and eased if the reduction overshoots by more than
      ``tolerance`` (not while the overshoot is already shrinking).
    - ``controller="epoch"``: the earlier per-epoch proportional rule. While
      the reduction is below the target it multiplies the strength by up to
      ``factor`` (the full factor when nothing is removable), holds it once
      the target is met and divides it when the reduction overshoots. The
      gammas respond with a lag, so on some models this rule keeps raising
      the strength until far too many channels collapse at once
      (docs/BENCHMARKS.md); it is kept for reproducing older results.

    The target comes from the argument or, if omitted, from
    ``prune_low_correlation(..., target=...)``.

    Args:
        target_flops: fraction of FLOPs to remove, in (0, 1).
        target_params: fraction of parameters to remove, in (0, 1).
        threshold: |gamma| below which a channel counts as removable.
        factor: largest multiplicative step of the strength per check (> 1).
        tolerance: allowed overshoot before the strength is eased.
        max_scale: upper bound of the multiplier.
        controller: ``"rate"`` or ``"epoch"`` (see above).
        update_every: ``"rate"`` only: steps between checks, or ``"auto"``
            (four checks per epoch when the number of steps per epoch is
            known, else one per epoch). Each check runs two
            :func:`plan_shrink` calls (0.2-1.3 s each on
            ``keras.applications`` models, docs/SHRINK.md).
        reach_at: ``"rate"`` only: fraction of the training (in steps) by
            which the budget should be met, in (0, 1]. The rest of the
            training adapts the remaining channels to the sparse ones.
        verbose: print one line per epoch.

    Logs ``acsl_budget_scale``, ``acsl_reduction`` and (``"rate"``)
    ``acsl_budget_level`` into the epoch logs. ``history`` holds one dict per
    check (``epoch``, ``step``, ``reduction``, ``scale`` and, for ``"rate"``,
    ``level``).
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
        controller: str = "rate",
        update_every="auto",
        reach_at: float = 0.6,
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
        if controller not in ("rate", "epoch"):
            raise ValueError(
                f'`controller` must be "rate" or "epoch". Received: controller={controller!r}'
            )
        if update_every != "auto" and not (
            isinstance(update_every, int) and not isinstance(update_every, bool) and update_every > 0
        ):
            raise ValueError(
                '`update_every` must be "auto" or a positive number of steps. '
                f"Received: update_every={update_every!r}"
            )
        if not 0.0 < float(reach_at) <= 1.0:
            raise ValueError(f"`reach_at` must be in (0, 1]. Received: reach_at={reach_at}")
        self.target_flops = target_flops
        self.target_params = target_params
        self.threshold = float(threshold)
        self.factor = float(factor)
        self.tolerance = float(tolerance)
        self.max_scale = float(max_scale)
        self.controller = controller
        self.update_every = update_every
        self.reach_at = float(reach_at)
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

    # ------------------------------------------------------------------ measuring

    def on_train_begin(self, logs=None):
        self._wrappers = _wrappers_or_raise(self.model, "BudgetStrength")
        self._kind, self._target = self._resolve_target(self._wrappers)
        # Unknown epoch length: one check per epoch until the first epoch ends.
        self._total_steps = self._every = None
        steps = (self.params or {}).get("steps")
        if self.controller == "rate" and steps:
            self._schedule(int(steps))
        self._step = 0
        self._epoch = 0
        self._last = None  # (step, level) of the previous check
        self._last_reduction = 0.0
        self._last_level = None
        if self.controller == "rate":
            # Also fails early, with a clear message, if the budget is impossible.
            self._last = (0, self.level())

    def _schedule(self, steps_per_epoch: int) -> None:
        """Set the training length in steps and the steps between checks."""
        self._total_steps = int((self.params or {}).get("epochs") or 1) * steps_per_epoch
        if self.update_every == "auto":
            self._every = max(1, steps_per_epoch // 4)
        else:
            self._every = int(self.update_every)

    def measure(self) -> float:
        """Reduction (fraction) the sub-threshold channels would give now."""
        from acsl_tf.pruning.shrink import plan_shrink

        plan = plan_shrink(self.model, threshold=self.threshold)
        if self._kind == "flops":
            before, after = plan.flops_before, plan.flops_after
        else:
            before, after = plan.params_before, plan.params_after
        return 1.0 - after / before if before else 0.0

    def level(self) -> float:
        """The budget level: the largest ``|gamma|`` among the channels that
        the budget needs (lowest ``|gamma|`` first, as ``shrink`` picks them).

        Raises:
            ValueError: if the budget cannot be met even by removing every
                prunable channel.
        """
        from acsl_tf.pruning.shrink import plan_shrink

        kw = {"target_flops" if self._kind == "flops" else "target_params": self._target}
        try:
            plan = plan_shrink(self.model, **kw)
        except ValueError as e:
            raise ValueError(
                f"BudgetStrength: the budget ({self._kind} reduction {self._target}) cannot be "
                f"met on this model: {e}"
            ) from None
        level = 0.0
        for w in self._wrappers:
            name = w.layer.name
            if name not in plan.bn_keep:
                continue
            g = np.abs(keras.ops.convert_to_numpy(w.layer.gamma)).reshape(-1)
            mask = np.ones(g.shape[0], bool)
            mask[list(plan.bn_keep[name])] = False
            if mask.any():
                level = max(level, float(g[mask].max()))
        return level

    def _scale(self) -> float:
        return float(keras.ops.convert_to_numpy(self._wrappers[0].budget_scale))

    def _set_scale(self, scale: float) -> float:
        scale = float(min(max(scale, 1e-6), self.max_scale))
        for w in self._wrappers:
            w.budget_scale.assign(scale)
        return scale

    def _ease(self, scale: float, reduction: float) -> float:
        excess = (reduction - self._target - self.tolerance) / max(1.0 - self._target, 1e-6)
        return scale / self.factor ** min(1.0, excess)

    # ------------------------------------------------------------------ control

    def _rate_check(self, epoch: int) -> None:
        step = self._step
        reduction = self.measure()
        level = self.level()
        scale = self._scale()
        target = self._target
        if reduction > target + self.tolerance:
            # Overshoot: ease, unless the reduction is already coming back.
            if reduction >= self._last_reduction:
                scale = self._ease(scale, reduction)
        elif reduction >= target or level < self.threshold:
            pass  # budget met: hold
        elif self._last is not None and step > self._last[0]:
            prev_step, prev_level = self._last
            observed = (prev_level - level) / (step - prev_step)
            every = float(self._every or (step - prev_step))
            if self._total_steps:
                deadline = self.reach_at * self._total_steps
                # Past the deadline, aim at the end of the training instead.
                end = deadline if step < deadline else self._total_steps
                remaining = max(end - step, every)
            else:
                remaining = every
            needed = (level - self.threshold) / remaining
            ratio = self.factor if observed <= 0.0 else needed / observed
            # Near the threshold, small steps only: the level is noisy there
            # (the channels the budget needs change), and a strength pumped
            # up on noise collapses the network once the gammas follow.
            up = self.factor ** min(1.0, (level - self.threshold) / self.threshold)
            # Ease by at most sqrt(factor): cutting hard on a fast fall lets
            # the loss push the gammas back up, and the level oscillates.
            scale *= min(max(ratio, self.factor**-0.5), up)
        scale = self._set_scale(scale)
        self._last = (step, level)
        self._last_reduction, self._last_level = reduction, level
        self.history.append(
            {"epoch": epoch, "step": step, "reduction": reduction, "scale": scale, "level": level}
        )

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        if self.controller == "rate" and self._every and self._step % self._every == 0:
            self._rate_check(self._epoch)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if self.controller == "rate":
            if self._total_steps is None and epoch == 0 and self._step > 0:
                self._schedule(self._step)  # epoch length unknown before: now it is
            if not self.history or self.history[-1]["step"] != self._step:
                self._rate_check(epoch)
            reduction, scale = self._last_reduction, self._scale()
        else:
            reduction = self.measure()
            scale = self._scale()
            target = self._target
            # Proportional multiplicative control: a full `factor` step when
            # far from the budget, smaller steps close to it.
            if reduction < target:
                scale *= self.factor ** min(1.0, (target - reduction) / target)
            elif reduction > target + self.tolerance:
                scale = self._ease(scale, reduction)
            scale = self._set_scale(scale)
            self.history.append(
                {"epoch": epoch, "step": self._step, "reduction": reduction, "scale": scale}
            )
        if logs is not None:
            logs["acsl_reduction"] = reduction
            logs["acsl_budget_scale"] = scale
            if self.controller == "rate":
                logs["acsl_budget_level"] = self._last_level
        if self.verbose:
            extra = (
                f", budget level {self._last_level:.3g} (threshold {self.threshold:g})"
                if self.controller == "rate"
                else ""
            )
            print(
                f"BudgetStrength: epoch {epoch + 1}: removable {self._kind} {reduction:.1%} "
                f"(target {self._target:.1%}){extra}, strength multiplier -> {scale:g}"
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
