"""The rate-aware controller of acsl_tf.BudgetStrength."""

import warnings

import keras
import numpy as np
import pytest

import acsl_tf
from tests._models import small_cnn


def _wrapped(target=0.5, gamma=None):
    w = acsl_tf.prune_low_correlation(
        small_cnn(filters=(8, 12)), penalty=2e-3, target={"flops": target}, update_every=1
    )
    if gamma is not None:
        for wr in acsl_tf.get_wrappers(w):
            wr.layer.gamma.assign(np.full(wr.layer.gamma.shape, gamma, "float32"))
    return w


def _data(n=64):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 8, 8, 3)).astype("float32"), rng.integers(0, 3, n)


def _compile(w, lr=0.05):
    w.compile(
        keras.optimizers.SGD(lr, momentum=0.9),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )


def test_rate_controller_meets_budget_and_checks_every_quarter_epoch():
    keras.utils.set_random_seed(0)
    w = _wrapped(target=0.5, gamma=0.3)
    _compile(w)
    x, y = _data()
    cb = acsl_tf.BudgetStrength(threshold=5e-2, reach_at=0.6, verbose=0)
    hist = w.fit(x, y, epochs=6, batch_size=8, verbose=0, callbacks=[cb])
    # The step bound: lr * penalty * scale * max(w) / (1 - momentum) is at
    # most half the threshold; it held the multiplier at every check.
    max_w = max(
        float(np.max(np.asarray(wr.strength) * np.asarray(wr.budget_mask)))
        for wr in acsl_tf.get_wrappers(w)
    )
    assert cb.step_bound() == pytest.approx(0.5 * 5e-2 * 0.1 / (0.05 * 2e-3 * max_w), rel=1e-5)
    assert all(h["scale"] <= h["bound"] * (1 + 1e-6) for h in cb.history)
    assert any(h["scale"] == pytest.approx(h["bound"]) for h in cb.history)
    steps = [h["step"] for h in cb.history]
    # 8 steps per epoch -> "auto" checks every 2 steps.
    assert steps == list(range(2, 49, 2))
    reductions = [h["reduction"] for h in cb.history]
    # Reached around reach_at (0.6 * 48 steps = 28.8), not at the first check.
    # (All gammas start equal and fall together under the uniform penalty,
    # so the reduction then overshoots: kept_weight < 1 is the remedy.)
    first = next(h["step"] for h in cb.history if h["reduction"] >= 0.45)
    assert 8 <= first <= 40
    assert all(h["kept_min"] > 0.0 for h in cb.history)
    # The strength was raised while the level fell too slowly.
    assert max(h["scale"] for h in cb.history) > 1.0
    # Logged values agree with plan_shrink.
    plan = acsl_tf.plan_shrink(w, threshold=5e-2)
    assert plan.flops_reduction == pytest.approx(reductions[-1])
    assert hist.history["acsl_reduction"][-1] == pytest.approx(reductions[-1])
    assert hist.history["acsl_budget_level"][-1] == pytest.approx(cb.history[-1]["level"])
    assert len({float(np.asarray(wr.budget_scale)) for wr in acsl_tf.get_wrappers(w)}) == 1


def test_level_is_the_largest_gamma_of_the_channels_the_budget_needs():
    w = _wrapped(target=0.5)
    rng = np.random.default_rng(1)
    for wr in acsl_tf.get_wrappers(w):
        wr.layer.gamma.assign(rng.uniform(0.1, 1.0, wr.layer.gamma.shape).astype("float32"))
    cb = acsl_tf.BudgetStrength(verbose=0)
    cb.set_model(w)
    cb._wrappers = acsl_tf.get_wrappers(w)
    cb._kind, cb._target = "flops", 0.5
    plan = acsl_tf.plan_shrink(w, target_flops=0.5)
    removed = []
    for wr in cb._wrappers:
        g = np.abs(np.asarray(wr.layer.gamma))
        keep = set(plan.bn_keep.get(wr.layer.name, range(g.size)))
        removed += [g[i] for i in range(g.size) if i not in keep]
    assert removed
    assert cb.level() == pytest.approx(max(removed))
    # The budget is met by the threshold exactly when the level is below it.
    above = acsl_tf.plan_shrink(w, threshold=cb.level() * 1.0001).flops_reduction
    assert above >= 0.5


class _Scripted(acsl_tf.BudgetStrength):
    """A controller fed with scripted measurements."""

    def __init__(self, script, **kw):
        super().__init__(target_flops=0.5, threshold=0.05, factor=2.0, verbose=0, **kw)
        self.script = list(script)

    def measure(self):
        return self.script[0][0]

    def level(self):
        entry = self.script.pop(0)
        # (reduction, level[, smallest kept gamma]); no kept gamma: no protection.
        self._kept_min = entry[2] if len(entry) > 2 else float("inf")
        return entry[1]


def _drive(script, total_steps=100, every=10, start_level=1.0, start_step=0, start_kept=None):
    w = _wrapped()
    cb = _Scripted(script)
    cb.set_model(w)
    cb._wrappers = acsl_tf.get_wrappers(w)
    cb._kind, cb._target = "flops", 0.5
    cb._total_steps, cb._every, cb._step, cb._epoch = total_steps, every, start_step, 0
    cb._start, cb._state_size = 0, 8
    cb._last, cb._last_reduction = (start_step, start_level), 0.0
    cb._last_kept = float("inf") if start_kept is None else start_kept
    scales = []
    for _ in range(len(script)):
        cb._step += every
        cb._rate_check(0)
        scales.append(cb.history[-1]["scale"])
    return scales


def test_rate_rule_step_by_step():
    # Deadline 0.6 * 100 = 60 steps. Level 1.0 -> 0.9 in 10 steps: observed
    # 0.01/step; needed (0.9 - 0.05) / 50 = 0.017/step -> x1.7.
    s = _drive([(0.0, 0.9)])
    assert s[0] == pytest.approx(0.85 / 50 / 0.01)
    # Level not falling: full factor.
    assert _drive([(0.0, 1.0)])[0] == pytest.approx(2.0)
    # Falling much faster than needed: eased by at most sqrt(factor).
    assert _drive([(0.0, 0.1)])[0] == pytest.approx(2.0**-0.5)
    # Near the threshold only small raises: level 0.06 (gap 0.2 thresholds),
    # not falling -> 2 ** 0.2 instead of the full factor.
    assert _drive([(0.0, 0.06)], start_level=0.05)[0] == pytest.approx(2.0**0.2)
    # Past the deadline (60 of 100 steps) the needed rate is spread over the
    # rest of the training: at step 70, level 0.6 -> 0.5 (0.01/step observed),
    # needed (0.5 - 0.05) / 30 = 0.015/step -> x1.5.
    assert _drive([(0.0, 0.5)], start_level=0.6, start_step=60)[0] == pytest.approx(1.5)
    # Budget met, within tolerance: held.
    assert _drive([(0.52, 0.04)])[0] == pytest.approx(1.0)
    # Overshoot beyond the band: eased in proportion to the excess
    # ((0.7 - 0.55) / (1 - 0.5) = 0.3 of a factor, in log).
    assert _drive([(0.7, 0.01)])[0] == pytest.approx(2.0**-0.3)
    assert _drive([(0.575, 0.01)])[0] == pytest.approx(2.0**-0.05)
    # ... but not while the overshoot is already shrinking.
    s = _drive([(0.9, 0.0), (0.8, 0.0), (0.85, 0.0)])
    assert s[1] == pytest.approx(s[0]) and s[2] < s[1]
    # Never below 1e-6.
    assert min(_drive([(0.9, 0.0)] * 30)) == pytest.approx(1e-6)


def test_protection_of_the_kept_channels_step_by_step():
    # Not met, level not falling: the rate rule asks for the full factor 2.
    # The smallest kept gamma fell 0.30 -> 0.25 in the last check (0.05 per
    # check); its gap to the threshold is 0.20, protect=4 lets it close a
    # quarter of that per check: 0.05 / 0.05 = x1.0 at most.
    assert _drive([(0.0, 1.0, 0.25)], start_kept=0.30)[0] == pytest.approx(1.0)
    # Falling twice as fast (0.10 per check): the strength is halved.
    assert _drive([(0.0, 1.0, 0.25)], start_kept=0.35)[0] == pytest.approx(0.5)
    # Far from the threshold the protection leaves the raise alone.
    assert _drive([(0.0, 1.0, 0.95)], start_kept=1.0)[0] == pytest.approx(2.0)
    # A kept channel at or under the threshold, still falling: the largest
    # cut, factor ** 2 per check.
    assert _drive([(0.3, 0.2, 0.04)], start_kept=0.06)[0] == pytest.approx(0.25)
    # A kept gamma that rises is no reason to ease.
    assert _drive([(0.0, 1.0, 0.06)], start_kept=0.055)[0] == pytest.approx(2.0)


def test_protection_can_be_switched_off():
    w = _wrapped()
    cb = _Scripted([(0.0, 1.0, 0.25)], protect=0)
    cb.set_model(w)
    cb._wrappers = acsl_tf.get_wrappers(w)
    cb._kind, cb._target = "flops", 0.5
    cb._total_steps, cb._every, cb._step, cb._epoch, cb._start = 100, 10, 10, 0, 0
    cb._last, cb._last_reduction, cb._last_kept, cb._state_size = (0, 1.0), 0.0, 0.35, 8
    cb._rate_check(0)
    assert cb.history[-1]["scale"] == pytest.approx(2.0)


@pytest.mark.parametrize(
    "reduction, match",
    [(0.30, "missed: 30.0% .* 20.0% short"), (0.70, "overshot: 70.0% .* 20.0% over")],
)
def test_end_of_training_warns_when_budget_missed_or_overshot(reduction, match):
    w = _wrapped()
    cb = _Scripted([])
    cb._wrappers = acsl_tf.get_wrappers(w)
    cb._kind, cb._target = "flops", 0.5
    cb.history = [{"reduction": reduction}]
    with pytest.warns(UserWarning, match=match):
        cb.on_train_end()


def test_no_warning_within_tolerance(recwarn):
    w = _wrapped()
    cb = _Scripted([])
    cb._wrappers = acsl_tf.get_wrappers(w)
    cb._kind, cb._target = "flops", 0.5
    cb.history = [{"reduction": 0.53}]
    cb.on_train_end()
    assert not [r for r in recwarn if "BudgetStrength" in str(r.message)]


@pytest.mark.filterwarnings("ignore:Your input ran out of data")
def test_unknown_epoch_length_switches_to_quarter_epochs_after_epoch_one():
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    w = _wrapped(target=0.5, gamma=0.3)
    _compile(w)
    x, y = _data()
    ds = tf.data.Dataset.from_tensor_slices((x, y)).filter(lambda a, b: True).batch(8)
    cb = acsl_tf.BudgetStrength(threshold=5e-2, verbose=0)
    w.fit(ds, epochs=3, verbose=0, callbacks=[cb])
    steps = [h["step"] for h in cb.history]
    assert steps[0] == 8  # one check at the end of epoch 1
    assert steps[1:] == list(range(10, 25, 2))


def test_impossible_budget_fails_at_train_begin():
    w = _wrapped(target=0.5)
    _compile(w)
    x, y = _data(16)
    cb = acsl_tf.BudgetStrength(target_flops=0.999, verbose=0)
    with pytest.raises(ValueError, match="cannot be met"):
        w.fit(x, y, epochs=1, batch_size=8, verbose=0, callbacks=[cb])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(controller="pid"), "controller"),
        (dict(update_every=0), "update_every"),
        (dict(update_every="epoch"), "update_every"),
        (dict(reach_at=0.0), "reach_at"),
        (dict(reach_at=1.5), "reach_at"),
        (dict(max_scale=-1), r"Received: max_scale=-1\.0$"),
        (dict(max_scale=0), "Received: max_scale=0"),
        (dict(max_scale=float("nan")), "Received: max_scale=nan"),
        (dict(factor=float("inf")), "Received: factor=inf"),
        (dict(factor=1.0), "Received: factor=1"),
        (dict(threshold=0.0), "Received: threshold=0"),
        (dict(threshold=-0.1), "Received: threshold=-0.1"),
        (dict(tolerance=-0.01), "Received: tolerance=-0.01"),
        (dict(tolerance=1.0), "Received: tolerance=1"),
        (dict(protect=-1), "Received: protect=-1"),
        (dict(reach_at=float("nan")), "Received: reach_at=nan"),
        (dict(kept_weight=-0.1), "Received: kept_weight=-0.1"),
        (dict(kept_weight=1.5), "Received: kept_weight=1.5"),
        (dict(kept_weight=float("nan")), "Received: kept_weight=nan"),
        (dict(kept_weight=0.5, controller="epoch"), 'needs controller="rate"'),
    ],
)
def test_rate_options_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        acsl_tf.BudgetStrength(target_flops=0.5, **kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(threshold="a"), "Received: threshold='a'"),
        (dict(factor=None), "Received: factor=None"),
        (dict(max_scale=True), "Received: max_scale=True"),
        (dict(update_every=True), "Received: update_every=True"),
        (dict(update_every=2.5), "Received: update_every=2.5"),
        (dict(controller=1), "Received: controller=1"),
        (dict(verbose="yes"), "Received: verbose='yes'"),
        (dict(target_flops="half"), "Received: target_flops='half'"),
        (dict(tolerance=[0.1]), r"Received: tolerance=\[0.1\]"),
    ],
)
def test_wrong_types_raise_type_error(kwargs, match):
    kwargs.setdefault("target_flops", 0.5)
    with pytest.raises(TypeError, match=match):
        acsl_tf.BudgetStrength(**kwargs)


def test_valid_numbers_of_numpy_types_are_accepted():
    cb = acsl_tf.BudgetStrength(
        target_flops=np.float32(0.5), threshold=np.float64(0.05), update_every=np.int64(3)
    )
    assert (cb.target_flops, cb.threshold, cb.update_every) == (0.5, 0.05, 3)


def test_verbose_line_reports_level(capsys):
    keras.utils.set_random_seed(0)
    w = _wrapped(target=0.5, gamma=0.3)
    _compile(w)
    x, y = _data(16)
    w.fit(x, y, epochs=1, batch_size=8, verbose=0, callbacks=[acsl_tf.BudgetStrength()])
    out = capsys.readouterr().out
    assert "budget level" in out and "strength multiplier" in out


def test_missed_warning_says_when_the_gammas_fall_together():
    w = _wrapped()
    cb = _Scripted([])
    cb._wrappers = acsl_tf.get_wrappers(w)
    cb._kind, cb._target = "flops", 0.5
    cb.history = [{"reduction": 0.08, "level": 0.069, "kept_min": 0.070}]
    with pytest.warns(UserWarning, match=r"level 0.069, smallest kept 0.07\)"):
        cb.on_train_end()


def _focus_run(kept_weight):
    keras.utils.set_random_seed(0)
    w = _wrapped(target=0.5)
    rng = np.random.default_rng(3)
    for wr in acsl_tf.get_wrappers(w):
        wr.layer.gamma.assign(rng.uniform(0.2, 1.0, wr.layer.gamma.shape).astype("float32"))
    _compile(w)
    x, y = _data()
    cb = acsl_tf.BudgetStrength(threshold=5e-2, kept_weight=kept_weight, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a missed budget on this toy
        w.fit(x, y, epochs=8, batch_size=8, verbose=0, callbacks=[cb])
    return w, cb


def test_kept_weight_focuses_the_penalty_on_the_channels_the_budget_needs():
    w, cb = _focus_run(0.0)
    # The mask in force is the last plan's split: penalty on the channels the
    # budget needs, none on those it keeps.
    from acsl_tf.pruning.criteria import UnitCriterion
    from acsl_tf.sparsity.callbacks import _time_to_threshold

    order = UnitCriterion(_time_to_threshold)
    plan = acsl_tf.plan_shrink(w, target_flops=0.5, criterion=order)
    needed = kept = 0
    for wr in acsl_tf.get_wrappers(w):
        keep = list(plan.bn_keep.get(wr.layer.name, range(wr.channels)))
        expected = np.ones(wr.channels, "float32")
        expected[keep] = 0.0
        np.testing.assert_array_equal(np.asarray(wr.budget_mask), expected)
        assert np.all(wr.channel_penalties()[keep] == 0.0)
        needed += int(expected.sum())
        kept += len(keep)
    assert needed > 0 and kept > 0
    # The kept channels stay clear of the threshold; under the uniform
    # penalty (kept_weight=1) they fall with the others.
    _, uniform = _focus_run(1.0)
    assert cb.history[-1]["kept_min"] > 0.15
    assert uniform.history[-1]["kept_min"] < 0.1


def test_kept_weight_one_leaves_the_mask_at_ones():
    w = _wrapped(target=0.5, gamma=0.3)
    _compile(w)
    x, y = _data(16)
    cb = acsl_tf.BudgetStrength(verbose=0, kept_weight=1.0)
    w.fit(x, y, epochs=1, batch_size=8, verbose=0, callbacks=[cb])
    for wr in acsl_tf.get_wrappers(w):
        np.testing.assert_array_equal(np.asarray(wr.budget_mask), 1.0)


def test_kept_weight_default_is_zero_for_rate_and_one_for_epoch():
    assert acsl_tf.BudgetStrength(target_flops=0.5).kept_weight == 0.0
    assert acsl_tf.BudgetStrength(target_flops=0.5, controller="epoch").kept_weight == 1.0


def test_unsupported_distribution_strategy_is_refused_at_train_begin():
    from acsl_tf import distributed

    class CentralStorageStrategy:  # stand-in named like the real class
        pass

    w = _wrapped()
    w.__dict__["_distribute_strategy"] = CentralStorageStrategy()
    for cb in (acsl_tf.BudgetStrength(verbose=0), acsl_tf.callbacks.PenaltyMetrics()):
        cb.set_model(w)
        with pytest.raises(distributed.UnsupportedStrategyError, match="CentralStorage"):
            cb.on_train_begin()


def test_budget_order_is_gamma_over_strength():
    from acsl_tf.sparsity.callbacks import _time_to_threshold

    w = _wrapped(target=0.5)
    cb = acsl_tf.BudgetStrength(verbose=0)
    cb.set_model(w)
    cb._wrappers = acsl_tf.get_wrappers(w)
    cb._kind, cb._target = "flops", 0.5
    units = acsl_tf.DependencyGraph(w).units
    first = cb._wrappers[0]
    gamma = np.linspace(0.2, 0.9, first.channels).astype("float32")
    first.layer.gamma.assign(gamma)
    # A strong strength on the largest gamma puts it first in the order.
    strength = np.ones(first.channels, "float32")
    strength[-1] = 10.0
    first.strength.assign(strength)
    order = _time_to_threshold(
        type("U", (), {"gamma": np.abs(gamma).astype("float64"), "wrapper": first})()
    )
    np.testing.assert_allclose(order, gamma / strength, rtol=1e-6)
    assert int(np.argmin(order)) == first.channels - 1
    cb.level()
    keep = cb._bn_keep[first.layer.name]
    assert first.channels - 1 not in keep  # needed by the budget
    # Without a wrapper (or with w = 1) it is the |gamma| order.
    assert units  # the graph found the units
    plain = type("U", (), {"gamma": np.array([0.3, 0.1]), "wrapper": None})()
    np.testing.assert_array_equal(_time_to_threshold(plain), [0.3, 0.1])


@pytest.mark.parametrize("residual", [True, False])
def test_gamma_allocation_takes_counts_from_gamma_and_choice_from_the_method(residual):
    """allocation="gamma": every group loses as many channels as under the
    plain |gamma| order; inside a group the lowest |gamma| / w go."""
    from acsl_tf.pruning.criteria import UnitCriterion
    from acsl_tf.sparsity.callbacks import _GammaAllocation, _time_to_threshold

    w = acsl_tf.prune_low_correlation(
        small_cnn(filters=(8, 12), residual=residual), penalty=2e-3, update_every=1
    )
    rng = np.random.default_rng(3)
    wrappers = acsl_tf.get_wrappers(w)
    for wr in wrappers:
        wr.layer.gamma.assign(rng.uniform(0.1, 1.0, wr.channels).astype("float32"))
        # A wide spread of strengths, different in every unit.
        wr.strength.assign(rng.uniform(0.05, 4.0, wr.channels).astype("float32"))

    def keep_sets(allocation):
        cb = acsl_tf.BudgetStrength(allocation=allocation, verbose=0)
        cb.set_model(w)
        cb._wrappers = wrappers
        cb._kind, cb._target = "flops", 0.5
        cb.level()
        return {n: set(k) for n, k in cb._bn_keep.items()}

    plain = acsl_tf.plan_shrink(w, target_flops=0.5)
    gamma_counts = {g.id: len(g.keep) for g in plain.groups if g.prunable}
    alloc = keep_sets("gamma")
    method = keep_sets("method")
    order = _GammaAllocation(UnitCriterion(_time_to_threshold))
    plan_g = acsl_tf.plan_shrink(w, target_flops=0.5, criterion=order)
    assert {g.id: len(g.keep) for g in plan_g.groups if g.prunable} == gamma_counts
    assert {n: set(k) for n, k in plan_g.bn_keep.items()} == alloc
    # Inside each single-unit group the kept channels are the highest |gamma| / w.
    graph = acsl_tf.DependencyGraph(w)
    checked = 0
    for g in plain.groups:
        if not g.prunable or len(g.units) != 1:
            continue
        wr = next(x for x in wrappers if x.layer.name == g.units[0])
        order = np.abs(np.asarray(wr.layer.gamma)) / np.asarray(wr.strength)
        k = len(g.keep)
        assert alloc[g.units[0]] == set(np.argsort(-order, kind="stable")[:k].tolist())
        checked += 1
    assert checked >= (1 if residual else 2) and graph.units
    # The method's own allocation moves channels between groups here.
    assert {n: len(k) for n, k in method.items()} != {n: len(k) for n, k in alloc.items()}
    assert alloc != {n: set(k) for n, k in plain.bn_keep.items()}


def test_allocation_is_validated():
    with pytest.raises(ValueError, match="allocation"):
        acsl_tf.BudgetStrength(0.5, allocation="layer")
    with pytest.raises(ValueError, match='needs controller="rate"'):
        acsl_tf.BudgetStrength(0.5, allocation="gamma", controller="epoch")
    with pytest.raises(TypeError, match="allocation"):
        acsl_tf.BudgetStrength(0.5, allocation=1)
