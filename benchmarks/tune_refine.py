"""Choose the refinement predictor's settings on validation images of TRAINING sources.

Never on LEAVE_OUT: the images are the validation split of the campaigns (every 10th subject
of each training dataset, ``split_validation``; target = label 1), 256 x 256, the best
Pancakes label of each image as start (b). For each variant (``method[:lambda]``:
``hybrid:0.5`` sets the weight of the network prior in the hybrid, ``classical:0.005`` the
weight of a starting mask in the classical walker; ``hybrid:0.5:0.5`` also the prior's decay
per click; a ``+local`` suffix makes single positive clicks local too,
``session.LOCAL_POSITIVE``; ``+image`` runs the hybrid's walker on the image's pixels,
``session.HYBRID_GRID = "image"``; ``+nokeep`` turns ``session.KEEP_DETAIL`` off; ``+radius:0.2`` sets ``session.LOCAL_RADIUS``), the simulated user gives Dice after 0..10 clicks for (a)
nothing, (b) the Pancakes label, (c) a box. Writes ``benchmarks/results/refine-tune-<tag>.json``.

    OMP_NUM_THREADS=1 python benchmarks/tune_refine.py --data ../shared/data \\
        --weights runs/refiner-campaign/best.safetensors --variants network hybrid:0.1 hybrid:0.5 --tag hybrid
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def validation_items(root, per: int, cache: Path, colour: bool = False):
    """(source, index, image, target, Pancakes start) per item; with ``colour`` an RGB source's
    image is its (256, 256, 3) colour (``datasets.read_colour_image``), as a user would give it."""
    from napari_pancakes import load_model, segment_set
    from napari_pancakes.training.datasets import LEAVE_OUT, folder_names, load_real_datasets, read_colour_image
    from napari_pancakes.training.refiner import pancakes_start

    names = [n for n in folder_names(root) if n not in LEAVE_OUT]
    real = load_real_datasets(names, root=root, res=256, cache_dir=cache, mni=False)
    model = load_model(device="cpu")
    items = []
    for name, ds in real.items():
        val = [int(i) for i in np.flatnonzero(ds.validation_mask()) if (ds.labels[i] == 1).sum() >= 16][:per]
        if not val:
            continue
        imgs = ds.images[val].astype(np.float32)
        labs = segment_set(imgs, 8, 20, model=model)
        for s, i in enumerate(val):
            t = ds.labels[i] == 1
            rgb = read_colour_image(root, name, i, 256) if colour else None
            items.append((name, int(i), imgs[s] if rgb is None else rgb, t, pancakes_start(labs[:, s], t, None)))
    return items


def main(argv=None):
    import torch

    import napari_pancakes.refine.session as session_module
    from napari_pancakes.refine import load_refiner
    from napari_pancakes.training.datasets import data_root
    from napari_pancakes.training.refiner import simulate_box
    from napari_pancakes.training.simulate import simulate_session

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None)
    ap.add_argument("--cache", type=Path, default=Path("runs/cache"))
    ap.add_argument("--weights", type=Path, default=None)
    ap.add_argument("--variants", nargs="+", default=["network", "hybrid:0.1", "hybrid:0.5"])
    ap.add_argument("--per-source", type=int, default=1)
    ap.add_argument("--clicks", type=int, default=10)
    ap.add_argument("--tag", default="dev")
    ap.add_argument("--modes", nargs="+", default=["a_nothing", "b_pancakes", "c_box"],
                    help="starts to run (mean_all only when all three run)")
    ap.add_argument("--colour", action="store_true",
                    help="give RGB sources' images to the session as RGB (the reader keeps intensity only)")
    args = ap.parse_args(argv)
    root = data_root(args.data)
    if root is None or not root.is_dir():
        print("skip: no data root", file=sys.stderr)
        return 0
    torch.set_num_threads(1)
    items = validation_items(root, args.per_source, args.cache, colour=args.colour)
    ref = load_refiner(args.weights, device="cpu")
    out = {"weights": str(args.weights or "bundled"), "weights_meta": {k: v for k, v in ref.metadata.items() if k != "config"},
           "items": [(n, i) for n, i, *_ in items], "clicks": args.clicks, "colour": args.colour,
           "rgb_items": sum(img.ndim == 3 for _, _, img, *_ in items), "variants": {}}
    defaults = (session_module.HYBRID_LAMBDA, session_module.HYBRID_DECAY, session_module.CLASSICAL_PRIOR_LAMBDA,
                session_module.LOCAL_RADIUS)
    for v_name in args.variants:
        (session_module.HYBRID_LAMBDA, session_module.HYBRID_DECAY, session_module.CLASSICAL_PRIOR_LAMBDA,
         session_module.LOCAL_RADIUS) = defaults
        v, *flags = v_name.split("+")
        session_module.LOCAL_POSITIVE = "local" in flags
        session_module.HYBRID_GRID = "image" if "image" in flags else "work"
        session_module.KEEP_DETAIL = "nokeep" not in flags
        for f in flags:
            if f.startswith("radius:"):
                session_module.LOCAL_RADIUS = float(f.partition(":")[2])
        method, _, lam = v.partition(":")
        lam, _, decay = lam.partition(":")
        if lam and method == "hybrid":
            session_module.HYBRID_LAMBDA = float(lam)
            session_module.HYBRID_DECAY = float(decay) if decay else 1.0
        if lam and method == "classical":
            session_module.CLASSICAL_PRIOR_LAMBDA = float(lam)
        res, t0 = {}, time.time()
        for mode in args.modes:
            curves = []
            for _, _, img, t, start in items:
                if mode == "b_pancakes" and start is None:
                    continue
                d, _ = simulate_session(ref if method != "classical" else None, img, t, args.clicks, method=method,
                                        initial_mask=start if mode == "b_pancakes" else None,
                                        box=simulate_box(t, None) if mode == "c_box" else None)
                curves.append(d)
            res[mode] = [round(float(x), 4) for x in np.mean(curves, 0)]
        res.update({f"mean_{m}": round(float(np.mean(res[m][1:])), 4) for m in args.modes})
        if len(set(args.modes)) == 3:
            res["mean_all"] = round(float(np.mean([np.mean(res[m][1:]) for m in args.modes])), 4)
        out["variants"][v_name] = res
        print(v_name, f"{time.time() - t0:.0f} s", json.dumps(res), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"refine-tune-{args.tag}.json").write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
