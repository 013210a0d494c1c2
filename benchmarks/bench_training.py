"""Training throughput: optimiser steps per second, and where a step's time goes.

    python benchmarks/bench_training.py [--steps 20] [--batch-sets 2] [--features 16] [--threads 2]
                                        [--out benchmarks/results/training.json]
    python benchmarks/bench_training.py --campaign [--steps 12] [--out benchmarks/results/training-throughput.json]

Synthetic sets only (no data needed). Default: the paper's binary step, S in [2, 5], M in
[5, 15], K in [5, 40] per set, fast exact best-pair loss, AdamW, clipping; also times the data
side (synthetic set + augmentation) alone, and the naive loss (autograd through all M x K pairs)
for comparison.

``--campaign``: the Pancakes campaign's own step (``campaign/resume_pancakes.sh``: the dense
protocol loss, 4 sets per step, S in [2, 5], M in [4, 12], K in [4, 32], 32 features, reflect
padding) under the throughput levers of the quality issue: one or two threads, 128 px or the
64 px of the first steps, ``channels_last`` memory format, and ``torch.compile`` of the network
(U-Net and the head's image branch; dynamic shapes, since S varies). Steps/s and
sets/s; the same pre-drawn batches for every variant. Run it with nothing else on the CPU.
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


def campaign_rates(steps: int) -> dict:
    """Steps/s and sets/s of the campaign's training step under each throughput lever."""
    from napari_pancakes.training.train import TrainConfig, draw_batch, half_resolution

    cfg = TrainConfig(m_range=(4, 12), k_range=(4, 32))  # the campaign's ranges (resume_pancakes.sh)
    sampler = SetSampler({}, synthetic_ratio=1.0)
    rng = np.random.default_rng(0)
    batches = [draw_batch(sampler, rng, cfg) for _ in range(steps + 2)]

    def variant(threads: int, res: int, channels_last: bool = False, compile_: bool = False) -> dict:
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        model = Pancakes(PancakesConfig(features=32, padding="reflect"))
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        loss_module = SetLoss(model, 0.0, dense=True)
        if compile_:  # the network only: the loss's Hungarian matching runs in SciPy (graph breaks)
            model.f = torch.compile(model.f, dynamic=True)
            model.h.image_branch = torch.compile(model.h.image_branch, dynamic=True)
        run = []
        for x, targets, mks in batches:
            if res == 64:
                x, targets = half_resolution(x, targets)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            run.append((x, targets, mks))
        t0 = time.perf_counter()
        _steps_per_s(loss_module, model, run[:2])  # warm-up (and compilation)
        warm = time.perf_counter() - t0
        rate = _steps_per_s(loss_module, model, run[2:])
        sets = cfg.batch_sets * rate
        return {"threads": threads, "res": res, "channels_last": channels_last, "compile": compile_,
                "steps_per_s": round(rate, 3), "sets_per_s": round(sets, 2), "warmup_s": round(warm, 1)}

    variants = [dict(threads=1, res=128), dict(threads=2, res=128), dict(threads=2, res=64),
                dict(threads=2, res=128, channels_last=True), dict(threads=2, res=128, compile_=True)]
    rows = []
    for v in variants:
        try:
            rows.append(variant(**v))
        except Exception as exc:  # e.g. torch.compile without a working compiler
            rows.append({**v, "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
        print(rows[-1], flush=True)
    return {"what": "campaign training step (dense loss, 4 sets/step, synthetic sets), steps/s and sets/s",
            "steps_timed": steps, "variants": rows, "torch": torch.__version__, "machine": platform.machine(),
            "cores": __import__("os").cpu_count()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-sets", type=int, default=2)
    p.add_argument("--features", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--campaign", action="store_true", help="the campaign's step under the throughput levers")
    args = p.parse_args(argv)
    if args.campaign:
        result = campaign_rates(args.steps)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=1))
        return 0
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
