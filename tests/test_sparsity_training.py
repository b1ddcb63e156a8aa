"""Sparsity training a user can trust: exact resume of the budget controller,
the penalty apart from the task loss in the logs, and the warnings for a
budget without its controller and for optimizers that cancel L1."""

import warnings

import keras
import numpy as np
import pytest

import acsl_tf
from tests._models import small_cnn


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 8, 8, 3)).astype("float32"), rng.integers(0, 3, n)


def _wrapped(target=0.5):
    keras.utils.set_random_seed(0)
    w = acsl_tf.prune_low_correlation(
        small_cnn(filters=(8, 12)), penalty=2e-3, target={"flops": target}, update_every=1
    )
    for wr in acsl_tf.get_wrappers(w):
        wr.layer.gamma.assign(np.full(wr.layer.gamma.shape, 0.3, "float32"))
    return w


def _compile(w, optimizer=None):
    w.compile(
        optimizer or keras.optimizers.SGD(0.05, momentum=0.9),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )


class _StopAfter(keras.callbacks.Callback):
    """Ends the training after ``epochs`` epochs, as a killed job would."""

    def __init__(self, epochs):
        super().__init__()
        self.epochs = epochs

    def on_epoch_end(self, epoch, logs=None):
        self.model.stop_training = epoch + 1 >= self.epochs


@pytest.mark.parametrize("kept_weight", [1.0, 0.25])
def test_resume_from_keras_file_is_bit_identical(tmp_path, kept_weight):
    x, y = _data()
    kw = dict(batch_size=8, verbose=0, shuffle=False)
    opts = dict(threshold=5e-2, verbose=0, kept_weight=kept_weight)

    straight = _wrapped()
    _compile(straight)
    cb = acsl_tf.BudgetStrength(**opts)
    straight.fit(x, y, epochs=4, callbacks=[cb], **kw)
    # The controller did act during the run (not a trivial resume).
    assert len({round(h["scale"], 6) for h in cb.history}) > 3

    first = _wrapped()
    _compile(first)
    # The same 4-epoch run, interrupted after its second epoch.
    first.fit(x, y, epochs=4, callbacks=[acsl_tf.BudgetStrength(**opts), _StopAfter(2)], **kw)
    path = tmp_path / "half.keras"
    first.save(path)
    del first
    resumed = keras.models.load_model(path)
    resumed.fit(
        x,
        y,
        epochs=4,
        initial_epoch=2,
        callbacks=[acsl_tf.BudgetStrength(**opts)],
        **kw,
    )
    a, b = straight.variables, resumed.variables
    assert len(a) == len(b) == 44
    differ = [u.path for u, v in zip(a, b) if not np.array_equal(u.numpy(), v.numpy())]
    assert differ == []
    wr = acsl_tf.get_wrappers(resumed)[0]
    assert float(np.asarray(wr.budget_scale)) == pytest.approx(cb.history[-1]["scale"])
    assert np.asarray(wr.controller_state)[0] == 1.0
    masks = np.concatenate([np.asarray(w.budget_mask) for w in acsl_tf.get_wrappers(resumed)])
    if kept_weight == 1.0:
        np.testing.assert_array_equal(masks, 1.0)
    else:  # the mask was in force: both values occur
        assert set(np.unique(masks)) == {np.float32(kept_weight), np.float32(1.0)}


def test_second_fit_without_initial_epoch_starts_a_new_schedule():
    x, y = _data(32)
    w = _wrapped()
    _compile(w)
    w.fit(
        x,
        y,
        epochs=1,
        batch_size=8,
        verbose=0,
        callbacks=[acsl_tf.BudgetStrength(threshold=5e-2, verbose=0)],
    )
    cb = acsl_tf.BudgetStrength(threshold=5e-2, verbose=0)
    w.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[cb])
    # 4 steps per epoch, one check per step; the second fit spans steps 4..12.
    assert [h["step"] for h in cb.history] == list(range(5, 13))
    assert (cb._start, cb._total_steps) == (4, 12)


def test_penalty_and_task_loss_are_logged_apart():
    x, y = _data()
    xv, yv = _data(32, seed=1)
    w = _wrapped()
    _compile(w)
    cb = acsl_tf.BudgetStrength(threshold=5e-2, verbose=0)
    hist = w.fit(
        x, y, epochs=2, batch_size=8, verbose=0, validation_data=(xv, yv), callbacks=[cb]
    ).history
    for key in ("penalty_loss", "task_loss", "val_penalty_loss", "val_task_loss"):
        assert len(hist[key]) == 2
    np.testing.assert_allclose(
        np.add(hist["task_loss"], hist["penalty_loss"]), hist["loss"], rtol=1e-6
    )
    assert min(hist["penalty_loss"]) > 0
    # val_task_loss is the task loss of the model without its penalty: the
    # same weights without the wrappers give it directly.
    plain = acsl_tf.strip_pruning(w)
    plain.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    task = plain.evaluate(xv, yv, batch_size=32, verbose=0)
    assert hist["val_task_loss"][-1] == pytest.approx(task, rel=1e-5)
    penalty = sum(float(wr.penalty_loss()) for wr in acsl_tf.get_wrappers(w))
    assert hist["val_penalty_loss"][-1] == pytest.approx(penalty, rel=1e-6)


def test_penalty_metrics_callback_without_a_budget():
    x, y = _data()
    keras.utils.set_random_seed(0)
    w = acsl_tf.prune_low_correlation(small_cnn(), penalty=1e-2)
    _compile(w)
    hist = w.fit(
        x,
        y,
        epochs=1,
        batch_size=8,
        verbose=0,
        validation_data=(x[:16], y[:16]),
        callbacks=[acsl_tf.callbacks.PenaltyMetrics()],
    ).history
    assert hist["task_loss"][0] == pytest.approx(hist["loss"][0] - hist["penalty_loss"][0])
    assert hist["val_task_loss"][0] == pytest.approx(
        hist["val_loss"][0] - hist["val_penalty_loss"][0]
    )
    assert hist["penalty_loss"][0] > 0.01  # 1e-2 * sum |gamma| with gammas near 1


def test_budget_without_budget_strength_warns():
    x, y = _data(16)
    w = _wrapped()
    _compile(w)
    with pytest.warns(UserWarning, match="no acsl_tf.BudgetStrength callback is in this `fit`"):
        w.fit(x, y, epochs=1, batch_size=8, verbose=0)


def test_budget_with_budget_strength_does_not_warn():
    x, y = _data(16)
    w = _wrapped()
    _compile(w)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        w.fit(
            x,
            y,
            epochs=1,
            batch_size=8,
            verbose=0,
            callbacks=[acsl_tf.BudgetStrength(threshold=5e-2, verbose=0, tolerance=0.9)],
        )


@pytest.mark.parametrize("optimizer", ["adam", "rmsprop", "adamw"])
def test_optimizers_that_cancel_l1_warn(optimizer):
    x, y = _data(16)
    keras.utils.set_random_seed(0)
    w = acsl_tf.prune_low_correlation(small_cnn(), penalty=1e-3)
    _compile(w, optimizer)
    with pytest.warns(UserWarning, match="Use keras.optimizers.SGD"):
        w.fit(x, y, epochs=1, batch_size=8, verbose=0)


def test_sgd_does_not_warn():
    x, y = _data(16)
    keras.utils.set_random_seed(0)
    w = acsl_tf.prune_low_correlation(small_cnn(), penalty=1e-3)
    _compile(w)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        w.fit(x, y, epochs=1, batch_size=8, verbose=0)


def test_verbose_line_starts_on_a_new_line_after_the_progress_bar(capsys):
    x, y = _data(16)
    w = _wrapped()
    _compile(w)
    w.fit(
        x,
        y,
        epochs=1,
        batch_size=8,
        verbose=1,
        callbacks=[acsl_tf.BudgetStrength(threshold=5e-2, tolerance=0.9)],
    )
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if "BudgetStrength: epoch 1" in ln)
    assert line.startswith("BudgetStrength")


def test_moving_stats_momentum_round_trips_and_is_validated():
    bn = keras.layers.BatchNormalization()
    wr = acsl_tf.PruneLowCorrelation(bn, moving_stats_momentum=0.7)
    clone = acsl_tf.PruneLowCorrelation.from_config(wr.get_config())
    assert clone.moving_stats_momentum == 0.7
    none = acsl_tf.PruneLowCorrelation.from_config(
        acsl_tf.PruneLowCorrelation(bn, moving_stats_momentum=None).get_config()
    )
    assert none.moving_stats_momentum is None
    with pytest.raises(ValueError, match="Received: moving_stats_momentum=1"):
        acsl_tf.PruneLowCorrelation(bn, moving_stats_momentum=1.0)


def test_penalty_metrics_round_trip_free_budget_strength_state_in_weights():
    w = _wrapped()
    wr = acsl_tf.get_wrappers(w)[0]
    names = [v.name for v in wr.non_trainable_weights]
    assert "controller_state" in names and "penalty_total" in names


def test_weights_saved_before_the_controller_state_still_load():
    w = _wrapped()
    wr = acsl_tf.get_wrappers(w)[0]
    own = wr._trainable_variables + wr._non_trainable_variables
    # A file of the earlier layout: affinity, strength, budget_scale, step, updates.
    old = {
        str(i): np.asarray(v.numpy()) + (3 if v.name == "budget_scale" else 0)
        for i, v in enumerate(own[:5])
    }
    wr.load_own_variables(old)
    assert float(wr.budget_scale.numpy()) == pytest.approx(4.0)
    np.testing.assert_array_equal(wr.controller_state.numpy(), np.zeros(8))
    with pytest.raises(ValueError):
        wr.load_own_variables({"0": old["0"]})


def test_weights_saved_before_the_budget_mask_still_load():
    w = _wrapped()
    wr = acsl_tf.get_wrappers(w)[0]
    own = wr._trainable_variables + wr._non_trainable_variables
    assert own[-1].name == "budget_mask"
    # A file of the previous layout: the seven weights up to controller_state.
    old = {str(i): np.asarray(v.numpy()) + 2 for i, v in enumerate(own[:7])}
    wr.budget_mask.assign(np.full(wr.channels, 0.5, "float32"))
    wr.load_own_variables(old)
    np.testing.assert_allclose(wr.controller_state.numpy(), np.full(8, 2.0))
    # The mask is not in the file: it keeps its value (ones in a fresh model).
    np.testing.assert_allclose(wr.budget_mask.numpy(), np.full(wr.channels, 0.5))


def test_budget_mask_scales_the_penalty_per_channel():
    w = _wrapped()
    wr = acsl_tf.get_wrappers(w)[0]
    gamma = np.abs(keras.ops.convert_to_numpy(wr.layer.gamma))
    full = float(keras.ops.convert_to_numpy(wr.penalty_loss()))
    mask = np.zeros(wr.channels, "float32")
    mask[0] = 1.0
    wr.budget_mask.assign(mask)
    masked = float(keras.ops.convert_to_numpy(wr.penalty_loss()))
    strength = keras.ops.convert_to_numpy(wr.strength)
    assert masked == pytest.approx(full * strength[0] * gamma[0] / float(np.sum(strength * gamma)))
    np.testing.assert_allclose(wr.channel_penalties()[1:], 0.0)


def test_beta_weight_adds_the_same_per_channel_penalty_on_beta():
    w = _wrapped()
    wr = acsl_tf.get_wrappers(w)[0]
    rng = np.random.default_rng(1)
    wr.layer.beta.assign(rng.normal(size=wr.channels).astype("float32"))
    mask = (np.arange(wr.channels) % 2).astype("float32")
    wr.budget_mask.assign(mask)
    wr.strength.assign(rng.uniform(0.5, 2.0, wr.channels).astype("float32"))
    lam = wr.channel_penalties()
    gamma = np.abs(keras.ops.convert_to_numpy(wr.layer.gamma))
    beta = np.abs(keras.ops.convert_to_numpy(wr.layer.beta))
    assert float(wr.penalty_loss()) == pytest.approx(float(np.sum(lam * gamma)), rel=1e-5)
    wr.beta_weight = 0.5
    want = float(np.sum(lam * (gamma + 0.5 * beta)))
    assert float(wr.penalty_loss()) == pytest.approx(want, rel=1e-5)
    import tensorflow as tf

    with tf.GradientTape() as tape:
        loss = wr.penalty_loss()
    grad = keras.ops.convert_to_numpy(tape.gradient(loss, wr.layer.beta))
    np.testing.assert_allclose(
        grad, 0.5 * lam * np.sign(keras.ops.convert_to_numpy(wr.layer.beta)), rtol=1e-5
    )
    assert np.all(grad[mask == 0] == 0)  # the channels the budget keeps: no pull on beta


def test_beta_weight_is_validated_saved_and_ignored_without_beta():
    bn = keras.layers.BatchNormalization()
    wr = acsl_tf.PruneLowCorrelation(bn, beta_weight=0.25)
    assert acsl_tf.PruneLowCorrelation.from_config(wr.get_config()).beta_weight == 0.25
    assert acsl_tf.PruneLowCorrelation(bn).beta_weight == 0.0
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="beta_weight"):
            acsl_tf.PruneLowCorrelation(bn, beta_weight=bad)
    with pytest.raises(ValueError, match="beta_weight"):
        acsl_tf.prune_low_correlation(small_cnn(filters=(8, 12)), beta_weight=-0.1)
    # center=False: no beta, only the gamma term
    nobeta = acsl_tf.PruneLowCorrelation(
        keras.layers.BatchNormalization(center=False), beta_weight=1
    )
    nobeta.build((None, 4, 4, 3))
    nobeta.layer.gamma.assign(np.array([0.5, -1.0, 2.0], "float32"))
    assert float(nobeta.penalty_loss()) == pytest.approx(3.5 * nobeta.penalty, rel=1e-5)


def test_beta_weight_pulls_the_betas_down_in_training():
    """Trained with the same strengths, the betas end at least 4x smaller
    (median) with beta_weight=1 than with the gammas alone."""
    x, y = _data(256)
    out = {}
    for bw in (0.0, 1.0):
        keras.utils.set_random_seed(0)
        w = acsl_tf.prune_low_correlation(
            small_cnn(filters=(8, 12)), penalty=2e-2, beta_weight=bw, update_every=1
        )
        for wr in acsl_tf.get_wrappers(w):
            wr.layer.beta.assign(np.full(wr.channels, 0.3, "float32"))
        _compile(w)
        w.fit(x, y, epochs=6, batch_size=32, verbose=0)
        betas = np.concatenate(
            [np.abs(keras.ops.convert_to_numpy(wr.layer.beta)) for wr in acsl_tf.get_wrappers(w)]
        )
        out[bw] = float(np.median(betas))
    assert out[1.0] < 0.25 * out[0.0]
