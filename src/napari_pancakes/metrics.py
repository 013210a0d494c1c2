"""Set-level metrics (Pancakes sec. 4): score the best (protocol, label) pair for a whole set.

A candidate is a pair (m, k); its score on a set is the *mean over the set's images* of the
per-image score of the binary map ``labels[m, s] == k`` against the ground truth mask of
image s. Set Dice / Set IoU take the best candidate (max), Set surface distance the best
(min). A method that finds the structure in every image but under different labels cannot
score well at S > 1.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def _as_pred_and_truth(labels, truth):
    """Normalise to lists: pred per image (M, H, W) ints and truth per image (H, W) bools."""
    if isinstance(labels, np.ndarray):
        if labels.ndim == 3:  # a single image's (M, H, W)
            labels = labels[:, None]
        if labels.ndim != 4:
            raise ValueError(f"labels must be (M, S, H, W) or a list of (M, H, W); got shape {labels.shape}")
        preds = [labels[:, s] for s in range(labels.shape[1])]
    else:
        preds = [np.asarray(p) for p in labels]
    if isinstance(truth, np.ndarray) and truth.ndim == 2:
        truth = truth[None]
    truths = [np.asarray(t).astype(bool) for t in truth]
    if len(preds) != len(truths):
        raise ValueError(f"{len(preds)} predicted images but {len(truths)} ground-truth masks")
    for i, (p, t) in enumerate(zip(preds, truths)):
        if p.ndim != 3 or p.shape[1:] != t.shape:
            raise ValueError(f"image {i}: prediction {p.shape} does not match mask {t.shape} (expect (M, H, W) vs (H, W))")
    return preds, truths


def _pair_counts(labels, truth, k: int | None):
    """Per (m, s, k): intersection and predicted size; per s: truth size."""
    preds, truths = _as_pred_and_truth(labels, truth)
    n_labels = k if k is not None else int(max(p.max() for p in preds)) + 1
    m = preds[0].shape[0]
    inter = np.zeros((m, len(preds), n_labels), dtype=np.float64)
    size = np.zeros_like(inter)
    gt = np.zeros(len(preds), dtype=np.float64)
    for s, (p, t) in enumerate(zip(preds, truths)):
        flat = p.reshape(m, -1).astype(np.int64)
        offs = (np.arange(m) * n_labels)[:, None]
        size[:, s] = np.bincount((flat + offs).ravel(), minlength=m * n_labels).reshape(m, n_labels)
        inter[:, s] = np.bincount((flat[:, t.ravel()] + offs).ravel(), minlength=m * n_labels).reshape(m, n_labels)
        gt[s] = t.sum()
    return inter, size, gt


def pair_scores(labels, truth, k: int | None = None, metric: str = "dice") -> np.ndarray:
    """(M, K) set-mean Dice or IoU of every (protocol, label) candidate."""
    inter, size, gt = _pair_counts(labels, truth, k)
    union = size + gt[None, :, None]
    if metric == "dice":
        num, den = 2 * inter, union
    elif metric == "iou":
        num, den = inter, union - inter
    else:
        raise ValueError(f"metric must be 'dice' or 'iou', got {metric!r}")
    score = np.where(den > 0, num / np.maximum(den, 1e-12), 1.0)  # both empty: perfect
    return score.mean(axis=1)


def set_dice(labels, truth, k: int | None = None, return_pair: bool = False):
    """Set Dice: max over (m, k) of the set-mean Dice of ``labels[m, s] == k`` vs ``truth[s]``.

    Arguments:
        labels: (M, S, H, W) ints (as returned by ``segment_set``) or a list of (M, H_s, W_s).
        truth: (S, H, W) binary masks, or a list of (H_s, W_s).
        k: number of labels (inferred when None).
        return_pair: also return the best (m, k).

    Returns:
        float in [0, 1] (and the (m, k) tuple).
    """
    scores = pair_scores(labels, truth, k, "dice")
    best = np.unravel_index(np.argmax(scores), scores.shape)
    return (float(scores[best]), tuple(int(b) for b in best)) if return_pair else float(scores[best])


def set_iou(labels, truth, k: int | None = None, return_pair: bool = False):
    """Set IoU: max over (m, k) of the set-mean IoU (see :func:`set_dice`)."""
    scores = pair_scores(labels, truth, k, "iou")
    best = np.unravel_index(np.argmax(scores), scores.shape)
    return (float(scores[best]), tuple(int(b) for b in best)) if return_pair else float(scores[best])


def _boundary(mask: np.ndarray) -> np.ndarray:
    from scipy.ndimage import binary_erosion

    return mask & ~binary_erosion(mask, border_value=0)


def surface_distance(a: np.ndarray, b: np.ndarray, spacing: Sequence[float] = (1.0, 1.0)) -> float:
    """Average symmetric surface distance between two binary masks (in ``spacing`` units).

    0 when both are empty, ``inf`` when exactly one is empty.
    """
    from scipy.ndimage import distance_transform_edt

    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if not a.any() and not b.any():
        return 0.0
    if not a.any() or not b.any():
        return float("inf")
    ba, bb = _boundary(a), _boundary(b)
    da = distance_transform_edt(~bb, sampling=spacing)[ba]
    db = distance_transform_edt(~ba, sampling=spacing)[bb]
    return float((da.sum() + db.sum()) / (da.size + db.size))


def set_surface_distance(labels, truth, k: int | None = None, spacing=(1.0, 1.0), candidates: int | None = 10,
                         return_pair: bool = False):
    """Set surface distance: min over (m, k) of the set-mean average symmetric surface distance.

    Surface distances cost a distance transform per candidate and image, so by default only
    the ``candidates`` pairs with the highest set-mean Dice are measured (None: all pairs).
    """
    preds, truths = _as_pred_and_truth(labels, truth)
    scores = pair_scores(preds, truths, k, "dice")
    order = np.argsort(scores, axis=None)[::-1]
    if candidates is not None:
        order = order[:candidates]
    best, best_pair = float("inf"), (-1, -1)
    for flat in order:
        mi, ki = np.unravel_index(flat, scores.shape)
        d = float(np.mean([surface_distance(p[mi] == ki, t, spacing) for p, t in zip(preds, truths)]))
        if d < best:
            best, best_pair = d, (int(mi), int(ki))
    return (best, best_pair) if return_pair else best
