"""What does changing M, K or the seed cost once the set is encoded, against a full run?

``PancakesPredictor.set_images`` runs normalisation, the U-Net and the head's image branch once;
``protocols(m, k, seed)`` then only evaluates the pair codes and the per-pixel inner products.
On an 8 x 512 x 512 stack (the synthetic blobs sample), times (median of ``--repeats``):

* full run: ``segment_set`` (encode + label), M=8, K=20;
* encode only: ``set_images``;
* change: ``predictor.protocols`` from the cache, for a new seed, a new M and a new K.

The measurements take turns, ``--repeats`` times; median and minimum are reported.

Usage:
    python benchmarks/bench_predictor.py [--repeats 5] [--out benchmarks/results/predictor.json]
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


def interleaved(funcs: dict, repeats: int) -> dict:
    """Time every function ``repeats`` times, taking turns (so that the load of a shared
    machine hits all of them alike); returns name -> {"median_s", "min_s"}."""
    times = {name: [] for name in funcs}
    for _ in range(repeats):
        for name, func in funcs.items():
            t0 = time.perf_counter()
            func()
            times[name].append(time.perf_counter() - t0)
    return {name: {"median_s": round(float(np.median(t)), 3), "min_s": round(float(np.min(t)), 3)}
            for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "predictor.json"))
    args = parser.parse_args()

    from napari_pancakes import load_model, segment_set
    from napari_pancakes.inference import PancakesPredictor
    from napari_pancakes.napari.sample_data import synthetic_blobs

    model = load_model(device="cpu")
    stack = synthetic_blobs(args.images, args.size, n_blobs=30)
    segment_set(stack[:1], 8, 20, model=model)  # warm-up
    predictor = PancakesPredictor(model).set_images(stack)
    timings = interleaved({
        "full_run_m8_k20": lambda: segment_set(stack, 8, 20, model=model),
        "encode_only": lambda: PancakesPredictor(model).set_images(stack),
        "change_seed_m8_k20": lambda: predictor.protocols(8, 20, seed=1),
        "change_m4_k20": lambda: predictor.protocols(4, 20),
        "change_m8_k5": lambda: predictor.protocols(8, 5),
    }, args.repeats)
    result = {
        "set": [args.images, args.size, args.size],
        "timings": timings,
        "change_vs_full_median": round(timings["change_seed_m8_k20"]["median_s"] / timings["full_run_m8_k20"]["median_s"], 3),
        "change_vs_full_min": round(timings["change_seed_m8_k20"]["min_s"] / timings["full_run_m8_k20"]["min_s"], 3),
        "cache_mib": predictor.cache_bytes / 2**20,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "note": "weights: bundled; the machine is shared with training jobs: the min is the least disturbed run",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
