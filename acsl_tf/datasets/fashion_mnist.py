"""Fashion-MNIST from local IDX files, with a clear search order and errors.

The loader never needs the network when the data is installed locally. It looks,
in order, at:

1. the explicit ``path`` argument,
2. the directory named by the environment variable ``ACSL_TF_FASHION_MNIST``,
3. the Debian/Ubuntu package location ``/usr/share/datasets/fashion-mnist``
   (``apt-get install dataset-fashion-mnist``),
4. the Keras dataset cache ``$KERAS_HOME/datasets/fashion-mnist`` (default
   ``~/.keras/datasets/fashion-mnist``),
5. ``keras.datasets.fashion_mnist.load_data()``, which downloads the files on a
   machine with internet access.

A directory is usable when it holds the four IDX files
``{train,t10k}-{images-idx3,labels-idx1}-ubyte`` either gzip-compressed
(``.gz``) or uncompressed.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

__all__ = [
    "CLASS_NAMES",
    "ENV_VAR",
    "DEBIAN_DIR",
    "load_fashion_mnist",
    "read_idx",
    "write_idx",
]

CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

ENV_VAR = "ACSL_TF_FASHION_MNIST"
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"

_FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
# IDX magic: two zero bytes, a type code (0x08 = unsigned byte), number of dims.
_MAGIC_IMAGES = 0x00000803
_MAGIC_LABELS = 0x00000801


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


# The largest payload read_idx accepts: the Fashion-MNIST training images are
# 47 MB; anything above this is a corrupt header or not a Fashion-MNIST file.
MAX_IDX_BYTES = 1 << 30


def read_idx(path: str | os.PathLike, *, max_bytes: int = MAX_IDX_BYTES) -> np.ndarray:
    """Read one IDX file (``.gz`` or uncompressed) of unsigned bytes.

    The header is read and checked first; then exactly the announced number of
    bytes is read (decompressed), so a corrupt or hostile ``.gz`` file is never
    decompressed beyond the size its header announces, and that size is bounded
    by ``max_bytes``.

    Args:
        path: File path. Files ending in ``.gz`` are decompressed.
        max_bytes: Largest payload accepted (default 1 GiB).

    Returns:
        A uint8 array whose shape is given by the IDX header (``(N,)`` for
        label files, ``(N, 28, 28)`` for Fashion-MNIST images).

    Raises:
        ValueError: If the magic number is not an unsigned-byte IDX magic, the
            header announces more than ``max_bytes``, or the payload size does
            not match the header (truncated or corrupt file).

    Example:
        >>> y = read_idx("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz")
    """
    path = Path(path)
    where = f"Received: path={str(path)!r}"
    try:
        with _open(path) as f:
            head = f.read(4)
            if len(head) < 4:
                raise ValueError(
                    f"IDX file {str(path)!r} is too short to hold a header ({len(head)} bytes). "
                    f"{where}"
                )
            magic = int.from_bytes(head, "big")
            ndim = magic & 0xFF
            if (magic >> 8) != 0x08 or ndim not in (1, 3):
                raise ValueError(
                    f"IDX file {str(path)!r} has magic number 0x{magic:08x}; expected "
                    f"0x{_MAGIC_LABELS:08x} (labels) or 0x{_MAGIC_IMAGES:08x} (images). The file "
                    f"is not an unsigned-byte IDX file or is corrupt. {where}"
                )
            raw_dims = f.read(4 * ndim)
            if len(raw_dims) < 4 * ndim:
                raise ValueError(f"IDX file {str(path)!r} has a truncated header. {where}")
            dims = tuple(int.from_bytes(raw_dims[4 * i : 4 * i + 4], "big") for i in range(ndim))
            expected = int(np.prod(dims, dtype=np.int64)) if dims else 0
            if expected > max_bytes:
                raise ValueError(
                    f"IDX file {str(path)!r} announces shape {dims} ({expected} bytes), more "
                    f"than max_bytes={max_bytes}. The header is corrupt, or pass a larger "
                    f"`max_bytes` for a genuinely larger file. {where}"
                )
            raw = f.read(expected)
            extra = len(f.read(1))
    except (OSError, EOFError) as e:
        raise ValueError(
            f"Could not read the IDX file {str(path)!r} ({e}). The file is corrupt or "
            f"truncated; delete it and install it again. {where}"
        ) from e
    if len(raw) != expected or extra:
        payload = f"{len(raw)}" if not extra else f"more than {expected}"
        raise ValueError(
            f"IDX file {str(path)!r} holds {payload} data bytes but its header announces "
            f"shape {dims} ({expected} bytes); the file is truncated or corrupt. {where}"
        )
    return np.frombuffer(raw, np.uint8).reshape(dims).copy()


def write_idx(path: str | os.PathLike, array: np.ndarray, *, overwrite: bool = False) -> None:
    """Write a uint8 array as an IDX file (gzip-compressed when ``path`` ends in ``.gz``).

    Useful to package your own data in the Fashion-MNIST format, and for tests.

    Args:
        path: Destination. Written atomically.
        array: uint8 array with 1 dimension (labels) or 3 (images).
        overwrite: Replace an existing file.

    Raises:
        ValueError: If the array is not uint8 or not 1-D / 3-D.

    Example:
        >>> write_idx("/tmp/x-labels-idx1-ubyte.gz", np.zeros(3, np.uint8))
    """
    from acsl_tf._io import atomic_write_bytes

    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim not in (1, 3):
        raise ValueError(
            "write_idx expects a uint8 array with 1 (labels) or 3 (images) dimensions. "
            f"Received: dtype={array.dtype}, shape={array.shape}"
        )
    magic = (0x08 << 8) | array.ndim
    data = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data += np.ascontiguousarray(array).tobytes()
    if str(path).endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    atomic_write_bytes(path, data, overwrite=overwrite)


def _find_file(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        p = directory / name
        if p.is_file():
            return p
    return None


def _complete(directory: Path) -> bool:
    return directory.is_dir() and all(_find_file(directory, s) is not None for s in _FILES.values())


def _load_dir(directory: Path):
    out = {}
    for key, stem in _FILES.items():
        out[key] = read_idx(_find_file(directory, stem))
    for split in ("train", "test"):
        x, y = out[(split, "images")], out[(split, "labels")]
        if x.ndim != 3 or x.shape[1:] != (28, 28):
            raise ValueError(
                f"Fashion-MNIST {split} images in {str(directory)!r} have shape {x.shape}; "
                f"expected (N, 28, 28). Received: shape={x.shape}"
            )
        if y.ndim != 1 or len(y) != len(x):
            raise ValueError(
                f"Fashion-MNIST {split} labels in {str(directory)!r} have shape {y.shape} but "
                f"there are {len(x)} images; the files do not belong together. "
                f"Received: labels_shape={y.shape}, images_shape={x.shape}"
            )
        if y.size and int(y.max()) > 9:
            raise ValueError(
                f"Fashion-MNIST {split} labels in {str(directory)!r} contain {int(y.max())}; "
                f"expected class ids 0..9. Received: max_label={int(y.max())}"
            )
    return (out[("train", "images")], out[("train", "labels")]), (
        out[("test", "images")],
        out[("test", "labels")],
    )


def _keras_cache_dir() -> Path:
    base = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(base) / "datasets" / "fashion-mnist"


def _keras_download():
    import keras

    return keras.datasets.fashion_mnist.load_data()


def _candidates(path):
    cands = []
    if path is not None:
        cands.append(("path argument", Path(path)))
    env = os.environ.get(ENV_VAR)
    if env:
        cands.append((f"${ENV_VAR}", Path(env)))
    cands.append(("Debian package dataset-fashion-mnist", Path(DEBIAN_DIR)))
    cands.append(("Keras dataset cache", _keras_cache_dir()))
    return cands


def _normalize(data):
    (xtr, ytr), (xte, yte) = data

    def f(x):
        return (x.astype(np.float32) / 255.0)[..., None]

    return (f(xtr), ytr), (f(xte), yte)


def load_fashion_mnist(path: str | os.PathLike | None = None, *, normalize: bool = False):
    """Load Fashion-MNIST (60k train / 10k test, 10 classes, 28x28 grey).

    Search order: ``path``; ``$ACSL_TF_FASHION_MNIST``; ``/usr/share/datasets/
    fashion-mnist`` (Debian package ``dataset-fashion-mnist``); the Keras cache
    ``$KERAS_HOME/datasets/fashion-mnist`` (default ``~/.keras/...``); finally
    ``keras.datasets.fashion_mnist.load_data()`` (downloads). An explicit ``path``
    that does not hold the four files is an error (it is never skipped silently).

    Args:
        path: Optional directory with the four IDX files
            (``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``,
            ``t10k-images-idx3-ubyte[.gz]``, ``t10k-labels-idx1-ubyte[.gz]``).
        normalize: If False (default) images are uint8 ``(N, 28, 28)`` in 0..255.
            If True they are float32 ``(N, 28, 28, 1)`` in [0, 1] (channel axis
            added, ready for a Conv2D model). Labels are uint8 ``(N,)`` with class
            ids 0..9 in both cases (see :data:`CLASS_NAMES`).

    Returns:
        ``((x_train, y_train), (x_test, y_test))``.

    Raises:
        ValueError: If ``path`` is given but incomplete, or a file is corrupt.
        FileNotFoundError: If no location holds the data and the Keras download
            fails; the message lists every option.

    Example:
        >>> (x, y), (xt, yt) = load_fashion_mnist(normalize=True)
        >>> x.shape, x.dtype
        ((60000, 28, 28, 1), dtype('float32'))
    """
    tried = []
    for label, d in _candidates(path):
        if _complete(d):
            data = _load_dir(d)
            return _normalize(data) if normalize else data
        if label == "path argument":
            missing = [s for s in _FILES.values() if _find_file(d, s) is None] if d.is_dir() else []
            raise ValueError(
                "The directory given as `path` does not hold Fashion-MNIST: "
                + (
                    f"missing {missing} (each may end in .gz). "
                    if d.is_dir()
                    else "it does not exist. "
                )
                + f"Received: path={str(path)!r}"
            )
        tried.append(f"  - {label}: {d} ({'incomplete' if d.is_dir() else 'not found'})")
    try:
        data = _keras_download()
    except Exception as e:  # noqa: BLE001 - any download failure ends in one clear error
        download_error = f"{type(e).__name__}: {e}"
    else:
        (xtr, ytr), (xte, yte) = data
        data = (
            (np.asarray(xtr, np.uint8), np.asarray(ytr, np.uint8)),
            (
                np.asarray(xte, np.uint8),
                np.asarray(yte, np.uint8),
            ),
        )
        return _normalize(data) if normalize else data
    raise FileNotFoundError(
        "Fashion-MNIST was not found. Looked at:\n"
        + "\n".join(tried)
        + f"\n  - keras.datasets.fashion_mnist.load_data() (download): failed with {download_error}\n"
        "Fix it with one of:\n"
        "  - pass load_fashion_mnist(path=DIR), DIR holding train-images-idx3-ubyte.gz, "
        "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz "
        "(.gz optional);\n"
        f"  - set the environment variable {ENV_VAR}=DIR;\n"
        "  - on Debian/Ubuntu: `apt-get install dataset-fashion-mnist` "
        f"(installs into {DEBIAN_DIR});\n"
        "  - on a machine with internet access, call keras.datasets.fashion_mnist.load_data() "
        f"once to fill the Keras cache ({_keras_cache_dir()})."
    )
