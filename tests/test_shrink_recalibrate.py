"""BatchNorm recalibration built into shrink / apply_plan (``recalibrate=``).

The test model has deliberately stale moving statistics: they were estimated
on the data, then shifted far off. The channels that are removed have gamma =
beta = 0, so the pruned model computes what the original computes (in
training and in inference mode) and the re-estimated statistics can be
compared with those of the original on the same data.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from _models import randomize_bn, small_cnn

import acsl_tf

REMOVED = {"bn1": [1, 4], "bn2": [1, 4], "bn3": [2, 5]}  # bn1 + bn2 form one group (the add)
BNS = ("bn1", "bn2", "bn3")


def _kept(name, n):
    return [i for i in range(n) if i not in REMOVED[name]]


@pytest.fixture(scope="module")
def case():
    keras.utils.set_random_seed(3)
    model = small_cnn()
    rng = np.random.default_rng(0)
    for name in BNS:
        bn = model.get_layer(name)
        randomize_bn(bn, rng)
        g, b = np.array(bn.gamma), np.array(bn.beta)
        g[REMOVED[name]] = 0.0
        b[REMOVED[name]] = 0.0
        bn.gamma.assign(g)
        bn.beta.assign(b)
    x = rng.standard_normal((96, 8, 8, 3)).astype("float32")
    acsl_tf.recalibrate_batchnorm(model, x, steps=None, batch_size=len(x))
    good = {n: [np.array(v) for v in model.get_layer(n).weights[2:]] for n in BNS}
    good_out = np.asarray(model(x, training=False))
    for name in BNS:  # stale: far from what the data gives
        bn = model.get_layer(name)
        bn.moving_mean.assign(bn.moving_mean + 3.0)
        bn.moving_variance.assign(bn.moving_variance * 50.0)
    stale = {n: [np.array(v) for v in model.get_layer(n).weights[2:]] for n in BNS}
    return {"model": model, "x": x, "good": good, "good_out": good_out, "stale": stale}


def _shrink(case, **kwargs):
    return acsl_tf.apply_plan(
        case["model"], acsl_tf.plan_shrink(case["model"], threshold=1e-3), **kwargs
    )


def test_recalibrate_sets_the_moving_statistics_of_the_data(case):
    x = case["x"]
    res = _shrink(case, recalibrate=x, recalibrate_steps=None, recalibrate_batch_size=len(x))
    assert res.recalibrated_batches == 1 and res.exact
    small = res.model
    for name in BNS:
        mean, var = (np.array(v) for v in small.get_layer(name).weights[2:])
        kept = _kept(name, len(case["good"][name][0]))
        np.testing.assert_allclose(mean, case["good"][name][0][kept], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(var, case["good"][name][1][kept], rtol=1e-4, atol=1e-5)
    # bn1 directly: the mean and (biased) variance of its input over the data
    conv = np.asarray(keras.Model(small.input, small.get_layer("c1").output)(x))
    np.testing.assert_allclose(
        np.array(small.get_layer("bn1").moving_mean),
        conv.mean(axis=(0, 1, 2)),
        rtol=1e-4,
        atol=1e-5,
    )
    np.testing.assert_allclose(
        np.array(small.get_layer("bn1").moving_variance), conv.var(axis=(0, 1, 2)), rtol=1e-4
    )
    # the outputs of the calibrated original come back
    out = np.asarray(small(x, training=False))
    np.testing.assert_allclose(out, case["good_out"], atol=1e-4 * np.abs(case["good_out"]).max())


def test_without_recalibrate_the_stale_statistics_are_kept(case):
    res = _shrink(case)
    assert res.recalibrated_batches == 0
    for name in BNS:
        kept = _kept(name, len(case["stale"][name][0]))
        for v, s in zip(res.model.get_layer(name).weights[2:], case["stale"][name]):
            np.testing.assert_array_equal(np.array(v), s[kept])
    out = np.asarray(res.model(case["x"], training=False))
    good = case["good_out"]
    assert np.abs(out - good).max() > 0.1 * np.abs(good).max()  # stale statistics hurt


def test_recalibration_changes_only_the_moving_statistics_of_the_new_model(case):
    model = case["model"]
    before = [np.array(w) for w in model.weights]
    plain = _shrink(case).model
    res = _shrink(case, recalibrate=(case["x"], np.zeros(len(case["x"]))), recalibrate_steps=2)
    assert res.recalibrated_batches == 1  # 96 samples in batches of 128
    for a, b in zip(plain.weights, res.model.weights):
        moving = "moving_" in a.path
        assert np.array_equal(np.array(a), np.array(b)) != moving, a.path
    for w, b in zip(model.weights, before):  # the input model is left alone
        np.testing.assert_array_equal(np.array(w), b)


def test_steps_bound_the_batches_and_datasets_are_accepted(case):
    x = case["x"]
    res = _shrink(case, recalibrate=x, recalibrate_steps=2, recalibrate_batch_size=16)
    assert res.recalibrated_batches == 2
    ds = tf.data.Dataset.from_tensor_slices((x, np.zeros(len(x)))).batch(32)
    assert _shrink(case, recalibrate=ds, recalibrate_steps=None).recalibrated_batches == 3
    unbatched = tf.data.Dataset.from_tensor_slices(x)
    res = _shrink(case, recalibrate=unbatched, recalibrate_batch_size=48)
    assert res.recalibrated_batches == 2
    small = acsl_tf.shrink(case["model"], threshold=1e-3, recalibrate=x, recalibrate_steps=None)
    np.testing.assert_allclose(
        np.array(small.get_layer("bn3").moving_mean),
        case["good"]["bn3"][0][_kept("bn3", 8)],
        rtol=1e-3,
        atol=1e-4,
    )


@pytest.mark.parametrize(
    "data, kwargs, error, words",
    [
        ("calib.npy", {}, TypeError, "not a file name"),
        (lambda x: x[..., :1], {}, ValueError, "(None, 8, 8, 3)"),
        (lambda x: x[0], {}, ValueError, "(None, 8, 8, 3)"),
        (lambda x: x[:0], {}, ValueError, "no samples"),
        (lambda x: [x, x], {}, ValueError, "one input array per input"),
        (lambda x: {"img": x}, {}, TypeError, "dict"),
        (3, {}, TypeError, "int"),
        (lambda x: tf.data.Dataset.from_tensor_slices(x[..., :2]), {}, ValueError, "(8, 8, 2)"),
        (lambda x: x, {"recalibrate_steps": 0}, ValueError, "recalibrate_steps"),
        (lambda x: x, {"recalibrate_steps": 1.5}, TypeError, "recalibrate_steps"),
        (lambda x: x, {"recalibrate_batch_size": 0}, ValueError, "recalibrate_batch_size"),
    ],
)
def test_bad_recalibration_arguments_fail_before_anything_is_built(
    case, monkeypatch, data, kwargs, error, words
):
    from acsl_tf.pruning import apply as apply_mod

    def no_rebuild(*args, **kw):
        raise AssertionError("the model was rebuilt before the arguments were checked")

    monkeypatch.setattr(apply_mod, "_rebuild", no_rebuild)
    data = data(case["x"]) if callable(data) else data
    with pytest.raises(error, match="recalibrate") as info:
        acsl_tf.shrink(case["model"], threshold=1e-3, recalibrate=data, **kwargs)
    assert words in str(info.value)


def test_a_dataset_that_yields_nothing_or_bad_batches_is_reported(case):
    empty = tf.data.Dataset.from_tensor_slices(case["x"][:0]).batch(8)
    with pytest.raises(ValueError, match="recalibration of the shrunk model failed.*no batch"):
        _shrink(case, recalibrate=empty)
    with pytest.raises(ValueError, match="recalibration of the shrunk model failed"):
        _shrink(case, recalibrate=iter([case["x"][:8, :4]]))


def test_a_model_without_batchnorm_warns_that_there_is_nothing_to_recalibrate():
    inp = keras.Input((6,))
    x = keras.layers.Dense(8, activation="relu", name="d1")(inp)
    out = keras.layers.Dense(2, name="d2")(x)
    model = keras.Model(inp, out)
    data = np.random.default_rng(0).standard_normal((16, 6)).astype("float32")
    with pytest.warns(UserWarning, match="no BatchNormalization"):
        res = acsl_tf.apply_plan(
            model, acsl_tf.plan_shrink(model, ratio=0.25, criterion="l1"), recalibrate=data
        )
    assert res.recalibrated_batches == 0 and res.exact


def test_an_approximate_shrink_says_the_deviation_was_measured_before(case):
    model = small_cnn()  # beta != 0 on removed channels before a same-padded conv: approximate
    rng = np.random.default_rng(1)
    for name in BNS:
        randomize_bn(model.get_layer(name), rng, beta_mean=1.0)
    x = rng.standard_normal((32, 8, 8, 3)).astype("float32")
    with pytest.warns(acsl_tf.ApproximateShrinkWarning, match="measured before the BatchNorm"):
        res = acsl_tf.apply_plan(model, acsl_tf.plan_shrink(model, ratio=0.4), recalibrate=x)
    assert res.recalibrated_batches == 1 and not res.exact


def test_a_border_fold_warning_points_to_beta_weight(case):
    model = small_cnn()
    rng = np.random.default_rng(1)
    for name in BNS:
        randomize_bn(model.get_layer(name), rng, beta_mean=1.0)
    with pytest.warns(acsl_tf.ApproximateShrinkWarning, match=r"beta_weight=1\.0") as rec:
        acsl_tf.shrink(model, ratio=0.4)
    assert "exact away from the borders" in str(rec[0].message)
    for name in BNS:  # zero betas on every channel: exact, no warning
        bn = model.get_layer(name)
        bn.beta.assign(np.zeros(bn.beta.shape, "float32"))
    assert acsl_tf.apply_plan(model, acsl_tf.plan_shrink(model, ratio=0.4), verify="raise").exact


def test_the_warning_states_a_note_shared_by_many_layers_once():
    from acsl_tf.pruning.apply import _grouped_notes

    text = (
        "the removed channels' constant is folded into the bias; exact away from the borders only"
    )
    notes = [f"'c{i}' (3x3, padding='same'): {text}" for i in range(8)]
    notes += ["'d' (5x5, padding='same'): " + text, "an unrelated note", notes[0]]
    assert _grouped_notes(notes) == [
        f"'c0', 'c1', 'c2', 'c3', 'c4', 'c5' and 2 more (3x3, padding='same'): {text}",
        f"'d' (5x5, padding='same'): {text}",
        "an unrelated note",
    ]
    model = small_cnn()
    rng = np.random.default_rng(1)
    for name in BNS:
        randomize_bn(model.get_layer(name), rng, beta_mean=1.0)
    with pytest.warns(acsl_tf.ApproximateShrinkWarning) as rec:
        res = acsl_tf.apply_plan(model, acsl_tf.plan_shrink(model, ratio=0.4))
    msg = str(rec[0].message)
    borders = [n for n in res.approximations if "exact away from the borders" in n]
    assert len(borders) >= 2  # the result keeps one note per layer
    assert msg.count("exact away from the borders") == 1  # the message states it once
    for n in borders:
        assert n.split(" ")[0] in msg  # every layer is named
