import numpy as np
import pytest

scipy_io = pytest.importorskip("scipy.io")
Image = pytest.importorskip("PIL.Image")

from acsl_tf.datasets import (  # noqa: E402
    CAMVID_CLASSES,
    CITYSCAPES_CLASSES,
    cityscapes_train_ids,
    load_camvid,
    load_cityscapes,
    load_mall,
    load_shanghaitech,
)


def _jpg(path, h, w, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(a).save(path, quality=95)


def _png(path, a):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)


# ---- Mall ---------------------------------------------------------------------------------


def _mall(root, n=3, h=24, w=32):
    rng = np.random.default_rng(0)
    frame = np.empty((1, n), dtype=object)
    counts = []
    for i in range(n):
        c = i + 2
        loc = np.stack([rng.uniform(0, w, c), rng.uniform(0, h, c)], 1)
        s = np.empty((1, 1), dtype=[("loc", "O")])
        s[0, 0]["loc"] = loc
        frame[0, i] = s
        counts.append(c)
        _jpg(root / "frames" / f"seq_{i + 1:06d}.jpg", h, w, seed=i)
    scipy_io.savemat(
        root / "mall_gt.mat", {"frame": frame, "count": np.array(counts, float)[:, None]}
    )
    return counts


def test_mall_fixture_has_real_nesting(tmp_path):
    _mall(tmp_path)
    m = scipy_io.loadmat(tmp_path / "mall_gt.mat")
    assert m["frame"][0][1]["loc"][0, 0].shape == (3, 2)


def test_load_mall(tmp_path):
    counts = _mall(tmp_path)
    ds = load_mall(tmp_path)
    assert len(ds) == 3 and ds.counts.tolist() == counts
    img, dens = ds[1]
    assert img.shape == (24, 32, 3) and img.dtype == np.uint8
    assert dens.shape == (24, 32, 1) and dens.dtype == np.float32
    assert dens.sum() == pytest.approx(counts[1], abs=1e-4)
    img8, d8 = load_mall(tmp_path, factor=8)[2]
    assert d8.shape == (3, 4, 1) and d8.sum() == pytest.approx(counts[2], abs=1e-4)
    assert len(load_mall(tmp_path, split="train")) == 3  # frames 1..800
    assert len(load_mall(tmp_path, split="test")) == 0
    # tf.data view
    x, y = next(iter(ds.as_dataset()))
    assert x.shape == (24, 32, 3) and y.shape == (24, 32, 1)


def test_mall_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="mall_gt.mat"):
        load_mall(tmp_path / "nope")
    _mall(tmp_path)
    (tmp_path / "frames" / "seq_000002.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="seq_000002.jpg"):
        load_mall(tmp_path)
    with pytest.raises(ValueError, match="split"):
        load_mall(tmp_path, split="val")


# ---- ShanghaiTech ------------------------------------------------------------------------


def _sht_gt(path, loc):
    path.parent.mkdir(parents=True, exist_ok=True)
    inner = np.empty((1, 1), dtype=[("location", "O"), ("number", "O")])
    inner[0, 0]["location"] = loc
    inner[0, 0]["number"] = np.array([[len(loc)]], float)
    info = np.empty((1, 1), dtype=object)
    info[0, 0] = inner
    scipy_io.savemat(path, {"image_info": info})


@pytest.mark.parametrize(
    "part_dir,gt_name", [("part_A", "ground-truth"), ("part_A_final", "ground_truth")]
)
def test_load_shanghaitech(tmp_path, part_dir, gt_name):
    base = tmp_path / part_dir / "test_data"
    rng = np.random.default_rng(1)
    counts = {}
    for n in (10, 2, 1):  # numeric order must be 1, 2, 10
        c = n + 3
        _jpg(base / "images" / f"IMG_{n}.jpg", 16, 24, seed=n)
        _sht_gt(
            base / gt_name / f"GT_IMG_{n}.mat",
            np.stack([rng.uniform(0, 24, c), rng.uniform(0, 16, c)], 1),
        )
        counts[n] = c
    m = scipy_io.loadmat(base / gt_name / "GT_IMG_2.mat")
    assert m["image_info"][0, 0][0, 0][0].shape == (5, 2)  # the real nesting
    ds = load_shanghaitech(tmp_path, part="A", split="test")
    assert [p[0].name for p in ds.paths] == ["IMG_1.jpg", "IMG_2.jpg", "IMG_10.jpg"]
    assert ds.counts.tolist() == [counts[1], counts[2], counts[10]]
    img, dens = ds[2]
    assert img.shape == (16, 24, 3) and dens.shape == (16, 24, 1)
    assert dens.sum() == pytest.approx(counts[10], abs=1e-4)
    _, d8 = load_shanghaitech(tmp_path, part="A", split="test", sigma=2.0, factor=8)[0]
    assert d8.shape == (2, 3, 1) and d8.sum() == pytest.approx(counts[1], abs=1e-4)


def test_shanghaitech_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="part_B/train_data"):
        load_shanghaitech(tmp_path, part="B")
    _jpg(tmp_path / "part_B" / "train_data" / "images" / "IMG_1.jpg", 8, 8)
    (tmp_path / "part_B" / "train_data" / "ground-truth").mkdir()
    with pytest.raises(FileNotFoundError, match="GT_IMG_1.mat"):
        load_shanghaitech(tmp_path, part="B")
    scipy_io.savemat(
        tmp_path / "part_B" / "train_data" / "ground-truth" / "GT_IMG_1.mat", {"other": 1}
    )
    with pytest.raises(ValueError, match="image_info"):
        load_shanghaitech(tmp_path, part="B")
    with pytest.raises(ValueError, match="part"):
        load_shanghaitech(tmp_path, part="C")


# ---- Cityscapes --------------------------------------------------------------------------


def test_cityscapes_train_ids():
    assert len(CITYSCAPES_CLASSES) == 19
    ids = cityscapes_train_ids(np.arange(34))
    expected = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}  # fmt: skip
    for i in range(34):
        assert ids[i] == expected.get(i, 255), i


def test_load_cityscapes(tmp_path):
    lab = np.array([[7, 26, 0, 33], [1, 24, 255, 4]], np.uint8)
    for city, name in [("bonn", "bonn_000000_000019"), ("aachen", "aachen_000001_000019")]:
        _png(
            tmp_path / "leftImg8bit" / "val" / city / f"{name}_leftImg8bit.png",
            np.full((2, 4, 3), 9, np.uint8),
        )
        _png(tmp_path / "gtFine" / "val" / city / f"{name}_gtFine_labelIds.png", lab)
    ds = load_cityscapes(tmp_path, "val")
    assert len(ds) == 2 and ds.paths[0][0].parent.name == "aachen"
    img, y = ds[0]
    assert img.shape == (2, 4, 3) and y.dtype == np.uint8
    np.testing.assert_array_equal(y, [[0, 13, 255, 18], [255, 11, 255, 255]])
    with pytest.raises(FileNotFoundError, match="gtFine"):
        load_cityscapes(tmp_path, "train")


def test_cityscapes_missing_label(tmp_path):
    _png(
        tmp_path / "leftImg8bit" / "train" / "ulm" / "ulm_000000_000019_leftImg8bit.png",
        np.zeros((2, 2, 3), np.uint8),
    )
    (tmp_path / "gtFine" / "train" / "ulm").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="ulm_000000_000019_gtFine_labelIds.png"):
        load_cityscapes(tmp_path, "train")


# ---- CamVid ------------------------------------------------------------------------------


def test_load_camvid(tmp_path):
    assert len(CAMVID_CLASSES) == 11
    ann = np.array([[0, 5, 10], [11, 3, 11]], np.uint8)
    _png(tmp_path / "test" / "0001TP_008550.png", np.full((2, 3, 3), 7, np.uint8))
    _png(tmp_path / "testannot" / "0001TP_008550.png", ann)
    ds = load_camvid(tmp_path, "test")
    img, y = ds[0]
    assert len(ds) == 1 and img.shape == (2, 3, 3)
    np.testing.assert_array_equal(y, [[0, 5, 10], [255, 3, 255]])
    x, y2 = next(iter(ds.as_dataset()))
    assert y2.shape == (2, 3)


def test_camvid_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="trainannot"):
        load_camvid(tmp_path, "train")
    _png(tmp_path / "val" / "a.png", np.zeros((2, 2, 3), np.uint8))
    _png(tmp_path / "valannot" / "a.png", np.full((2, 2), 12, np.uint8))
    with pytest.raises(ValueError, match="holds value 12"):
        load_camvid(tmp_path, "val")[0]
    with pytest.raises(IndexError):
        load_camvid(tmp_path, "val")[5]
