import glob

import keras
import numpy as np
import pytest

import acsl_tf
from acsl_tf.sparsity import schedules
from tests._models import small_cnn


def test_constant_and_polynomial_values():
    assert float(acsl_tf.ConstantStrength(2.5)(10)) == pytest.approx(2.5)
    s = acsl_tf.PolynomialStrength(initial=0.0, final=1.0, begin_step=10, end_step=20, power=2)
    for step, want in [(0, 0.0), (10, 0.0), (15, 1 - 0.5**2), (20, 1.0), (100, 1.0)]:
        assert float(s(step)) == pytest.approx(want, abs=1e-6)


def test_schedule_get_and_serialization():
    assert isinstance(schedules.get(None), acsl_tf.ConstantStrength)
    assert schedules.get(3).value == 3.0
    s = acsl_tf.PolynomialStrength(0.1, 2.0, 5, 50, 1.5)
    again = schedules.get(keras.saving.serialize_keras_object(s))
    assert again.get_config() == s.get_config()
    with pytest.raises(ValueError, match="schedule"):
        schedules.get("fast")


@pytest.mark.parametrize(
    "kwargs",
    [dict(initial=-1.0), dict(begin_step=5, end_step=5), dict(power=0.0), dict(begin_step=-1)],
)
def test_polynomial_rejects_bad_args(kwargs):
    with pytest.raises(ValueError, match="Received"):
        acsl_tf.PolynomialStrength(**kwargs)


def test_schedule_drives_penalty_in_graph():
    w = acsl_tf.prune_low_correlation(
        small_cnn(),
        penalty=1e-2,
        direction="uniform",
        schedule=acsl_tf.PolynomialStrength(0.0, 1.0, 0, 4, power=1.0),
    )
    wr = acsl_tf.get_wrappers(w)[0]
    np.testing.assert_allclose(wr.channel_penalties(), 0.0)
    x = np.random.default_rng(0).normal(size=(8, 8, 8, 3)).astype("float32")
    w.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    w.fit(x, np.zeros(8), epochs=2, batch_size=8, verbose=0)  # 2 steps -> 0.5
    np.testing.assert_allclose(wr.channel_penalties(), 0.5e-2, rtol=1e-6)


def _train_budget(target, epochs, factor=4.0, **budget_options):
    w = acsl_tf.prune_low_correlation(
        small_cnn(filters=(8, 12)), penalty=2e-3, target={"flops": target}, update_every=1
    )
    for wr in acsl_tf.get_wrappers(w):  # start close to the threshold: a short test
        wr.layer.gamma.assign(np.full(wr.layer.gamma.shape, 0.2, "float32"))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 3, 64)
    w.compile(
        keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    budget_options.setdefault("controller", "epoch")
    cb = acsl_tf.BudgetStrength(threshold=5e-2, factor=factor, verbose=0, **budget_options)
    # Adam, on purpose: the epoch rule must still get there; it is warned about.
    with pytest.warns(UserWarning, match="Use keras.optimizers.SGD"):
        hist = w.fit(x, y, epochs=epochs, batch_size=16, verbose=0, callbacks=[cb])
    return w, cb, hist


def test_budget_strength_raises_lambda_until_target_met():
    w, cb, hist = _train_budget(target=0.5, epochs=10)
    scales = [h["scale"] for h in cb.history]
    reductions = [h["reduction"] for h in cb.history]
    # The strength grows by the full factor while nothing is removable ...
    assert reductions[0] == 0.0 and scales[0] == pytest.approx(4.0)
    assert max(scales) >= 16.0
    # ... until enough channels are under the threshold.
    assert reductions[-1] >= 0.5
    assert "acsl_reduction" in hist.history and "acsl_budget_scale" in hist.history
    # The measured reduction is what plan_shrink reports for the same threshold.
    plan = acsl_tf.plan_shrink(w, threshold=5e-2)
    assert plan.flops_reduction == pytest.approx(reductions[-1])
    # All units share one multiplier.
    assert len({float(np.asarray(wr.budget_scale)) for wr in acsl_tf.get_wrappers(w)}) == 1


def test_budget_strength_errors():
    with pytest.raises(ValueError, match="at most one"):
        acsl_tf.BudgetStrength(target_flops=0.5, target_params=0.5)
    with pytest.raises(ValueError, match="target_flops"):
        acsl_tf.BudgetStrength(target_flops=1.5)
    with pytest.raises(ValueError, match="factor"):
        acsl_tf.BudgetStrength(target_flops=0.5, factor=1.0)
    w = acsl_tf.prune_low_correlation(small_cnn())  # no target anywhere
    w.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.zeros((8, 8, 8, 3), "float32")
    with pytest.raises(ValueError, match="budget"):
        w.fit(x, np.zeros(8), epochs=1, verbose=0, callbacks=[acsl_tf.BudgetStrength()])
    plain = small_cnn()
    plain.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with pytest.raises(ValueError, match="no PruneLowCorrelation"):
        plain.fit(x, np.zeros(8), epochs=1, verbose=0, callbacks=[acsl_tf.BudgetStrength(0.5)])


def test_sparsity_tensorboard_writes_summaries(tmp_path):
    import tensorflow as tf

    w = acsl_tf.prune_low_correlation(small_cnn(), update_every=1, warmup=0)
    x = np.random.default_rng(0).normal(size=(8, 8, 8, 3)).astype("float32")
    w.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    w.fit(
        x,
        np.zeros(8),
        epochs=2,
        verbose=0,
        callbacks=[acsl_tf.SparsityTensorBoard(str(tmp_path), threshold=0.5)],
    )
    files = glob.glob(str(tmp_path / "events.out.tfevents.*"))
    assert files
    tags, images = set(), 0
    for f in files:
        for event in tf.compat.v1.train.summary_iterator(f):
            for v in event.summary.value:
                tags.add(v.tag)
                if v.tag.startswith("affinity/"):
                    images += 1
    for name in ("bn1", "bn2", "bn3"):
        assert f"gamma/{name}" in tags and f"sparsity/{name}" in tags
        assert f"strength/{name}" in tags and f"affinity/{name}" in tags
    assert {"sparsity/total", "penalty/mean", "epoch/loss"} <= tags
    assert images == 6  # 3 units x 2 epochs


def test_sparsity_report_counts():
    w = acsl_tf.prune_low_correlation(small_cnn())
    for wr in acsl_tf.get_wrappers(w):
        c = wr.layer.gamma.shape[0]
        g = np.ones(c, "float32")
        g[:2] = 1e-4
        wr.layer.gamma.assign(g)
    rep = acsl_tf.sparsity_report(w, threshold=1e-2)
    assert [u.below_threshold for u in rep.units] == [2, 2, 2]
    assert rep.channels == 6 + 6 + 8 and rep.below_threshold == 6
    assert "bn3" in str(rep) and rep.to_dict()["fraction"] == pytest.approx(6 / 20)
    with pytest.raises(ValueError, match="no PruneLowCorrelation"):
        acsl_tf.sparsity_report(small_cnn())
