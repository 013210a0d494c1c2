"""The Pancakes model: ``phi = f(x)`` once per image, then ``h(phi || v_{m,k})`` for all pairs."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from .codes import pair_codes
from .head import ProtocolHead
from .unet import UNet


@dataclass(frozen=True)
class PancakesConfig:
    """Hyper-parameters that fix the architecture (stored with the weights)."""

    in_channels: int = 1
    features: int = 32
    levels: int = 4
    phi_channels: int = 32
    code_dim: int = 16  # J, the length of u_m and of u_k
    head_dim: int = 32  # D, the per-pixel feature length of the head
    resolution: int = 128  # working resolution (pixels per side)
    padding: str = "zeros"  # conv padding; "reflect" removes the border as a position cue (model/unet.py)

    def to_dict(self) -> dict[str, int | str]:
        return asdict(self)


M_RANGE = (1, 32)
K_RANGE = (2, 64)


class Pancakes(nn.Module):
    """Multi-protocol set segmentation network.

    Use :meth:`phi` once per image, :meth:`features` once per image, :meth:`pair_weights`
    once per (M, K) grid, then :meth:`ProtocolHead.logits` to combine them; :meth:`forward`
    does all of it for training.
    """

    def __init__(self, config: PancakesConfig | None = None):
        super().__init__()
        self.config = config or PancakesConfig()
        c = self.config
        self.f = UNet(c.in_channels, c.features, c.levels, c.phi_channels, c.padding)
        self.h = ProtocolHead(c.phi_channels, 2 * c.code_dim, c.head_dim, c.padding)

    def phi(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) normalised images -> (N, C_phi, H, W) distribution parameters."""
        return self.f(x)

    def features(self, phi: torch.Tensor) -> torch.Tensor:
        return self.h.features(phi)

    def pair_weights(self, m: int, k: int, protocol_offset: torch.Tensor | None = None):
        """Weights (M, K, D) and biases (M, K) of every pair of an M x K grid."""
        device = next(self.parameters()).device
        v = pair_codes(m, k, self.config.code_dim, protocol_offset).to(device)
        return self.h.pair_weights(v)

    def forward(self, x: torch.Tensor, m: int, k: int, protocol_offset: torch.Tensor | None = None) -> torch.Tensor:
        """(N, 1, H, W) images -> (N, M, K, H, W) logits (softmax over K gives label maps)."""
        g = self.features(self.phi(x))
        w, b = self.pair_weights(m, k, protocol_offset)
        return self.h.logits(g, w, b)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
