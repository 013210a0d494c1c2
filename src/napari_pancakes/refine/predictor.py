"""The predictor: a loaded click network with image-space calls, and weights files.

Everything runs at the network's working resolution; :class:`Refiner` maps prompts and masks
between the user's pixels and that grid so callers never see it.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from ..inference import interpolation_matrix
from ..io_weights import DEFAULT_REFINER_WEIGHTS, REFINER_FORMAT, best_device, load_refiner_net
from ..preprocess import normalize_intensity, resize_image, to_image_list
from .network import MASK_LOGIT, RefinerNet, encode_input

__all__ = ["DEFAULT_REFINER_WEIGHTS", "REFINER_FORMAT", "Refiner", "load_refiner"]


@lru_cache(maxsize=16)
def _interp(n_out: int, n_in: int) -> torch.Tensor:
    """Cached resampling matrix: every click of a session resamples to the same size."""
    return torch.from_numpy(interpolation_matrix(n_out, n_in))


def _check_image(image) -> np.ndarray:
    items, single = to_image_list(image)
    if not single:
        raise ValueError(f"refinement works on one 2D image (H, W) or (H, W, 3|4); got shape {np.shape(image)}")
    return items[0]


def _check_points(points, shape, what: str) -> list[tuple[float, float]]:
    out = []
    for p in points or []:
        p = tuple(float(v) for v in p)
        if len(p) != 2 or not all(np.isfinite(p)):
            raise ValueError(f"{what} click {p} must be a finite (y, x) pair")
        y, x = p
        if not (0 <= y <= shape[0] - 1 and 0 <= x <= shape[1] - 1):
            raise ValueError(f"{what} click (y={y:g}, x={x:g}) is outside the image of shape {tuple(shape)}")
        out.append(p)
    return out


class Refiner:
    """A loaded click model with image-space ``predict``; coordinates are the image's pixels."""

    def __init__(self, net: RefinerNet, device: str | torch.device | None = None, metadata: dict | None = None,
                 cpu_threads: int | None = 1):
        self.device = best_device(device)
        # The net is tiny: on CPU one thread is fastest, and on a busy machine extra threads
        # made a click 70x slower (12 ms vs 880 ms at 256x256, measured). None: torch's setting.
        self.cpu_threads = cpu_threads
        self.net = net.to(self.device).eval()
        self.config = net.config
        self.metadata = metadata or {}

    # --- mapping between image pixels and the working grid -------------------------------
    def prepare(self, image) -> np.ndarray:
        """Normalised (r, r) working image; raises ValueError for bad dims or NaN."""
        img = _check_image(image)
        r = self.config.resolution
        return resize_image(normalize_intensity(img), (r, r))

    def to_work(self, points, shape) -> list[tuple[float, float]]:
        """Image pixel centres -> working grid pixel centres."""
        r = self.config.resolution
        return [((y + 0.5) * r / shape[0] - 0.5, (x + 0.5) * r / shape[1] - 0.5) for y, x in points]

    def prior_to_work(self, prior, shape) -> np.ndarray | None:
        """A bool mask or float logits of the image's shape (or already (r, r) logits) -> working logits."""
        if prior is None:
            return None
        prior = np.asarray(prior)
        r = self.config.resolution
        if prior.shape != tuple(shape) and prior.shape != (r, r):
            raise ValueError(f"prior has shape {prior.shape}; expected the image's shape {tuple(shape)}")
        if prior.dtype == bool or (np.issubdtype(prior.dtype, np.integer) and prior.max(initial=0) <= 1):
            frac = resize_image(prior.astype(np.float32), (r, r))
            return np.clip((2 * frac - 1) * 2 * MASK_LOGIT, -MASK_LOGIT, MASK_LOGIT).astype(np.float32)
        prior = prior.astype(np.float32)
        if not np.all(np.isfinite(prior)):
            raise ValueError("prior logits contain NaN or infinite values")
        return prior if prior.shape == (r, r) else resize_image(prior, (r, r))

    def upsample(self, logits: np.ndarray, shape) -> np.ndarray:
        """Working logits (r, r) -> image-size logits, bilinear like segment_set."""
        if tuple(shape) == logits.shape:
            return logits
        ry = _interp(shape[0], logits.shape[0])
        rx = _interp(shape[1], logits.shape[1])
        # torch matmul: numpy's BLAS was ~100x slower here on a busy 2-core machine (measured)
        return (ry @ torch.from_numpy(np.ascontiguousarray(logits, np.float32)) @ rx.T).numpy()

    # --- model calls ---------------------------------------------------------------------
    @torch.inference_mode()
    def predict_work(self, work_image: np.ndarray, pos_work, neg_work, prior_work, box_work=None,
                     pos_map: np.ndarray | None = None, neg_map: np.ndarray | None = None) -> np.ndarray:
        """One forward pass on the working grid; returns (r, r) float32 logits.

        ``box_work``: (y0, x0, y1, x1) in working pixels; ``pos_map``/``neg_map``: scribble maps.
        """
        x = encode_input(work_image, pos_work, neg_work, prior_work, self.config, box=box_work,
                         pos_map=pos_map, neg_map=neg_map)
        before = torch.get_num_threads()
        limit = self.device.type == "cpu" and self.cpu_threads is not None and before != self.cpu_threads
        if limit:
            torch.set_num_threads(self.cpu_threads)
        try:
            out = self.net(torch.from_numpy(x)[None].to(self.device))
        finally:
            if limit:
                torch.set_num_threads(before)
        return out[0, 0].float().cpu().numpy()

    def predict_logits(self, image, positive=(), negative=(), prior=None):
        """(image-size logits, working logits) for the given clicks and prior."""
        img = _check_image(image)
        pos = _check_points(positive, img.shape, "positive")
        neg = _check_points(negative, img.shape, "negative")
        work = self.prepare(img)
        lw = self.predict_work(work, self.to_work(pos, img.shape), self.to_work(neg, img.shape),
                               self.prior_to_work(prior, img.shape))
        return self.upsample(lw, img.shape), lw

    def predict(self, image, positive=(), negative=(), prior=None) -> np.ndarray:
        """Bool mask aligned with ``image`` from clicks ((y, x) in image pixels) and an optional prior.

        ``prior``: a bool mask of the image's shape (e.g. the chosen Pancakes label) or logits.
        The clicked spots themselves always follow the clicks (:func:`honour_clicks`).
        """
        logits = self.predict_logits(image, positive, negative, prior)[0]
        clicks = [(y, x, True) for y, x in positive] + [(y, x, False) for y, x in negative]
        return honour_clicks(logits > 0, clicks)


def honour_clicks(mask: np.ndarray, clicks) -> np.ndarray:
    """Set the pixels under each click (y, x, positive), in order, to the click's sign.

    The network's answer near a click is usually right, but not always (a negative click on a
    thin false band could leave the clicked pixel in the mask): a user who clicks a spot must
    see that spot change. The radius is about one working-grid pixel in image pixels.
    """
    h, w = mask.shape
    radius = max(1.0, max(h, w) / 256)
    for y, x, positive in clicks:
        y0, y1 = max(0, int(np.floor(y - radius))), min(h, int(np.ceil(y + radius)) + 1)
        x0, x1 = max(0, int(np.floor(x - radius))), min(w, int(np.ceil(x + radius)) + 1)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        mask[y0:y1, x0:x1][(yy - y) ** 2 + (xx - x) ** 2 <= radius**2] = bool(positive)
    return mask


def load_refiner(weights: str | Path | None = None, device: str | torch.device | None = None,
                 cpu_threads: int | None = 1) -> Refiner:
    """The click model with the bundled weights unless ``weights`` (a .safetensors path) is given.

    ``cpu_threads``: torch threads used for a click on CPU (1 is fastest for this small net).
    """
    net, meta = load_refiner_net(weights)
    return Refiner(net, device=device, metadata=meta, cpu_threads=cpu_threads)
