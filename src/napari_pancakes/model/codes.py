"""Sinusoidal protocol and label codes (Pancakes eqs. 3-4).

``u_t`` encodes an integer ``t`` (a protocol index m or a label index k) relative to a
period ``T`` (the chosen M for protocols, the chosen K for labels), so the same network
serves any M and K: codes are a continuous function of ``t / T``.
"""
from __future__ import annotations

import math

import torch


def sinusoidal_code(t: torch.Tensor, period: float, dim: int) -> torch.Tensor:
    """Code vectors ``u_t`` of length ``dim`` (= J) for the values ``t``.

    Follows the paper literally::

        z_{t,j}      = (t / T) * 2 ** (2 j pi / J)
        u_t[2j]      = sin(z_{t,2j} + pi/2)
        u_t[2j + 1]  = sin(z_{t,2j} - pi/2)        for j = 0 .. J/2 - 1

    Arguments:
        t: float tensor of shape (N,), the (possibly fractional) indices.
        period: T, e.g. M for protocol codes and K for label codes.
        dim: J, an even code length.

    Returns:
        float tensor of shape (N, dim).
    """
    if dim % 2:
        raise ValueError(f"code length J must be even, got {dim}")
    t = t.to(torch.float32).reshape(-1, 1)
    j = torch.arange(dim // 2, dtype=torch.float32, device=t.device)
    freq = torch.pow(2.0, (2.0 * (2 * j) / dim) * math.pi)  # 2 ** (2 * (2j) * pi / J)
    z = (t / float(period)) * freq  # (N, J/2): z_{t,2j}
    u = torch.empty(t.shape[0], dim, dtype=torch.float32, device=t.device)
    u[:, 0::2] = torch.sin(z + math.pi / 2)
    u[:, 1::2] = torch.sin(z - math.pi / 2)
    return u


def pair_codes(m: int, k: int, dim: int, protocol_offset: torch.Tensor | None = None) -> torch.Tensor:
    """All ``v_{m,k} = u_m || u_k`` for an M x K grid, shape (M, K, 2 * dim).

    ``protocol_offset`` (shape (M,), values in [0, 1)) shifts the protocol indices
    ``t = m + offset``: a different draw of protocols from the same continuous family,
    used to give other seeds other candidate protocols.
    """
    tm = torch.arange(m, dtype=torch.float32)
    if protocol_offset is not None:
        tm = tm + protocol_offset.to(torch.float32)
    um = sinusoidal_code(tm, m, dim)  # (M, J)
    uk = sinusoidal_code(torch.arange(k, dtype=torch.float32), k, dim)  # (K, J)
    return torch.cat(
        [um[:, None, :].expand(m, k, dim), uk[None, :, :].expand(m, k, dim)], dim=-1
    )
