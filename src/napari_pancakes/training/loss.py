"""The Pancakes set loss (eqs. 5-6): best (protocol, label) pair by set-mean soft Dice.

``d_{m,k}`` is the soft Dice loss of softmax-probability map k of protocol m against the
binary target, averaged over the set's images; the loss is ``min_{m,k} d_{m,k}``. The min
has a gradient through the winning pair only, so :func:`best_pair_loss` finds the winner on
detached features for all M x K pairs (cheap, no autograd graph) and recomputes only the
winning protocol's K logits with gradients. The result is exact; it was not faster on the
project's 2-core CPU (1.71 vs 1.90 steps/s for the naive loss, ``benchmarks/bench_training.py``,
``benchmarks/results/training.json``), but it keeps the autograd graph to one protocol.
"""
from __future__ import annotations

import torch

EPS = 1.0  # Dice smoothing in pixels: an empty prediction of an empty target scores ~0 loss


def dice_loss_from_sums(inter: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """1 - smoothed Dice from the intersection and the summed sizes (the one Dice formula of the loss)."""
    return 1 - (2 * inter + EPS) / (total + EPS)


def soft_dice_loss(prob: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - soft Dice per map; prob (..., H, W) in [0, 1], target broadcastable, reduced over H, W."""
    inter = (prob * target).sum((-2, -1))
    return dice_loss_from_sums(inter, prob.sum((-2, -1)) + target.sum((-2, -1)))


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


def _partition_costs(prob: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    """Set-mean soft Dice losses (..., K, L) of probabilities (S, ..., K, H, W) against one-hot
    targets (S, L, H, W), every predicted label k against every target label l."""
    p = prob.flatten(-2)  # (S, ..., K, P)
    t = onehot.flatten(-2).to(p.dtype)  # (S, L, P)
    t = t.reshape(t.shape[0], *([1] * (p.dim() - 3)), *t.shape[1:])  # (S, 1.., L, P)
    inter = p @ t.transpose(-1, -2)  # (S, ..., K, L)
    return dice_loss_from_sums(inter, p.sum(-1)[..., :, None] + t.sum(-1)[..., None, :]).mean(0)


def match_labels(costs) -> tuple[list[int], list[int]]:
    """One-to-one assignment of target labels to predicted labels minimising the summed cost.

    ``costs`` is (K, L) with K >= L; returns (ks, ls) index lists (Hungarian method)."""
    from scipy.optimize import linear_sum_assignment

    ks, ls = linear_sum_assignment(costs)
    return ks.tolist(), ls.tolist()


def best_protocol_partition_loss(features: torch.Tensor, weights: torch.Tensor, bias: torch.Tensor,
                                 labels: torch.Tensor, head_logits) -> tuple[torch.Tensor, int]:
    """Dense version of eq. 6: every structure of a protocol-derived target is supervised at once.

    The paper trains one (m, k) pair per set and step, so most of the grid gets no signal.
    Here the target is a label map (S, H, W) with labels 0..L-1 (L <= K) and -1 where no
    label is asked for (those pixels still count against any label that covers them); within each
    protocol m its K labels are matched one-to-one to the L target labels (Hungarian, on
    set-mean soft Dice), the protocol with the lowest mean matched loss wins, and the loss is
    that mean. A protocol where one label covers everything now scores badly on every other
    target label, which is what stops collapse without a spread term. Selection runs without
    autograd; only the winner is recomputed with gradients (the min is exact, as in
    :func:`best_pair_loss`).

    Returns the loss and the winning protocol index.
    """
    n_labels = int(labels.max()) + 1
    if n_labels == 0:  # every structure was cropped away (augmentation, half resolution): nothing to learn
        return features.sum() * 0.0, 0
    onehot = torch.nn.functional.one_hot(labels.long() + 1, n_labels + 1)[..., 1:].permute(0, 3, 1, 2)
    with torch.no_grad():
        prob = torch.softmax(head_logits(features.detach(), weights.detach(), bias.detach()).float(), dim=2)
        costs = _partition_costs(prob, onehot).cpu().numpy()  # (M, K, L)
    best_m, best_cost, best_match = 0, float("inf"), None
    for m in range(costs.shape[0]):
        ks, ls = match_labels(costs[m])
        cost = float(costs[m][ks, ls].mean())
        if cost < best_cost:
            best_m, best_cost, best_match = m, cost, (ks, ls)
    logits = head_logits(features, weights[best_m:best_m + 1], bias[best_m:best_m + 1])[:, 0]  # (S, K, H, W)
    prob = torch.softmax(logits.float(), dim=1)
    pair = _partition_costs(prob, onehot)  # (K, L)
    ks, ls = best_match
    return pair[ks, ls].mean(), best_m
