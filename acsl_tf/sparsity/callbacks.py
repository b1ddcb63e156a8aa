"""Training callbacks: the budget-driven adaptive strength and TensorBoard
summaries of the sparsity state."""

from __future__ import annotations

import math
import warnings

import keras
import numpy as np

from acsl_tf import _keras, _validation
from acsl_tf.pruning.criteria import Criterion, get_criterion
from acsl_tf.sparsity.api import get_wrappers
from acsl_tf.sparsity.wrapper import CONTROLLER_STATE_SIZE, check_strategy_supported


def _wrappers_or_raise(model, who):
    wrappers = get_wrappers(model)
    if not wrappers:
        raise ValueError(
            f"{who} needs a model wrapped by acsl_tf.prune_low_correlation; "
            f"{getattr(model, 'name', model)!r} has no PruneLowCorrelation units."
        )
    return wrappers


def _time_to_threshold(unit) -> np.ndarray:
    """Budget order of a unit's channels: ``|gamma| / w``, the time an L1
    penalty with per-channel strengths ``w`` (ACSL's; ones for Network
    Slimming) needs to empty each channel, up to a common factor. The
    channels the budget needs are those the method's penalty empties first."""
    gamma = unit.gamma
    wrapper = unit.wrapper
    if wrapper is None:
        return gamma
    w = np.asarray(keras.ops.convert_to_numpy(wrapper.strength), dtype=np.float64).reshape(-1)
    return gamma / np.maximum(w, 1e-6)


class _GammaAllocation(Criterion):
    """Budget order with the per-group counts of the ``|gamma|`` order and
    the method's own order (``inner``) inside each group.

    For every group the ``|gamma|`` scores are sorted and handed out in the
    inner order: the channel the method would empty first gets the group's
    smallest ``|gamma|``, and so on. Each group then holds the same values
    as under plain ``|gamma|``, so a global cut (a threshold, a ratio or a
    FLOPs target) removes as many channels from every group as the
    ``|gamma|`` plan does, and the channels removed are those the method
    ranks lowest.
    """

    needs_gamma = True
    name = "gamma_allocation"

    def __init__(self, inner):
        self.inner = inner
        self.gamma = get_criterion("gamma")

    def group_scores(self, graph, roots, *, reduction, rng):
        counts = self.gamma.group_scores(graph, roots, reduction=reduction, rng=rng)
        order = self.inner.group_scores(graph, roots, reduction=reduction, rng=rng)
        out = {}
        for r in roots:
            s = np.empty_like(np.asarray(counts[r], dtype=np.float64))
            s[np.argsort(order[r], kind="stable")] = np.sort(counts[r], kind="stable")
            out[r] = s
        return out


def _print(callback, message):
    """Print through Keras' I/O path; after a progress bar (verbose=1) start on
    a new line, as Keras' own callbacks do, so the lines do not collide."""
    verbose = (callback.params or {}).get("verbose")
    _keras.print_msg(("\n" if verbose == 1 else "") + message)


class StaleStatisticsWarning(UserWarning):
    """The gammas were still moving when sparsity training ended, so the
    BatchNorm moving statistics lag behind them (emitted by
    :class:`BudgetStrength`). Filter it by this class where the statistics are
    re-estimated right after ``fit`` (``acsl_tf.workflow.sparsity_train``
    does)."""


class _PenaltyLogs:
    """Adds ``penalty_loss``/``task_loss`` (and ``val_*``) to the epoch logs.

    Keras' ``loss`` is the task loss plus the penalties that the wrappers add.
    The wrappers sum their penalty over the training steps (weighted by batch
    size, as Keras weights ``loss``), so the mean over the epoch is exact; in
    evaluation the weights do not change, so the penalty is the current one.
    """

    def _penalty_begin(self):
        self._pen_start = self._penalty_totals()

    def _penalty_totals(self):
        total = np.zeros(2)
        for w in self._wrappers:
            total += np.asarray(keras.ops.convert_to_numpy(w.penalty_total), "float64")
        return total

    def _penalty_now(self):
        return float(
            sum(float(keras.ops.convert_to_numpy(w.penalty_loss())) for w in self._wrappers)
        )

    def _penalty_logs(self, logs):
        if logs is None:
            return
        start = getattr(self, "_pen_start", None)
        if start is not None:
            weighted, samples = self._penalty_totals() - start
            if samples > 0:
                penalty = weighted / samples
                logs["penalty_loss"] = penalty
                if "loss" in logs:
                    logs["task_loss"] = float(logs["loss"]) - penalty
        if "val_loss" in logs:
            penalty = self._penalty_now()
            logs["val_penalty_loss"] = penalty
            logs["val_task_loss"] = float(logs["val_loss"]) - penalty


class PenaltyMetrics(_PenaltyLogs, keras.callbacks.Callback):
    """Logs the sparsity penalty apart from the task loss.

    Keras' ``loss`` and ``val_loss`` include the penalty that the wrappers
    add, so they grow with the strength. This callback adds to the epoch logs
    ``penalty_loss`` (the mean penalty over the epoch's steps), ``task_loss``
    (``loss`` without it) and, with validation data, ``val_penalty_loss`` and
    ``val_task_loss``. Monitor ``val_task_loss`` in ``ModelCheckpoint`` or
    ``EarlyStopping`` and list this callback before them.
    :class:`BudgetStrength` logs the same values; it needs no extra callback.

    Example:

    ```python
    model.fit(x, y, validation_data=(xv, yv), callbacks=[
        acsl_tf.callbacks.PenaltyMetrics(),
        keras.callbacks.ModelCheckpoint("best.keras", monitor="val_task_loss"),
    ])
    ```
    """

    def on_train_begin(self, logs=None):
        self._wrappers = _wrappers_or_raise(self.model, "PenaltyMetrics")
        check_strategy_supported(getattr(self.model, "distribute_strategy", None))

    def on_epoch_begin(self, epoch, logs=None):
        self._penalty_begin()

    def on_epoch_end(self, epoch, logs=None):
        self._penalty_logs(logs)


# Layout of PruneLowCorrelation.controller_state (float64), the part of the
# controller's state that a resumed `fit` needs. It is kept in every wrapper,
# so it is saved with the model.
_S_INIT, _S_STEP, _S_LEVEL, _S_REDUCTION, _S_KEPT, _S_EPOCH_STEPS = range(6)


class BudgetStrength(_PenaltyLogs, keras.callbacks.Callback):
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
      ``sqrt(factor)``. Once the budget is met the strength is held, and
      eased if the reduction overshoots by more than ``tolerance`` (not
      while the overshoot is already shrinking).
    - ``controller="epoch"``: the earlier per-epoch proportional rule. While
      the reduction is below the target it multiplies the strength by up to
      ``factor`` (the full factor when nothing is removable), holds it once
      the target is met and divides it when the reduction overshoots. It is
      kept for reproducing older results.

    **Protection of the kept channels** (``"rate"``). Each check also reads
    the smallest ``|gamma|`` among the channels the budget keeps and how fast
    it fell since the last check. The strength is capped so that, at that
    speed (which is roughly proportional to the strength), this gamma closes
    at most ``1 / protect`` of its remaining distance to the threshold per
    check; it then approaches the threshold geometrically and never crosses
    it in one check. A cut is at most ``factor ** 2`` per check. On networks
    whose gammas all fall together (a U-Net), the budget is then met late or
    missed (and a warning says so) instead of being overshot with the kept
    channels pulled under the threshold.

    **Focus on the channels the budget needs** (``"rate"``,
    ``kept_weight``). With an L1 penalty of the same strength on every
    channel, the gammas of a trained network fall together: BatchNorm makes
    a layer's output independent of the scale of the gammas before it, so
    the task loss hardly resists a uniform fall. The channels the budget
    needs and those it keeps then reach the threshold at the same time, and
    the controller either misses the budget or overshoots it. With
    ``kept_weight < 1`` every check also sets each unit's ``budget_mask``:
    1 on the channels the budget needs, ``kept_weight`` on those it keeps.
    The channels the budget needs are those the method's own penalty would
    empty first: the lowest ``|gamma| / w``, with ``w`` the unit's
    per-channel strengths (ACSL's correlation-driven weights; for Network
    Slimming, ``w = 1`` and this is the ``|gamma|`` order of ``shrink``).
    The first check comes after a quarter epoch (``update_every="auto"``)
    of the method's unmasked penalty, so the strengths are in force when
    the sets are first drawn. The penalty then pulls the needed channels
    apart from the kept ones; the sets are recomputed at every check, so a
    channel the task loss holds up moves back to the kept set. The default,
    0, leaves the kept channels to the task loss (measured in docs/ACSL.md);
    ``kept_weight=1`` is the uniform penalty of the published methods. Without ``BudgetStrength`` the mask
    stays at ones: every channel gets the method's penalty.

    **Step bound** (``max_step``). Under SGD an L1 penalty moves a gamma by
    about ``lr * lambda_i / (1 - momentum)`` per step, whatever its size, so
    a gamma cannot settle below that distance from zero: it jumps back and
    forth across it. A multiplier large enough to make that jump exceed the
    threshold keeps the channels above it however long it trains, and a
    controller that reads "not there yet" raises it further. The multiplier
    is therefore capped so that the largest per-channel jump is at most
    ``max_step * threshold`` (read from the optimizer's current learning
    rate and momentum at every check; SGD only, other optimizers are not
    bounded).

    **Resume.** The controller's state (the multiplier, the last check, the
    epoch length) lives in the wrappers' non-trainable weights
    (``budget_scale``, ``controller_state``), so it is saved with the model;
    a ``fit(..., initial_epoch=k)`` of a reloaded model continues exactly as
    the uninterrupted training would.

    **Logs.** ``acsl_reduction``, ``acsl_budget_scale``, (``"rate"``)
    ``acsl_budget_level`` and ``acsl_kept_min``, and the penalty apart from
    the task loss: ``penalty_loss``, ``task_loss``, ``val_penalty_loss``,
    ``val_task_loss`` (see :class:`PenaltyMetrics`). ``history`` holds one
    dict per check (``epoch``, ``step``, ``reduction``, ``scale`` and, for
    ``"rate"``, ``level``, ``kept_min`` and ``bound``, the step bound on the
    multiplier).

    **End of training.** A ``UserWarning`` says by how much the budget was
    missed, or overshot by more than ``tolerance``, and what to do. Another
    one says when the removable reduction still changed by more than
    ``tolerance`` in the last epoch: the BatchNorm moving statistics then lag
    behind the gammas, and :func:`acsl_tf.recalibrate_batchnorm` fixes them.

    The target comes from the argument or, if omitted, from
    ``prune_low_correlation(..., target=...)``.

    Args:
        target_flops: fraction of FLOPs to remove, in (0, 1).
        target_params: fraction of parameters to remove, in (0, 1).
        threshold: |gamma| below which a channel counts as removable (> 0).
        factor: largest multiplicative step of the strength per check (> 1).
        tolerance: allowed overshoot of the reduction, in [0, 1).
        max_scale: upper bound of the multiplier (> 0).
        controller: ``"rate"`` or ``"epoch"`` (see above).
        update_every: ``"rate"`` only: steps between checks, or ``"auto"``
            (four checks per epoch when the number of steps per epoch is
            known, else one per epoch). Each check runs two
            :func:`plan_shrink` calls (0.2-1.3 s each on
            ``keras.applications`` models, docs/SHRINK.md).
        reach_at: ``"rate"`` only: fraction of the training (in steps) by
            which the budget should be met, in (0, 1]. The rest of the
            training adapts the remaining channels to the sparse ones.
        protect: ``"rate"`` only: the smallest kept ``|gamma|`` may close at
            most ``1 / protect`` of its distance to the threshold per check
            (>= 0; 0 turns the protection off).
        kept_weight: ``"rate"`` only: factor of the penalty on the channels
            the budget keeps, relative to those it needs, in [0, 1] (see
            above; 1 penalises all channels alike). None: 0 with
            ``controller="rate"``, 1 with ``"epoch"``.
        max_step: bound of the penalty's jump per step, as a fraction of
            ``threshold`` (> 0; see above), or None for no bound.
        allocation: ``"rate"`` only: how many channels of each group the
            budget needs. ``"method"`` (default): the method's own order
            ``|gamma| / w`` across all groups decides. ``"gamma"``: as many
            per group as the plain ``|gamma|`` order (Network Slimming's)
            would remove; the method's order only picks which ones inside
            each group (see "Allocation" in docs/ACSL.md).
        verbose: 1 prints one line per epoch, 0 prints nothing.

    Raises:
        TypeError: an argument of the wrong type.
        ValueError: an argument out of range.
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
        protect: float = 4.0,
        kept_weight: float | None = None,
        max_step: float | None = 0.5,
        allocation: str = "method",
        verbose: int = 1,
    ):
        super().__init__()
        if target_flops is not None and target_params is not None:
            raise ValueError(
                "Give at most one of `target_flops` and `target_params`. "
                f"Received: target_flops={target_flops}, target_params={target_params}"
            )
        for name, v in (("target_flops", target_flops), ("target_params", target_params)):
            if v is not None:
                _validation.fraction(v, name, low_open=True)
        self.threshold = _validation.positive(threshold, "threshold")
        self.factor = _validation.number(factor, "factor", low=1.0, low_open=True)
        self.tolerance = _validation.fraction(tolerance, "tolerance")
        self.max_scale = _validation.positive(max_scale, "max_scale")
        self.reach_at = _validation.fraction(reach_at, "reach_at", low_open=True, high_open=False)
        self.protect = _validation.non_negative(protect, "protect")
        self.max_step = None if max_step is None else _validation.positive(max_step, "max_step")
        _validation.choice(controller, "controller", ("rate", "epoch"), kind=str)
        if kept_weight is None:
            # The "epoch" controller does not compute the budget's channel sets.
            kept_weight = 0.0 if controller == "rate" else 1.0
        self.kept_weight = _validation.fraction(kept_weight, "kept_weight", high_open=False)
        if controller == "epoch" and self.kept_weight != 1.0:
            raise ValueError(
                'kept_weight < 1 needs controller="rate" (the "epoch" controller does not '
                f"compute the budget's channel sets). Received: kept_weight={kept_weight}"
            )
        _validation.choice(allocation, "allocation", ("method", "gamma"), kind=str)
        if allocation != "method" and controller != "rate":
            raise ValueError(
                'allocation="gamma" needs controller="rate" (the "epoch" controller does not '
                f"compute the budget's channel sets). Received: allocation={allocation!r}, "
                f"controller={controller!r}"
            )
        self.allocation = allocation
        every = '"auto" or an integer number of steps >= 1'
        if isinstance(update_every, str):
            _validation.choice(update_every, "update_every", ("auto",), expected=every)
        else:
            _validation.integer(update_every, "update_every", minimum=1, expected=every)
        verbose = _validation.integer(verbose, "verbose", minimum=0)
        self.target_flops = None if target_flops is None else float(target_flops)
        self.target_params = None if target_params is None else float(target_params)
        self.controller = controller
        self.update_every = update_every if update_every == "auto" else int(update_every)
        self.verbose = int(verbose)
        self.history = []
        self._kept_min = self._last_kept = math.inf
        self._bn_keep = None  # the kept channels of the last level() plan
        self._bound = math.inf  # the step bound applied by the last _set_scale
        self._epoch_steps = None
        self._state_size = CONTROLLER_STATE_SIZE

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

    # ------------------------------------------------------------------ state

    def _load_state(self):
        return np.asarray(
            keras.ops.convert_to_numpy(self._wrappers[0].controller_state), "float64"
        ).copy()

    def _save_state(self):
        state = np.zeros(self._state_size, "float64")
        state[_S_INIT] = 1.0
        state[_S_STEP], state[_S_LEVEL] = self._last
        state[_S_REDUCTION] = self._last_reduction
        state[_S_KEPT] = self._last_kept
        state[_S_EPOCH_STEPS] = self._epoch_steps or 0
        for w in self._wrappers:
            w.controller_state.assign(state)

    # ------------------------------------------------------------------ measuring

    def on_train_begin(self, logs=None):
        self._wrappers = _wrappers_or_raise(self.model, "BudgetStrength")
        check_strategy_supported(getattr(self.model, "distribute_strategy", None))
        self._kind, self._target = self._resolve_target(self._wrappers)
        for w in self._wrappers:
            w._budget_controlled = True
        self._check_optimizer()
        self._step = int(keras.ops.convert_to_numpy(self._wrappers[0].step))
        self._epoch = 0
        self._total_steps = self._every = self._start = None
        # Also fails early, with a clear message, if the budget is impossible.
        level = self.level()
        state = self._load_state()
        self._state_size = state.shape[0]
        if state[_S_INIT]:
            # A resumed (or continued) training: the state saved in the model.
            self._last = (int(state[_S_STEP]), float(state[_S_LEVEL]))
            self._last_reduction = float(state[_S_REDUCTION])
            self._last_kept = float(state[_S_KEPT])
            self._epoch_steps = int(state[_S_EPOCH_STEPS]) or None
        else:
            self._last = (self._step, level)
            self._last_reduction = 0.0
            self._last_kept = self._kept_min
            self._epoch_steps = None
        self._last_level = self._last[1]
        steps = (self.params or {}).get("steps")
        if steps:
            self._epoch_steps = int(steps)
        self._scheduled = False

    def _check_optimizer(self):
        from acsl_tf.sparsity.wrapper import L1_CANCELLING_OPTIMIZERS, _optimizer_name

        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is not None and _optimizer_name(optimizer) in L1_CANCELLING_OPTIMIZERS:
            warnings.warn(
                f"BudgetStrength with {_optimizer_name(optimizer)}: adaptive optimizers "
                "normalise each parameter's update, which cancels most of the L1 penalty, so "
                "the strength multiplier has little effect and tends to run away. Use "
                "keras.optimizers.SGD with momentum for sparsity training (docs/ACSL.md).",
                UserWarning,
                stacklevel=2,
            )

    def _schedule(self, epoch: int) -> None:
        """Fix the training's span in steps and the steps between checks, once
        the epoch length and the first epoch of this `fit` are known."""
        spe = self._epoch_steps
        epochs = int((self.params or {}).get("epochs") or 1)
        # Step at which epoch 0 began: a resumed fit (initial_epoch=k) keeps the
        # schedule of the uninterrupted one; a second plain fit starts a new one.
        self._start = self._step - epoch * spe
        self._total_steps = self._start + epochs * spe
        if self.update_every == "auto":
            self._every = max(1, spe // 4)
        else:
            self._every = int(self.update_every)
        self._scheduled = True

    def measure(self) -> float:
        """Reduction (fraction) the sub-threshold channels would give now."""
        from acsl_tf import plan_shrink

        plan = plan_shrink(self.model, threshold=self.threshold)
        if self._kind == "flops":
            before, after = plan.flops_before, plan.flops_after
        else:
            before, after = plan.params_before, plan.params_after
        return 1.0 - after / before if before else 0.0

    def level(self) -> float:
        """The budget level: the largest ``|gamma|`` among the channels that
        the budget needs. Those are the channels the method's penalty empties
        first: lowest ``|gamma| / w`` first, with ``w`` the unit's per-channel
        strengths (ACSL's correlation-driven weights; ones for Network
        Slimming, where this is the ``|gamma|`` order of ``shrink``).

        The same plan also gives the smallest ``|gamma|`` among the channels
        the budget keeps; it is stored in ``self._kept_min`` (inf when none).

        Raises:
            ValueError: if the budget cannot be met even by removing every
                prunable channel.
        """
        from acsl_tf import plan_shrink
        from acsl_tf.pruning.criteria import UnitCriterion

        kw = {"target_flops" if self._kind == "flops" else "target_params": self._target}
        order = UnitCriterion(_time_to_threshold, "gamma_per_strength")
        if self.allocation == "gamma":
            order = _GammaAllocation(order)
        try:
            plan = plan_shrink(self.model, criterion=order, **kw)
        except ValueError as e:
            raise ValueError(
                f"BudgetStrength: the budget ({self._kind} reduction {self._target}) cannot be "
                f"met on this model: {e}"
            ) from None
        level, kept_min = 0.0, math.inf
        self._bn_keep = plan.bn_keep
        for w in self._wrappers:
            name = w.layer.name
            g = np.abs(keras.ops.convert_to_numpy(w.layer.gamma)).reshape(-1)
            if name not in plan.bn_keep:
                kept_min = min(kept_min, float(g.min()))
                continue
            mask = np.ones(g.shape[0], bool)
            keep = list(plan.bn_keep[name])
            mask[keep] = False
            if mask.any():
                level = max(level, float(g[mask].max()))
            if keep:
                kept_min = min(kept_min, float(g[keep].min()))
        self._kept_min = kept_min
        return level

    def _update_mask(self) -> None:
        """Set every unit's ``budget_mask`` from the last :meth:`level` plan:
        1 on the channels the budget needs, ``kept_weight`` on the others."""
        if self.kept_weight == 1.0 or self._bn_keep is None:
            return
        for w in self._wrappers:
            mask = np.full(int(w.channels), self.kept_weight, "float32")
            keep = self._bn_keep.get(w.layer.name)
            if keep is not None:
                mask[:] = 1.0
                mask[list(keep)] = self.kept_weight
            w.budget_mask.assign(mask)

    def _scale(self) -> float:
        return float(keras.ops.convert_to_numpy(self._wrappers[0].budget_scale))

    def step_bound(self) -> float:
        """The largest multiplier whose per-step L1 jump stays within
        ``max_step * threshold`` (inf without a bound or for optimizers
        other than SGD)."""
        optimizer = getattr(self.model, "optimizer", None)
        optimizer = getattr(optimizer, "inner_optimizer", optimizer)  # LossScaleOptimizer
        if self.max_step is None or not isinstance(optimizer, keras.optimizers.SGD):
            return math.inf
        lr = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        momentum = float(optimizer.momentum)
        jump = 0.0
        for w in self._wrappers:
            lam = float(
                np.max(
                    keras.ops.convert_to_numpy(w.strength)
                    * keras.ops.convert_to_numpy(w.budget_mask)
                )
            )
            schedule = float(keras.ops.convert_to_numpy(w.schedule(w.step)))
            jump = max(jump, lr * w.penalty * schedule * lam)
        if jump <= 0.0 or momentum >= 1.0:
            return math.inf
        return self.max_step * self.threshold * (1.0 - momentum) / jump

    def _set_scale(self, scale: float) -> float:
        self._bound = self.step_bound()
        scale = float(min(max(scale, 1e-6), self.max_scale, self._bound))
        for w in self._wrappers:
            w.budget_scale.assign(scale)
        return scale

    def _ease(self, scale: float, reduction: float) -> float:
        excess = (reduction - self._target - self.tolerance) / max(1.0 - self._target, 1e-6)
        return scale / self.factor ** min(1.0, excess)

    # ------------------------------------------------------------------ control

    def _protected(self, scale: float, proposed: float, step: int, kept: float) -> float:
        """Bound ``proposed`` so that the kept channels stay clear of the
        threshold (see the class docstring)."""
        prev_step, prev_kept = self._last[0], self._last_kept
        if (
            not self.protect
            or not (math.isfinite(kept) and math.isfinite(prev_kept))
            or step <= prev_step
            or prev_kept <= kept
        ):
            return proposed
        # How far the smallest kept gamma falls per check at the current
        # strength (the fall is roughly proportional to the strength).
        fall = (prev_kept - kept) / (step - prev_step) * float(self._every or (step - prev_step))
        gap = kept - self.threshold
        cap = gap / (self.protect * fall) if gap > 0 else 0.0
        return min(proposed, scale * max(cap, self.factor**-2))

    def _rate_check(self, epoch: int) -> None:
        step = self._step
        reduction = self.measure()
        level = self.level()
        kept = self._kept_min
        scale = old = self._scale()
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
                deadline = self._start + self.reach_at * (self._total_steps - self._start)
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
        scale = self._protected(old, scale, step, kept)
        self._update_mask()
        scale = self._set_scale(scale)
        self._last = (step, level)
        self._last_reduction, self._last_level, self._last_kept = reduction, level, kept
        self._save_state()
        self.history.append(
            {
                "epoch": epoch,
                "step": step,
                "reduction": reduction,
                "scale": scale,
                "level": level,
                "kept_min": kept,
                "bound": self._bound,
            }
        )

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        if self.controller != "rate" or not self._scheduled:
            return
        end_of_epoch = self._epoch_steps and batch + 1 == self._epoch_steps
        if self._step % self._every == 0 or (end_of_epoch and self._last[0] != self._step):
            # The end-of-epoch check runs here, before any on_epoch_end, so
            # that a ModelCheckpoint saves the state after it.
            self._rate_check(self._epoch)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._epoch_first_step = self._step
        if self.controller == "rate" and not self._scheduled and self._epoch_steps:
            self._schedule(epoch)
        self._penalty_begin()

    def on_epoch_end(self, epoch, logs=None):
        if self.controller == "rate":
            if not self._scheduled and self._step > 0:
                # Epoch length unknown before: now it is.
                self._epoch_steps = self._step - self._epoch_first_step
                self._schedule(epoch)
            if self._last[0] != self._step:
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
            self._last_reduction = reduction
            self.history.append(
                {"epoch": epoch, "step": self._step, "reduction": reduction, "scale": scale}
            )
        if logs is not None:
            logs["acsl_reduction"] = reduction
            logs["acsl_budget_scale"] = scale
            if self.controller == "rate":
                logs["acsl_budget_level"] = self._last_level
                logs["acsl_kept_min"] = self._last_kept
        self._penalty_logs(logs)
        if self.verbose:
            extra = (
                f", budget level {self._last_level:.3g} (threshold {self.threshold:g})"
                if self.controller == "rate"
                else ""
            )
            _print(
                self,
                f"BudgetStrength: epoch {epoch + 1}: removable {self._kind} {reduction:.1%} "
                f"(target {self._target:.1%}){extra}, strength multiplier -> {scale:g}",
            )

    def _warn_if_still_moving(self, last) -> None:
        """Warn when the removable reduction still changed by more than
        ``tolerance`` during the last epoch: the gammas were still moving at
        the end, so the BatchNorm moving statistics lag behind them."""
        epoch = last.get("epoch")
        before = [h for h in self.history if h.get("epoch", epoch) < epoch] if epoch else []
        if not before:
            return
        change = abs(last["reduction"] - before[-1]["reduction"])
        if change > self.tolerance:
            warnings.warn(
                f"BudgetStrength: the removable {self._kind} still changed by {change:.1%} in the "
                f"last epoch ({before[-1]['reduction']:.1%} -> {last['reduction']:.1%}), so the "
                "gammas were still moving when the training ended and the BatchNorm moving "
                "statistics lag behind them: the model's inference-mode outputs (evaluate, "
                "predict, export) can be worse than its training-mode ones. Call "
                "acsl_tf.recalibrate_batchnorm(model, x) on a few batches of training inputs "
                "before evaluating or exporting, or give the training more epochs after the "
                "budget is met (a lower `reach_at`).",
                StaleStatisticsWarning,
                stacklevel=3,
            )

    def on_train_end(self, logs=None):
        for w in self._wrappers:
            w._budget_controlled = False
        if not self.history:
            return
        last = self.history[-1]
        reduction = last["reduction"]
        target, kind = self._target, self._kind
        self._warn_if_still_moving(last)
        if reduction < target - self.tolerance:
            level, kept = last.get("level"), last.get("kept_min", math.inf)
            together = ""
            if level and math.isfinite(kept) and kept < 1.1 * level:
                together = (
                    f" The channels the budget needs and those it keeps have nearly equal "
                    f"gammas (level {level:.3g}, smallest kept {kept:.3g}): the gammas fall "
                    "together, and the protection of the kept channels held the strength back; "
                    "a lower `protect` meets the budget sooner at their risk."
                )
            warnings.warn(
                f"BudgetStrength: the budget was missed: {reduction:.1%} of the {kind} is "
                f"removable (|gamma| < {self.threshold:g}) against the target {target:.1%}, "
                f"{target - reduction:.1%} short. shrink(target_{kind}={target:g}) will also "
                "cut channels above the threshold, which costs accuracy before fine-tuning. "
                f"Train more epochs, raise `penalty`, or lower `reach_at`.{together}",
                UserWarning,
                stacklevel=2,
            )
        elif reduction > target + self.tolerance:
            warnings.warn(
                f"BudgetStrength: the budget was overshot: {reduction:.1%} of the {kind} is "
                f"removable (|gamma| < {self.threshold:g}) against the target {target:.1%}, "
                f"{reduction - target:.1%} over (tolerance {self.tolerance:.1%}). Channels the "
                "budget keeps are near zero, so the sparsity-trained model may be weak. Use a "
                "lower `penalty`, more epochs, or a larger `protect`; "
                f"shrink(target_{kind}={target:g}) still cuts only what the budget needs.",
                UserWarning,
                stacklevel=2,
            )


class CoupledStrength(keras.callbacks.Callback):
    """Penalises coupled gammas as a group.

    BatchNormalizations that scale one channel group of the dependency graph
    (the BNs added into one residual stream, a BN after an ``Add`` and the
    BNs before it) can only lose channel ``k`` together. ACSL computes each
    unit's per-channel strengths from that unit's own correlations, so one
    unit may push channel ``k`` hard while another keeps it. After every
    training batch this callback sets each coupled unit's strength for
    channel ``k`` to the group mean, so the penalty on the group is
    ``lambda_k * sum_u |gamma_uk|``: one adaptive weight per channel of the
    group, an L1 norm over the coupled gammas.

    Example:

    ```python
    pruned = acsl_tf.prune_low_correlation(model, penalty=1e-3)
    pruned.fit(x, y, callbacks=[acsl_tf.callbacks.CoupledStrength()])
    ```
    """

    def on_train_begin(self, logs=None):
        from acsl_tf.graph import DependencyGraph

        wrappers = {id(w.layer): w for w in get_wrappers(self.model)}
        if not wrappers:
            raise ValueError(
                "CoupledStrength needs a model wrapped by acsl_tf.prune_low_correlation. "
                f"Received: model={self.model.name!r}"
            )
        graph = DependencyGraph(self.model)
        self._groups = []
        for r in graph.prunable_groups(need_cover=True):
            members = []
            for unit_name, off in graph.unit_offsets(r):
                w = wrappers.get(id(graph.units[unit_name].layer))
                if w is not None:
                    members.append((w, off))
            if len(members) > 1:
                self._groups.append((graph.groups[r].size, members))

    @property
    def groups(self) -> list:
        """``[(channels, [(wrapper, offset), ...]), ...]`` of the coupled groups."""
        return list(getattr(self, "_groups", []))

    def on_train_batch_end(self, batch, logs=None):
        if not getattr(self, "_groups", None):
            return
        # Under JAX the training state lives outside the variables during an
        # epoch; reading `self.model` attaches it (and the next step reads the
        # strengths assigned here). A no-op on TensorFlow.
        self.model  # noqa: B018
        current = {}
        for _, members in self._groups:
            for w, _ in members:
                if id(w) not in current:
                    current[id(w)] = (w, np.array(keras.ops.convert_to_numpy(w.strength)))
        for size, members in self._groups:
            mean = np.mean([current[id(w)][1][off : off + size] for w, off in members], axis=0)
            for w, off in members:
                current[id(w)][1][off : off + size] = mean
        for w, vec in current.values():
            w.strength.assign(vec.astype("float32"))


class SparsityTensorBoard(keras.callbacks.Callback):
    """Writes the sparsity state to TensorBoard once per epoch.

    Per unit: a histogram of |gamma|, the fraction of channels below
    ``threshold``, the mean strength weight, and the running channel affinity
    as an image (a C x C heat map). Totals: overall sparsity and the mean
    penalty.

    Args:
        log_dir: directory of the event files (e.g. the same one as
            ``keras.callbacks.TensorBoard``).
        threshold: |gamma| threshold of the sparsity figures (> 0).
        affinity_images: also write the affinity heat maps.
        max_images: write heat maps of at most this many units (>= 0).

    Raises:
        TypeError: an argument of the wrong type.
        ValueError: an argument out of range, or an empty ``log_dir``.
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
        self.log_dir = _validation.path(log_dir, "log_dir", allow_empty=False)
        self.threshold = _validation.positive(threshold, "threshold")
        self.affinity_images = bool(affinity_images)
        self.max_images = _validation.integer(max_images, "max_images", minimum=0)
        self._writer = None

    def on_train_begin(self, logs=None):
        try:
            import tensorflow as tf
        except ImportError:
            raise ImportError(
                "SparsityTensorBoard writes with tf.summary, which needs TensorFlow (also "
                'under KERAS_BACKEND=jax): pip install "acsl_tf[cpu]"'
            ) from None

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
