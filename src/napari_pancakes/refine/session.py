"""A refinement session on one image: clicks, a box, scribbles, undo/redo, the logits fed back.

Three predictors (``method``):

- ``"network"``: the click network alone (image, click/scribble maps, box mask, previous logits).
- ``"hybrid"``: the network's probabilities as the prior of a seeded random walker on the
  working grid (clicks and scribbles are seeds, the outside of a box is background), so
  the answer follows image edges where the network is unsure; the prior's weight shrinks
  with each click or scribble (``HYBRID_DECAY``), so the seeds take over as they accumulate.
  With ``HYBRID_GRID = "image"`` the walker runs on the image's own pixels instead (at most
  ``IMAGE_GRID_MAX_SIDE`` on the longer side), so edges finer than the working grid count.
- ``"classical"``: the seeded random walker alone at the image's resolution, up to
  ``IMAGE_GRID_MAX_SIDE`` on the longer side (the baseline;
  the image border is background until the first negative click; a starting mask is its prior).

Detail finer than the network's working grid is kept (``keep_unchanged``): after a prompt,
only the places where the answer changed on that grid take the new mask; elsewhere the
previous mask stays pixel for pixel. A chosen label of a 1024 px image is not resampled
through the 128 px grid by every click.

Negative clicks and negative scribbles are local: after one, changes are kept only where they
touch its neighbourhood or the connected region under it; a correct region
elsewhere is never erased by it, and the logits fed back to the next prompt are those of the
mask shown there, so later prompts take far less of it away (``bench_refine.py --locality``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from ..preprocess import cell_of, normalize_intensity, resize_image
from .network import MASK_LOGIT
from .predictor import Refiner, _check_image, _check_points, honour_clicks
from .walker import border_mask, box_outside, random_walk, seed_disks

METHODS = ("network", "hybrid", "classical")
HYBRID_LAMBDA = 0.5  # weight of the network prior in the hybrid walker before any click
HYBRID_DECAY = 1.0  # ... multiplied by this per click or scribble (the seeds take over as they accumulate)
HYBRID_LAMBDA_MIN = 0.002  # ... but never below this
HYBRID_BETA = 130.0
CLASSICAL_PRIOR_LAMBDA = 0.0005  # weight of a starting mask in the classical walker (refine-tune-classical.json)
HYBRID_GRID = "work"  # where the hybrid's walker runs: "work" (the network's grid) or "image"
IMAGE_GRID_MAX_SIDE = 512  # walkers on the image's pixels ("image", classical): larger images on a grid this long
LOCAL_RADIUS = 0.1  # a negative click's neighbourhood, as a fraction of the longer image side
LOCAL_POSITIVE = False  # positive clicks local too, once there is a mask
KEEP_DETAIL = True  # keep the previous mask where the answer did not change on the working grid


@dataclass(frozen=True, eq=False)
class SessionState:
    """One point in the history: the prompts so far and the mask/logits they produced.

    The mask is kept as packed bits (``of`` packs, ``mask`` unpacks): every prompt adds a state for
    undo, and an 8000 x 8000 mask is 64 MB as bools, 8 MB packed.
    """

    clicks: tuple[tuple[float, float, bool], ...]
    bits: np.ndarray = field(repr=False)  # np.packbits of the bool mask, flattened
    shape: tuple[int, int]
    logits: np.ndarray | None = field(repr=False)  # working-resolution logits, None = no prior
    box: tuple[float, float, float, float] | None = None  # (y0, x0, y1, x1) image pixels
    scribbles: tuple[tuple[tuple[tuple[float, float], ...], bool], ...] = ()  # (points, positive)

    @classmethod
    def of(cls, clicks, mask: np.ndarray, logits, box=None, scribbles=()) -> SessionState:
        return cls(clicks, np.packbits(mask, axis=None), tuple(mask.shape), logits, box, scribbles)

    @property
    def mask(self) -> np.ndarray:
        """The bool mask (a new array on each call)."""
        h, w = self.shape
        return np.unpackbits(self.bits, count=h * w).view(bool).reshape(h, w)


def _draw_paths(paths, shape) -> np.ndarray:
    """Bool mask of polylines (sequences of (y, x)) rasterised on a grid of ``shape``."""
    from skimage.draw import line

    out = np.zeros(shape, bool)
    h, w = shape
    for pts in paths:
        pts = [(int(round(np.clip(y, 0, h - 1))), int(round(np.clip(x, 0, w - 1)))) for y, x in pts]
        if len(pts) == 1:
            out[pts[0]] = True
        for (y0, x0), (y1, x1) in zip(pts[:-1], pts[1:]):
            rr, cc = line(y0, x0, y1, x1)
            out[rr, cc] = True
    return out


def _seed_masks(p, n, scribbles, box, shape, to=lambda pts: pts):
    """(positive, negative) seed masks on a grid of ``shape``: click disks (radius 1.5) and
    scribbles, the outside of the box negative; ``to`` maps image pixels to the grid."""
    fg = seed_disks(to(p), shape, 1.5) | _draw_paths([to(pts) for pts, s in scribbles if s], shape)
    bg = seed_disks(to(n), shape, 1.5) | _draw_paths([to(pts) for pts, s in scribbles if not s], shape)
    if box is not None:
        (y0, x0), (y1, x1) = to([box[:2], box[2:]])
        bg |= box_outside((y0, x0, y1, x1), shape)
    return fg, bg


def _hybrid_lambda(n_prompts: int) -> float:
    """Weight of the network prior in the hybrid walker after ``n_prompts`` clicks and scribbles."""
    return max(HYBRID_LAMBDA * HYBRID_DECAY**n_prompts, HYBRID_LAMBDA_MIN)


def keep_unchanged(previous: np.ndarray, new: np.ndarray, grid: int) -> np.ndarray:
    """``new`` where the mask changed on a ``grid`` x ``grid`` view of both masks (and one grid
    pixel around), ``previous`` elsewhere; both are bool masks of the image's shape."""
    if not KEEP_DETAIL or not previous.any() or previous.shape == (grid, grid):
        return new
    before = resize_image(previous.astype(np.float32), (grid, grid)) > 0.5
    after = resize_image(new.astype(np.float32), (grid, grid)) > 0.5
    zone = ndi.binary_dilation(before ^ after)
    if not zone.any():
        return previous.copy()
    h, w = previous.shape
    if h > 4 * grid and w > 4 * grid:  # large images: each pixel takes its cell's value (no bilinear pass)
        zone = ndi.binary_dilation(zone)[cell_of(h, grid)[:, None], cell_of(w, grid)]
    else:
        zone = resize_image(zone.astype(np.float32), previous.shape) > 0
    return np.where(zone, new, previous)


def localise(previous: np.ndarray, new: np.ndarray, footprint: np.ndarray, radius: float) -> np.ndarray:
    """Keep the changes from ``previous`` to ``new`` that touch the prompt's neighbourhood (within
    ``radius`` of ``footprint``, a bool mask of the clicked pixel or the drawn path) or a connected
    region (of either mask) under the prompt; revert all others."""
    changed = previous ^ new
    if not changed.any():
        return new
    comp, _ = ndi.label(changed, structure=np.ones((3, 3)))
    zone = _within(footprint, radius)
    union = previous | new
    under = union & footprint
    if under.any():
        regions, _ = ndi.label(union, structure=np.ones((3, 3)))
        zone |= np.isin(regions, np.unique(regions[under]))
    keep = np.unique(comp[zone & changed])
    keep = keep[keep > 0]
    out = previous.copy()
    sel = np.isin(comp, keep)
    out[sel] = new[sel]
    return out


def _within(footprint: np.ndarray, radius: float) -> np.ndarray:
    """Pixels within ``radius`` of ``footprint`` (the distance transform on its bounding box only)."""
    ys, xs = np.nonzero(footprint)
    out = np.zeros(footprint.shape, bool)
    if not len(ys):
        return out
    r = int(np.ceil(radius)) + 1
    y0, y1 = max(0, ys.min() - r), min(footprint.shape[0], ys.max() + r + 1)
    x0, x1 = max(0, xs.min() - r), min(footprint.shape[1], xs.max() + r + 1)
    out[y0:y1, x0:x1] = ndi.distance_transform_edt(~footprint[y0:y1, x0:x1]) <= radius
    return out


class RefineSession:
    """Refine one mask by prompts; each step feeds the previous logits back to the model.

    Arguments:
        refiner: from :func:`load_refiner` (may be None for ``method="classical"``).
        image: the 2D image (H, W) or (H, W, 3|4), in its own pixels.
        initial_mask: where to start (e.g. the chosen Pancakes label), a bool mask of the
            image's shape; None starts from nothing.
        method: "network", "hybrid" or "classical" (see the module docstring).
        local_negative: keep negative clicks local (see :func:`localise`); with the module
            switch ``LOCAL_POSITIVE`` (off: it lost on validation) single positive clicks too.
    """

    def __init__(self, refiner: Refiner | None, image, initial_mask=None, method: str = "hybrid",
                 local_negative: bool = True):
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if refiner is None and method != "classical":
            raise ValueError(f"method {method!r} needs a refiner (load_refiner())")
        self.refiner = refiner
        self.method = method
        self.local_negative = local_negative
        self.image = _check_image(image)
        self.shape = self.image.shape
        self._work = refiner.prepare(self.image) if refiner is not None else None
        self._norm = None  # full-resolution normalised image (the walkers on the image grid; see _full_norm)
        self._grid_norm = None  # ... on the walkers' grid (see _image_grid)
        if initial_mask is not None:
            initial_mask = np.asarray(initial_mask)
            if initial_mask.shape != self.shape:
                raise ValueError(f"initial mask has shape {initial_mask.shape}; the image is {self.shape}")
            mask0 = initial_mask > 0 if initial_mask.dtype != bool else initial_mask.copy()
            logits0 = refiner.prior_to_work(mask0, self.shape) if refiner is not None else None
        else:
            mask0, logits0 = np.zeros(self.shape, bool), None
        self._mask0 = mask0 if initial_mask is not None else None
        self._initial = SessionState.of((), mask0, logits0)
        self._shown = (self._initial, mask0)  # the current state and its unpacked mask
        self._states = [self._initial]
        self._pos = 0  # index of the current state; states after it are redo-able

    # --- state -------------------------------------------------------------------------
    @property
    def state(self) -> SessionState:
        return self._states[self._pos]

    @property
    def mask(self) -> np.ndarray:
        """Current bool mask (a copy is not made: treat as read-only)."""
        st = self.state
        if self._shown[0] is not st:
            self._shown = (st, st.mask)
        return self._shown[1]

    @property
    def clicks(self) -> list[tuple[float, float, bool]]:
        """Current clicks as (y, x, positive)."""
        return list(self.state.clicks)

    @property
    def box(self):
        """Current box (y0, x0, y1, x1) in image pixels, or None."""
        return self.state.box

    @property
    def scribbles(self) -> list[tuple[list[tuple[float, float]], bool]]:
        return [(list(p), s) for p, s in self.state.scribbles]

    @property
    def history(self) -> list[SessionState]:
        """States from the start up to the current one (redo-able ones excluded)."""
        return self._states[: self._pos + 1]

    @property
    def can_undo(self) -> bool:
        return self._pos > 0

    @property
    def can_redo(self) -> bool:
        return self._pos < len(self._states) - 1

    # --- actions -------------------------------------------------------------------------
    def add_click(self, y: float, x: float, positive: bool = True) -> np.ndarray:
        """Add one click (image pixels) and return the updated mask."""
        return self.add_clicks([(y, x)] if positive else [], [] if positive else [(y, x)])

    def add_clicks(self, positive=(), negative=()) -> np.ndarray:
        """Add several clicks at once (e.g. an automatic prompt set) with a single model call."""
        pos = _check_points(positive, self.shape, "positive")
        neg = _check_points(negative, self.shape, "negative")
        if not pos and not neg:
            return self.mask
        st = self.state
        clicks = st.clicks + tuple((y, x, True) for y, x in pos) + tuple((y, x, False) for y, x in neg)
        mask, logits = self._predict(clicks, st.box, st.scribbles)
        # local: one negative click, or several at once (clicks queued while a slow predictor ran);
        # with LOCAL_POSITIVE one positive click on a mask too. Mixed sets (automatic prompts) are not.
        local = (neg and not pos) or (LOCAL_POSITIVE and len(pos) == 1 and not neg and self.mask.any())
        if self.local_negative and local:
            footprint = _draw_paths([[p] for p in pos + neg], self.shape)  # the pixel under each click
            mask, logits = self._localised(mask, logits, footprint, clicks)
        self._push(SessionState.of(clicks, mask, logits, st.box, st.scribbles), mask)
        return mask

    def set_box(self, box) -> np.ndarray:
        """Set (or replace; None removes) the bounding box (y0, x0, y1, x1) in image pixels."""
        if box is not None:
            box = tuple(float(v) for v in box)
            if len(box) != 4 or not all(np.isfinite(box)):
                raise ValueError(f"box must be 4 finite numbers (y0, x0, y1, x1); got {box}")
            h, w = self.shape
            y0, x0, y1, x1 = box
            y0, y1 = sorted((float(np.clip(y0, 0, h - 1)), float(np.clip(y1, 0, h - 1))))
            x0, x1 = sorted((float(np.clip(x0, 0, w - 1)), float(np.clip(x1, 0, w - 1))))
            if y1 - y0 < 1 or x1 - x0 < 1:
                raise ValueError("the box is empty (drag a rectangle over the object)")
            box = (y0, x0, y1, x1)
        st = self.state
        mask, logits = self._predict(st.clicks, box, st.scribbles)
        self._push(SessionState.of(st.clicks, mask, logits, box, st.scribbles), mask)
        return mask

    def add_scribble(self, points, positive: bool = True) -> np.ndarray:
        """Add a scribble: a drawn path of (y, x) image pixels (positive: inside the object)."""
        pts = tuple(_check_points(points, self.shape, "scribble"))
        if not pts:
            return self.mask
        st = self.state
        scribbles = st.scribbles + ((pts, bool(positive)),)
        mask, logits = self._predict(st.clicks, st.box, scribbles)
        if self.local_negative and not positive:  # a negative scribble is local as a negative click is
            mask, logits = self._localised(mask, logits, _draw_paths([pts], self.shape))
        self._push(SessionState.of(st.clicks, mask, logits, st.box, scribbles), mask)
        return mask

    def undo(self) -> np.ndarray:
        """Go back one step (no-op at the start); the previous mask is restored exactly."""
        if self.can_undo:
            self._pos -= 1
        return self.mask

    def redo(self) -> np.ndarray:
        if self.can_redo:
            self._pos += 1
        return self.mask

    def clear(self) -> np.ndarray:
        """Back to the initial mask with no prompts, as a new (undoable) step."""
        if self.state is not self._initial:
            self._push(self._initial)
        return self.mask

    def _push(self, state: SessionState, mask: np.ndarray | None = None):
        del self._states[self._pos + 1 :]
        self._states.append(state)
        self._pos += 1
        if mask is not None:
            self._shown = (state, mask)

    # --- prediction ------------------------------------------------------------------------
    def _localised(self, answer: np.ndarray, logits, footprint: np.ndarray, clicks=()):
        """(mask, logits to feed back) after a negative prompt with ``footprint``: ``answer`` with
        the changes far from the prompt reverted (:func:`localise`; clicked spots honoured)."""
        mask = honour_clicks(localise(self.mask, answer, footprint, LOCAL_RADIUS * max(self.shape)), clicks)
        return mask, None if logits is None else self._logits_as_shown(logits, answer, mask)

    def _logits_as_shown(self, logits: np.ndarray, answer: np.ndarray, shown: np.ndarray) -> np.ndarray:
        """Working logits to feed back: the network's, except where ``shown`` reverted its ``answer``
        (a local negative prompt), where they are the shown mask's.

        Why: fed back raw, the next prompt starts from a mask without the regions the click left
        alone, and its answer drops them; the click would be local for one step only."""
        reverted = answer != shown
        if not reverted.any():
            return logits
        r = logits.shape[0]
        ys, xs = np.nonzero(reverted)
        zone = np.zeros((r, r), bool)
        zone[np.minimum(ys * r // self.shape[0], r - 1), np.minimum(xs * r // self.shape[1], r - 1)] = True
        zone = ndi.binary_dilation(zone)
        return np.where(zone, self.refiner.prior_to_work(shown, self.shape), logits).astype(np.float32)

    def _predict(self, clicks, box, scribbles):
        """(mask at image size, working logits to feed back) for the given prompts."""
        p = [(y, x) for y, x, s in clicks if s]
        n = [(y, x) for y, x, s in clicks if not s]
        if self.method == "classical":
            return honour_clicks(self._classical(p, n, box, scribbles), clicks), None
        r = self.refiner
        res = r.config.resolution
        to_w = lambda pts: r.to_work(pts, self.shape)  # noqa: E731
        pw, nw = to_w(p), to_w(n)
        smaps = [_draw_paths([to_w(pts) for pts, s in scribbles if s == want], (res, res)) for want in (True, False)]
        box_w = None
        if box is not None:
            (y0, x0), (y1, x1) = to_w([box[:2], box[2:]])
            box_w = (y0, x0, y1, x1)
        logits = r.predict_work(self._work, pw, nw, self.state.logits, box_w,
                                smaps[0].astype(np.float32) if smaps[0].any() else None,
                                smaps[1].astype(np.float32) if smaps[1].any() else None)
        shown = logits
        if self.method == "hybrid" and HYBRID_GRID == "image" and (clicks or scribbles or box is not None):
            mask = self._hybrid_on_image_grid(logits, p, n, box, scribbles)
            return honour_clicks(keep_unchanged(self.mask, mask, res), clicks), logits
        if self.method == "hybrid" and (clicks or scribbles or box is not None):
            fg = seed_disks(pw, (res, res), 1.0) | smaps[0]
            bg = seed_disks(nw, (res, res), 1.0) | smaps[1]
            if box_w is not None:
                bg |= box_outside(box_w, (res, res))
            lam = _hybrid_lambda(len(clicks) + len(scribbles))
            prob = random_walk(self._work, fg, bg, prior=1 / (1 + np.exp(-logits)), lam=lam, beta=HYBRID_BETA)
            shown = np.clip(np.log(prob + 1e-6) - np.log(1 - prob + 1e-6), -2 * MASK_LOGIT, 2 * MASK_LOGIT)
        mask = r.upsample(shown.astype(np.float32), self.shape) > 0
        return honour_clicks(keep_unchanged(self.mask, mask, res), clicks), logits

    def _hybrid_on_image_grid(self, logits, p, n, box, scribbles) -> np.ndarray:
        """The hybrid's walker on the image's pixels (downscaled to ``IMAGE_GRID_MAX_SIDE``)."""
        grid, norm, to_g = self._image_grid()
        fg, bg = _seed_masks(p, n, scribbles, box, grid, to_g)
        lam = _hybrid_lambda(len(p) + len(n) + len(scribbles))
        prior = 1 / (1 + np.exp(-self.refiner.upsample(logits, grid)))
        prob = random_walk(norm, fg, bg, prior=prior, lam=lam, beta=HYBRID_BETA)
        return resize_image(prob, self.shape) > 0.5  # the same array when the grid is the image

    def _image_grid(self):
        """(grid shape, normalised image on it, image pixels -> grid pixels) for the walkers on the
        image's own pixels: the image itself up to ``IMAGE_GRID_MAX_SIDE`` on the longer side, a
        copy sampled without anti-aliasing beyond (computed once; sharp edges hold the walk).
        Why: on its full 2048 px grid the classical walker took 130 s per click and 1.4 GiB,
        on this grid 3-4.5 s at 1024-3000 px (``refine-large-before-fix-classical-2048.md``,
        ``refine-large.md``, ``bench_refine.py --large``)."""
        h, w = self.shape
        f = min(1.0, IMAGE_GRID_MAX_SIDE / max(h, w))
        grid = (max(2, round(h * f)), max(2, round(w * f)))
        if self._grid_norm is None:
            full = self._full_norm()
            small = full if grid == self.shape else resize_image(full, grid, anti_aliasing=False)
            self._grid_norm = small.astype(np.float64)
        to_g = lambda pts: [((y + 0.5) * f - 0.5, (x + 0.5) * f - 0.5) for y, x in pts]  # noqa: E731
        return grid, self._grid_norm, to_g

    def _full_norm(self) -> np.ndarray:
        """The image normalised at its own resolution (computed on first use, for the walkers)."""
        if self._norm is None:
            self._norm = normalize_intensity(self.image).astype(np.float64)
        return self._norm

    def _classical(self, p, n, box, scribbles):
        if not p and not n and not scribbles and box is None:
            return self._initial.mask  # unpacked anew: a copy already
        grid, norm, to_g = self._image_grid()
        fg, bg = _seed_masks(p, n, scribbles, box, grid, to_g)
        prior = None
        if box is not None:
            if not fg.any():
                fg |= seed_disks(to_g([((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)]), grid, 1.5)
        elif self._mask0 is not None:
            prior = resize_image(self._mask0.astype(np.float32), grid)
        elif not bg.any():
            bg |= border_mask(grid)
        lam = CLASSICAL_PRIOR_LAMBDA if prior is not None else 0.0
        prob = random_walk(norm, fg, bg, prior=prior, lam=lam)
        return resize_image(prob, self.shape) > 0.5  # the same array when the grid is the image
