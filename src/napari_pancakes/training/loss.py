"""The Pancakes set loss (eqs. 5-6): best (protocol, label) pair by set-mean soft Dice.

``d_{m,k}`` is the soft Dice loss of softmax-probability map k of protocol m against the
binary target, averaged over the set's images; the loss is ``min_{m,k} d_{m,k}``. The min
has a gradient through the winning pair only, so :func:`best_pair_loss` finds the winner on
detached features for all M x K pairs (cheap, no autograd graph) and recomputes only the
winning protocol's K logits with gradients: exact, about 3x faster (training notes).
"""
from __future__ import annotations

import torch

EPS = 1.0  # Dice smoothing in pixels: an empty prediction of an empty target scores ~0 loss


def soft_dice_loss(prob: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - soft Dice per map; prob (..., H, W) in [0, 1], target broadcastable, reduced over H, W."""
    inter = (prob * target).sum((-2, -1))
    total = prob.sum((-2, -1)) + target.sum((-2, -1))
    return 1 - (2 * inter + EPS) / (total + EPS)


def pair_losses(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(M, K) set-mean Dice losses ``d_{m,k}`` for logits (S, M, K, H, W) and target (S, H, W)."""
    prob = torch.softmax(logits.float(), dim=2)
    return soft_dice_loss(prob, target[:, None, None].to(prob.dtype)).mean(0)


def set_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Reference form of eq. 6: ``min_{m,k} d_{m,k}`` with autograd through all pairs."""
    return pair_losses(logits, target).min()


def best_pair_loss(features: torch.Tensor, weights: torch.Tensor, bias: torch.Tensor,
                   target: torch.Tensor, head_logits) -> tuple[torch.Tensor, tuple[int, int]]:
    """Eq. 6 for one set, computed the fast exact way.

    Arguments:
        features: (S, D, H, W) head features of the set's images (with grad).
        weights, bias: (M, K, D) and (M, K) pair parameters (with grad).
        target: (S, H, W) binary ground truth.
        head_logits: ``ProtocolHead.logits``, features x weights x bias -> (S, M, K, H, W).

    Returns:
        the loss (scalar, differentiable) and the winning (m, k).
    """
    with torch.no_grad():
        d = pair_losses(head_logits(features.detach(), weights.detach(), bias.detach()), target)
        m, k = divmod(int(d.argmin()), d.shape[1])
    logits = head_logits(features, weights[m:m + 1], bias[m:m + 1])  # (S, 1, K, H, W)
    prob = torch.softmax(logits.float(), dim=2)[:, 0, k]
    return soft_dice_loss(prob, target.to(prob.dtype)).mean(), (m, k)


def feature_spread(features: torch.Tensor) -> torch.Tensor:
    """Mean over images of ``||mean_x G(x)||^2`` for unit features (N, D, H, W).

    1 when all pixels of an image share one feature direction (the collapsed state where one
    label covers everything), near 0 when features spread over the sphere.
    """
    return features.float().mean((2, 3)).pow(2).sum(1).mean()
