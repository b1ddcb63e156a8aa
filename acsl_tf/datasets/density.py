"""Crowd-counting ground truth: Gaussian density maps and sum-preserving pooling.

Convention (the one MCNN, CSRNet and the ACSL paper use): the ground truth of an
image with N annotated heads is a density map D with the image's height and
width such that ``D.sum() == N``. Each head at ``(x, y)`` (column, row, in
pixels, as stored in the Mall and ShanghaiTech ``.mat`` files) adds a 2-D
Gaussian kernel centred on the pixel ``(floor(y), floor(x))``. The kernel is
truncated at ``truncate * sigma`` and, where the image border clips it,
renormalised, so every head contributes exactly 1 to the sum. ``sigma`` is
either a fixed number of pixels or geometry-adaptive (MCNN):
``sigma_i = beta * mean distance from head i to its k nearest heads``
(``beta=0.3``, ``k=3``), clipped to ``[min_sigma, max_sigma]``; a lone head
uses ``fallback_sigma``.

A network that predicts at 1/8 resolution is trained against
``downsample_density(D, 8)``: sum pooling over 8x8 blocks, which keeps the
count of every image unchanged.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["adaptive_sigmas", "density_map", "downsample_density", "gaussian_kernel"]


def gaussian_kernel(sigma: float, truncate: float = 3.0) -> np.ndarray:
    """Normalised 2-D Gaussian kernel of radius ``ceil(truncate * sigma)``.

    Args:
        sigma: Standard deviation in pixels (> 0).
        truncate: Radius in units of sigma.

    Returns:
        float64 array ``(2r+1, 2r+1)`` summing to 1.

    Raises:
        ValueError: If ``sigma`` or ``truncate`` is not positive.

    Example:
        >>> gaussian_kernel(1.0).shape
        (7, 7)
    """
    if not sigma > 0 or not truncate > 0:
        raise ValueError(
            f"`sigma` and `truncate` must be positive. Received: sigma={sigma}, truncate={truncate}"
        )
    r = max(1, int(math.ceil(truncate * sigma)))
    t = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-0.5 * (t / sigma) ** 2)
    k = np.outer(g, g)
    return k / k.sum()


def adaptive_sigmas(
    points,
    *,
    beta: float = 0.3,
    k: int = 3,
    min_sigma: float = 1.0,
    max_sigma: float | None = None,
    fallback_sigma: float = 4.0,
) -> np.ndarray:
    """Geometry-adaptive sigma per point: ``beta * mean distance to k nearest neighbours``.

    Args:
        points: ``(N, 2)`` array of ``(x, y)`` positions.
        beta: Scale factor (MCNN uses 0.3).
        k: Number of neighbours (fewer if there are fewer points).
        min_sigma: Lower clip.
        max_sigma: Upper clip (``None``: no upper clip).
        fallback_sigma: Sigma of a point without neighbours.

    Returns:
        float64 array ``(N,)``.

    Example:
        >>> adaptive_sigmas([[0, 0], [10, 0]], k=1)
        array([3., 3.])
    """
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    n = len(pts)
    if n == 0:
        return np.zeros(0)
    if n == 1:
        return np.array([fallback_sigma], np.float64)
    kk = min(k, n - 1)
    if n <= 2048:
        d = np.sqrt(((pts[:, None, :] - pts[None, :, :]) ** 2).sum(-1))
        np.fill_diagonal(d, np.inf)
        nn = np.sort(d, axis=1)[:, :kk]
    else:
        from scipy.spatial import cKDTree

        nn, _ = cKDTree(pts).query(pts, k=kk + 1)
        nn = np.asarray(nn).reshape(n, -1)[:, 1:]
    s = beta * nn.mean(1)
    return np.clip(s, min_sigma, max_sigma if max_sigma is not None else np.inf)


def density_map(
    points,
    shape: tuple[int, int],
    *,
    sigma: float | str = "adaptive",
    beta: float = 0.3,
    k: int = 3,
    min_sigma: float = 1.0,
    max_sigma: float | None = None,
    fallback_sigma: float = 4.0,
    truncate: float = 3.0,
) -> np.ndarray:
    """Density map whose sum equals the number of points (up to float32 rounding).

    Args:
        points: ``(N, 2)`` array-like of ``(x, y)`` = (column, row) positions in
            pixels. Points outside the image are clipped onto its border (they
            still count).
        shape: ``(height, width)`` of the map.
        sigma: A fixed sigma in pixels, ``"adaptive"`` (k-nearest-neighbour,
            see :func:`adaptive_sigmas`) or an array with one sigma per point.
        beta, k, min_sigma, max_sigma, fallback_sigma: Adaptive-sigma options.
        truncate: Kernel radius in units of sigma.

    Returns:
        float32 array ``(height, width)``.

    Raises:
        ValueError: If ``points`` is not ``(N, 2)``, ``shape`` is invalid, or
            ``sigma`` is neither positive, ``"adaptive"``, nor one per point.

    Example:
        >>> d = density_map([[3.5, 4.0], [10, 10]], (16, 16), sigma=2.0)
        >>> round(float(d.sum()), 4)
        2.0
    """
    pts = np.asarray(points, np.float64)
    if pts.size == 0:
        pts = pts.reshape(0, 2)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"`points` must have shape (N, 2) of (x, y). Received: shape={pts.shape}")
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"`shape` must be (height, width) >= 1. Received: shape={shape}")
    h, w = int(shape[0]), int(shape[1])
    if isinstance(sigma, str):
        if sigma != "adaptive":
            raise ValueError(
                f'`sigma` must be a positive number, "adaptive" or one value per point. Received: sigma={sigma!r}'
            )
        sigmas = adaptive_sigmas(
            pts,
            beta=beta,
            k=k,
            min_sigma=min_sigma,
            max_sigma=max_sigma,
            fallback_sigma=fallback_sigma,
        )
    else:
        sigmas = (
            np.broadcast_to(np.asarray(sigma, np.float64), (len(pts),))
            if np.ndim(sigma) == 0
            else np.asarray(sigma, np.float64)
        )
        if sigmas.shape != (len(pts),) or (len(pts) and not np.all(sigmas > 0)):
            raise ValueError(
                f"`sigma` must be positive, scalar or one per point ({len(pts)}). Received: sigma={sigma!r}"
            )
    out = np.zeros((h, w), np.float64)
    cache: dict[float, np.ndarray] = {}
    for (x, y), s in zip(pts, sigmas):
        cx = min(max(int(math.floor(x)), 0), w - 1)
        cy = min(max(int(math.floor(y)), 0), h - 1)
        key = round(float(s), 3)
        ker = cache.get(key)
        if ker is None:
            ker = cache[key] = gaussian_kernel(key, truncate)
        r = ker.shape[0] // 2
        y0, y1 = max(cy - r, 0), min(cy + r + 1, h)
        x0, x1 = max(cx - r, 0), min(cx + r + 1, w)
        part = ker[y0 - (cy - r) : y1 - (cy - r), x0 - (cx - r) : x1 - (cx - r)]
        out[y0:y1, x0:x1] += part / part.sum()
    return out.astype(np.float32)


def downsample_density(d, factor: int) -> np.ndarray:
    """Sum-pool a density map by ``factor`` so every image keeps its count.

    A size that is not a multiple of ``factor`` is zero-padded at the bottom and
    right first, so the output has ``ceil(H / factor)`` rows and
    ``ceil(W / factor)`` columns and the sum is still preserved.

    Args:
        d: Density ``(H, W)``, ``(H, W, 1)``, or a batch ``(B, H, W, 1)``.
        factor: Integer pooling factor >= 1.

    Returns:
        float32 array of the same rank.

    Raises:
        ValueError: If ``factor`` is not a positive integer or ``d`` has an
            unsupported rank.

    Example:
        >>> downsample_density(np.ones((16, 16)), 8)
        array([[64., 64.],
               [64., 64.]], dtype=float32)
    """
    if not isinstance(factor, (int, np.integer)) or isinstance(factor, bool) or factor < 1:
        raise ValueError(f"`factor` must be a positive integer. Received: factor={factor!r}")
    a = np.asarray(d, np.float64)
    if a.ndim == 2:
        a4, back = a[None, :, :, None], lambda x: x[0, :, :, 0]
    elif a.ndim == 3:
        a4, back = a[None], lambda x: x[0]
    elif a.ndim == 4:
        a4, back = a, lambda x: x
    else:
        raise ValueError(
            f"`d` must be (H, W), (H, W, C) or (B, H, W, C). Received: shape={a.shape}"
        )
    b, h, w, c = a4.shape
    hp, wp = -(-h // factor) * factor, -(-w // factor) * factor
    if (hp, wp) != (h, w):
        a4 = np.pad(a4, ((0, 0), (0, hp - h), (0, wp - w), (0, 0)))
    out = a4.reshape(b, hp // factor, factor, wp // factor, factor, c).sum((2, 4))
    return back(out).astype(np.float32)
