"""A click session on one image: click history, undo/redo, and the logits fed back each step."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .model import Refiner, _check_image, _check_points, honour_clicks


@dataclass(frozen=True)
class SessionState:
    """One point in the history: the clicks so far and the mask/logits they produced."""

    clicks: tuple[tuple[float, float, bool], ...]
    mask: np.ndarray = field(repr=False)
    logits: np.ndarray | None = field(repr=False)  # working-resolution logits, None = no prior


class RefineSession:
    """Refine one mask by clicks; each step feeds the previous logits back to the model.

    Arguments:
        refiner: from :func:`load_refiner`.
        image: the 2D image (H, W) or (H, W, 3|4), in its own pixels.
        initial_mask: where to start (e.g. the chosen Pancakes label), a bool mask of the
            image's shape; None starts from nothing.
    """

    def __init__(self, refiner: Refiner, image, initial_mask=None):
        self.refiner = refiner
        self.image = _check_image(image)
        self.shape = self.image.shape
        self._work = refiner.prepare(self.image)
        if initial_mask is not None:
            initial_mask = np.asarray(initial_mask)
            if initial_mask.shape != self.shape:
                raise ValueError(f"initial mask has shape {initial_mask.shape}; the image is {self.shape}")
            mask0 = initial_mask > 0 if initial_mask.dtype != bool else initial_mask.copy()
            logits0 = refiner.prior_to_work(mask0, self.shape)
        else:
            mask0, logits0 = np.zeros(self.shape, bool), None
        self._initial = SessionState((), mask0, logits0)
        self._states = [self._initial]
        self._pos = 0  # index of the current state; states after it are redo-able

    # --- state -------------------------------------------------------------------------
    @property
    def state(self) -> SessionState:
        return self._states[self._pos]

    @property
    def mask(self) -> np.ndarray:
        """Current bool mask (a copy is not made: treat as read-only)."""
        return self.state.mask

    @property
    def clicks(self) -> list[tuple[float, float, bool]]:
        """Current clicks as (y, x, positive)."""
        return list(self.state.clicks)

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
        clicks = self.state.clicks + tuple((y, x, True) for y, x in pos) + tuple((y, x, False) for y, x in neg)
        p = [(y, x) for y, x, s in clicks if s]
        n = [(y, x) for y, x, s in clicks if not s]
        r = self.refiner
        logits = r.predict_work(self._work, r.to_work(p, self.shape), r.to_work(n, self.shape), self.state.logits)
        mask = honour_clicks(r.upsample(logits, self.shape) > 0, clicks)
        self._push(SessionState(clicks, mask, logits))
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
        """Back to the initial mask with no clicks, as a new (undoable) step."""
        if self.state is not self._initial:
            self._push(self._initial)
        return self.mask

    def _push(self, state: SessionState):
        del self._states[self._pos + 1 :]
        self._states.append(state)
        self._pos += 1
