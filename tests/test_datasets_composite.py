import numpy as np
import pytest

from acsl_tf.datasets import (
    SEGMENTATION_GROUPS,
    SEGMENTATION_NUM_CLASSES,
    adaptive_sigmas,
    counting_dataset,
    density_map,
    downsample_density,
    gaussian_kernel,
    make_counting_set,
    make_segmentation_set,
    segmentation_dataset,
)


def _source():
    """Tiny deterministic stand-in for Fashion-MNIST: class c is a filled square of value (c+1)/10."""
    x = np.zeros((10, 28, 28), np.uint8)
    for c in range(10):
        x[c, 4:24, 4:24] = 25 * (c + 1)
    return x, np.arange(10, dtype=np.uint8)


# ---- density -------------------------------------------------------------------------


def test_gaussian_kernel():
    k = gaussian_kernel(2.0)
    assert k.shape == (13, 13) and k.sum() == pytest.approx(1.0)
    assert k[6, 6] == k.max() and np.allclose(k, k.T) and np.allclose(k, k[::-1])
    with pytest.raises(ValueError, match="sigma"):
        gaussian_kernel(0.0)


def test_density_sums_to_count_including_borders():
    pts = np.array([[0.0, 0.0], [31.9, 31.9], [15.5, 3.2], [-4.0, 10.0], [40.0, 40.0]])
    for sigma in (1.5, 6.0, "adaptive", np.array([1.0, 2.0, 3.0, 4.0, 5.0])):
        d = density_map(pts, (32, 32), sigma=sigma)
        assert d.shape == (32, 32) and d.dtype == np.float32
        assert d.sum() == pytest.approx(5.0, abs=1e-5)
        assert d.min() >= 0.0
    assert density_map(np.zeros((0, 2)), (8, 9)).sum() == 0.0


def test_density_peak_at_point():
    d = density_map([[7.0, 3.0]], (10, 12), sigma=1.0)
    assert np.unravel_index(d.argmax(), d.shape) == (3, 7)  # (row=y, col=x)


def test_adaptive_sigmas_hand_computed():
    pts = [[0, 0], [3, 0], [0, 4]]
    # distances: 0->(3,4) ; 1->(3,5) ; 2->(4,5); k=2 mean: 3.5, 4, 4.5
    np.testing.assert_allclose(adaptive_sigmas(pts, beta=0.3, k=2), [1.05, 1.2, 1.35])
    np.testing.assert_allclose(adaptive_sigmas(pts, beta=1.0, k=1, max_sigma=3.5), [3.0, 3.0, 3.5])
    np.testing.assert_allclose(adaptive_sigmas([[5, 5]], fallback_sigma=2.5), [2.5])


def test_density_validation():
    with pytest.raises(ValueError, match="points"):
        density_map(np.zeros((3, 3)), (8, 8))
    with pytest.raises(ValueError, match="sigma"):
        density_map([[1, 1]], (8, 8), sigma="fixed")
    with pytest.raises(ValueError, match="sigma"):
        density_map([[1, 1]], (8, 8), sigma=-1.0)


@pytest.mark.parametrize("shape", [(16, 16), (16, 16, 1), (2, 16, 16, 1), (13, 10)])
def test_downsample_density_preserves_sum(shape):
    rng = np.random.default_rng(0)
    d = rng.uniform(size=shape).astype(np.float32)
    out = downsample_density(d, 8)
    assert out.ndim == d.ndim
    if len(shape) == 4:
        np.testing.assert_allclose(out.sum((1, 2, 3)), d.sum((1, 2, 3)), rtol=1e-5)
        assert out.shape == (2, 2, 2, 1)
    else:
        assert out.sum() == pytest.approx(d.sum(), rel=1e-5)
    if shape == (13, 10):
        assert out.shape == (2, 2)
    a = np.arange(16, dtype=np.float32).reshape(4, 4)
    np.testing.assert_array_equal(downsample_density(a, 2), [[10, 18], [42, 50]])
    with pytest.raises(ValueError, match="factor"):
        downsample_density(a, 0)


# ---- segmentation scenes -------------------------------------------------------------


def test_segmentation_set_shapes_and_labels():
    x, y = make_segmentation_set(
        6, canvas=48, items=(1, 3), item_size=(20, 28), noise=0.0, source=_source()
    )
    assert x.shape == (6, 48, 48, 1) and x.dtype == np.float32
    assert y.shape == (6, 48, 48) and y.dtype == np.int32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert SEGMENTATION_NUM_CLASSES == 11 and y.min() == 0 and y.max() <= 10
    # with noise=0 a pixel is foreground exactly where its label is not background, and the
    # pixel value of a square item of class c is (c+1)/10 * 255/255 (area resampling of a flat square)
    fg = y > 0
    assert fg.any() and (~fg).any()
    assert np.all(x[..., 0][~fg] <= 0.1 + 1e-6)
    # interior pixels of class c carry intensity 0.098*(c+1)
    inner = x[..., 0][fg]
    np.testing.assert_allclose(inner.max(), 1.0 * 250 / 255, atol=0.02)


def test_segmentation_class_groups_relabel_and_skip_ungrouped():
    # _source(): class c is a square of intensity 25 (c + 1) / 255 (borders interpolated)
    kw = dict(canvas=32, items=(1, 3), item_size=(8, 12), noise=0.0, seed=3, source=_source())
    x, y = make_segmentation_set(40, class_groups=((1, 3), (9,)), **kw)
    assert set(np.unique(y)) == {0, 1, 2}
    assert x[y == 1].max() <= 100 / 255 + 1e-6  # classes 1 and 3 only
    assert x[y == 2].max() == pytest.approx(250 / 255, abs=1e-3)  # class 9
    # labels in no group are never drawn: with one group of class 1, no pixel is brighter
    x1, y1 = make_segmentation_set(20, class_groups=((1,),), **kw)
    assert set(np.unique(y1)) == {0, 1} and x1.max() <= 50 / 255 + 1e-6
    assert len(SEGMENTATION_GROUPS) == 4
    assert sorted(c for g in SEGMENTATION_GROUPS for c in g) == list(range(10))
    for bad in ((), ((0,), (0, 1)), ((0,), ()), (("a",),), ((42,),)):
        with pytest.raises(ValueError, match="class_groups"):
            make_segmentation_set(2, class_groups=bad, **kw)


def test_segmentation_set_is_deterministic():
    a = make_segmentation_set(3, canvas=40, item_size=(10, 20), seed=5, source=_source())
    b = make_segmentation_set(3, canvas=40, item_size=(10, 20), seed=5, source=_source())
    c = make_segmentation_set(3, canvas=40, item_size=(10, 20), seed=6, source=_source())
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_segmentation_set_validation():
    with pytest.raises(ValueError, match="item_size"):
        make_segmentation_set(1, canvas=16, item_size=(10, 30), source=_source())
    with pytest.raises(ValueError, match="items"):
        make_segmentation_set(1, canvas=32, items=(3, 1), source=_source())
    with pytest.raises(ValueError, match="source"):
        make_segmentation_set(1, source=np.zeros((3, 28, 28)))


def test_segmentation_dataset_flips_image_and_mask_together():
    x, y = make_segmentation_set(8, canvas=32, item_size=(10, 16), source=_source(), noise=0.0)
    ds = segmentation_dataset(
        x, y, batch_size=8, shuffle=False, augment=True, flip_up_down=True, seed=3
    )
    xb, yb = next(iter(ds))
    xb, yb = xb.numpy(), yb.numpy()
    assert xb.shape == (8, 32, 32, 1) and yb.shape == (8, 32, 32)
    n_changed = 0
    for i in range(8):
        cands = [
            (x[i], y[i]),
            (x[i, :, ::-1], y[i, :, ::-1]),
            (x[i, ::-1], y[i, ::-1]),
            (x[i, ::-1, ::-1], y[i, ::-1, ::-1]),
        ]
        hit = [
            j
            for j, (a, b) in enumerate(cands)
            if np.array_equal(a, xb[i]) and np.array_equal(b, yb[i])
        ]
        assert hit, i
        n_changed += hit[0] != 0
    assert n_changed > 0
    # same seed -> same augmentation
    xb2, _ = next(
        iter(segmentation_dataset(x, y, batch_size=8, shuffle=False, flip_up_down=True, seed=3))
    )
    np.testing.assert_array_equal(xb, xb2.numpy())


# ---- counting scenes ------------------------------------------------------------------


@pytest.mark.parametrize("sigma", ["adaptive", 2.0])
def test_counting_set_density_sums_to_count(sigma):
    x, d, c = make_counting_set(
        4, canvas=64, count_range=(0, 120), sigma=sigma, seed=1, source=_source()
    )
    assert x.shape == (4, 64, 64, 1) and d.shape == (4, 64, 64, 1) and c.shape == (4,)
    assert c.dtype == np.int32 and c.min() >= 0 and c.max() <= 120
    np.testing.assert_allclose(d.sum((1, 2, 3)), c, atol=1e-3)


def test_counting_set_perspective_and_determinism():
    kw = dict(canvas=64, count_range=(150, 150), noise=0.0, source=_source())
    x, d, c = make_counting_set(2, seed=2, perspective=True, **kw)
    x2, d2, _ = make_counting_set(2, seed=2, perspective=True, **kw)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(d, d2)
    assert list(c) == [150, 150]
    # items are smaller at the top: lit-pixel fraction is lower in the top third than the bottom third
    lit = (x[..., 0] > 0.05).mean(0)
    assert lit[:21].mean() < lit[-21:].mean()
    x3, _, _ = make_counting_set(2, seed=3, perspective=False, **kw)
    assert not np.array_equal(x, x3)


def test_counting_dataset_targets_and_flips():
    x, d, c = make_counting_set(6, canvas=64, count_range=(5, 60), seed=4, source=_source())
    ds = counting_dataset(x, d, factor=8, batch_size=6, shuffle=False, augment=True, seed=1)
    xb, db = next(iter(ds))
    xb, db = xb.numpy(), db.numpy()
    assert xb.shape == (6, 64, 64, 1) and db.shape == (6, 8, 8, 1)
    np.testing.assert_allclose(db.sum((1, 2, 3)), c, atol=1e-3)
    low = downsample_density(d, 8)
    for i in range(6):
        if np.array_equal(xb[i], x[i]):
            np.testing.assert_allclose(db[i], low[i], atol=1e-6)
        else:
            np.testing.assert_array_equal(xb[i], x[i, :, ::-1])
            np.testing.assert_allclose(db[i], low[i, :, ::-1], atol=1e-6)
    ds1 = counting_dataset(x, d, factor=1, batch_size=2, shuffle=False, augment=False)
    assert next(iter(ds1))[1].shape == (2, 64, 64, 1)
    with pytest.raises(ValueError, match="factor"):
        counting_dataset(x, d, factor=6)


def test_counting_dataset_repeat():
    x, d, _ = make_counting_set(
        3, canvas=32, count_range=(1, 5), item_size=(3, 6), source=_source()
    )
    ds = counting_dataset(x, d, batch_size=2, repeat=True)
    assert len(list(ds.take(5))) == 5


def test_real_fashion_mnist_source_when_installed():
    import os

    from acsl_tf.datasets import fashion_mnist

    if not os.path.isdir(fashion_mnist.DEBIAN_DIR):
        pytest.skip("dataset-fashion-mnist is not installed")
    x, y = make_segmentation_set(2, canvas=64, seed=0)
    assert x.shape == (2, 64, 64, 1) and len(np.unique(y)) >= 2
