"""Synthetic image sets (Pancakes sec. 3.1 / supplement F.2, without TotalSegmentator).

One random label map is drawn per set (the *template*: smooth blobs, Voronoi cells, nested
rings, touching ellipses, thin curvilinear structures, striped textures, optionally split
into connected pieces). Every member then gets its own elastic + affine deformation of the
template and its own rendering (per-label intensity with per-member jitter, per-label
texture, bias field, blur, noise, gamma), so a set looks like one structure imaged several
times, and a label means the same thing in every member. Everything is numpy/scipy on
small arrays: a set of 5 at 128 px takes a few milliseconds.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ..preprocess import normalize_intensity
from .augment import deformation_grid, smooth_noise, warp_labels

MIN_PIECE = 20  # pixels; smaller pieces go to background (supplement F.2)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    return y, x


def _warped_grid(rng, size: int, amount: float):
    """Unit-square coordinates bent by smooth noise, so straight families look organic."""
    y, x = _grid(size)
    d = smooth_noise(rng, (2, size, size), size / 6) * amount
    return y + d[0], x + d[1]


def _blobs(rng, size):
    """Argmax of a few smoothed noise fields: a smooth random partition."""
    n = rng.integers(3, 12)
    fields = smooth_noise(rng, (n, size, size), rng.uniform(size / 20, size / 6))
    return fields.argmax(0)


def _voronoi(rng, size):
    """Cells around random seeds on a warped grid."""
    n = rng.integers(3, 25)
    y, x = _warped_grid(rng, size, rng.uniform(0, 0.05))
    seeds = rng.uniform(0, 1, (n, 2)).astype(np.float32)
    d = (y[None] - seeds[:, 0, None, None]) ** 2 + (x[None] - seeds[:, 1, None, None]) ** 2
    return d.argmin(0)


def _rings(rng, size):
    """Nested (warped) ellipses: onion-like structures around one centre."""
    y, x = _warped_grid(rng, size, rng.uniform(0, 0.04))
    cy, cx = rng.uniform(0.3, 0.7, 2)
    ay, ax = rng.uniform(0.6, 1.6, 2)
    r = np.sqrt(ay * (y - cy) ** 2 + ax * (x - cx) ** 2)
    edges = np.sort(rng.uniform(0.05, 0.6, rng.integers(2, 6)))
    return np.searchsorted(edges, r)


def _stripes(rng, size):
    """Bands of a warped sinusoid: layered/textured tissue."""
    y, x = _warped_grid(rng, size, rng.uniform(0.02, 0.1))
    theta = rng.uniform(0, np.pi)
    phase = (np.cos(theta) * y + np.sin(theta) * x) * rng.uniform(2, 8)
    return (np.floor(phase * rng.integers(2, 4)) % rng.integers(2, 4)).astype(np.int64)


BASES = (_blobs, _voronoi, _rings, _stripes)


def _add_ellipses(rng, lab, size):
    """Touching/overlapping ellipses (organs, cells) painted on top of ``lab``."""
    y, x = _grid(size)
    n = rng.integers(1, 12)
    small = rng.random() < 0.5  # many small cell-like objects vs a few large ones
    nxt = lab.max() + 1
    n_classes = rng.integers(1, 4)
    for _ in range(n):
        cy, cx = rng.uniform(0.1, 0.9, 2)
        ry, rx = rng.uniform(0.02, 0.08, 2) if small else rng.uniform(0.06, 0.3, 2)
        t = rng.uniform(0, np.pi)
        dy, dx = y - cy, x - cx
        u, v = np.cos(t) * dy + np.sin(t) * dx, -np.sin(t) * dy + np.cos(t) * dx
        lab[(u / ry) ** 2 + (v / rx) ** 2 <= 1] = nxt + rng.integers(n_classes)
    return lab


def _add_curves(rng, lab, size):
    """Thin curvilinear structures (vessels, membranes): thin bands around noise zero-sets."""
    field = smooth_noise(rng, (size, size), rng.uniform(size / 16, size / 5))
    width = rng.uniform(0.04, 0.2)
    lab[np.abs(field) < width] = lab.max() + 1
    return lab


def random_template(rng: np.random.Generator, size: int = 128) -> np.ndarray:
    """One template label map (H, W) int64: labels 1..L, and 0 where pieces were too small."""
    lab = BASES[rng.integers(len(BASES))](rng, size).astype(np.int64)
    if rng.random() < 0.5:
        lab = _add_ellipses(rng, lab, size)
    if rng.random() < 0.3:
        lab = _add_curves(rng, lab, size)
    if rng.random() < 0.5:
        lab = split_connected(lab)
    return drop_small(lab)


def split_connected(lab: np.ndarray) -> np.ndarray:
    """Give every connected piece of every label its own id."""
    out = np.zeros_like(lab)
    nxt = 0
    for value in np.unique(lab):
        pieces, n = ndi.label(lab == value)
        mask = pieces > 0
        out[mask] = pieces[mask] + nxt
        nxt += n
    return out


def drop_small(lab: np.ndarray, min_size: int = MIN_PIECE) -> np.ndarray:
    """Send labels smaller than ``min_size`` pixels to 0 and number the others 1..L."""
    counts = np.bincount(lab.ravel())
    keep = counts >= min_size
    remap = np.zeros(counts.size, dtype=np.int64)
    remap[keep] = np.arange(1, keep.sum() + 1)
    return remap[lab]


def render(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """Images (S, H, W) in [0, 1] for label maps (S, H, W): one look per set, jittered per member."""
    s, size, _ = labels.shape
    n_lab = int(labels.max()) + 1
    base = rng.uniform(0, 1, n_lab).astype(np.float32)  # per-label intensity, shared by the set
    jitter = rng.normal(0, rng.uniform(0, 0.08), (s, n_lab)).astype(np.float32)
    lut = base[None] + jitter
    tex_amp = rng.uniform(0, 0.25, (2, n_lab)).astype(np.float32) * (rng.random(n_lab) < 0.6)
    tex = smooth_noise(rng, (s, 2, size, size), rng.uniform(0.5, 3))
    b = np.arange(s)[:, None, None]
    img = lut[b, labels] + tex_amp[0][labels] * tex[:, 0] + tex_amp[1][labels] * tex[:, 1]
    if rng.random() < 0.7:  # smooth multiplicative bias field
        img = img * (1 + rng.uniform(0, 0.4) * smooth_noise(rng, (s, size, size), size / 4))
    sigma = rng.uniform(0, 1.5)
    if sigma > 0.3:
        img = ndi.gaussian_filter(img, (0, sigma, sigma))
    img = img + rng.normal(0, rng.uniform(0, 0.08), img.shape).astype(np.float32)
    img = np.clip(img, 0, None) ** rng.uniform(0.6, 1.6)
    return np.stack([normalize_intensity(im) for im in img])


def synthetic_set(rng: np.random.Generator, s: int, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic set: images (S, H, W) float32 in [0, 1] and label maps (S, H, W) int64."""
    template = random_template(rng, size)
    coords = deformation_grid(rng, s, size, rot=15, scale=(0.9, 1.1), shift=0.05,
                              elastic=rng.uniform(0, 4), elastic_sigma=size / 10)
    labels = warp_labels(template, coords)
    return render(rng, labels), labels
