"""Simulated user: the next click goes where a careful annotator would put it.

As in RITM / ScribblePrompt: take the largest error region (misses or false alarms), click the
point farthest from its boundary (positive for a miss, negative for a false alarm). Used to
train the click model and to benchmark it, so training and evaluation see the same user.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def _check_pair(pred, truth):
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    if pred.ndim != 2 or pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} must be 2D masks of the same shape")
    return pred, truth


def error_regions(pred, truth) -> tuple[np.ndarray, np.ndarray]:
    """(misses, false alarms) as bool masks."""
    pred, truth = _check_pair(pred, truth)
    return truth & ~pred, pred & ~truth


def _interior_distance(region: np.ndarray) -> np.ndarray:
    # pad with background so the image border counts as a boundary (clicks stay inside the image)
    return ndi.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]


def next_click(pred, truth, rng: np.random.Generator | None = None, top_fraction: float = 0.0):
    """Next simulated click as ``((y, x), positive)`` or None when there is no error.

    The largest connected error component wins (misses vs false alarms compared by area); the
    click is its interior point farthest from the boundary. With ``rng`` and ``top_fraction`` > 0
    the point is drawn among pixels within that fraction of the maximum distance (training noise).
    """
    fn, fp = error_regions(pred, truth)
    best, best_size, positive = None, 0, True
    for region, pos in ((fn, True), (fp, False)):
        if not region.any():
            continue
        lab, n = ndi.label(region)
        sizes = np.bincount(lab.ravel())[1:]
        i = int(np.argmax(sizes))
        if sizes[i] > best_size:
            best, best_size, positive = lab == i + 1, int(sizes[i]), pos
    if best is None:
        return None
    dist = _interior_distance(best)
    if rng is not None and top_fraction > 0:
        cand = np.argwhere(dist >= (1 - top_fraction) * dist.max())
        y, x = cand[rng.integers(len(cand))]
    else:  # ties (e.g. the ridge of an elongated region): the one nearest their centre
        cand = np.argwhere(dist >= dist.max() - 1e-6)
        y, x = cand[int(np.argmin(((cand - cand.mean(0)) ** 2).sum(1)))]
    return (int(y), int(x)), positive


def dice(pred, truth) -> float:
    """Dice of two bool masks (1.0 when both are empty)."""
    pred, truth = _check_pair(pred, truth)
    den = pred.sum() + truth.sum()
    return 1.0 if den == 0 else float(2 * (pred & truth).sum() / den)


def simulate_session(refiner, image, truth, n_clicks: int = 10, initial_mask=None, method: str = "hybrid",
                     box=None):
    """Run ``n_clicks`` simulated clicks; returns Dice after 0..n clicks and the per-click seconds.

    Dice at 0 clicks is that of ``initial_mask`` (0 when starting from nothing), or of the
    ``box`` (y0, x0, y1, x1) alone when one is given (its time is the first entry). After the truth
    is matched exactly, remaining steps repeat the last Dice.
    """
    import time

    from ..refine.session import RefineSession

    truth = np.asarray(truth, bool)
    session = RefineSession(refiner, image, initial_mask=initial_mask, method=method)
    times = []
    if box is not None:
        t0 = time.perf_counter()
        session.set_box(box)
        times.append(time.perf_counter() - t0)
    dices = [dice(session.mask, truth)]
    for _ in range(n_clicks):
        click = next_click(session.mask, truth)
        if click is None:
            dices.append(dices[-1])
            continue
        (y, x), positive = click
        t0 = time.perf_counter()
        session.add_click(y, x, positive)
        times.append(time.perf_counter() - t0)
        dices.append(dice(session.mask, truth))
    return dices, times


def clicks_to_reach(dices, target: float, max_clicks: int) -> int:
    """Number of clicks (NoC) until Dice >= target; ``max_clicks`` when never reached (the usual cap)."""
    for i, d in enumerate(dices):
        if d >= target:
            return i
    return max_clicks
