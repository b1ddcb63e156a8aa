"""Composite segmentation and crowd-counting scenes built from real Fashion-MNIST items.

Both tasks need pixel-level ground truth that cannot be downloaded here, so
scenes are composed from real Fashion-MNIST images (60k training items by
default, see :func:`~acsl_tf.datasets.load_fashion_mnist`). Everything is drawn
from ``numpy.random.default_rng(seed)``: the same arguments give identical
arrays.

Segmentation (:func:`make_segmentation_set`)
    K items (K uniform in ``items``) are scaled to a random size and pasted at
    random positions on a dark canvas; a later item occludes earlier ones. A
    pixel belongs to an item when the item's intensity there is above
    ``threshold`` (0..1). Class ids: ``0`` = background, ``1 + c`` for
    Fashion-MNIST class ``c`` (``1`` = T-shirt/top ... ``10`` = Ankle boot),
    so ``SEGMENTATION_NUM_CLASSES = 11``. With ``class_groups`` the classes
    are merged into groups (``1 + group index``); ``SEGMENTATION_GROUPS``
    merges them by shape into upper-body garments, trousers, footwear and bags
    (5 classes with the background), which tells apart what a pixel's
    neighbourhood can tell apart (a shirt and a coat differ in details that
    a small segmentation network barely sees).

Counting (:func:`make_counting_set`)
    N items (N uniform in ``count_range``, inclusive) are downscaled to
    ``item_size`` pixels and scattered (pixel-wise maximum where they overlap).
    With ``perspective=True`` the size grows linearly from the top row to the
    bottom row (a camera looking down on a crowd), with +-15% jitter. The
    ground truth is :func:`~acsl_tf.datasets.density.density_map` of the item
    centres, so ``densities[i].sum() == counts[i]`` up to float32 rounding.
"""

from __future__ import annotations

import functools

import numpy as np

from acsl_tf.datasets.density import density_map, downsample_density

__all__ = [
    "BACKGROUND",
    "SEGMENTATION_GROUPS",
    "SEGMENTATION_NUM_CLASSES",
    "counting_dataset",
    "make_counting_set",
    "make_segmentation_set",
    "segmentation_dataset",
]

BACKGROUND = 0
SEGMENTATION_NUM_CLASSES = 11
#: Fashion-MNIST classes merged by shape: upper-body garments (T-shirt/top,
#: pullover, dress, coat, shirt), trousers, footwear (sandal, sneaker, ankle
#: boot) and bags.
SEGMENTATION_GROUPS = ((0, 2, 3, 4, 6), (1,), (5, 7, 9), (8,))


@functools.lru_cache(maxsize=1)
def _default_source():
    from acsl_tf.datasets.fashion_mnist import load_fashion_mnist

    (x, y), _ = load_fashion_mnist()
    return x, y


def _source(source):
    if source is None:
        x, y = _default_source()
    else:
        try:
            x, y = source
        except (TypeError, ValueError) as e:
            raise ValueError(
                "`source` must be None (Fashion-MNIST training set) or a tuple (images, labels). "
                f"Received: source={type(source).__name__}"
            ) from e
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim != 3 or y.shape != (len(x),) or len(x) == 0:
        raise ValueError(
            "`source` images must be (N, h, w) (or (N, h, w, 1)) with labels (N,), N > 0. "
            f"Received: images.shape={x.shape}, labels.shape={y.shape}"
        )
    x = x.astype(np.float32)
    if x.max() > 1.0:
        x = x / 255.0
    return x, y.astype(np.int64)


@functools.lru_cache(maxsize=256)
def _resample_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) linear map: area averaging when shrinking, bilinear when growing."""
    m = np.zeros((n_out, n_in), np.float64)
    if n_out <= n_in:
        scale = n_in / n_out
        for o in range(n_out):
            a, b = o * scale, (o + 1) * scale
            for i in range(int(np.floor(a)), min(int(np.ceil(b)), n_in)):
                m[o, i] = min(b, i + 1) - max(a, i)
        m /= m.sum(1, keepdims=True)
    else:
        pos = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
        pos = np.clip(pos, 0, n_in - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        f = pos - lo
        m[np.arange(n_out), lo] += 1 - f
        m[np.arange(n_out), hi] += f
    return m


def _resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    return (_resample_matrix(img.shape[0], h) @ img @ _resample_matrix(img.shape[1], w).T).astype(
        np.float32
    )


def _group_classes(xs, ys, groups):
    """Keep the items of the grouped labels and relabel them by group index."""
    try:
        groups = [tuple(int(c) for c in g) for g in groups]
    except (TypeError, ValueError) as e:
        raise ValueError(
            "`class_groups` must be a sequence of sequences of integer labels, e.g. "
            f"((0, 2), (1,)). Received: class_groups={groups!r}"
        ) from e
    flat = [c for g in groups for c in g]
    if not groups or any(not g for g in groups) or len(set(flat)) != len(flat):
        raise ValueError(
            "`class_groups` must be non-empty, disjoint groups of labels. "
            f"Received: class_groups={groups!r}"
        )
    lut = np.full(int(max(ys.max(), max(flat))) + 1, -1, np.int64)
    for g, members in enumerate(groups):
        lut[list(members)] = g
    mapped = lut[ys]
    keep = mapped >= 0
    if not keep.any():
        raise ValueError(
            f"No source item has a label in `class_groups`. Received: class_groups={groups!r}"
        )
    return xs[keep], mapped[keep]


def _check_pair(name, v, lo=0):
    try:
        a, b = (int(v[0]), int(v[1]))
    except (TypeError, IndexError, ValueError) as e:
        raise ValueError(f"`{name}` must be a pair (min, max). Received: {name}={v!r}") from e
    if a < lo or b < a:
        raise ValueError(f"`{name}` must satisfy {lo} <= min <= max. Received: {name}={v!r}")
    return a, b


def _check_common(n, canvas, channels):
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"`n` must be a non-negative integer. Received: n={n!r}")
    if isinstance(canvas, (int, np.integer)):
        canvas = (int(canvas), int(canvas))
    canvas = tuple(int(c) for c in canvas)
    if len(canvas) != 2 or min(canvas) < 8:
        raise ValueError(
            f"`canvas` must be an int or (height, width), each >= 8. Received: canvas={canvas!r}"
        )
    if channels not in (1, 3):
        raise ValueError(f"`channels` must be 1 or 3. Received: channels={channels!r}")
    return int(n), canvas


def make_segmentation_set(
    n: int,
    *,
    canvas: int | tuple[int, int] = 96,
    items: tuple[int, int] = (2, 5),
    item_size: tuple[int, int] = (24, 44),
    threshold: float = 0.1,
    noise: float = 0.03,
    channels: int = 1,
    seed: int = 0,
    source=None,
    class_groups=None,
):
    """Segmentation scenes of real Fashion-MNIST items with per-pixel class labels.

    Args:
        n: Number of scenes.
        canvas: Scene size, int or ``(height, width)``.
        items: ``(min, max)`` number of items per scene (inclusive).
        item_size: ``(min, max)`` side of a pasted item in pixels (28 = native).
        threshold: Intensity (0..1) above which an item pixel is foreground.
        noise: Standard deviation of additive Gaussian pixel noise (0 = none);
            the result is clipped to [0, 1].
        channels: 1 (grey) or 3 (grey repeated, for RGB models).
        seed: Seed of the NumPy generator.
        source: ``None`` (Fashion-MNIST training set) or ``(images, labels)``.
        class_groups: ``None`` (one class per source label) or disjoint
            sequences of source labels, e.g. :data:`SEGMENTATION_GROUPS`;
            group ``g`` is labelled ``1 + g`` and items of labels in no group
            are not drawn.

    Returns:
        ``(images, labels)``: float32 ``(n, H, W, channels)`` in [0, 1] and int32
        ``(n, H, W)`` with 0 = background and ``1 + class`` for items
        (``SEGMENTATION_NUM_CLASSES = 11`` classes; ``1 + len(class_groups)``
        with groups).

    Raises:
        ValueError: On invalid arguments.

    Example:
        >>> x, y = make_segmentation_set(4, canvas=64, seed=1)
        >>> x.shape, y.shape, int(y.max()) <= 10
        ((4, 64, 64, 1), (4, 64, 64), True)
    """
    n, (H, W) = _check_common(n, canvas, channels)
    kmin, kmax = _check_pair("items", items)
    smin, smax = _check_pair("item_size", item_size, lo=2)
    if smax > min(H, W):
        raise ValueError(
            f"`item_size` max must fit the canvas {H}x{W}. Received: item_size={item_size!r}"
        )
    xs, ys = _source(source)
    if class_groups is not None:
        xs, ys = _group_classes(xs, ys, class_groups)
    rng = np.random.default_rng(seed)
    images = np.zeros((n, H, W), np.float32)
    labels = np.zeros((n, H, W), np.int32)
    for i in range(n):
        for _ in range(int(rng.integers(kmin, kmax + 1))):
            j = int(rng.integers(len(xs)))
            s = int(rng.integers(smin, smax + 1))
            item = _resize(xs[j], s, s)
            top = int(rng.integers(0, H - s + 1))
            left = int(rng.integers(0, W - s + 1))
            fg = item > threshold
            region = (slice(top, top + s), slice(left, left + s))
            images[i][region] = np.where(fg, item, images[i][region])
            labels[i][region] = np.where(fg, ys[j] + 1, labels[i][region])
    if noise:
        images = np.clip(images + rng.normal(0.0, noise, images.shape).astype(np.float32), 0.0, 1.0)
    images = np.repeat(images[..., None], channels, axis=-1)
    return images, labels


def make_counting_set(
    n: int,
    *,
    canvas: int | tuple[int, int] = 96,
    count_range: tuple[int, int] = (0, 200),
    item_size: tuple[int, int] = (4, 14),
    perspective: bool = True,
    sigma: float | str = "adaptive",
    beta: float = 0.3,
    k: int = 3,
    noise: float = 0.03,
    channels: int = 1,
    seed: int = 0,
    source=None,
):
    """Dense counting scenes: many small real items and their density maps.

    Args:
        n: Number of scenes.
        canvas: Scene size, int or ``(height, width)`` (96 or 128 suit 1/8 maps).
        count_range: ``(min, max)`` items per scene, inclusive.
        item_size: ``(min, max)`` item side in pixels.
        perspective: Items are small at the top and large at the bottom.
            Otherwise sizes are uniform in ``item_size``.
        sigma: Density kernel: a fixed sigma in pixels or ``"adaptive"``
            (``beta`` times the mean distance to the ``k`` nearest items, as in
            MCNN/CSRNet, clipped to ``[1, max(item_size)]``, lone item: half its
            size).
        beta: Adaptive-sigma scale.
        k: Adaptive-sigma neighbour count.
        noise: Standard deviation of additive Gaussian pixel noise.
        channels: 1 or 3.
        seed: Seed of the NumPy generator.
        source: ``None`` (Fashion-MNIST training set) or ``(images, labels)``.

    Returns:
        ``(images, densities, counts)``: float32 ``(n, H, W, channels)`` in
        [0, 1], float32 ``(n, H, W, 1)`` full-resolution density maps, and int32
        ``(n,)`` counts with ``densities[i].sum() == counts[i]`` (float32
        rounding).

    Raises:
        ValueError: On invalid arguments.

    Example:
        >>> x, d, c = make_counting_set(2, canvas=64, count_range=(10, 50))
        >>> np.allclose(d.sum((1, 2, 3)), c, atol=1e-3)
        True
    """
    n, (H, W) = _check_common(n, canvas, channels)
    cmin, cmax = _check_pair("count_range", count_range)
    smin, smax = _check_pair("item_size", item_size, lo=1)
    if smax > min(H, W):
        raise ValueError(
            f"`item_size` max must fit the canvas {H}x{W}. Received: item_size={item_size!r}"
        )
    if not isinstance(sigma, str) and not float(sigma) > 0:
        raise ValueError(f'`sigma` must be positive or "adaptive". Received: sigma={sigma!r}')
    xs, _ = _source(source)
    rng = np.random.default_rng(seed)
    images = np.zeros((n, H, W), np.float32)
    densities = np.zeros((n, H, W, 1), np.float32)
    counts = np.zeros((n,), np.int32)
    for i in range(n):
        c = int(rng.integers(cmin, cmax + 1))
        counts[i] = c
        cy = rng.uniform(0, H, c)
        cx = rng.uniform(0, W, c)
        if perspective:
            base = smin + (smax - smin) * (cy / H)
            sizes = np.clip(np.rint(base * rng.uniform(0.85, 1.15, c)), smin, smax).astype(int)
        else:
            sizes = rng.integers(smin, smax + 1, c)
        idx = rng.integers(len(xs), size=c)
        canvas_i = images[i]
        for x, y, s, j in zip(cx, cy, sizes, idx):
            s = int(s)
            item = _resize(xs[j], s, s)
            top, left = int(np.floor(y - s / 2)), int(np.floor(x - s / 2))
            y0, y1 = max(top, 0), min(top + s, H)
            x0, x1 = max(left, 0), min(left + s, W)
            canvas_i[y0:y1, x0:x1] = np.maximum(
                canvas_i[y0:y1, x0:x1], item[y0 - top : y1 - top, x0 - left : x1 - left]
            )
        pts = np.stack([cx, cy], 1)
        densities[i, :, :, 0] = density_map(
            pts,
            (H, W),
            sigma=sigma,
            beta=beta,
            k=k,
            min_sigma=1.0,
            max_sigma=float(smax),
            fallback_sigma=max(1.0, float(sizes[0]) / 2 if c else 1.0),
        )
    if noise:
        images = np.clip(images + rng.normal(0.0, noise, images.shape).astype(np.float32), 0.0, 1.0)
    images = np.repeat(images[..., None], channels, axis=-1)
    return images, densities, counts


def _pipeline(tensors, flip_fn, *, batch_size, shuffle, augment, repeat, seed, drop_remainder):
    import tensorflow as tf

    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(
            f"`batch_size` must be a positive integer. Received: batch_size={batch_size!r}"
        )
    n = len(tensors[0])
    ds = tf.data.Dataset.from_tensor_slices(tensors)
    if shuffle:
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    if augment:
        ds = ds.enumerate().map(
            lambda i, t: flip_fn(
                tf.random.stateless_uniform([2], seed=tf.stack([tf.cast(seed, tf.int64), i])), *t
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
    return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)


def _flip(tf, u, flip_up_down, *arrays):
    out = list(arrays)
    lr = u[0] < 0.5
    out = [tf.cond(lr, lambda a=a: tf.reverse(a, [1]), lambda a=a: a) for a in out]
    if flip_up_down:
        ud = u[1] < 0.5
        out = [tf.cond(ud, lambda a=a: tf.reverse(a, [0]), lambda a=a: a) for a in out]
    return tuple(out)


def segmentation_dataset(
    images,
    labels,
    *,
    batch_size: int = 8,
    shuffle: bool = True,
    augment: bool = True,
    flip_up_down: bool = False,
    repeat: bool = False,
    seed: int = 0,
    drop_remainder: bool = False,
):
    """``tf.data`` pipeline for segmentation arrays (e.g. from :func:`make_segmentation_set`).

    Augmentation flips the image and its label map together (left-right with
    probability 1/2, and up-down too when ``flip_up_down``). The random draws
    are stateless, keyed on ``seed`` and the element index, so a pipeline is
    reproducible and still differs from epoch to epoch when ``repeat=True``.

    Args:
        images: ``(N, H, W, C)`` float array.
        labels: ``(N, H, W)`` integer array.
        batch_size: Batch size.
        shuffle: Shuffle (reshuffled every epoch).
        augment: Apply random flips.
        flip_up_down: Also flip vertically.
        repeat: Repeat forever (use with ``steps_per_epoch``; avoids the
            per-epoch iterator stall of finite datasets on CPU).
        seed: Seed of the shuffle and of the flips.
        drop_remainder: Drop the last partial batch.

    Returns:
        A ``tf.data.Dataset`` of ``(image float32 (B,H,W,C), label int32 (B,H,W))``.

    Raises:
        ValueError: If shapes do not match.

    Example:
        >>> ds = segmentation_dataset(*make_segmentation_set(16, canvas=64), batch_size=4)
    """
    import tensorflow as tf

    images = np.asarray(images, np.float32)
    labels = np.asarray(labels, np.int32)
    if images.ndim != 4 or labels.shape != images.shape[:3]:
        raise ValueError(
            "`images` must be (N, H, W, C) and `labels` (N, H, W). "
            f"Received: images.shape={images.shape}, labels.shape={labels.shape}"
        )
    return _pipeline(
        (images, labels),
        lambda u, x, y: _flip(tf, u, flip_up_down, x, y),
        batch_size=batch_size,
        shuffle=shuffle,
        augment=augment,
        repeat=repeat,
        seed=seed,
        drop_remainder=drop_remainder,
    )


def counting_dataset(
    images,
    densities,
    *,
    factor: int = 8,
    batch_size: int = 8,
    shuffle: bool = True,
    augment: bool = True,
    flip_up_down: bool = False,
    repeat: bool = False,
    seed: int = 0,
    drop_remainder: bool = False,
):
    """``tf.data`` pipeline for counting arrays (e.g. from :func:`make_counting_set`).

    The target is the density map sum-pooled to ``1/factor`` resolution
    (:func:`~acsl_tf.datasets.density.downsample_density`; every count is
    preserved), matching a network that predicts at 1/8 resolution. Flips are
    applied to the image and its density map together.

    Args:
        images: ``(N, H, W, C)`` float array.
        densities: ``(N, H, W, 1)`` or ``(N, H, W)`` full-resolution density maps.
        factor: Downsampling factor of the target (1 = full resolution). H and W
            must be multiples of it, so flipped targets stay aligned.
        batch_size, shuffle, augment, flip_up_down, repeat, seed,
            drop_remainder: As in :func:`segmentation_dataset`.

    Returns:
        A ``tf.data.Dataset`` of ``(image (B,H,W,C), density (B,H/f,W/f,1))``.

    Raises:
        ValueError: If shapes do not match or are not multiples of ``factor``.

    Example:
        >>> x, d, c = make_counting_set(16, canvas=64)
        >>> ds = counting_dataset(x, d, factor=8, batch_size=4)
    """
    import tensorflow as tf

    images = np.asarray(images, np.float32)
    d = np.asarray(densities, np.float32)
    if d.ndim == 3:
        d = d[..., None]
    if images.ndim != 4 or d.shape != images.shape[:3] + (1,):
        raise ValueError(
            "`images` must be (N, H, W, C) and `densities` (N, H, W[, 1]). "
            f"Received: images.shape={images.shape}, densities.shape={np.shape(densities)}"
        )
    if (
        not isinstance(factor, (int, np.integer))
        or factor < 1
        or images.shape[1] % factor
        or images.shape[2] % factor
    ):
        raise ValueError(
            f"`factor` must be a positive integer dividing the image height and width "
            f"{images.shape[1:3]}. Received: factor={factor!r}"
        )
    target = downsample_density(d, int(factor)) if factor > 1 else d
    return _pipeline(
        (images, target),
        lambda u, x, y: _flip(tf, u, flip_up_down, x, y),
        batch_size=batch_size,
        shuffle=shuffle,
        augment=augment,
        repeat=repeat,
        seed=seed,
        drop_remainder=drop_remainder,
    )
