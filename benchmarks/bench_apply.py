"""Applying a saved protocol to a collection: images per second and peak memory vs collection size.

    python benchmarks/bench_apply.py [--sizes 200,2000] [--px 256] [--threads 1] [--out benchmarks/results/apply.json]

For each size N: N synthetic 256 x 256 PNG files (blobs on noise) are labelled with
``apply_to_files`` (read, label, write one batch at a time), and an N-image lazy Dask array
(generated chunk by chunk, never materialised) with ``apply_protocol`` on Dask's synchronous
scheduler. Each run is a fresh subprocess, so its peak resident memory (``ru_maxrss``) is its own;
"rss_before_mb" is the resident memory after loading the model, just before the run. If memory
does not grow with N, peak(N=2000) is about peak(N=200).
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def synthetic(i: int, px: int) -> np.ndarray:
    rng = np.random.default_rng(i)
    yy, xx = np.mgrid[:px, :px]
    im = 30 + 10 * rng.standard_normal((px, px))
    for _ in range(6):
        cy, cx, r = rng.uniform(0, px, 2).tolist() + [rng.uniform(px / 20, px / 6)]
        im[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] += rng.uniform(60, 180)
    return np.clip(im, 0, 255).astype(np.uint8)


def child(mode: str, n: int, px: int, folder: str, out: str, threads: int) -> dict:
    import resource

    import torch

    torch.set_num_threads(threads)
    from napari_pancakes import load_model
    from napari_pancakes.protocol import Protocol, apply_protocol, apply_to_files

    model = load_model(device="cpu")
    protocol = Protocol.from_model(model, 8, 20, 0)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    if mode == "files":
        written = apply_to_files(protocol, [folder], out, model=model)
        assert len(written) == n
    else:
        import dask
        import dask.array as da

        def block(block_id=None):
            start = block_id[0] * 8
            return np.stack([synthetic(i, px) for i in range(start, min(n, start + 8))])

        chunks = ((8,) * (n // 8) + ((n % 8,) if n % 8 else ()), (px,), (px,))
        images = da.map_blocks(block, chunks=chunks, dtype=np.uint8)
        labels = apply_protocol(protocol, images, model=model)
        with dask.config.set(scheduler="synchronous"):
            counts = labels.map_blocks(lambda b: np.bincount(b.ravel(), minlength=21)[None, None, :21],
                                       chunks=(1, 1, 21), dtype=np.int64).sum(axis=(0, 1)).compute()
        assert int(counts.sum()) == n * px * px
    seconds = time.perf_counter() - t0
    return {"mode": mode, "images": n, "px": px, "seconds": round(seconds, 2), "images_per_s": round(n / seconds, 2),
            "rss_before_mb": round(rss_before, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="200,2000")
    parser.add_argument("--px", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--modes", default="files,dask")
    parser.add_argument("--out", default=None)
    parser.add_argument("--child", nargs=5, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        mode, n, folder, out, threads = args.child
        print(json.dumps(child(mode, int(n), args.px, folder, out, int(threads))))
        return 0
    import imageio.v3 as iio

    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            folder = Path(tmp) / f"in{n}"
            folder.mkdir()
            for i in range(n):
                iio.imwrite(folder / f"img{i:05d}.png", synthetic(i, args.px))
            for mode in args.modes.split(","):
                out = Path(tmp) / f"out-{mode}-{n}"
                cmd = [sys.executable, __file__, "--px", str(args.px), "--child", mode, str(n), str(folder), str(out),
                       str(args.threads)]
                result = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
                rows.append(result)
                print(f"{mode:5s} N={n:5d}: {result['images_per_s']:6.1f} images/s, {result['seconds']:7.1f} s, "
                      f"RSS before {result['rss_before_mb']:6.0f} MB, peak {result['peak_rss_mb']:6.0f} MB", flush=True)
            import shutil

            shutil.rmtree(folder)
    if args.out:
        import torch

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({
            "what": "apply a saved protocol (M=8, K=20, protocol 1, bundled weights) to N synthetic images",
            "torch_threads": args.threads, "torch": torch.__version__, "python": platform.python_version(),
            "machine": f"{platform.machine()}, shared 2-core CPU (two training runs in the background)",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
