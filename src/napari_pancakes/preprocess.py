"""Input validation, intensity normalisation and resampling shared by every entry point."""
from __future__ import annotations

from typing import Sequence

import numpy as np

MAX_PIXELS = 8192 * 8192  # per image; larger inputs are refused with a clear message


def to_image_list(images) -> tuple[list[np.ndarray], bool]:
    """Accept a (S, H, W) stack, a (H, W) image, RGB(A) variants, or a list of 2D arrays.

    Returns the list of float32 2D intensity images and whether the input was a single
    image. Raises ``ValueError`` with what was wrong and what is accepted.
    """
    accepted = (
        "accepted: a 2D image (H, W), a stack (S, H, W), RGB/RGBA images (H, W, 3|4) or "
        "(S, H, W, 3|4), or a list of such 2D images"
    )
    single = False
    if isinstance(images, (list, tuple)):
        if len(images) == 0:
            raise ValueError(f"the image set is empty; {accepted}")
        items = []
        for i, im in enumerate(images):
            arr = _as_numeric_array(im, f"image {i}", accepted)
            arr = _to_intensity(arr, f"image {i}", accepted)
            if arr.ndim != 2:
                raise ValueError(f"image {i} has shape {arr.shape}; list items must be 2D; {accepted}")
            items.append(arr)
    else:
        arr = _as_numeric_array(images, "input", accepted)
        if arr.ndim >= 3 and arr.shape[-1] in (3, 4) and arr.ndim in (3, 4) and _looks_rgb(arr):
            arr = rgb_to_intensity(arr)
        if arr.ndim == 2:
            single = True
            arr = arr[None]
        if arr.ndim != 3:
            raise ValueError(f"input has shape {arr.shape} ({arr.ndim}D); {accepted}")
        if arr.shape[0] == 0:
            raise ValueError(f"the image set is empty (shape {arr.shape}); {accepted}")
        items = [a for a in arr]
    for i, a in enumerate(items):
        if min(a.shape) < 2:
            raise ValueError(f"image {i} has shape {a.shape}; each side must be at least 2 pixels")
        if a.size > MAX_PIXELS:
            raise ValueError(
                f"image {i} has {a.size} pixels (shape {a.shape}); at most {MAX_PIXELS} are accepted: "
                "downsample or crop it first"
            )
        if not np.all(np.isfinite(a)):
            raise ValueError(f"image {i} contains NaN or infinite values; replace them before segmenting")
    return [np.asarray(a, dtype=np.float32) for a in items], single


def _as_numeric_array(x, what: str, accepted: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype == bool:
        return arr.astype(np.float32)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{what} has dtype {arr.dtype}; numeric (integer or float) pixels are required")
    if arr.size == 0:
        raise ValueError(f"{what} is empty (shape {arr.shape}); {accepted}")
    return arr


def _looks_rgb(arr: np.ndarray) -> bool:
    # (S, H, 3) stacks of tiny 3-pixel-wide images are implausible; treat a last axis of 3/4 as colour
    # when it is much smaller than the other spatial axes.
    return arr.shape[-1] < min(arr.shape[-3], arr.shape[-2])


def _to_intensity(arr: np.ndarray, what: str, accepted: str) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[-1] in (3, 4) and _looks_rgb(arr):
        return rgb_to_intensity(arr)
    return arr


def rgb_to_intensity(arr: np.ndarray) -> np.ndarray:
    """The package's one RGB(A) -> intensity rule (float32; alpha ignored), used by the core,
    the explorer and the study dock alike."""
    rgb = arr[..., :3].astype(np.float32)
    return rgb @ np.array([0.2125, 0.7154, 0.0721], dtype=np.float32)  # skimage.color.rgb2gray weights


def normalize_intensity(image: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Robust min-max scaling to [0, 1] by percentiles; constant images map to zeros."""
    lo, hi = np.percentile(image, [low, high])
    if hi <= lo:
        lo, hi = float(image.min()), float(image.max())
    if hi <= lo:
        return np.zeros_like(image, dtype=np.float32)
    return np.clip((image - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def resize_image(image: np.ndarray, size: Sequence[int], anti_aliasing: bool = True) -> np.ndarray:
    """Resample a 2D image to ``size`` (bilinear), with anti-aliasing when shrinking unless told not to.

    Beyond a 4x reduction on both sides, anti-aliasing is the exact mean over each output cell's
    pixels (:func:`cell_mean`), which the Gaussian filter approximates at a cost that grows with
    the reduction: ``segment_set`` on 3 images of 4096 px took 16.4 s with the filter and 8.9 s
    with the cell mean (``benchmarks/results/inference-large-before-fix.json``,
    ``inference-large-before-flat3x3.json``). ``anti_aliasing=False`` keeps edges one pixel sharp, which the
    random walkers need: a softened edge lets the walk leak through it.
    """
    from skimage.transform import resize

    if tuple(image.shape) == tuple(size):
        return image.astype(np.float32)
    if anti_aliasing and image.shape[0] > 4 * size[0] and image.shape[1] > 4 * size[1]:
        return cell_mean(image, size)
    return resize(image, size, order=1, anti_aliasing=anti_aliasing, preserve_range=True).astype(np.float32)


def cell_mean(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Mean of a 2D ``image`` over each cell of a ``size`` grid that splits its rows and columns as
    evenly as whole pixels allow (float32); a shrink, so ``size`` <= the shape."""
    h, w = image.shape
    gh, gw = int(size[0]), int(size[1])
    ys, xs = cell_starts(h, gh), cell_starts(w, gw)
    sums = np.add.reduceat(np.add.reduceat(np.asarray(image, np.float32), ys, axis=0), xs, axis=1)
    counts = np.diff(np.r_[ys, h])[:, None] * np.diff(np.r_[xs, w])[None, :]
    return (sums / counts).astype(np.float32)


def cell_starts(n: int, cells: int) -> np.ndarray:
    """First pixel of each of ``cells`` cells that split ``n`` pixels as evenly as whole pixels allow."""
    return np.arange(cells) * n // cells


def cell_of(n: int, cells: int) -> np.ndarray:
    """The cell (of :func:`cell_starts`) that each of ``n`` pixels falls in: the way back from a
    :func:`cell_mean` grid to the pixels it averaged."""
    return np.searchsorted(cell_starts(n, cells), np.arange(n), side="right") - 1


def prepare_image(image: np.ndarray, resolution: int) -> np.ndarray:
    """Normalise and resample one 2D intensity image to the model's working resolution."""
    return resize_image(normalize_intensity(image), (resolution, resolution))
