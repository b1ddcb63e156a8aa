"""Distillation losses against NumPy references."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from acsl_tf.distill import losses

ATOL = 1e-5


def np_log_softmax(z, axis=-1):
    z = z - z.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


def np_kd(t, s, temp):
    lpt = np_log_softmax(t / temp)
    lps = np_log_softmax(s / temp)
    kl = (np.exp(lpt) * (lpt - lps)).sum(-1)
    return kl.mean() * temp**2


def np_affinity(f, pool=1):
    f = f.astype(np.float64)
    if pool > 1:
        b, h, w, c = f.shape
        hh, ww = h // pool, w // pool
        f = f[:, : hh * pool, : ww * pool].reshape(b, hh, pool, ww, pool, c).mean((2, 4))
    f = f.reshape(f.shape[0], -1, f.shape[-1])
    f = f / np.maximum(np.linalg.norm(f, axis=-1, keepdims=True), 1e-12)
    return np.einsum("bnc,bmc->bnm", f, f)


def np_masked_ce(y, logits, ignore=255):
    lp = np_log_softmax(logits.astype(np.float64))
    valid = y != ignore
    if not valid.any():
        return 0.0
    nll = -np.take_along_axis(lp, np.where(valid, y, 0)[..., None], -1)[..., 0]
    return nll[valid].mean()


def rng():
    return np.random.default_rng(0)


@pytest.mark.parametrize("shape", [(6, 5), (2, 4, 4, 3)])
@pytest.mark.parametrize("temp", [1.0, 4.0])
def test_kl_matches_numpy(shape, temp):
    r = rng()
    t = r.normal(size=shape).astype("float32") * 3
    s = r.normal(size=shape).astype("float32") * 3
    got = float(losses.distillation_kl_divergence(t, s, temperature=temp))
    np.testing.assert_allclose(got, np_kd(t, s, temp), atol=ATOL, rtol=1e-5)


def test_kl_from_probabilities_equals_from_logits():
    r = rng()
    t = r.normal(size=(8, 6)).astype("float32")
    s = r.normal(size=(8, 6)).astype("float32")
    pt = keras.ops.softmax(t)
    ps = keras.ops.softmax(s)
    got = float(losses.distillation_kl_divergence(pt, ps, temperature=3.0, from_logits=False))
    np.testing.assert_allclose(got, np_kd(t, s, 3.0), atol=ATOL, rtol=1e-5)
    # log(p) differs from the logits by a per-row constant only
    rec = keras.ops.convert_to_numpy(losses.probabilities_to_logits(pt))
    diff = rec - t
    np.testing.assert_allclose(diff - diff[:, :1], 0.0, atol=1e-5)


def test_kl_zero_for_equal_inputs_and_gradient_matches_hinton():
    r = rng()
    t = r.normal(size=(4, 5)).astype("float32")
    assert abs(float(losses.distillation_kl_divergence(t, t, temperature=4.0))) < 1e-6
    s = tf.Variable(r.normal(size=(4, 5)).astype("float32"))
    tt = tf.Variable(t)
    with tf.GradientTape(persistent=True) as tape:
        loss = losses.distillation_kl_divergence(tt, s, temperature=2.0)
    g = tape.gradient(loss, s).numpy()
    # d/ds [T^2 KL] = T * (softmax(s/T) - softmax(t/T)) / B
    ref = 2.0 * (np.exp(np_log_softmax(s.numpy() / 2)) - np.exp(np_log_softmax(t / 2))) / 4
    np.testing.assert_allclose(g, ref, atol=ATOL)
    assert tape.gradient(loss, tt) is None  # the teacher gets no gradient


def test_kl_errors():
    a = np.zeros((2, 3), "float32")
    with pytest.raises(ValueError, match="temperature"):
        losses.distillation_kl_divergence(a, a, temperature=0.0)
    with pytest.raises(ValueError, match="temperature"):
        losses.distillation_kl_divergence(a, a, temperature=-1.0)
    with pytest.raises(ValueError, match="same shape"):
        losses.distillation_kl_divergence(a, np.zeros((2, 4), "float32"))


@pytest.mark.parametrize("label_shape", ["flat", "channel"])
def test_masked_ce_matches_numpy(label_shape):
    r = rng()
    logits = r.normal(size=(2, 5, 5, 4)).astype("float32")
    y = r.integers(0, 4, size=(2, 5, 5))
    y[0, :3] = 255
    y[1, 2, 2] = 255
    yy = y[..., None] if label_shape == "channel" else y
    got = float(losses.masked_sparse_categorical_crossentropy(yy, logits))
    np.testing.assert_allclose(got, np_masked_ce(y, logits), atol=ATOL, rtol=1e-5)
    # probabilities input gives the same value
    p = keras.ops.softmax(logits)
    got_p = float(losses.masked_sparse_categorical_crossentropy(yy, p, from_logits=False))
    np.testing.assert_allclose(got_p, np_masked_ce(y, logits), atol=1e-4)
    # and Keras' own ignore_class agrees
    ref_keras = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255)
    np.testing.assert_allclose(got, float(ref_keras(y, logits)), atol=ATOL)


def test_masked_ce_all_ignored_and_no_ignore():
    logits = rng().normal(size=(1, 2, 2, 3)).astype("float32")
    y = np.full((1, 2, 2), 255)
    assert float(losses.masked_sparse_categorical_crossentropy(y, logits)) == 0.0
    y2 = np.array([[[0, 1], [2, 0]]])
    got = float(losses.masked_sparse_categorical_crossentropy(y2, logits, ignore_index=None))
    np.testing.assert_allclose(got, np_masked_ce(y2, logits, ignore=-1), atol=ATOL)


@pytest.mark.parametrize("pool", [1, 2])
def test_spatial_affinity_matches_numpy(pool):
    f = rng().normal(size=(2, 6, 6, 5)).astype("float32")
    got = keras.ops.convert_to_numpy(losses.spatial_affinity(f, pool_size=pool))
    n = (6 // pool) ** 2
    assert got.shape == (2, n, n)
    np.testing.assert_allclose(got, np_affinity(f, pool), atol=ATOL)
    np.testing.assert_allclose(np.diagonal(got, axis1=1, axis2=2), 1.0, atol=ATOL)


def test_spatial_affinity_zero_vectors_and_errors():
    f = np.zeros((1, 2, 2, 3), "float32")
    got = keras.ops.convert_to_numpy(losses.spatial_affinity(f))
    assert np.all(np.isfinite(got)) and np.all(got == 0)
    with pytest.raises(ValueError, match="pool_size"):
        losses.spatial_affinity(f, pool_size=0)
    with pytest.raises(ValueError, match="features"):
        losses.spatial_affinity(np.zeros((2, 3), "float32"))


@pytest.mark.parametrize("pool", [1, 2])
def test_affinity_loss_with_fewer_student_channels(pool):
    r = rng()
    ft = r.normal(size=(2, 4, 4, 16)).astype("float32")
    fs = r.normal(size=(2, 4, 4, 8)).astype("float32")
    got = float(losses.affinity_distillation_loss(ft, fs, pool_size=pool))
    ref = ((np_affinity(fs, pool) - np_affinity(ft, pool)) ** 2).mean()
    np.testing.assert_allclose(got, ref, atol=ATOL)
    assert got > 0
    assert float(losses.affinity_distillation_loss(ft, ft, pool_size=pool)) < 1e-10
    # the affinity ignores channel order and per-location scale
    perm = ft[..., ::-1] * 3.0
    assert float(losses.affinity_distillation_loss(ft, perm)) < 1e-10
    with pytest.raises(ValueError, match="spatial"):
        losses.affinity_distillation_loss(ft, fs[:, :2])


def test_density_loss_matches_numpy():
    r = rng()
    y = r.random((3, 4, 4, 1)).astype("float32")
    s = r.random((3, 4, 4, 1)).astype("float32")
    t = r.random((3, 4, 4, 1)).astype("float32")
    got = float(losses.density_distillation_loss(y, s, t, alpha=0.7))
    ref = ((s - y) ** 2).mean() + 0.7 * ((s - t) ** 2).mean()
    np.testing.assert_allclose(got, ref, atol=ATOL)
    assert float(losses.density_distillation_loss(y, s, s, alpha=5.0)) == pytest.approx(
        ((s - y) ** 2).mean(), abs=ATOL
    )
    with pytest.raises(ValueError, match="alpha"):
        losses.density_distillation_loss(y, s, t, alpha=-0.1)
    with pytest.raises(ValueError, match="same shape"):
        losses.density_distillation_loss(y, s, t[:, :2])


@pytest.mark.parametrize("shape", [(5, 4), (2, 3, 3, 4)])
def test_kl_loss_class_matches_function_and_roundtrips(shape):
    r = rng()
    t = r.normal(size=shape).astype("float32")
    s = r.normal(size=shape).astype("float32")
    loss = losses.DistillationKLDivergence(temperature=2.5)
    np.testing.assert_allclose(float(loss(t, s)), np_kd(t, s, 2.5), atol=ATOL, rtol=1e-5)
    cfg = keras.losses.serialize(loss)
    back = keras.losses.deserialize(cfg)
    assert isinstance(back, losses.DistillationKLDivergence)
    assert back.temperature == 2.5 and back.from_logits is True
    np.testing.assert_allclose(float(back(t, s)), float(loss(t, s)), atol=1e-7)
    p = losses.DistillationKLDivergence(temperature=2.5, from_logits=False)
    np.testing.assert_allclose(
        float(p(keras.ops.softmax(t), keras.ops.softmax(s))), np_kd(t, s, 2.5), atol=1e-4
    )
    with pytest.raises(ValueError, match="temperature"):
        losses.DistillationKLDivergence(temperature=-2.0)


def test_affinity_loss_class_matches_function_and_roundtrips():
    r = rng()
    ft = r.normal(size=(2, 4, 4, 6)).astype("float32")
    fs = r.normal(size=(2, 4, 4, 3)).astype("float32")
    loss = losses.SpatialAffinityLoss(pool_size=2)
    ref = ((np_affinity(fs, 2) - np_affinity(ft, 2)) ** 2).mean()
    np.testing.assert_allclose(float(loss(ft, fs)), ref, atol=ATOL)
    back = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(back, losses.SpatialAffinityLoss) and back.pool_size == 2
    with pytest.raises(ValueError, match="pool_size"):
        losses.SpatialAffinityLoss(pool_size=0)
