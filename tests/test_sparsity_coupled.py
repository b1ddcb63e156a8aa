"""CoupledStrength: the BNs of one channel group get one strength per channel."""

import keras
import numpy as np
import pytest
from _models import small_cnn

import acsl_tf


def _fit(callbacks):
    keras.utils.set_random_seed(3)
    w = acsl_tf.prune_low_correlation(small_cnn(), penalty=1e-3, update_every=1, warmup=0)
    w.compile(keras.optimizers.SGD(0.01), keras.losses.SparseCategoricalCrossentropy(True))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 3, 64)
    w.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=callbacks)
    return {wr.layer.name: np.asarray(wr.strength) for wr in acsl_tf.get_wrappers(w)}


def test_coupled_units_share_one_strength_per_channel():
    free = _fit([])
    assert not np.allclose(free["bn1"], free["bn2"])  # bn1 and bn2 scale one residual group
    cb = acsl_tf.callbacks.CoupledStrength()
    coupled = _fit([cb])
    np.testing.assert_allclose(coupled["bn1"], coupled["bn2"], rtol=1e-6)
    assert [(size, sorted(w.layer.name for w, _ in m)) for size, m in cb.groups] == [
        (6, ["bn1", "bn2"])
    ]
    assert not np.allclose(coupled["bn1"], 1.0)  # the adaptive strengths are still there


def test_coupled_strength_needs_a_wrapped_model():
    m = small_cnn()
    m.compile("sgd", "mse")
    with pytest.raises(ValueError, match="prune_low_correlation"):
        m.fit(
            np.zeros((4, 8, 8, 3)),
            np.zeros((4, 3)),
            verbose=0,
            callbacks=[acsl_tf.callbacks.CoupledStrength()],
        )
