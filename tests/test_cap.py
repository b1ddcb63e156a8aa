import keras
import numpy as np
import pytest

import acsl_tf
from tests._models import small_cnn


def _train(model, x, y, loss, steps=3):
    model.compile(keras.optimizers.SGD(0.01), loss)
    model.fit(x, y, epochs=steps, batch_size=len(x), verbose=0)
    return model


def test_cap_criterion_combines_gamma_and_guidance():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 8, 8, 3)).astype("float32")
    w = acsl_tf.prune_context_aware(small_cnn(), update_every=1, warmup=0)
    _train(w, x, np.zeros(8), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    wr = acsl_tf.get_wrappers(w)[2]  # bn3, 8 channels
    g = 1.0 - wr.redundancy().astype(np.float64)
    gamma = np.abs(np.asarray(wr.layer.gamma, np.float64))
    ctx = acsl_tf.criteria.UnitContext("bn3", wr.layer, None, wr, w, None)
    np.testing.assert_allclose(acsl_tf.criteria.get_criterion("cap")(ctx), gamma * g, rtol=1e-6)
    summed = acsl_tf.cap_criterion("sum", alpha=0.5)(ctx)
    np.testing.assert_allclose(summed, gamma / gamma.max() + 0.5 * g, rtol=1e-6)
    # CAP's ranking differs from |gamma| alone when the guidance is not flat.
    plan_cap = acsl_tf.plan_shrink(w, ratio=0.25, criterion="cap")
    plan_gamma = acsl_tf.plan_shrink(w, ratio=0.25, criterion="gamma")
    assert plan_cap.params_after < plan_cap.params_before
    assert plan_gamma.params_after < plan_gamma.params_before


def test_cap_needs_trained_wrapped_model():
    with pytest.raises(ValueError, match="not wrapped"):
        acsl_tf.shrink(small_cnn(), ratio=0.3, criterion="cap")
    w = acsl_tf.prune_context_aware(small_cnn())
    with pytest.raises(ValueError, match="Train the wrapped model first"):
        acsl_tf.shrink(w, ratio=0.3, criterion="cap")
    with pytest.raises(ValueError, match="combine"):
        acsl_tf.cap_criterion("max")


def test_cap_on_pspnet_one_guiding_module_per_branch():
    model = acsl_tf.models.pspnet((48, 48, 3), num_classes=4, width=0.25)
    w = acsl_tf.prune_context_aware(model, update_every=1, warmup=0)
    names = {wr.layer.name for wr in acsl_tf.get_wrappers(w)}
    branches = [f"psp_branch{i}_bn" for i in range(1, 5)]
    assert set(branches) <= names
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 48, 48, 3)).astype("float32")
    y = rng.integers(0, 4, (4, 48, 48))
    _train(w, x, y, keras.losses.SparseCategoricalCrossentropy(from_logits=True), steps=2)
    for wr in acsl_tf.get_wrappers(w):
        if wr.layer.name in branches:
            assert int(np.asarray(wr.updates)) == 2
            assert np.abs(np.asarray(wr.affinity)).sum() > 0
    small = acsl_tf.shrink(w, ratio=0.3, criterion="cap")
    assert small.output_shape == model.output_shape
    assert small.count_params() < model.count_params()
    assert small.predict(x, verbose=0).shape == (4, 48, 48, 4)
