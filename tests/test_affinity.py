import numpy as np
import pytest

from acsl_tf.sparsity import affinity


def np_affinity(f, kind="cosine", center=False, scale=0.1, eps=1e-6):
    f = f.astype(np.float64)
    if f.ndim == 2:
        f = f[None]
    else:
        f = f.reshape(f.shape[0], -1, f.shape[-1])
    if center:
        f = f - f.mean(axis=1, keepdims=True)
    f = f / np.sqrt((f**2).sum(axis=1, keepdims=True) + eps)
    g = np.einsum("bnc,bnd->bcd", f, f)
    if kind == "attention":
        e = np.exp(g / scale - (g / scale).max(-1, keepdims=True))
        g = e / e.sum(-1, keepdims=True)
    return g.mean(0)


def np_redundancy(a):
    a = np.abs(a)
    c = a.shape[0]
    return (a.sum(1) - np.diag(a)) / (c - 1)


def np_weights(r, direction, t, clip=None, eps=1e-6):
    if direction == "uniform":
        return np.ones_like(r)
    w = (r + eps) ** (t if direction == "redundant" else -t)
    w = w / w.mean()
    if clip is not None:
        w = np.clip(w, *clip)
        w = w / w.mean()
    return w


@pytest.mark.parametrize("kind", ["cosine", "attention"])
@pytest.mark.parametrize("center", [False, True])
@pytest.mark.parametrize("shape", [(4, 5, 6, 7), (3, 10, 5), (16, 9)])
def test_affinity_matches_numpy(kind, center, shape):
    rng = np.random.default_rng(0)
    f = rng.normal(size=shape).astype("float32")
    got = np.asarray(affinity.channel_affinity(f, kind, center=center))
    want = np_affinity(f, kind, center=center)
    assert got.shape == (shape[-1], shape[-1])
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_cosine_affinity_properties():
    rng = np.random.default_rng(1)
    f = np.abs(rng.normal(size=(2, 4, 4, 5))).astype("float32")
    f[..., 3] = 2.5 * f[..., 0]  # perfectly correlated pair
    a = np.asarray(affinity.channel_affinity(f))
    np.testing.assert_allclose(np.diag(a), 1.0, atol=1e-5)
    np.testing.assert_allclose(a, a.T, atol=1e-6)
    assert a[0, 3] == pytest.approx(1.0, abs=1e-5)


def test_dead_channel_is_finite_and_uncorrelated():
    f = np.random.default_rng(2).normal(size=(2, 3, 3, 4)).astype("float32")
    f[..., 1] = 0.0
    a = np.asarray(affinity.channel_affinity(f))
    assert np.isfinite(a).all()
    np.testing.assert_allclose(a[1], 0.0, atol=1e-6)


@pytest.mark.parametrize("direction", ["redundant", "informative", "uniform"])
@pytest.mark.parametrize("t", [0.5, 1.0, 2.0])
def test_redundancy_and_weights_match_numpy(direction, t):
    rng = np.random.default_rng(3)
    a = np_affinity(rng.normal(size=(3, 6, 6, 8)).astype("float32"))
    r = np.asarray(affinity.redundancy(a.astype("float32")))
    np.testing.assert_allclose(r, np_redundancy(a), atol=1e-6)
    assert ((r >= 0) & (r <= 1)).all()
    w = np.asarray(affinity.strength_weights(r, direction=direction, temperature=t))
    np.testing.assert_allclose(w, np_weights(r.astype(np.float64), direction, t), rtol=1e-5)
    assert w.mean() == pytest.approx(1.0, abs=1e-5)


def test_weights_order_and_clip():
    r = np.array([0.1, 0.2, 0.8, 0.4], "float32")
    w = np.asarray(affinity.strength_weights(r, direction="redundant"))
    assert np.argmax(w) == 2 and np.argmin(w) == 0
    wi = np.asarray(affinity.strength_weights(r, direction="informative"))
    assert np.argmax(wi) == 0 and np.argmin(wi) == 2
    wc = np.asarray(affinity.strength_weights(r, direction="redundant", clip=(0.5, 1.5)))
    np.testing.assert_allclose(wc, np_weights(r, "redundant", 1.0, clip=(0.5, 1.5)), rtol=1e-5)


def test_single_channel_redundancy_is_zero():
    assert np.asarray(affinity.redundancy(np.ones((1, 1), "float32"))).tolist() == [0.0]


def test_context_guidance_and_weighted_l1():
    r = np.array([0.0, 0.25, 1.0], "float32")
    np.testing.assert_allclose(np.asarray(affinity.context_guidance(r)), [1.0, 0.75, 0.0])
    g = np.array([1.0, -2.0, 0.5], "float32")
    w = np.array([1.0, 0.5, 2.0], "float32")
    assert float(affinity.weighted_l1(g, w, 0.1)) == pytest.approx(0.1 * (1 + 1 + 1))


@pytest.mark.parametrize(
    "kwargs",
    [dict(kind="euclid"), dict(features=np.ones((3,), "float32"))],
)
def test_affinity_rejects_bad_input(kwargs):
    f = kwargs.pop("features", np.ones((2, 3, 3, 4), "float32"))
    with pytest.raises(ValueError, match="Received"):
        affinity.channel_affinity(f, **kwargs)


def test_weights_reject_unknown_direction():
    with pytest.raises(ValueError, match="direction"):
        affinity.strength_weights(np.ones(3, "float32"), direction="up")
