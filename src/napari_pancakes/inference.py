"""``segment_set``: a set of images -> M candidate protocols, each a K-label map per image.

The work is ordered so that nothing large is held: ``phi`` and the head features are
computed once per image at the working resolution, the (M, K) pair weights once per call,
and logits are resampled to each image's own size one protocol and one band of rows at a
time, keeping only the argmax (and the probabilities when asked).
"""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch

from .io_weights import best_device, load_model
from .model import K_RANGE, M_RANGE, Pancakes
from .preprocess import prepare_image, to_image_list

PHI_BATCH = 8  # images per forward pass of the U-Net
BAND_ELEMENTS = 1 << 24  # logits held at once while resampling (64 MB of float32)


def check_mk(m: int, k: int) -> tuple[int, int]:
    """Validate the number of protocols M and labels K."""
    for name, value, (lo, hi) in (("m (protocols)", m, M_RANGE), ("k (labels)", k, K_RANGE)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name} must be an integer in {lo}..{hi}, got {value!r}")
        if not lo <= int(value) <= hi:
            raise ValueError(f"{name} must be in {lo}..{hi}, got {value}")
    return int(m), int(k)


def protocol_offsets(m: int, seed: int | None) -> torch.Tensor | None:
    """Fractional shifts of the protocol codes: seed 0 (or None) gives the canonical protocols."""
    if not seed:
        return None
    rng = np.random.default_rng(int(seed))
    return torch.from_numpy(rng.uniform(0.0, 1.0, size=m).astype(np.float32))


def interpolation_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) linear resampling weights, rows summing to 1.

    Bilinear (half-pixel centres, as ``torch.nn.functional.interpolate``) when enlarging,
    area averaging (anti-aliased) when shrinking. Resampling logits with it equals resampling
    them with the usual image functions, and it can be applied to any band of rows.
    """
    w = np.zeros((n_out, n_in), dtype=np.float32)
    scale = n_in / n_out
    if n_out >= n_in:
        src = (np.arange(n_out) + 0.5) * scale - 0.5
        src = np.clip(src, 0, n_in - 1)
        i0 = np.floor(src).astype(int)
        i1 = np.minimum(i0 + 1, n_in - 1)
        frac = (src - i0).astype(np.float32)
        rows = np.arange(n_out)
        np.add.at(w, (rows, i0), 1 - frac)
        np.add.at(w, (rows, i1), frac)
    else:
        for r in range(n_out):
            a, b = r * scale, (r + 1) * scale
            lo, hi = int(np.floor(a)), min(int(np.ceil(b)), n_in)
            for c in range(lo, hi):
                w[r, c] = min(b, c + 1) - max(a, c)
        w /= w.sum(axis=1, keepdims=True)
    return w


def iter_segment_set(
    images,
    m: int = 8,
    k: int = 20,
    *,
    model: Pancakes | None = None,
    device: str | None = None,
    seed: int | None = 0,
    return_probs: bool = False,
) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
    """Yield ``(index, labels, probs)`` image by image (see :func:`segment_set`).

    ``labels`` has shape (M, H_s, W_s); ``probs`` (M, K, H_s, W_s) float32 or None. Stopping
    the iteration early (e.g. a cancelled GUI run) leaves nothing behind.
    """
    m, k = check_mk(m, k)
    items, _ = to_image_list(images)
    if model is None:
        model = load_model(device=device)
    elif device is not None:
        model = model.to(best_device(device))
    model.eval()
    dev = next(model.parameters()).device
    res = model.config.resolution
    label_dtype = np.uint8 if k <= 256 else np.int32
    with torch.inference_mode():
        weights, bias = model.pair_weights(m, k, protocol_offsets(m, seed))  # (M, K, D), (M, K)
        flat_w = weights.reshape(m * k, -1)
        for start in range(0, len(items), PHI_BATCH):
            chunk = items[start : start + PHI_BATCH]
            x = torch.from_numpy(np.stack([prepare_image(im, res) for im in chunk]))[:, None].to(dev)
            feats = model.features(model.phi(x))  # (n, D, res, res)
            for j, image in enumerate(chunk):
                labels, probs = _labels_from_features(feats[j], flat_w, bias.reshape(-1), m, k, image.shape, return_probs)
                yield start + j, labels.astype(label_dtype, copy=False), probs


def _labels_from_features(feats, flat_w, flat_b, m, k, shape, return_probs):
    """Per-pixel head features (D, r, r) -> labels (M, H, W) and optionally probs (M, K, H, W).

    The logits are linear in the features and resampling is linear with weights summing to
    one, so resampling the D feature channels and then applying the M*K pair weights gives
    exactly the resampled logits, at a fraction of the cost (D is much smaller than M*K).
    Rows are processed in bands so no more than ``BAND_ELEMENTS`` logits exist at once.
    """
    d, r, _ = feats.shape
    h, w = shape
    feats = feats.float().cpu()
    flat_w, flat_b = flat_w.float().cpu(), flat_b.float().cpu()
    if (h, w) != (r, r):
        rx = torch.from_numpy(interpolation_matrix(w, r))
        ry = torch.from_numpy(interpolation_matrix(h, r))
        cols = torch.einsum("dyx,wx->dyw", feats, rx)  # (D, r, W)
    labels = np.empty((m, h, w), dtype=np.int64)
    probs = np.empty((m, k, h, w), dtype=np.float32) if return_probs else None
    band = max(1, BAND_ELEMENTS // max(1, m * k * w))
    for y0 in range(0, h, band):
        y1 = min(h, y0 + band)
        if (h, w) == (r, r):
            g = feats[:, y0:y1]
        else:
            g = torch.einsum("hy,dyw->dhw", ry[y0:y1], cols)  # (D, band, W)
        logits = (flat_w @ g.reshape(d, -1) + flat_b[:, None]).reshape(m, k, y1 - y0, w)
        labels[:, y0:y1] = logits.argmax(1).numpy()
        if return_probs:
            probs[:, :, y0:y1] = torch.softmax(logits, 1).numpy()
    return labels, probs


def segment_set(
    images,
    m: int = 8,
    k: int = 20,
    *,
    model: Pancakes | None = None,
    device: str | None = None,
    seed: int | None = 0,
    return_probs: bool = False,
    progress: Callable[[int, int], None] | None = None,
):
    """Segment a set of images into ``m`` candidate protocols of ``k`` labels each.

    Arguments:
        images: a (S, H, W) stack (the set), one (H, W) image, RGB/RGBA variants
            (..., 3|4), or a list of 2D arrays of possibly different shapes.
        m: number of protocols, 1..32 (paper default 8).
        k: labels per protocol, 2..64 (paper default 20).
        model: a loaded model (:func:`load_model`); the bundled one when None.
        device: "cpu", "cuda", "mps" or None (best available).
        seed: 0 gives the canonical protocols; other seeds give other draws of protocols.
            Results are deterministic for a given seed.
        return_probs: also return softmax probabilities over the K labels.
        progress: called as ``progress(done, total)`` after each image.

    Returns:
        labels: int array (M, S, H, W) with values in 0..K-1, aligned pixel for pixel with
            the input (a list of (M, H_s, W_s) arrays when the images differ in shape).
        probs (only when ``return_probs``): float32 (M, S, K, H, W) or a list of
            (M, K, H_s, W_s) arrays.
    """
    items, _ = to_image_list(images)
    total = len(items)
    labels, probs = [], []
    for i, lab, pr in iter_segment_set(items, m, k, model=model, device=device, seed=seed, return_probs=return_probs):
        labels.append(lab)
        probs.append(pr)
        if progress is not None:
            progress(i + 1, total)
    same = len({lab.shape for lab in labels}) == 1
    out_labels = np.stack(labels, axis=1) if same else labels
    if not return_probs:
        return out_labels
    return out_labels, (np.stack(probs, axis=1) if same else probs)
