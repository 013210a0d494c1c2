"""The protocol head ``h(phi || v_{m,k})``, factorised so that all (m, k) pairs are cheap.

``h`` is a shallow convolutional network on the concatenation ``phi || v``. Because ``v`` is
constant over the image, ``h`` splits into

* an image branch ``G = g(phi)``: 3x3 convolutions with a skip connection, run once per
  image, normalised to unit length per pixel (the training notes: unnormalised features
  make the softmax saturate);
* a code branch ``w_{m,k}, b_{m,k} = c(v_{m,k})``: a small MLP, run once per pair, giving a
  unit weight vector and a bias;

and the pair-specific work is one inner product per pixel:
``logit_{m,k}(x) = tau * <w_{m,k}, G(x)> + b_{m,k}``. Softmax over k then assigns each pixel
to the label whose direction its features are closest to, so a protocol is a codebook over a
learned feature space and label k means the same thing in every image of a set.
"""
from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F


class ImageBranch(nn.Module):
    """``g(phi)``: conv3x3 -> PReLU -> conv3x3, plus a 1x1 skip from ``phi``; unit-norm output."""

    def __init__(self, phi_channels: int, dim: int, padding_mode: str = "zeros"):
        super().__init__()
        self.conv1 = nn.Conv2d(phi_channels, dim, 3, padding=1, padding_mode=padding_mode)
        self.act = nn.PReLU(dim)
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1, padding_mode=padding_mode)
        self.skip = nn.Conv2d(phi_channels, dim, 1)

    def forward(self, phi: torch.Tensor) -> torch.Tensor:
        g = self.conv2(self.act(self.conv1(phi))) + self.skip(phi)
        return F.normalize(g, dim=1, eps=1e-6)


class CodeBranch(nn.Module):
    """``c(v)``: MLP from a pair code to a unit weight vector (dim) and a bias."""

    def __init__(self, code_dim: int, dim: int, hidden: int = 64):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(code_dim, hidden), nn.PReLU(),
            nn.Linear(hidden, hidden), nn.PReLU(),
        )
        self.weight = nn.Linear(hidden, dim)
        self.bias = nn.Linear(hidden, 1)
        self.skip = nn.Linear(code_dim, dim, bias=False)  # skip connection from the code itself

    def forward(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.mlp(v)
        w = F.normalize(self.weight(h) + self.skip(v), dim=-1, eps=1e-6)
        return w, self.bias(h).squeeze(-1)


class ProtocolHead(nn.Module):
    """Logits for every (m, k) pair from per-pixel features and pair codes."""

    max_scale = 40.0

    def __init__(self, phi_channels: int, code_dim: int, dim: int = 32, padding_mode: str = "zeros"):
        super().__init__()
        self.image_branch = ImageBranch(phi_channels, dim, padding_mode)
        self.code_branch = CodeBranch(code_dim, dim)
        self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))

    @property
    def scale(self) -> torch.Tensor:
        return self.log_scale.exp().clamp(max=self.max_scale)

    def features(self, phi: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) ``phi`` -> (N, D, H, W) unit features; once per image."""
        return self.image_branch(phi)

    def pair_weights(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., 2J) codes -> scaled weights (..., D) and biases (...); once per pair."""
        w, b = self.code_branch(v)
        return w * self.scale, b

    @staticmethod
    def logits(features: torch.Tensor, weights: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """Features (N, D, H, W), weights (M, K, D), bias (M, K) -> logits (N, M, K, H, W)."""
        out = torch.einsum("ndhw,mkd->nmkhw", features, weights)
        return out + bias[None, :, :, None, None]
