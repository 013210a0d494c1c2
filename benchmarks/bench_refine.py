"""Benchmark click refinement with a simulated user on the held-out real sets.

Reports mean Dice after 0..N clicks starting (a) from nothing and (b) from the best Pancakes
label of the set (the (m, k) with the highest set Dice), NoC@85/90, and ms per click at
256x256 on this CPU. Writes benchmarks/results/refine.{md,json}.

    python benchmarks/bench_refine.py [--max-images 60] [--clicks 10]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
RESULTS = Path(__file__).resolve().parent / "results"
# set -> (label id of the target structure, in training?)
SETS = {"ph2_skin": (1, False), "drive_vessels": (2, False), "jsrt_scr_chest": (1, True), "dsb2018_nuclei": (1, True)}


def load_set(name: str, max_images: int | None):
    from PIL import Image

    files = sorted((DATA / name / "images").glob("*.png"))
    if max_images and len(files) > max_images:
        files = [files[i] for i in np.linspace(0, len(files) - 1, max_images).round().astype(int)]
    tid = SETS[name][0]
    images = [np.asarray(Image.open(p)) for p in files]
    truths = [np.asarray(Image.open(DATA / name / "masks" / p.name)) == tid for p in files]
    return images, truths


def best_labels(images, truths, m: int = 8, k: int = 20):
    """Per-image initial masks from the best (m, k) candidate of the set, and what produced them."""
    from napari_pancakes.metrics import pair_scores

    weights = Path(__file__).resolve().parents[1] / "src" / "napari_pancakes" / "weights" / "pancakes_default.safetensors"
    if weights.is_file():
        from napari_pancakes import load_model, segment_set

        labels = segment_set(images, m, k, model=load_model(weights, device="cpu"))
        source = f"Pancakes ({weights.name}, M={m}, K={k})"
    else:
        from napari_pancakes.baselines import kmeans_set

        labels = kmeans_set(images, m, k)
        source = f"PROXY: set-level intensity k-means baseline (no pancakes_default.safetensors), M={m}, K={k}"
    preds = labels if isinstance(labels, list) else [labels[:, s] for s in range(labels.shape[1])]
    scores = pair_scores(preds, truths, k)
    bm, bk = np.unravel_index(int(np.argmax(scores)), scores.shape)
    return [p[bm] == bk for p in preds], source, (int(bm), int(bk)), float(scores[bm, bk])


def time_clicks(refiner, n: int = 40) -> dict:
    """ms per click (model + resampling + threshold) on a 256x256 image, 1 thread vs torch's default."""
    import torch

    from napari_pancakes.refine import RefineSession

    rng = np.random.default_rng(0)
    img = rng.random((256, 256)).astype(np.float32)
    out = {}
    for threads in (1, None):
        refiner.cpu_threads = threads
        s = RefineSession(refiner, img)
        s.add_click(128, 128, True)  # warm-up
        ts = []
        for i in range(n):
            y, x = rng.integers(0, 256, 2)
            t0 = time.perf_counter()
            s.add_click(int(y), int(x), bool(i % 2))
            ts.append(1000 * (time.perf_counter() - t0))
        key = "1 thread" if threads == 1 else f"torch default ({torch.get_num_threads()} threads)"
        out[key] = {"median_ms": round(float(np.median(ts)), 1), "p90_ms": round(float(np.percentile(ts, 90)), 1),
                    "load_average_1min": round(os.getloadavg()[0], 2)}
    refiner.cpu_threads = 1
    return out


def run(args) -> dict:
    import torch

    from napari_pancakes.refine import clicks_to_reach, load_refiner, simulate_session

    default_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)  # for the Pancakes / proxy labels; clicks use refiner.cpu_threads
    refiner = load_refiner(args.weights, device="cpu")
    result = {"weights": str(args.weights or "bundled refiner_default.safetensors"),
              "weights_meta": {k: v for k, v in refiner.metadata.items() if k != "config"},
              "clicks": args.clicks, "cpu": platform.processor() or platform.machine(), "sets": {}}
    for name in args.sets:
        if not (DATA / name).is_dir():
            print(f"skip {name}: {DATA / name} not found", file=sys.stderr)
            continue
        images, truths = load_set(name, args.max_images)
        inits, source, pair, set_dice = best_labels(images, truths)
        entry = {"images": len(images), "target_label": SETS[name][0], "seen_in_training": SETS[name][1],
                 "initial_source": source, "best_pair": pair, "best_pair_set_dice": round(set_dice, 4)}
        for mode, starts in (("a_nothing", [None] * len(images)), ("b_best_label", inits)):
            curves, times = [], []
            for img, truth, init in zip(images, truths, starts):
                d, t = simulate_session(refiner, img, truth, args.clicks, initial_mask=init)
                curves.append(d)
                times += t
            curves = np.array(curves)
            entry[mode] = {
                "dice": [round(float(v), 4) for v in curves.mean(0)],
                "noc85": round(float(np.mean([clicks_to_reach(c, 0.85, args.clicks) for c in curves])), 2),
                "noc90": round(float(np.mean([clicks_to_reach(c, 0.90, args.clicks) for c in curves])), 2),
                "reached85": round(float(np.mean((curves >= 0.85).any(1))), 3),
                "reached90": round(float(np.mean((curves >= 0.90).any(1))), 3),
                "ms_per_click_native_size": round(1000 * float(np.median(times)), 1) if times else None,
            }
        a, b = entry["a_nothing"], entry["b_best_label"]
        entry["first_click_gain_b"] = round(100 * (b["dice"][1] - b["dice"][0]), 2)
        entry["noc85_ratio_b_over_a"] = round(b["noc85"] / a["noc85"], 3) if a["noc85"] else None
        result["sets"][name] = entry
        print(name, json.dumps(entry), flush=True)
    torch.set_num_threads(default_threads)
    result["timing_256"] = time_clicks(refiner)
    result["cpu_count"] = os.cpu_count()
    return result


def to_markdown(res: dict) -> str:
    n = res["clicks"]
    lines = ["# Click refinement benchmark", "",
             f"Simulated user (largest error region, farthest-from-boundary point), {n} clicks. "
             "Dice in %, mean over images. NoC@X: clicks to reach Dice X% (capped at "
             f"{n} when never reached). Weights: {res['weights']} ({res['weights_meta'].get('iterations', '?')} iterations, "
             f"{res['weights_meta'].get('train_minutes', '?')} min).", ""]
    cols = " | ".join(str(i) for i in range(n + 1))
    lines += [f"| set | start | {cols} | NoC@85 | NoC@90 | reached 85 / 90 |",
              "|---|---|" + "---|" * (n + 1) + "---|---|---|"]
    for name, e in res["sets"].items():
        tag = f"{name}{' (train)' if e['seen_in_training'] else ' (held out)'}"
        for mode, label in (("a_nothing", "(a) nothing"), ("b_best_label", "(b) best label")):
            m = e[mode]
            vals = " | ".join(f"{100 * v:.1f}" for v in m["dice"])
            lines.append(f"| {tag} | {label} | {vals} | {m['noc85']:.2f} | {m['noc90']:.2f} | "
                         f"{100 * m['reached85']:.0f}% / {100 * m['reached90']:.0f}% |")
    lines += ["", "| set | images | initial label source | best (m, k) | set Dice of it | first-click gain (b) | NoC@85 (b)/(a) |",
              "|---|---|---|---|---|---|---|"]
    for name, e in res["sets"].items():
        lines.append(f"| {name} | {e['images']} | {e['initial_source']} | {tuple(e['best_pair'])} | "
                     f"{100 * e['best_pair_set_dice']:.1f} | {e['first_click_gain_b']:+.1f} | {e['noc85_ratio_b_over_a']} |")
    t = res["timing_256"]
    lines += ["", "ms per click at 256x256 on this CPU (model + resampling + threshold): " +
              ", ".join(f"{k}: median {v['median_ms']} ms (p90 {v['p90_ms']}, 1-min load average {v['load_average_1min']} "
                        f"on {res.get('cpu_count')} cores)" for k, v in t.items())]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", nargs="+", default=["ph2_skin", "drive_vessels"], choices=list(SETS))
    ap.add_argument("--max-images", type=int, default=None, help="evenly spaced subset per set (all by default)")
    ap.add_argument("--clicks", type=int, default=10)
    ap.add_argument("--weights", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the click curves (shared CPUs: 1)")
    args = ap.parse_args(argv)
    if not DATA.is_dir():
        print(f"skip: data directory {DATA} not found", file=sys.stderr)
        return 0
    res = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "refine.json").write_text(json.dumps(res, indent=1))
    md = to_markdown(res)
    (args.out / "refine.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
