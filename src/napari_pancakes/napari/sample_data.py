"""Sample data for File > Open Sample: a small real nuclei set (shipped) and synthetic blobs (made on the fly)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

SAMPLE_DIR = Path(__file__).resolve().parent.parent / "sample_data"
NUCLEI_FILE = SAMPLE_DIR / "dsb2018_nuclei_fluorescence.tif"


def nuclei_stack() -> np.ndarray:
    """(6, 256, 256) uint8 fluorescence nuclei from DSB 2018 (CC0; see sample_data/README.md)."""
    import tifffile

    return tifffile.imread(NUCLEI_FILE)


def synthetic_blobs(n_images: int = 5, size: int = 192, n_blobs: int = 12, seed: int = 0) -> np.ndarray:
    """(n_images, size, size) float32 images of bright blobs on a textured, noisy background.

    Deterministic for a given ``seed`` and cheap (no download, no file), so it always works as
    a first try; the blobs vary in size and brightness so protocols have something to split.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    out = np.empty((n_images, size, size), np.float32)
    for s in range(n_images):
        img = 0.15 + 0.05 * np.sin(xx / (9.0 + s)) * np.cos(yy / 13.0)  # slow background texture
        for _ in range(n_blobs):
            cy, cx = rng.uniform(0.1, 0.9, 2) * size
            ry, rx = rng.uniform(0.03, 0.09, 2) * size
            brightness = rng.uniform(0.4, 1.0)
            blob = np.exp(-(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2) ** 2)
            img += brightness * blob
        img += rng.normal(0.0, 0.04, img.shape).astype(np.float32)
        out[s] = np.clip(img, 0.0, None)
    return out


def contrast_limits(stack: np.ndarray, low: float = 0.5, high: float = 99.8) -> list[float]:
    """Display range from percentiles of the whole set (dim nuclei are visible, not a dark
    screen with a uint8 0..255 range); the same for every image so they compare."""
    lo, hi = (float(v) for v in np.percentile(stack, [low, high]))
    return [lo, hi] if hi > lo else [float(stack.min()), float(stack.max()) + 1.0]


def make_nuclei_sample():
    """npe2 sample_data command: the DSB 2018 nuclei stack as one Image layer."""
    stack = nuclei_stack()
    return [(stack, {"name": "nuclei", "colormap": "gray", "contrast_limits": contrast_limits(stack)}, "image")]


def make_blobs_sample():
    """npe2 sample_data command: five synthetic blob images as one (5, H, W) Image layer."""
    stack = synthetic_blobs()
    return [(stack, {"name": "synthetic blobs", "colormap": "gray", "contrast_limits": contrast_limits(stack)}, "image")]
