import keras
import numpy as np
import pytest

import acsl_tf
from tests._models import small_cnn


def test_recalibration_gives_average_of_batch_statistics():
    m = small_cnn()
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 2.0, size=(24, 8, 8, 3)).astype("float32")
    bn = m.get_layer("bn1")
    bn.moving_mean.assign(np.full(6, 50.0, "float32"))  # stale statistics
    bn.moving_variance.assign(np.full(6, 1e-3, "float32"))
    used = acsl_tf.recalibrate_batchnorm(m, x, steps=3, batch_size=8)
    assert used == 3
    feats = keras.Model(m.inputs, m.get_layer("c1").output)(x).numpy()
    batches = feats.reshape(3, 8, 8, 8, 6)
    means = batches.mean(axis=(1, 2, 3))
    vars_ = batches.var(axis=(1, 2, 3))
    np.testing.assert_allclose(bn.moving_mean.numpy(), means.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), vars_.mean(0), rtol=1e-3)
    assert bn.momentum == 0.99  # restored


def test_recalibration_leaves_weights_and_acsl_state():
    w = acsl_tf.prune_low_correlation(small_cnn(), update_every=1)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(16, 8, 8, 3)).astype("float32")
    w.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    w.fit(x, np.zeros(16), epochs=1, batch_size=8, verbose=0)
    wr = acsl_tf.get_wrappers(w)[0]
    before = [np.array(v) for v in (wr.affinity, wr.step, wr.updates)]
    trainable = [np.array(v) for v in w.trainable_weights]
    old_mean = np.array(wr.layer.moving_mean)
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, np.zeros(16))).batch(4)
    assert acsl_tf.recalibrate_batchnorm(w, ds, steps=None) == 4
    for a, b in zip(before, (wr.affinity, wr.step, wr.updates)):
        np.testing.assert_array_equal(a, np.array(b))
    for a, b in zip(trainable, w.trainable_weights):
        np.testing.assert_array_equal(a, np.array(b))
    assert not np.allclose(old_mean, np.array(wr.layer.moving_mean))


def test_recalibration_errors():
    with pytest.raises(ValueError, match="keras.Model"):
        acsl_tf.recalibrate_batchnorm("model", np.zeros((2, 8, 8, 3)))
    with pytest.raises(ValueError, match="steps"):
        acsl_tf.recalibrate_batchnorm(small_cnn(), np.zeros((2, 8, 8, 3)), steps=0)
    with pytest.raises(ValueError, match="no batch"):
        acsl_tf.recalibrate_batchnorm(small_cnn(), [], steps=None)


def _stale_model():
    m = small_cnn()
    bn = m.get_layer("bn1")
    bn.moving_mean.assign(np.full(6, 50.0, "float32"))
    bn.moving_variance.assign(np.full(6, 1e-3, "float32"))
    return m, bn


def _expected_bn1_mean(m, x, batch):
    feats = keras.Model(m.inputs, m.get_layer("c1").output)(x).numpy()
    return feats.reshape(-1, batch, 8, 8, 6).mean(axis=(2, 3)).mean(axis=(0, 1))


@pytest.mark.parametrize(
    "form", ["array", "xy_tuple", "xyw_tuple", "ds_x", "ds_xy", "ds_unbatched"]
)
def test_recalibration_accepts_the_common_data_forms(form):
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 2.0, size=(24, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 3, 24)
    data = {
        "array": x,
        "xy_tuple": (x, y),
        "xyw_tuple": (x, y, np.ones(24)),
        "ds_x": tf.data.Dataset.from_tensor_slices(x).batch(8),
        "ds_xy": tf.data.Dataset.from_tensor_slices((x, y)).batch(8),
        "ds_unbatched": tf.data.Dataset.from_tensor_slices((x, y)),
    }[form]
    m, bn = _stale_model()
    assert acsl_tf.recalibrate_batchnorm(m, data, steps=None, batch_size=8) == 3
    np.testing.assert_allclose(
        bn.moving_mean.numpy(), _expected_bn1_mean(m, x, 8), rtol=1e-4, atol=1e-5
    )


def test_recalibration_of_a_wrapped_model_is_the_plain_average():
    # The wrapper's fresh momentum during training does not apply here.
    rng = np.random.default_rng(2)
    x = rng.normal(1.0, 2.0, size=(24, 8, 8, 3)).astype("float32")
    w = acsl_tf.prune_low_correlation(small_cnn())
    wr = w.get_layer("acsl_bn1")
    wr.layer.moving_mean.assign(np.full(6, 50.0, "float32"))
    assert acsl_tf.recalibrate_batchnorm(w, (x, None), steps=None, batch_size=8) == 3
    np.testing.assert_allclose(
        wr.layer.moving_mean.numpy(), _expected_bn1_mean(w, x, 8), rtol=1e-4, atol=1e-5
    )
    assert wr.layer.momentum == 0.99


def test_recalibration_says_what_it_takes():
    m = small_cnn()
    with pytest.raises(ValueError, match=r"rank 4 .* It takes a NumPy array"):
        acsl_tf.recalibrate_batchnorm(m, np.zeros((8, 8, 3), "float32"))
    with pytest.raises(ValueError, match="takes a NumPy array or tensor of inputs"):
        acsl_tf.recalibrate_batchnorm(m, 3.0)
    with pytest.raises(ValueError, match="batch_size"):
        acsl_tf.recalibrate_batchnorm(m, np.zeros((2, 8, 8, 3)), batch_size=0)


def test_wrapper_updates_moving_statistics_with_the_fresh_momentum():
    rng = np.random.default_rng(3)
    x = rng.normal(2.0, 1.0, size=(16, 8, 8, 3)).astype("float32")
    w = acsl_tf.prune_low_correlation(small_cnn())
    wr = w.get_layer("acsl_bn1")
    feats = keras.Model(w.inputs, w.get_layer("c1").output)(x).numpy()
    batch_mean = feats.mean(axis=(0, 1, 2))
    # step 0: momentum min(0.99, 0.5, 1/10) = 0.1
    assert float(wr.moving_momentum()) == pytest.approx(0.1)
    w(x, training=True)
    np.testing.assert_allclose(wr.layer.moving_mean.numpy(), 0.9 * batch_mean, rtol=1e-4)
    assert wr.layer.momentum == 0.99  # the BatchNorm's own setting is untouched
    for _ in range(20):
        w(x, training=True)
    assert float(wr.moving_momentum()) == pytest.approx(0.5)
    wr.moving_stats_momentum = None
    assert float(wr.moving_momentum()) == pytest.approx(0.99)


def test_recalibration_of_a_model_with_named_inputs():
    import tensorflow as tf

    m = small_cnn()
    bn = m.get_layer("bn1")
    bn.moving_mean.assign(np.full(6, 50.0, "float32"))
    x = np.random.default_rng(4).normal(size=(16, 8, 8, 3)).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices(({"img": x}, np.zeros(16))).batch(8)
    assert acsl_tf.recalibrate_batchnorm(m, ds, steps=None) == 2
    np.testing.assert_allclose(
        bn.moving_mean.numpy(), _expected_bn1_mean(m, x, 8), rtol=1e-4, atol=1e-5
    )
