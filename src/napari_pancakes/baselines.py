"""Honest baselines with the same output shape as ``segment_set``: (M, S, H, W) label maps.

Both give protocol m a different granularity: ``n_m`` regions with ``n_m`` spread evenly
from 2 to K over the M protocols, so they get as many candidate structures as Pancakes.
"""
from __future__ import annotations

import numpy as np

from .inference import check_mk
from .preprocess import normalize_intensity, to_image_list


def _granularities(m: int, k: int) -> list[int]:
    return [int(round(n)) for n in np.linspace(2, k, m)] if m > 1 else [k]


def _stack_or_list(per_image: list[np.ndarray]):
    return np.stack(per_image, axis=1) if len({p.shape for p in per_image}) == 1 else per_image


def kmeans_set(images, m: int = 8, k: int = 20, seed: int = 0, max_samples: int = 50_000):
    """Set-level intensity k-means: clusters fitted on the pooled, normalised intensities of the
    whole set, so a cluster means the same intensity range in every image (consistent by
    construction). Labels are ordered by intensity."""
    from sklearn.cluster import KMeans

    m, k = check_mk(m, k)
    items, _ = to_image_list(images)
    norm = [normalize_intensity(im) for im in items]
    pooled = np.concatenate([n.ravel() for n in norm])
    rng = np.random.default_rng(seed)
    sample = pooled if pooled.size <= max_samples else rng.choice(pooled, max_samples, replace=False)
    out = [np.empty((m, *n.shape), dtype=np.uint8) for n in norm]
    for p, n_clusters in enumerate(_granularities(m, k)):
        n_clusters = min(n_clusters, max(1, np.unique(sample).size))
        km = KMeans(n_clusters=n_clusters, n_init=1, random_state=seed).fit(sample[:, None])
        centres = np.sort(km.cluster_centers_.ravel())
        edges = (centres[1:] + centres[:-1]) / 2  # 1D nearest centre = interval search
        for img, o in zip(norm, out):
            o[p] = np.searchsorted(edges, img)
    return _stack_or_list(out)


def slic_per_image(images, m: int = 8, k: int = 20, compactness: float = 0.1):
    """Per-image SLIC superpixels: each image segmented on its own, so label ids carry no
    meaning across the set (the inconsistency Set Dice exposes at S > 1)."""
    from skimage.segmentation import slic

    m, k = check_mk(m, k)
    items, _ = to_image_list(images)
    out = []
    for im in items:
        norm = normalize_intensity(im)
        o = np.empty((m, *im.shape), dtype=np.uint8)
        for p, n_seg in enumerate(_granularities(m, k)):
            seg = slic(norm, n_segments=n_seg, compactness=compactness, channel_axis=None, start_label=0)
            o[p] = np.minimum(seg, k - 1)  # SLIC may return a few more segments than asked
        out.append(o)
    return _stack_or_list(out)
