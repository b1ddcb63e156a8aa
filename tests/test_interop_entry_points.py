"""tf_keras models go through plan_shrink, shrink, profile and
prune_low_correlation: converted in, handed back as tf_keras by shrink."""

import numpy as np
import pytest

pytest.importorskip("tf_keras")
import tf_keras  # noqa: E402

import acsl_tf  # noqa: E402


def legacy_cnn():
    L = tf_keras.layers
    i = tf_keras.Input((8, 8, 3))
    x = L.Conv2D(6, 3, padding="same", name="c1")(i)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.ReLU()(x)
    x = L.Conv2D(4, 1, name="c2")(x)
    x = L.BatchNormalization(name="bn2")(x)
    x = L.GlobalAveragePooling2D()(L.ReLU()(x))
    return tf_keras.Model(i, L.Dense(3, name="fc")(x))


def test_tf_keras_model_shrinks_to_tf_keras():
    m = legacy_cnn()
    x = np.random.default_rng(0).standard_normal((2, 8, 8, 3)).astype("float32")
    prof = acsl_tf.profile(m)
    assert prof.total_params == m.count_params()
    plan = acsl_tf.plan_shrink(m, keep={"bn1": [0, 2, 4]})
    small = acsl_tf.shrink(m, plan=plan)
    assert isinstance(small, tf_keras.Model)
    assert small.count_params() == plan.params_after
    assert small.get_layer("c2").kernel.shape == (1, 1, 3, 4)
    # the original's removed channels are live (gamma 1): compare with them silenced
    bn = m.get_layer("bn1")
    g, b, mm, mv = bn.get_weights()
    g[[1, 3, 5]] = 0.0
    b[[1, 3, 5]] = 0.0
    bn.set_weights([g, b, mm, mv])
    again = acsl_tf.shrink(m, keep={"bn1": [0, 2, 4]}, verify="raise")
    np.testing.assert_allclose(again(x).numpy(), m(x).numpy(), atol=1e-5)


def test_tf_keras_model_wraps_in_keras3():
    import keras

    w = acsl_tf.prune_low_correlation(legacy_cnn())
    assert isinstance(w, keras.Model) and len(acsl_tf.get_wrappers(w)) == 2
