import gzip
import os

import numpy as np
import pytest

from acsl_tf.datasets import CLASS_NAMES, fashion_mnist, load_fashion_mnist, read_idx, write_idx

FILES = {
    "train-images-idx3-ubyte": "xtr",
    "train-labels-idx1-ubyte": "ytr",
    "t10k-images-idx3-ubyte": "xte",
    "t10k-labels-idx1-ubyte": "yte",
}


def _fixture(d, gz=True):
    rng = np.random.default_rng(0)
    arrays = {
        "xtr": rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
        "ytr": np.array([0, 1, 9, 3, 4], np.uint8),
        "xte": rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
        "yte": np.array([7, 8, 2], np.uint8),
    }
    os.makedirs(d, exist_ok=True)
    for stem, key in FILES.items():
        write_idx(os.path.join(d, stem + (".gz" if gz else "")), arrays[key])
    return arrays


@pytest.fixture
def no_defaults(monkeypatch, tmp_path):
    """Point every default location at an empty directory and disable the download."""
    monkeypatch.delenv(fashion_mnist.ENV_VAR, raising=False)
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", str(tmp_path / "no-debian"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "no-keras-home"))

    def fail():
        raise OSError("network unreachable (test)")

    monkeypatch.setattr(fashion_mnist, "_keras_download", fail)


def test_class_names():
    assert len(CLASS_NAMES) == 10
    assert CLASS_NAMES[0] == "T-shirt/top" and CLASS_NAMES[9] == "Ankle boot"


@pytest.mark.parametrize("gz", [True, False])
def test_load_from_path(tmp_path, gz, no_defaults):
    arr = _fixture(tmp_path / "fm", gz=gz)
    (xtr, ytr), (xte, yte) = load_fashion_mnist(tmp_path / "fm")
    np.testing.assert_array_equal(xtr, arr["xtr"])
    np.testing.assert_array_equal(ytr, arr["ytr"])
    np.testing.assert_array_equal(xte, arr["xte"])
    np.testing.assert_array_equal(yte, arr["yte"])
    assert xtr.dtype == np.uint8 and xtr.shape == (5, 28, 28) and ytr.shape == (5,)


def test_normalize(tmp_path, no_defaults):
    arr = _fixture(tmp_path / "fm")
    (xtr, ytr), (xte, _) = load_fashion_mnist(tmp_path / "fm", normalize=True)
    assert xtr.dtype == np.float32 and xtr.shape == (5, 28, 28, 1) and xte.shape == (3, 28, 28, 1)
    np.testing.assert_allclose(xtr[..., 0], arr["xtr"] / 255.0, atol=1e-7)
    assert 0.0 <= xtr.min() and xtr.max() <= 1.0
    np.testing.assert_array_equal(ytr, arr["ytr"])


def test_env_var(tmp_path, no_defaults, monkeypatch):
    arr = _fixture(tmp_path / "envdir")
    monkeypatch.setenv(fashion_mnist.ENV_VAR, str(tmp_path / "envdir"))
    (_, ytr), (xte, _) = load_fashion_mnist()
    np.testing.assert_array_equal(ytr, arr["ytr"])
    np.testing.assert_array_equal(xte, arr["xte"])


def test_keras_cache(tmp_path, no_defaults, monkeypatch):
    arr = _fixture(tmp_path / "kh" / "datasets" / "fashion-mnist")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    (_, ytr), _ = load_fashion_mnist()
    np.testing.assert_array_equal(ytr, arr["ytr"])


def test_keras_download_fallback(no_defaults, monkeypatch):
    x = np.zeros((2, 28, 28), np.uint8)
    y = np.array([1, 2], np.uint8)
    monkeypatch.setattr(fashion_mnist, "_keras_download", lambda: ((x, y), (x[:1], y[:1])))
    (xtr, ytr), (xte, yte) = load_fashion_mnist()
    assert xtr.shape == (2, 28, 28) and yte.tolist() == [1]


def test_error_lists_all_options(no_defaults):
    with pytest.raises(FileNotFoundError) as e:
        load_fashion_mnist()
    msg = str(e.value)
    for needle in [
        "apt-get install dataset-fashion-mnist",
        fashion_mnist.ENV_VAR,
        "path=",
        "no-debian",
        "no-keras-home",
        "network unreachable",
        "keras.datasets.fashion_mnist.load_data()",
    ]:
        assert needle in msg, needle


def test_explicit_incomplete_path_is_an_error(tmp_path, no_defaults):
    _fixture(tmp_path / "fm")
    os.remove(tmp_path / "fm" / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte"):
        load_fashion_mnist(tmp_path / "fm")
    with pytest.raises(ValueError, match="does not exist"):
        load_fashion_mnist(tmp_path / "missing")


def test_corrupt_magic(tmp_path):
    p = tmp_path / "bad-idx1-ubyte.gz"
    with gzip.open(p, "wb") as f:
        f.write((0x00000901).to_bytes(4, "big") + (3).to_bytes(4, "big") + b"abc")
    with pytest.raises(ValueError, match="magic number 0x00000901"):
        read_idx(p)


def test_truncated_file(tmp_path):
    p = tmp_path / "x-idx3-ubyte"
    write_idx(p, np.zeros((4, 28, 28), np.uint8))
    data = p.read_bytes()
    p.write_bytes(data[:-10])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        read_idx(p)


def test_mismatched_label_count(tmp_path, no_defaults):
    _fixture(tmp_path / "fm")
    write_idx(tmp_path / "fm" / "train-labels-idx1-ubyte.gz", np.zeros(4, np.uint8), overwrite=True)
    with pytest.raises(ValueError, match="do not belong together"):
        load_fashion_mnist(tmp_path / "fm")


def test_write_idx_validates(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_idx(tmp_path / "a", np.zeros((2, 2), np.float32))


@pytest.mark.skipif(
    not os.path.isfile(os.path.join(fashion_mnist.DEBIAN_DIR, "t10k-labels-idx1-ubyte.gz")),
    reason="dataset-fashion-mnist is not installed",
)
def test_debian_location(monkeypatch):
    monkeypatch.delenv(fashion_mnist.ENV_VAR, raising=False)
    (xtr, ytr), (xte, yte) = load_fashion_mnist()
    assert xtr.shape == (60000, 28, 28) and xtr.dtype == np.uint8
    assert xte.shape == (10000, 28, 28) and yte.shape == (10000,)
    np.testing.assert_array_equal(np.bincount(ytr, minlength=10), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(yte, minlength=10), [1000] * 10)
    assert int(xtr.max()) == 255


class _CountingReader:
    """Wraps a file object and counts the decompressed bytes handed out."""

    def __init__(self, f):
        self.f, self.count = f, 0

    def read(self, n=-1):
        data = self.f.read(n)
        self.count += len(data)
        return data

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


@pytest.fixture
def counting_open(monkeypatch):
    readers = []
    real_open = fashion_mnist._open

    def counting(path):
        readers.append(_CountingReader(real_open(path)))
        return readers[-1]

    monkeypatch.setattr(fashion_mnist, "_open", counting)
    return readers


def test_bad_magic_is_found_before_decompressing(tmp_path, counting_open):
    p = tmp_path / "bomb-idx3-ubyte.gz"
    with gzip.open(p, "wb", compresslevel=1) as f:
        f.write(b"PK\x03\x04")  # not an IDX header
        f.write(bytes(50 * 2**20))  # 50 MB of zeros, about 50 KB compressed
    assert p.stat().st_size < 2**20
    with pytest.raises(ValueError, match="magic number 0x504b0304"):
        read_idx(p)
    assert counting_open[0].count == 4


def test_oversized_header_is_rejected_without_reading(tmp_path, counting_open):
    p = tmp_path / "huge-idx3-ubyte.gz"
    dims = (2**31 - 1, 28, 28)
    with gzip.open(p, "wb") as f:
        f.write((0x00000803).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims))
        f.write(bytes(1000))
    with pytest.raises(ValueError, match="more than max_bytes=1073741824.*Received: path="):
        read_idx(p)
    assert counting_open[0].count == 16
    q = tmp_path / "small-idx1-ubyte"
    write_idx(q, np.arange(10, dtype=np.uint8))
    with pytest.raises(ValueError, match="max_bytes=4"):
        read_idx(q, max_bytes=4)
    np.testing.assert_array_equal(read_idx(q, max_bytes=10), np.arange(10))


def test_trailing_data_is_rejected(tmp_path):
    p = tmp_path / "x-idx1-ubyte"
    write_idx(p, np.arange(5, dtype=np.uint8))
    p.write_bytes(p.read_bytes() + b"junk")
    with pytest.raises(ValueError, match="more than 5 data bytes"):
        read_idx(p)
