"""Random fields, warps and the two augmentation families of supplement F.3 (Table 3).

*Within-set* augmentations are drawn independently for every member of a set (small
affine/elastic, brightness/contrast, intensity flip, blur, noise, sharpness): they make the
members differ the way images of one study do. *Across-set* augmentations are drawn once
and applied identically to every member (any rotation, flips, affine, elastic, blur, noise,
contrast): they create new tasks. Flips and large rotations change what "left" means, so
they are across-set only (training notes). Images are re-normalised at the end exactly as
at inference. All numpy on (S, 128, 128) arrays: a few milliseconds per set.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage as ndi

from ..preprocess import normalize_intensity


def smooth_noise(rng: np.random.Generator, shape, sigma: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian-smoothed white noise of ``shape`` (..., H, W).

    Wide kernels are applied on a coarser grid and upsampled bilinearly (the field is smooth
    anyway), which keeps large sigmas as cheap as small ones.
    """
    *lead, h, w = shape
    step = max(1, int(sigma // 2))
    ch, cw = -(-h // step), -(-w // step)
    field = rng.standard_normal((*lead, ch, cw)).astype(np.float32)
    field = ndi.gaussian_filter(field, sigma=(0,) * len(lead) + (sigma / step,) * 2, mode="wrap")
    if step > 1:  # two plain 2D matrix products (numpy's broadcast matmul is slow here)
        n = field.size // (ch * cw)
        field = (field.reshape(-1, cw) @ _upsample_matrix(w, cw).T).reshape(n, ch, w)
        field = (field.transpose(0, 2, 1).reshape(-1, ch) @ _upsample_matrix(h, ch).T)
        field = np.ascontiguousarray(field.reshape(n, w, h).transpose(0, 2, 1)).reshape(*lead, h, w)
    field -= field.mean(axis=(-2, -1), keepdims=True)
    return field / (field.std(axis=(-2, -1), keepdims=True) + 1e-6)


@lru_cache(maxsize=64)
def _upsample_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) periodic linear interpolation weights."""
    src = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    i0 = np.floor(src).astype(int)
    frac = (src - i0).astype(np.float32)
    mat = np.zeros((n_out, n_in), dtype=np.float32)
    mat[np.arange(n_out), i0 % n_in] += 1 - frac
    mat[np.arange(n_out), (i0 + 1) % n_in] += frac
    return mat


def deformation_grid(rng, n: int, size: int, rot: float | tuple[float, float], scale: tuple[float, float],
                     shift: float, elastic: float = 0.0, elastic_sigma: float = 8.0) -> np.ndarray:
    """Sampling coordinates (n, 2, H, W) in pixels for ``n`` independent affine+elastic warps.

    ``rot``: max absolute angle in degrees, or a (low, high) range; ``shift``: max
    translation as a fraction of the size; ``elastic``: displacement amplitude in pixels of
    a smooth field of width ``elastic_sigma``.
    """
    c = (size - 1) / 2
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) - c
    lo, hi = rot if isinstance(rot, tuple) else (-rot, rot)
    ang = np.deg2rad(rng.uniform(lo, hi, n)).astype(np.float32)[:, None, None]
    sc = rng.uniform(*scale, (n, 1, 1)).astype(np.float32)
    cos, sin = np.cos(ang), np.sin(ang)
    sy = (cos * y - sin * x) / sc + c + rng.uniform(-shift, shift, (n, 1, 1)) * size
    sx = (sin * y + cos * x) / sc + c + rng.uniform(-shift, shift, (n, 1, 1)) * size
    coords = np.stack([sy, sx], 1).astype(np.float32)
    if elastic > 0:
        coords += smooth_noise(rng, (n, 2, size, size), elastic_sigma) * elastic
    return coords


def warp_labels(labels: np.ndarray, coords: np.ndarray, fill: int = 0) -> np.ndarray:
    """Nearest-neighbour resampling of (H, W) or (n, H, W) ints at ``coords`` (n, 2, H, W)."""
    size = labels.shape[-1]
    iy, ix = np.rint(coords[:, 0]).astype(np.intp), np.rint(coords[:, 1]).astype(np.intp)
    inside = (iy >= 0) & (iy < size) & (ix >= 0) & (ix < size)
    iy, ix = np.clip(iy, 0, size - 1), np.clip(ix, 0, size - 1)
    out = labels[iy, ix] if labels.ndim == 2 else labels[np.arange(len(labels))[:, None, None], iy, ix]
    return np.where(inside, out, fill)


def warp_images(images: np.ndarray, coords: np.ndarray, fill: float | None = 0.0) -> np.ndarray:
    """Bilinear resampling of (n, H, W) floats at ``coords`` (n, 2, H, W); ``fill`` outside
    (None: clamp to the edge)."""
    n, size, _ = images.shape
    y, x = coords[:, 0], coords[:, 1]
    yc, xc = np.clip(y, 0, size - 1), np.clip(x, 0, size - 1)
    y0 = np.minimum(yc.astype(np.intp), size - 2)  # floor: coordinates are clipped to >= 0
    x0 = np.minimum(xc.astype(np.intp), size - 2)
    fy, fx = yc - y0, xc - x0
    flat = images.reshape(-1)
    idx = (np.arange(n) * size * size)[:, None, None] + y0 * size + x0
    top = flat.take(idx) * (1 - fx) + flat.take(idx + 1) * fx
    bot = flat.take(idx + size) * (1 - fx) + flat.take(idx + size + 1) * fx
    out = top * (1 - fy) + bot * fy
    if fill is not None:
        inside = (y > -0.5) & (y < size - 0.5) & (x > -0.5) & (x < size - 0.5)
        out = np.where(inside, out, fill)
    return out.astype(np.float32)


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities of Table 3 (paper values unless noted)."""

    within_affine: float = 0.25
    within_elastic: float = 0.8
    within_brightness: float = 0.5
    within_sharpness: float = 0.25
    within_flip_intensity: float = 0.1  # paper 0.5; lowered: no evaluation set mixes polarities
    within_blur: float = 0.25
    within_noise: float = 0.25
    across_affine: float = 0.5
    across_elastic: float = 0.5
    across_brightness: float = 0.5
    across_sharpness: float = 0.5
    across_blur: float = 0.5
    across_noise: float = 0.5
    across_hflip: float = 0.5
    across_vflip: float = 0.5


def _intensity(rng, img: np.ndarray, p_bc, p_sharp, p_blur, p_noise, contrast, blur_max, sharp) -> np.ndarray:
    """Brightness/contrast, sharpness, blur and noise on (n, H, W); one draw per call."""
    if rng.random() < p_bc:
        img = (img - 0.5) * rng.uniform(*contrast) + 0.5 + rng.uniform(-0.1, 0.1)
    if rng.random() < p_sharp:
        img = img + (sharp - 1) * (img - ndi.uniform_filter(img, (1, 3, 3)))
    if rng.random() < p_blur:
        sigma = rng.uniform(0.1, blur_max)
        img = ndi.gaussian_filter(img, (0, sigma, sigma), truncate=2.0 / sigma if sigma > 0 else 4.0)
    if rng.random() < p_noise:
        img = img + rng.normal(rng.uniform(0, 0.05), rng.uniform(0, 0.05), img.shape).astype(np.float32)
    return img


def modality_augment(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """One (H, W) image in [0, 1] as another scanner or modality might show the same structure:
    a random monotone intensity curve, speckle (multiplicative noise, as in ultrasound and OCT),
    then blur, sharpening or additive noise (:func:`_intensity`); renormalised, as the predictor
    normalises every image, so a linear change alone would be a no-op.

    Why: the click model trained on 14 sources with flips and gamma only fails on unseen
    modalities (OCT fluid, H&E nuclei; benchmarks/results/refine-combined.md), and ScribblePrompt
    trains with heavy intensity augmentation for the same reason (refiner ``Recipe.augment_prob``)."""
    img = np.clip(image.astype(np.float32), 0, 1)
    if rng.random() < 0.5:
        knots = np.concatenate([[0.0], np.cumsum(rng.gamma(1.0, 1.0, 8))])
        img = np.interp(img, np.linspace(0, 1, 9), knots / knots[-1]).astype(np.float32)
    if rng.random() < 0.3:
        speckle = ndi.gaussian_filter(rng.normal(0, 1, img.shape), rng.uniform(0, 1.0))
        img = img * (1 + rng.uniform(0.05, 0.3) * speckle / max(float(speckle.std()), 1e-6)).astype(np.float32)
    img = _intensity(rng, img[None], 0.0, 0.25, 0.3, 0.4, (1.0, 1.0), 1.5, 3.0)[0]
    return normalize_intensity(img)


def augment_set(rng: np.random.Generator, images: np.ndarray, labels: np.ndarray,
                cfg: AugmentConfig = AugmentConfig()) -> tuple[np.ndarray, np.ndarray]:
    """Within-set then across-set augmentation of images (S, H, W) in [0, 1] and labels (S, H, W).

    Geometry is composed into one resampling per member (within-set warp of the across-set
    warp), so images are interpolated once.
    """
    s, size, _ = images.shape
    c = cfg
    coords = None
    if rng.random() < c.across_affine or rng.random() < c.across_elastic:
        shared = deformation_grid(rng, 1, size, rot=(0, 360) if rng.random() < c.across_affine else 0,
                                  scale=(0.7, 1.5), shift=0.3 * (rng.random() < c.across_affine),
                                  elastic=rng.uniform(2, 4) * (rng.random() < c.across_elastic),
                                  elastic_sigma=rng.uniform(6, 8))
        coords = np.repeat(shared, s, 0)
    if rng.random() < c.across_hflip:
        coords = _identity(s, size) if coords is None else coords
        coords[:, 1] = size - 1 - coords[:, 1]
    if rng.random() < c.across_vflip:
        coords = _identity(s, size) if coords is None else coords
        coords[:, 0] = size - 1 - coords[:, 0]
    own = deformation_grid(rng, s, size, rot=25 * (rng.random() < c.within_affine),
                           scale=(0.9, 1.1), shift=0.1 * (rng.random() < c.within_affine),
                           elastic=rng.uniform(2, 5) * (rng.random() < c.within_elastic),
                           elastic_sigma=rng.uniform(7, 9))
    if coords is not None:  # compose: sample the shared warp at each member's own coordinates
        own = np.stack([warp_images(coords[:, i], own, fill=None) for i in range(2)], 1)
    images = warp_images(images, own)
    labels = warp_labels(labels, own)
    out = np.empty_like(images)
    for i in range(s):
        img = _intensity(rng, images[i:i + 1], c.within_brightness, c.within_sharpness, c.within_blur,
                         c.within_noise, (0.5, 1.5), 1.0, 3.0)
        out[i] = 1 - img[0] if rng.random() < c.within_flip_intensity else img[0]
    out = _intensity(rng, out, c.across_brightness, c.across_sharpness, c.across_blur, c.across_noise,
                     (0.8, 1.2), 1.1, 5.0)
    return np.stack([normalize_intensity(im) for im in out]), labels


def _identity(n: int, size: int) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    return np.repeat(np.stack([y, x])[None], n, 0)
