"""Initial clicks from a mask (PanSAM-style prompt generation), so refinement starts well.

Positive points sit deep inside the mask (distance-transform maxima, spread apart), so they
stay correct even if the mask's border is off; negative points sit in a band just outside it,
where a coarse label most often leaks.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def _spread_maxima(score: np.ndarray, allowed: np.ndarray, n: int, min_sep: float) -> list[tuple[int, int]]:
    """Greedy: best-scoring allowed pixel, then suppress a disk around it, ``n`` times."""
    score = np.where(allowed, score, -np.inf).astype(np.float64)
    yy, xx = np.indices(score.shape)
    out = []
    for _ in range(n):
        i = int(np.argmax(score))
        if not np.isfinite(score.flat[i]):
            break
        y, x = divmod(i, score.shape[1])
        out.append((y, x))
        score[(yy - y) ** 2 + (xx - x) ** 2 < min_sep**2] = -np.inf
    return out


def prompts_from_mask(mask, n_positive: int = 3, n_negative: int = 3, band: tuple[float, float] | None = None,
                      min_separation: float | None = None):
    """``(positive, negative)`` lists of (y, x) pixel clicks proposed from a bool mask.

    Arguments:
        mask: 2D bool mask (e.g. the chosen Pancakes label for one image).
        n_positive / n_negative: at most this many of each (fewer when the mask is too small).
        band: (inner, outer) distance in pixels of the negative band outside the mask;
            default scales with the image (1.5% .. 5% of the longer side, at least 2 .. 4 px).
        min_separation: minimum distance between points of one kind (default: 10% of the
            longer side).
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2D (H, W); got shape {mask.shape}")
    mask = mask.astype(bool)
    side = max(mask.shape)
    if band is None:
        band = (max(2.0, 0.015 * side), max(4.0, 0.05 * side))
    if min_separation is None:
        min_separation = max(3.0, 0.1 * side)
    if not mask.any():
        return [], []
    inside = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    # only the eroded core when the mask is thick enough, otherwise its medial axis
    core = inside >= max(1.0, 0.5 * inside.max())
    positive = _spread_maxima(inside, core, n_positive, min_separation)
    outside = ndi.distance_transform_edt(~mask)
    ring = (outside >= band[0]) & (outside <= band[1])
    negative = []
    if ring.any() and n_negative > 0:
        # farthest-point sampling along the ring spreads the negatives around the object
        pts = np.argwhere(ring)
        first = pts[0]  # deterministic start: the top-most ring pixel
        chosen = [tuple(first)]
        d = np.hypot(*(pts - first).T)
        while len(chosen) < n_negative:
            j = int(np.argmax(d))
            if d[j] < min_separation:
                break
            chosen.append(tuple(pts[j]))
            d = np.minimum(d, np.hypot(*(pts - pts[j]).T))
        negative = [(int(y), int(x)) for y, x in chosen]
    return [(int(y), int(x)) for y, x in positive], negative
