"""What does changing M, K or the seed cost once the set is encoded, against a full run?

``PancakesPredictor.set_images`` runs normalisation, the U-Net and the head's image branch once;
``protocols(m, k, seed)`` then only evaluates the pair codes and the per-pixel inner products.
On an 8 x 512 x 512 stack (the synthetic blobs sample), times (median of ``--repeats``):

* full run: ``segment_set`` (encode + label), M=8, K=20;
* change: ``predictor.protocols`` from the cache, for a new seed, a new M and a new K.

Usage:
    python benchmarks/bench_predictor.py [--repeats 3] [--out benchmarks/results/predictor.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch


def median_seconds(func, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        func()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "predictor.json"))
    args = parser.parse_args()

    from napari_pancakes import load_model, segment_set
    from napari_pancakes.inference import PancakesPredictor
    from napari_pancakes.napari.sample_data import synthetic_blobs

    model = load_model(device="cpu")
    stack = synthetic_blobs(args.images, args.size, n_blobs=30)
    segment_set(stack[:1], 8, 20, model=model)  # warm-up
    predictor = PancakesPredictor(model)
    result = {
        "set": [args.images, args.size, args.size],
        "full_run_m8_k20_s": median_seconds(lambda: segment_set(stack, 8, 20, model=model), args.repeats),
        "encode_only_s": median_seconds(lambda: predictor.set_images(stack), args.repeats),
        "change_seed_m8_k20_s": median_seconds(lambda: predictor.protocols(8, 20, seed=1), args.repeats),
        "change_m4_k20_s": median_seconds(lambda: predictor.protocols(4, 20), args.repeats),
        "change_m8_k5_s": median_seconds(lambda: predictor.protocols(8, 5), args.repeats),
        "cache_mib": predictor.cache_bytes / 2**20,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "note": "weights: bundled; machine shared with other jobs, expect +-30 %",
    }
    result["change_vs_full"] = result["change_seed_m8_k20_s"] / result["full_run_m8_k20_s"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
