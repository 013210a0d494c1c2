"""Figure for the model card: best Pancakes label vs best k-means label on held-out sets.

    python docs/make_failure_figure.py [--data-root DIR] [--weights W] [--out docs/img/failure-modes.png]

For each leave-out dataset, one set of 3 images containing the target label: rows are the
image, the ground truth, the best (m, k) Pancakes label and the best k-means label (Set Dice
in the row title). Data come from the one reader (``--data-root`` or $NAPARI_PANCAKES_DATA).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from napari_pancakes import load_model, segment_set
from napari_pancakes.baselines import kmeans_set
from napari_pancakes.metrics import pair_scores
from napari_pancakes.training.datasets import load_real_datasets

CASES = (("ph2_skin", 1, "lesion"), ("lung_ct_kaggle2d", 1, "lung"), ("monuseg_nuclei", 1, "nuclei"),
         ("duke_oct_dme_fluid", 1, "fluid"))


def best(labels, truth, k):
    """(Set Dice, per-image masks of the best (m, k) pair)."""
    dice = pair_scores(labels, truth, k)
    m, kk = np.unravel_index(int(np.argmax(dice)), dice.shape)
    return float(dice[m, kk]), labels[m] == kk


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--weights", default=None)
    ap.add_argument("--cache-dir", default="runs/cache")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "img" / "failure-modes.png")
    args = ap.parse_args(argv)
    model = load_model(args.weights, device="cpu")
    real = load_real_datasets([c[0] for c in CASES], root=args.data_root, cache_dir=Path(args.cache_dir), mni=False)
    rng = np.random.default_rng(0)
    fig, axes = plt.subplots(4, 3 * len(CASES), figsize=(3 * len(CASES) * 1.6, 4 * 1.7))
    for c, (name, label, what) in enumerate(CASES):
        images, masks = real[name].images, real[name].labels
        has = np.flatnonzero((masks == label).reshape(len(masks), -1).sum(1) >= 16)
        idx = rng.choice(has, 3, replace=False)
        imgs, truth = images[idx], masks[idx] == label
        pd, pm = best(segment_set(imgs, 8, 20, model=model), truth, 20)
        kd, km = best(kmeans_set(imgs, 8, 20), truth, 20)
        rows = [(imgs, f"{name}"), (truth, f"truth: {what}"), (pm, f"Pancakes {100 * pd:.0f}"), (km, f"k-means {100 * kd:.0f}")]
        for r, (arr, title) in enumerate(rows):
            for s in range(3):
                ax = axes[r, 3 * c + s]
                ax.imshow(arr[s], cmap="gray" if r == 0 else "magma", interpolation="nearest")
                ax.set_xticks([]), ax.set_yticks([])
                if s == 0:
                    ax.set_title(title, fontsize=8, loc="left")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80)
    print(args.out)


if __name__ == "__main__":
    main()
