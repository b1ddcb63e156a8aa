"""The rate-aware controller of acsl_tf.BudgetStrength."""

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
    steps = [h["step"] for h in cb.history]
    # 8 steps per epoch -> "auto" checks every 2 steps.
    assert steps == list(range(2, 49, 2))
    reductions = [h["reduction"] for h in cb.history]
    assert reductions[-1] >= 0.5
    # Met around reach_at (0.6 * 48 steps = 28.8), not at the first check.
    first = next(h["step"] for h in cb.history if h["reduction"] >= 0.5)
    assert 8 <= first <= 40
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
        return self.script.pop(0)[1]


def _drive(script, total_steps=100, every=10, start_level=1.0, start_step=0):
    w = _wrapped()
    cb = _Scripted(script)
    cb.set_model(w)
    cb._wrappers = acsl_tf.get_wrappers(w)
    cb._kind, cb._target = "flops", 0.5
    cb._total_steps, cb._every, cb._step, cb._epoch = total_steps, every, start_step, 0
    cb._last, cb._last_reduction = (start_step, start_level), 0.0
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
        (dict(update_every=True), "update_every"),
        (dict(update_every="epoch"), "update_every"),
        (dict(reach_at=0.0), "reach_at"),
        (dict(reach_at=1.5), "reach_at"),
    ],
)
def test_rate_options_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        acsl_tf.BudgetStrength(target_flops=0.5, **kwargs)


def test_verbose_line_reports_level(capsys):
    keras.utils.set_random_seed(0)
    w = _wrapped(target=0.5, gamma=0.3)
    _compile(w)
    x, y = _data(16)
    w.fit(x, y, epochs=1, batch_size=8, verbose=0, callbacks=[acsl_tf.BudgetStrength()])
    out = capsys.readouterr().out
    assert "budget level" in out and "strength multiplier" in out
