"""Evaluation harness: Set Dice / IoU / surface distance of Pancakes vs baselines.

``python -m napari_pancakes.evaluate DATA_DIR [--sizes 1,2,3,5] [--m 8 --k 20]``

DATA_DIR is one dataset (``images/NNN.png`` + ``masks/NNN.png`` label ids, 0 = background)
or a folder of such datasets. For each foreground label, sets of S images that contain it
are drawn; every method's best (m, k) candidate is scored against that label (paper sec. 4).
Pancakes treats images independently at inference, so its label maps are computed once per
image and reused by every set; set-level k-means is refitted on each set.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from .baselines import kmeans_set, slic_per_image
from .metrics import pair_scores, set_surface_distance

RESOLUTION = 128


def find_datasets(root: Path) -> list[Path]:
    root = Path(root)
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return [root]
    found = sorted(d for d in root.iterdir() if (d / "images").is_dir() and (d / "masks").is_dir())
    if not found:
        raise ValueError(f"{root} holds no dataset (expected images/ and masks/ folders)")
    return found


def load_dataset(folder: Path, resolution: int = RESOLUTION, limit: int | None = None):
    """Images (N, r, r) float32 and masks (N, r, r) int at the evaluation resolution."""
    import imageio.v3 as iio
    from skimage.transform import resize

    from .preprocess import to_image_list

    names = sorted(p.name for p in (folder / "images").glob("*.png") if (folder / "masks" / p.name).exists())
    if limit:
        names = names[:limit]
    images, masks = [], []
    for n in names:
        img = to_image_list([iio.imread(folder / "images" / n)])[0][0]
        msk = np.asarray(iio.imread(folder / "masks" / n))
        msk = msk[..., 0] if msk.ndim == 3 else msk
        images.append(resize(img, (resolution, resolution), order=1, anti_aliasing=True, preserve_range=True))
        masks.append(resize(msk, (resolution, resolution), order=0, anti_aliasing=False, preserve_range=True))
    return np.asarray(images, np.float32), np.asarray(masks).astype(np.int32)


def draw_sets(masks: np.ndarray, size: int, n_sets: int, rng, min_pixels: int = 10):
    """{label: [index arrays of `size` images containing it]} for every foreground label."""
    out = {}
    for lab in np.unique(masks):
        if lab == 0:
            continue
        has = np.flatnonzero((masks == lab).reshape(len(masks), -1).sum(1) >= min_pixels)
        if len(has) < size:
            continue
        out[int(lab)] = [rng.choice(has, size, replace=False) for _ in range(n_sets)]
    return out


def _scores(labels_per_image, truth, k):
    """Set Dice, Set IoU and Set surface distance of one method on one set."""
    dice = pair_scores(labels_per_image, truth, k, "dice").max()
    iou = pair_scores(labels_per_image, truth, k, "iou").max()
    asd = set_surface_distance(labels_per_image, truth, k, candidates=5)
    return float(dice), float(iou), float(asd)


def evaluate_dataset(images, masks, sizes, m, k, n_sets, model, seed=0, methods=("pancakes", "kmeans", "slic")):
    """{method: {S: {"dice", "iou", "asd", "n"}}} for one dataset."""
    from .inference import segment_set

    rng = np.random.default_rng(seed)
    cache = {}
    if "pancakes" in methods:
        cache["pancakes"] = list(np.moveaxis(segment_set(images, m, k, model=model), 1, 0))
    if "slic" in methods:
        cache["slic"] = list(np.moveaxis(slic_per_image(images, m, k), 1, 0))
    results = {meth: {} for meth in methods}
    for size in sizes:
        sets = draw_sets(masks, size, n_sets, rng)
        acc = {meth: [] for meth in methods}
        for lab, index_sets in sets.items():
            for idx in index_sets:
                truth = masks[idx] == lab
                for meth in methods:
                    if meth == "kmeans":
                        pred = list(np.moveaxis(kmeans_set(images[idx], m, k, seed=seed), 1, 0))
                    else:
                        pred = [cache[meth][i] for i in idx]
                    acc[meth].append(_scores(pred, truth, k))
        for meth in methods:
            arr = np.asarray(acc[meth]) if acc[meth] else np.full((0, 3), np.nan)
            finite = arr[np.isfinite(arr[:, 2]), 2] if len(arr) else arr
            results[meth][size] = {
                "dice": float(arr[:, 0].mean() * 100) if len(arr) else None,
                "iou": float(arr[:, 1].mean() * 100) if len(arr) else None,
                "asd": float(np.median(finite)) if len(finite) else None,
                "n": int(len(arr)),
            }
    return results


def sweep_mk(images, masks, model, ms=(1, 3, 8, 15), ks=(5, 10, 20, 40), size=3, n_sets=10, seed=0):
    """Mean Set Dice (x100) of Pancakes over an M x K grid at set size ``size``."""
    from .inference import segment_set

    rng = np.random.default_rng(seed)
    sets = draw_sets(masks, size, n_sets, rng)
    table = {}
    for m in ms:
        for k in ks:
            per_image = list(np.moveaxis(segment_set(images, m, k, model=model), 1, 0))
            vals = [pair_scores([per_image[i] for i in idx], masks[idx] == lab, k, "dice").max()
                    for lab, index_sets in sets.items() for idx in index_sets]
            table[f"{m}x{k}"] = float(np.mean(vals) * 100) if vals else None
    return table


def format_markdown(results: dict, sizes, sweep: dict | None = None) -> str:
    lines = ["| dataset | method | " + " | ".join(f"Set Dice S={s}" for s in sizes) + " | Set IoU S=3 | Set ASD S=3 (px, median) |",
             "|---|---|" + "---|" * (len(sizes) + 2)]
    fmt = lambda v: "-" if v is None else f"{v:.1f}"
    for ds, per_method in results.items():
        for meth, per_size in per_method.items():
            ref = per_size.get(3) or per_size.get("3") or {}
            cells = [fmt((per_size.get(s) or per_size.get(str(s)) or {}).get("dice")) for s in sizes]
            lines.append(f"| {ds} | {meth} | " + " | ".join(cells) + f" | {fmt(ref.get('iou'))} | {fmt(ref.get('asd'))} |")
    if sweep:
        lines += ["", "M x K sweep (Pancakes, Set Dice x100, S=3):", ""]
        for ds, table in sweep.items():
            ms = sorted({int(key.split('x')[0]) for key in table})
            ks = sorted({int(key.split('x')[1]) for key in table})
            lines += [f"**{ds}**", "", "| M \\ K | " + " | ".join(map(str, ks)) + " |", "|---|" + "---|" * len(ks)]
            lines += [f"| {m} | " + " | ".join(fmt(table.get(f"{m}x{k}")) for k in ks) + " |" for m in ms]
            lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m napari_pancakes.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("data_dir")
    parser.add_argument("--sizes", default="1,2,3,5")
    parser.add_argument("--m", type=int, default=8)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--sets", type=int, default=20, help="sets drawn per label and set size")
    parser.add_argument("--limit", type=int, default=None, help="use at most this many images per dataset")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--sweep", action="store_true", help="also run the M x K sweep")
    parser.add_argument("--methods", default="pancakes,kmeans,slic")
    parser.add_argument("--out", default=None, help="write results.json and results.md here")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from .io_weights import load_model

    sizes = [int(s) for s in args.sizes.split(",")]
    methods = tuple(args.methods.split(","))
    model = load_model(args.weights, device="cpu")
    results, sweep = {}, {}
    t0 = time.perf_counter()
    for folder in find_datasets(Path(args.data_dir)):
        images, masks = load_dataset(folder, limit=args.limit)
        results[folder.name] = evaluate_dataset(images, masks, sizes, args.m, args.k, args.sets, model, args.seed, methods)
        if args.sweep:
            sweep[folder.name] = sweep_mk(images, masks, model, seed=args.seed)
        print(f"{folder.name}: done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    if len(results) > 1:
        results["mean"] = {
            meth: {s: {key: float(np.nanmean([r[meth][s][key] if r[meth][s][key] is not None else np.nan
                                             for r in results.values()]))
                       for key in ("dice", "iou", "asd")} for s in sizes}
            for meth in methods
        }
    md = format_markdown(results, sizes, sweep or None)
    print(md)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        meta = {"m": args.m, "k": args.k, "sets": args.sets, "weights": args.weights or "bundled",
                "seconds": round(time.perf_counter() - t0, 1)}
        (out / "results.json").write_text(json.dumps({"meta": meta, "results": results, "sweep": sweep}, indent=2))
        (out / "results.md").write_text(md + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
