"""The image network ``f``: a small U-Net (3x3 convs, 32 features, PReLU) giving ``phi``."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
import torch.nn.functional as F


class ConvBlock(nn.Sequential):
    """Two 3x3 convolutions, each followed by PReLU (and GroupNorm before it with ``norm_groups``).

    ``padding_mode="reflect"`` gives the network no border it can measure position from: a
    constant image then yields constant features (one label per protocol), and the output
    moves with the content when the image is shifted. Zero padding (the first weights) lets
    the network learn where the border is, which it did (blocky, position-driven labels).
    """

    def __init__(self, cin: int, cout: int, padding_mode: str = "zeros", norm_groups: int = 0):
        def norm():  # the refiner's blocks are normalised; Pancakes' are not
            return [nn.GroupNorm(norm_groups, cout)] if norm_groups else []

        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, padding_mode=padding_mode), *norm(),
            nn.PReLU(cout),
            nn.Conv2d(cout, cout, 3, padding=1, padding_mode=padding_mode), *norm(),
            nn.PReLU(cout),
        )


class UNet(nn.Module):
    """U-Net with ``levels`` resolutions and ``features`` channels everywhere (or per level).

    Arguments:
        in_channels: image channels (1: intensity).
        features: width of every convolution (32 in the paper), or one width per level.
        levels: number of resolutions (4 -> 128, 64, 32, 16 px at 128 px input).
        out_channels: channels of ``phi``.
        padding_mode: "zeros" or "reflect" (see :class:`ConvBlock`).
        norm_groups: GroupNorm after each convolution with this many groups (0: none, as in Pancakes).
    """

    def __init__(self, in_channels: int = 1, features: int | Sequence[int] = 32, levels: int = 4,
                 out_channels: int = 32, padding_mode: str = "zeros", norm_groups: int = 0):
        super().__init__()
        self.levels = levels
        f = [features] * levels if isinstance(features, int) else list(features)
        if len(f) != levels:
            raise ValueError(f"{len(f)} feature widths for {levels} levels")
        self.down = nn.ModuleList(
            [ConvBlock(in_channels if i == 0 else f[i - 1], f[i], padding_mode, norm_groups) for i in range(levels)]
        )
        self.up = nn.ModuleList([ConvBlock(f[i + 1] + f[i], f[i], padding_mode, norm_groups)
                                 for i in reversed(range(levels - 1))])
        self.out = nn.Conv2d(f[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) image -> (N, out_channels, H, W) ``phi``; H, W divisible by 2**(levels-1)."""
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return self.out(x)
