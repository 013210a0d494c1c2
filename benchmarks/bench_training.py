"""Training throughput: optimiser steps per second, and where a step's time goes.

    python benchmarks/bench_training.py [--steps 20] [--batch-sets 2] [--features 16] [--threads 2]
                                        [--out benchmarks/results/training.json]

Synthetic sets only (no data needed), the same step as ``train``: S in [2, 5], M in [5, 15],
K in [5, 40] per set, fast exact best-pair loss, AdamW, clipping. Also times the data side
(synthetic set + augmentation) alone, and the naive loss (autograd through all M x K pairs)
for comparison.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from napari_pancakes.model import Pancakes, PancakesConfig
from napari_pancakes.training.datasets import SetSampler
from napari_pancakes.training.loss import set_loss
from napari_pancakes.training.train import SetLoss


def _batch(rng, sampler, batch_sets):
    images, targets, mks = [], [], []
    for _ in range(batch_sets):
        img, tgt, _ = sampler.sample(rng, int(rng.integers(2, 6)))
        images.append(img)
        targets.append(torch.from_numpy(tgt))
        mks.append((int(rng.integers(5, 16)), int(rng.integers(5, 41))))
    return torch.from_numpy(np.concatenate(images))[:, None], targets, mks


def _naive(model, x, targets, mks):
    feats = model.features(model.phi(x))
    losses, start = [], 0
    for t, (m, k) in zip(targets, mks):
        w, b = model.pair_weights(m, k)
        losses.append(set_loss(model.h.logits(feats[start:start + len(t)], w, b), t))
        start += len(t)
    return torch.stack(losses).mean()


def _steps_per_s(loss_fn, model, batches) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    t0 = time.perf_counter()
    for x, targets, mks in batches:
        loss = loss_fn(x, targets, mks)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return len(batches) / (time.perf_counter() - t0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-sets", type=int, default=2)
    p.add_argument("--features", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    rng = np.random.default_rng(0)
    sampler = SetSampler({}, synthetic_ratio=1.0)
    t0 = time.perf_counter()
    batches = [_batch(rng, sampler, args.batch_sets) for _ in range(args.steps)]
    data_s = (time.perf_counter() - t0) / args.steps
    torch.manual_seed(0)
    model = Pancakes(PancakesConfig(features=args.features))
    fast = SetLoss(model)
    _steps_per_s(fast, model, batches[:2])  # warm-up
    fast_rate = _steps_per_s(fast, model, batches)
    naive_rate = _steps_per_s(lambda *a: _naive(model, *a), model, batches[: max(2, args.steps // 4)])
    result = {"steps_per_s_fast_loss": round(fast_rate, 3), "steps_per_s_naive_loss": round(naive_rate, 3),
              "data_s_per_step": round(data_s, 4), "batch_sets": args.batch_sets, "features": args.features,
              "threads": args.threads, "torch": torch.__version__, "machine": platform.machine(),
              "images_per_step": round(float(np.mean([len(b[0]) for b in batches])), 2)}
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
