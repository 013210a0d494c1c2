"""The click network: a small U-Net on ScribblePrompt's input channels -> mask logits.

Channels: image, positive map (click blobs and scribbles), negative map, box mask, previous
logits (``tanh(logits / PRIOR_SCALE)``; 0 means "no prior"); the prior's logits are added back
to the output (residual), so the network corrects the current mask.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
import torch

from ..model.unet import UNet

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


class RefinerNet(UNet):
    """The Pancakes U-Net (``model/unet.py``) with per-level widths and GroupNorm, on 5 channels as
    in ScribblePrompt (image, positive clicks/scribbles, negative clicks/scribbles, box mask,
    prior logits) -> 1 logit channel; the prior is the last channel and is added back (residual)."""

    def __init__(self, config: RefinerConfig | None = None):
        cfg = config or RefinerConfig()
        f = list(cfg.features)
        super().__init__(cfg.in_channels, f, len(f), 1, norm_groups=4)
        self.config = cfg
        self.in_channels = cfg.in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, r, r) -> (N, 1, r, r) logits."""
        return super().forward(x) + PRIOR_SCALE * x[:, -1:]


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


