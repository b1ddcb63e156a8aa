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
