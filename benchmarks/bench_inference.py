"""Inference time per set and peak memory, with the set-level k-means baseline in the same run.

    python benchmarks/bench_inference.py [--weights W] [--repeats 5] [--out benchmarks/results/inference.json]

Times ``segment_set`` for S in 1, 3, 5, 10 at 128 and 256 px (M=8, K=20) and the peak
resident memory of segmenting 100 images of 256x256 (streamed: only argmax labels kept).

``--large [SIDE ...]`` instead times ``segment_set`` on a set of 3 images of each side (default
1024, 2048, 4096), where shrinking the images to the model's grid, not the U-Net, dominates.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from napari_pancakes import load_model, segment_set
from napari_pancakes.baselines import kmeans_set


def timed(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--weights", default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None)
    parser.add_argument("--large", type=int, nargs="*", default=None, metavar="SIDE",
                        help="only a set of 3 images per side (default 1024 2048 4096)")
    args = parser.parse_args(argv)
    model = load_model(args.weights, device="cpu")
    rng = np.random.default_rng(0)
    machine = f"{platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}"
    if args.large is not None:
        rows = []
        for side in args.large or (1024, 2048, 4096):
            x = rng.random((3, side, side)).astype(np.float32)
            ms = timed(lambda: segment_set(x, 8, 20, model=model), max(1, args.repeats // 2))
            rows.append({"px": side, "S": 3, "pancakes_ms": round(ms, 1)})
            print(f"{side}px S=3: pancakes {ms:7.1f} ms", flush=True)
        result = {"machine": machine, "torch": torch.__version__, "large": rows}
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=2))
        return 0
    rows = []
    for px in (128, 256):
        for s in (1, 3, 5, 10):
            x = rng.random((s, px, px)).astype(np.float32)
            ms = timed(lambda: segment_set(x, 8, 20, model=model), args.repeats)
            km = timed(lambda: kmeans_set(x, 8, 20), max(1, args.repeats // 2))
            rows.append({"px": px, "S": s, "pancakes_ms": round(ms, 1), "kmeans_ms": round(km, 1)})
            print(f"{px}px S={s:2d}: pancakes {ms:7.1f} ms   k-means {km:7.1f} ms", flush=True)
    before = peak_rss_mb()
    big = rng.random((100, 256, 256)).astype(np.float32)
    t0 = time.perf_counter()
    labels = segment_set(big, 8, 20, model=model)
    big_s = time.perf_counter() - t0
    after = peak_rss_mb()
    print(f"100 x 256x256: {big_s:.1f} s, peak RSS {after:.0f} MB (before {before:.0f} MB, labels {labels.nbytes / 2**20:.0f} MB)")
    result = {
        "machine": machine,
        "torch": torch.__version__, "timings": rows,
        "big_set": {"images": 100, "px": 256, "seconds": round(big_s, 2), "peak_rss_mb": round(after),
                    "rss_before_mb": round(before), "labels_mb": round(labels.nbytes / 2**20)},
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
