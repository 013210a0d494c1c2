"""The click model: a small U-Net (image, +clicks, -clicks, previous logits) -> mask logits.

In the spirit of ScribblePrompt-UNet: the previous step's logits are an input, so the user's
clicks correct a mask (a Pancakes label or the last prediction) instead of starting over.
Everything runs at a fixed working resolution; :class:`Refiner` maps clicks and masks between
the user's pixels and that grid so callers never see it.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..inference import interpolation_matrix
from ..io_weights import WEIGHTS_DIR, best_device, read_weights
from ..preprocess import normalize_intensity, resize_image, to_image_list

DEFAULT_REFINER_WEIGHTS = WEIGHTS_DIR / "refiner_default.safetensors"
PRIOR_SCALE = 4.0  # prior channel = tanh(logits / PRIOR_SCALE): 0 means "no prior"
MASK_LOGIT = 4.0  # logit given to a bool prior mask (confident but correctable)


@dataclass
class RefinerConfig:
    """Architecture and input encoding; stored in the weights' metadata."""

    resolution: int = 128
    features: Sequence[int] = field(default_factory=lambda: (16, 32, 48, 64, 64))
    click_sigma: float = 2.0  # Gaussian blob radius of a click, in working pixels
    in_channels: int = 5  # image, positive map, negative map, box mask, prior (4: files without the box)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["features"] = list(self.features)
        return d


class _Block(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(4, cout), nn.PReLU(cout),
            nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(4, cout), nn.PReLU(cout),
        )


class RefinerNet(nn.Module):
    """U-Net on 5 channels as in ScribblePrompt (image, positive clicks/scribbles, negative
    clicks/scribbles, box mask, prior logits) -> 1 logit channel; the prior is the last channel."""

    def __init__(self, config: RefinerConfig | None = None):
        super().__init__()
        self.config = config or RefinerConfig()
        self.in_channels = self.config.in_channels
        f = list(self.config.features)
        self.down = nn.ModuleList([_Block(self.in_channels if i == 0 else f[i - 1], f[i]) for i in range(len(f))])
        self.up = nn.ModuleList([_Block(f[i + 1] + f[i], f[i]) for i in reversed(range(len(f) - 1))])
        self.out = nn.Conv2d(f[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 4, r, r) -> (N, 1, r, r) logits; the prior channel's logits are added back (residual)."""
        prior = x[:, -1:]
        skips = []
        h = x
        for i, block in enumerate(self.down):
            if i:
                h = F.max_pool2d(h, 2)
            h = block(h)
            skips.append(h)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            h = F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            h = block(torch.cat([h, skip], 1))
        return self.out(h) + PRIOR_SCALE * prior


@lru_cache(maxsize=16)
def _interp(n_out: int, n_in: int) -> torch.Tensor:
    """Cached resampling matrix: every click of a session resamples to the same size."""
    return torch.from_numpy(interpolation_matrix(n_out, n_in))


def click_maps(points: Sequence[tuple[float, float]], size: int, sigma: float) -> np.ndarray:
    """(size, size) map with a unit-height Gaussian blob at each (y, x) in working pixels."""
    out = np.zeros((size, size), dtype=np.float32)
    if not len(points):
        return out
    yy = np.arange(size, dtype=np.float32)[:, None]
    xx = np.arange(size, dtype=np.float32)[None, :]
    for y, x in points:
        out = np.maximum(out, np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * sigma**2)))
    return out


def box_mask(box, size: int) -> np.ndarray:
    """(size, size) float map, 1 inside the box (y0, x0, y1, x1) in working pixels (inclusive)."""
    out = np.zeros((size, size), np.float32)
    if box is not None:
        y0, x0, y1, x1 = box
        y0, y1 = sorted((y0, y1))
        x0, x1 = sorted((x0, x1))
        ya, yb = int(np.clip(np.floor(y0 + 0.5), 0, size - 1)), int(np.clip(np.floor(y1 + 0.5), 0, size - 1))
        xa, xb = int(np.clip(np.floor(x0 + 0.5), 0, size - 1)), int(np.clip(np.floor(x1 + 0.5), 0, size - 1))
        out[ya : yb + 1, xa : xb + 1] = 1
    return out


def encode_input(image: np.ndarray, pos, neg, prior_logits: np.ndarray | None, config: RefinerConfig,
                 box=None, pos_map: np.ndarray | None = None, neg_map: np.ndarray | None = None) -> np.ndarray:
    """Stack the input channels at working resolution (image already normalised and resized).

    ``pos_map``/``neg_map``: optional (r, r) scribble maps merged (max) into the click channels,
    as ScribblePrompt merges clicks and scribbles; ``box``: (y0, x0, y1, x1) or None.
    """
    r = config.resolution
    prior = np.zeros((r, r), np.float32) if prior_logits is None else np.tanh(prior_logits / PRIOR_SCALE)
    p, n = click_maps(pos, r, config.click_sigma), click_maps(neg, r, config.click_sigma)
    if pos_map is not None:
        p = np.maximum(p, pos_map)
    if neg_map is not None:
        n = np.maximum(n, neg_map)
    chans = [image, p, n] + ([box_mask(box, r)] if config.in_channels == 5 else []) + [prior.astype(np.float32)]
    return np.stack(chans).astype(np.float32)


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


def with_box_channel(net: RefinerNet) -> RefinerNet:
    """A 5-channel copy of a 4-channel net (box weights zero: same answers without a box)."""
    if net.config.in_channels == 5:
        return net
    cfg = RefinerConfig(**{**net.config.to_dict(), "in_channels": 5})
    new = RefinerNet(cfg)
    state = net.state_dict()
    w = state["down.0.0.weight"]
    state["down.0.0.weight"] = torch.cat([w[:, :3], torch.zeros_like(w[:, :1]), w[:, 3:]], 1)
    new.load_state_dict(state)
    return new


def save_refiner(net: RefinerNet, path: str | Path, extra: dict | None = None) -> Path:
    """Write the click model as safetensors with its config (and ``extra``) as metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"config": json.dumps(net.config.to_dict()), "format": "napari-pancakes-refiner/1"}
    for key, value in (extra or {}).items():
        meta[key] = value if isinstance(value, str) else json.dumps(value)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(path), metadata=meta)
    return path


def load_refiner(weights: str | Path | None = None, device: str | torch.device | None = None,
                 cpu_threads: int | None = 1) -> Refiner:
    """The click model with the bundled weights unless ``weights`` (a .safetensors path) is given.

    ``cpu_threads``: torch threads used for a click on CPU (1 is fastest for this small net).
    """
    path = Path(weights) if weights is not None else DEFAULT_REFINER_WEIGHTS
    tensors, meta = read_weights(path)
    if meta.get("format") != "napari-pancakes-refiner/1" or "config" not in meta:
        raise ValueError(f"weights file {path} is not a napari-pancakes refiner file")
    cfg = json.loads(meta["config"])
    cfg.setdefault("in_channels", 4)  # files written before the box channel existed
    net = RefinerNet(RefinerConfig(**cfg))
    try:
        net.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"weights file {path} does not match the refiner architecture: {exc}") from exc
    return Refiner(net, device=device, metadata=meta, cpu_threads=cpu_threads)
