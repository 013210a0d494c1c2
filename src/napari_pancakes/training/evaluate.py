"""Set Dice of a model and the baselines on fixed evaluation sets (the model card's table).

For every source (held-out synthetic sets, each real dataset) and every foreground label,
``n_sets`` sets of S images that all contain the label are drawn with a fixed seed, at the
working resolution (128 x 128, preprocessed as at inference). Each method gives (M, S, H, W)
label maps with M = 8, K = 20; the score is :func:`napari_pancakes.metrics.set_dice`.
Results are cached per method as JSON so that baselines (which do not change) are computed
once, and the model can be re-scored alone.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from ..baselines import kmeans_set, slic_per_image
from ..inference import segment_set
from ..io_weights import load_model
from ..metrics import set_dice
from ..model import Pancakes
from .datasets import DATA_ROOT, MIN_TARGET_PX, load_real_datasets
from .synthetic import synthetic_set
from .train import init_weights, split_validation

M, K = 8, 20


def evaluation_sets(real, n_sets: int, sizes=(1, 3, 5), seed: int = 2024, holdout=()):
    """List of dicts (source, label, s, seen, images (S,R,R), truth (S,R,R) bool).

    Training datasets contribute only their validation split (never trained on);
    held-out datasets contribute all their images.
    """
    rng = np.random.default_rng(seed)
    items = []
    for s in sizes:
        for _ in range(n_sets):
            while True:
                images, labels = synthetic_set(rng, s)
                counts = np.stack([np.bincount(lab.ravel(), minlength=labels.max() + 1) for lab in labels])
                ok = np.flatnonzero((counts >= MIN_TARGET_PX).all(0))
                ok = ok[ok > 0]
                if ok.size:
                    v = int(rng.choice(ok))
                    items.append(dict(source="synthetic", label=v, s=s, seen=False, images=images, truth=labels == v))
                    break
    seen_split = split_validation({k: v for k, v in real.items() if k not in holdout})[1]
    for name in real:
        ds = real[name] if name in holdout else seen_split[name]
        labels = ds.eval_labels(np.arange(len(ds)))
        for v in [int(x) for x in np.unique(labels) if x > 0]:
            has = (labels == v).reshape(len(ds), -1).sum(1) >= MIN_TARGET_PX
            for s in sizes:
                for _ in range(n_sets):
                    if ds.stack is None:
                        pool = np.flatnonzero(has)
                        if pool.size < s:
                            break
                        idx = rng.choice(pool, s, replace=False)
                    else:  # slices of one volume: neighbouring slices, all containing the label
                        for _ in range(100):
                            idx = ds.set_indices(rng, s)
                            if len(idx) == s and has[idx].all():
                                break
                        else:
                            break
                    items.append(dict(source=name, label=v, s=s, seen=name not in holdout,
                                      images=ds.images[idx], truth=labels[idx] == v))
    return items


def _methods(model: Pancakes | None, random_model: Pancakes):
    return {
        "pancakes": lambda im: segment_set(im, M, K, model=model),
        "random_init": lambda im: segment_set(im, M, K, model=random_model),
        "kmeans": lambda im: kmeans_set(im, M, K),
        "slic": lambda im: slic_per_image(im, M, K),
    }


def score_method(fn, items) -> list[float]:
    return [set_dice(fn(it["images"]), it["truth"], K) for it in items]


def summarise(items, scores: dict[str, list[float]]) -> list[dict]:
    """Rows per (source, S): mean over labels of the mean Set Dice over that label's sets."""
    rows = []
    keys = sorted({(it["source"], it["s"], it["seen"]) for it in items}, key=lambda t: (t[2], t[0], t[1]))
    for source, s, seen in keys:
        row = {"source": source, "S": s, "seen": seen}
        sel = [i for i, it in enumerate(items) if it["source"] == source and it["s"] == s]
        row["n_sets"] = len(sel)
        for method, vals in scores.items():
            per_label = {}
            for i in sel:
                per_label.setdefault(items[i]["label"], []).append(vals[i])
            row[method] = float(np.mean([np.mean(v) for v in per_label.values()]))
        rows.append(row)
    return rows


def markdown_table(rows: list[dict], methods: list[str]) -> str:
    head = "| source | seen in training | S | sets | " + " | ".join(methods) + " |"
    lines = [head, "|" + "---|" * (4 + len(methods))]
    for r in rows:
        vals = " | ".join(f"{100 * r[m]:.1f}" for m in methods)
        lines.append(f"| {r['source']} | {'yes' if r['seen'] else 'no'} | {r['S']} | {r['n_sets']} | {vals} |")
    return "\n".join(lines)


def evaluate(weights: Path | None, out_dir: Path, methods: list[str], n_sets: int = 30,
             holdout=("ph2_skin", "drive_vessels"), data_root: Path = DATA_ROOT,
             cache_dir: Path = Path("runs/cache"), threads: int = 2) -> list[dict]:
    """Score ``methods`` (cached per method in ``out_dir``) and write summary.json/summary.md."""
    torch.set_num_threads(threads)
    real = load_real_datasets(root=data_root, cache_dir=cache_dir)
    items = evaluation_sets(real, n_sets, holdout=holdout)
    torch.manual_seed(0)
    random_model = Pancakes()
    init_weights(random_model)  # the starting point of training
    random_model.eval()
    model = load_model(weights, device="cpu") if "pancakes" in methods else None
    fns = _methods(model, random_model)
    out_dir.mkdir(parents=True, exist_ok=True)
    scores = {}
    for method in ["pancakes", "random_init", "kmeans", "slic"]:
        path = out_dir / f"scores-{method}.json"
        if method in methods:
            t0 = time.time()
            vals = score_method(fns[method], items)
            path.write_text(json.dumps({"n_items": len(items), "seconds": time.time() - t0, "scores": vals}))
            print(f"{method}: {len(items)} sets in {time.time() - t0:.0f} s", flush=True)
        if path.is_file():
            cached = json.loads(path.read_text())
            if cached["n_items"] == len(items):
                scores[method] = cached["scores"]
    rows = summarise(items, scores)
    (out_dir / "summary.json").write_text(json.dumps(rows, indent=1))
    (out_dir / "summary.md").write_text(markdown_table(rows, list(scores)) + "\n")
    print(markdown_table(rows, list(scores)))
    return rows


def plot_training_curve(run_dir: Path, out_png: Path) -> Path:
    """Training loss (from ``log.txt``) and validation Set Dice per source (``metrics.csv``)."""
    import csv
    import re

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    steps, losses = [], []
    log = run_dir / "log.txt"
    if log.is_file():
        for line in log.read_text().splitlines():
            hit = re.match(r"step (\d+) loss ([0-9.]+)", line)
            if hit:
                steps.append(int(hit[1]))
                losses.append(float(hit[2]))
    with (run_dir / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(steps, losses, lw=0.8)
    ax1.set(xlabel="step", ylabel="1 - best-pair soft Dice + feature spread", title="training loss (20-step means)")
    for key in [k for k in rows[0] if k not in ("step", "minutes")]:
        ax2.plot([int(r["step"]) for r in rows], [100 * float(r[key]) for r in rows], marker="o", ms=3,
                 label=key + (" (selection)" if key == "select" else ""), lw=2 if key == "select" else 1)
    ax2.set(xlabel="step", ylabel="Set Dice (M=8, K=20, S=3)", title="validation")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=90)
    return out_png
