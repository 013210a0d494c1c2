"""The evaluation harness: Pancakes against set-level k-means and per-image SLIC on fixed sets.

``python -m napari_pancakes.evaluate [--data-root DIR] [--weights W] [--out DIR] [--sweep]``
(also ``napari-pancakes evaluate`` and ``napari-pancakes-train evaluate``).

Sets come from the one dataset reader (:func:`.training.datasets.load_real_datasets`, data
root from ``--data-root`` or ``$NAPARI_PANCAKES_DATA``) at the working resolution, plus
synthetic sets from a seed stream training never uses. For every source, every evaluation
label and every set size S, ``n_sets`` sets of S images that all contain the label are
drawn with a fixed seed:

* **leave-out** datasets (``--holdout``, default the campaign's ``LEAVE_OUT``): all images,
  never trained on; this is the generalisation check;
* **training** datasets: only their validation split (every 10th subject, whole patients), never trained on,
  reported apart.

Each method gives (M, S, H, W) label maps (M=8, K=20 by default), scored by Set Dice, Set
IoU and set surface distance (:mod:`.metrics`). Two content checks run on the leave-out
images: *shifted-crop agreement* (two crops of one image offset by 24 px; on the pixels
they share, the share whose labels agree after one-to-one label matching, mean over
protocols) and *labels in use on a constant image* (the most labels any protocol uses).
Per-method scores are cached as JSON in the output folder, so baselines (which do not
change) are computed once. Output: ``results.json`` and ``results.md``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np

from .metrics import pair_scores, set_surface_distance

M, K = 8, 20
SIZES = (1, 3, 5)
METHODS = ("pancakes", "kmeans", "slic")
SHIFT = 24  # px at the working resolution, for the shifted-crop check
CROP = 96


def evaluation_sets(real: dict, n_sets: int, sizes=SIZES, seed: int = 2024, holdout=(),
                    synthetic: bool = True, apart=()) -> list[dict]:
    """Items (source, group, label, s, images (S, R, R), truth (S, R, R) bool), fixed by ``seed``.

    ``group`` is "leave-out" (all images of a held-out dataset), "training" (the validation
    split of a training dataset), "training, apart" (the same for the datasets in ``apart``,
    averaged on their own: e.g. a former leave-out group that a run then trained on) or "synthetic".
    """
    from .training.datasets import MIN_TARGET_PX, split_validation
    from .training.synthetic import synthetic_set

    rng = np.random.default_rng(seed)
    items = []
    if synthetic:
        for s in sizes:
            for _ in range(n_sets):
                while True:
                    images, labels = synthetic_set(rng, s)
                    counts = np.stack([np.bincount(lab.ravel(), minlength=labels.max() + 1) for lab in labels])
                    ok = np.flatnonzero((counts >= MIN_TARGET_PX).all(0))
                    ok = ok[ok > 0]
                    if ok.size:
                        v = int(rng.choice(ok))
                        items.append(dict(source="synthetic", group="synthetic", label=v, s=s, images=images,
                                          truth=labels == v))
                        break
    seen_split = split_validation({k: v for k, v in real.items() if k not in holdout})[1]
    for name in real:
        ds = real[name] if name in holdout else seen_split[name]
        group = "leave-out" if name in holdout else "training, apart" if name in apart else "training"
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
                    items.append(dict(source=name, group=group, label=v, s=s, images=ds.images[idx],
                                      truth=labels[idx] == v))
    return items


def method_functions(weights: Path | str | None, m: int = M, k: int = K) -> dict:
    """name -> function (S, R, R) images -> (M, S, R, R) labels, for every known method.

    "random_init" is the Pancakes network at its training initialisation (He), the
    reference that shows what training added.
    """
    from .baselines import kmeans_set, slic_per_image
    from .inference import segment_set

    cache: dict = {}

    def model():
        if "model" not in cache:
            from .io_weights import load_model

            cache["model"] = load_model(weights, device="cpu")
        return cache["model"]

    def random_model():
        if "random" not in cache:
            import torch

            from .model import Pancakes
            from .training.train import init_weights

            torch.manual_seed(0)
            net = Pancakes(model().config)
            init_weights(net)
            cache["random"] = net.eval()
        return cache["random"]

    return {
        "pancakes": lambda im: segment_set(im, m, k, model=model()),
        "random_init": lambda im: segment_set(im, m, k, model=random_model()),
        "kmeans": lambda im: kmeans_set(im, m, k),
        "slic": lambda im: slic_per_image(im, m, k),
    }


def score_item(labels: np.ndarray, truth: np.ndarray, k: int = K) -> tuple[float, float, float]:
    """Set Dice, Set IoU (fractions) and set surface distance (px) of (M, S, H, W) labels."""
    dice = float(pair_scores(labels, truth, k, "dice").max())
    iou = float(pair_scores(labels, truth, k, "iou").max())
    asd = float(set_surface_distance(labels, truth, k, candidates=5))
    return dice, iou, asd


def matched_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of pixels whose labels agree after matching the label ids of ``a`` and ``b`` one to one."""
    from scipy.optimize import linear_sum_assignment

    n = int(max(a.max(), b.max())) + 1
    table = np.bincount(a.ravel().astype(np.int64) * n + b.ravel(), minlength=n * n).reshape(n, n)
    rows, cols = linear_sum_assignment(-table)
    return float(table[rows, cols].sum() / a.size)


def shifted_crop_agreement(fn, images: np.ndarray, shift: int = SHIFT, crop: int = CROP) -> float:
    """Mean over images and protocols of :func:`matched_agreement` on the shared pixels of two
    ``crop`` x ``crop`` crops of each image offset by (``shift``, ``shift``).

    A method that follows content labels the shared pixels alike; one that follows position
    (where a pixel sits in its crop) does not.
    """
    scores = []
    for img in images:
        a = fn(img[None, :crop, :crop])[:, 0]  # (M, crop, crop)
        b = fn(img[None, shift:shift + crop, shift:shift + crop])[:, 0]
        shared_a, shared_b = a[:, shift:, shift:], b[:, :crop - shift, :crop - shift]
        scores += [matched_agreement(pa, pb) for pa, pb in zip(shared_a, shared_b)]
    return float(np.mean(scores))


def constant_image_labels(fn, size: int = 128) -> int:
    """Most labels any protocol uses on constant images (black, grey, white); 1 is right."""
    worst = 0
    for value in (0.0, 0.5, 1.0):
        labels = fn(np.full((1, size, size), value, np.float32))
        worst = max(worst, max(len(np.unique(p)) for p in labels[:, 0]))
    return worst


def summarise(items: list[dict], scores: dict[str, list]) -> list[dict]:
    """Rows per (source, S): per method, mean over labels of the mean over that label's sets."""
    rows = []
    keys = sorted({(it["group"], it["source"], it["s"]) for it in items})
    for group, source, s in keys:
        sel = [i for i, it in enumerate(items) if it["source"] == source and it["s"] == s]
        row = {"group": group, "source": source, "S": s, "n_sets": len(sel)}
        for method, vals in scores.items():
            per_label: dict = {}
            for i in sel:
                per_label.setdefault(items[i]["label"], []).append(vals[i])
            means = np.array([np.mean(np.asarray(v, float), 0) for v in per_label.values()])
            finite = means[np.isfinite(means[:, 2]), 2]
            row[method] = {"dice": 100 * float(means[:, 0].mean()), "iou": 100 * float(means[:, 1].mean()),
                           "asd": float(np.median(finite)) if finite.size else None}
        rows.append(row)
    return rows


def group_means(rows: list[dict], methods) -> dict:
    """{group: {S: {method: mean Set Dice over sources}}}."""
    out: dict = {}
    for group in sorted({r["group"] for r in rows}):
        for s in sorted({r["S"] for r in rows}):
            sel = [r for r in rows if r["group"] == group and r["S"] == s]
            if sel:
                out.setdefault(group, {})[s] = {m: float(np.mean([r[m]["dice"] for r in sel])) for m in methods}
    return out


def sweep_mk(weights, items: list[dict], ms=(1, 3, 8, 15), ks=(5, 10, 20, 40)) -> dict:
    """Mean Set Dice (x100) of Pancakes over an M x K grid on the given items (means per source first)."""
    from .inference import segment_set
    from .io_weights import load_model

    model = load_model(weights, device="cpu")  # once for the whole grid
    table = {}
    for m in ms:
        for k in ks:
            per_source: dict = {}
            for it in items:
                labels = segment_set(it["images"], m, k, model=model)
                per_source.setdefault(it["source"], []).append(pair_scores(labels, it["truth"], k).max())
            table[f"{m}x{k}"] = 100 * float(np.mean([np.mean(v) for v in per_source.values()]))
    return table


def format_markdown(result: dict) -> str:
    methods = result["methods"]
    fmt = lambda v: "-" if v is None else f"{v:.1f}"
    lines = [f"Set Dice x100 (M={result['m']}, K={result['k']}); weights: {result['weights']}", "",
             "## Means over sources", "", "| group | S | " + " | ".join(methods) + " |",
             "|---|---|" + "---|" * len(methods)]
    for group, per_s in result["means"].items():
        for s, vals in per_s.items():
            lines.append(f"| {group} | {s} | " + " | ".join(fmt(vals[m]) for m in methods) + " |")
    lines += ["", "## Per source (Set Dice / Set IoU / set surface distance px, median)", "",
              "| group | source | S | sets | " + " | ".join(methods) + " |", "|---|---|---|---|" + "---|" * len(methods)]
    for r in result["rows"]:
        cells = [f"{fmt(r[m]['dice'])} / {fmt(r[m]['iou'])} / {fmt(r[m]['asd'])}" for m in methods]
        lines.append(f"| {r['group']} | {r['source']} | {r['S']} | {r['n_sets']} | " + " | ".join(cells) + " |")
    if result.get("checks"):
        lines += ["", f"## Content checks ({result.get('checks_on', 'leave-out images')})", "",
                  "| method | shifted-crop agreement % | most labels on a constant image |", "|---|---|---|"]
        for meth, c in result["checks"].items():
            lines.append(f"| {meth} | {100 * c['shifted_crop_agreement']:.1f} | {c['constant_image_labels']} |")
    if result.get("sweep"):
        table = result["sweep"]
        ms = sorted({int(key.split("x")[0]) for key in table})
        ks = sorted({int(key.split("x")[1]) for key in table})
        lines += ["", "## M x K sweep (Pancakes, leave-out, S=3)", "", "| M \\ K | " + " | ".join(map(str, ks)) + " |",
                  "|---|" + "---|" * len(ks)]
        lines += [f"| {m} | " + " | ".join(fmt(table.get(f"{m}x{k}")) for k in ks) + " |" for m in ms]
    return "\n".join(lines) + "\n"


def evaluate(weights: Path | str | None = None, out_dir: Path | str = "runs/eval", methods=METHODS,
             n_sets: int = 8, sizes=SIZES, holdout=None, data_root: Path | str | None = None,
             cache_dir: Path | str | None = "runs/cache", sweep: bool = False, checks: bool = True,
             threads: int = 2, m: int = M, k: int = K, mni: bool = True, apart=()) -> dict:
    """Score ``methods`` and write ``results.json`` / ``results.md`` to ``out_dir``; returns the result."""
    import torch

    from .training.datasets import LEAVE_OUT, load_real_datasets

    torch.set_num_threads(threads)
    holdout = tuple(LEAVE_OUT if holdout is None else holdout)
    apart = tuple(apart or ())
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    real = load_real_datasets(root=data_root, cache_dir=Path(cache_dir) if cache_dir else None, mni=mni)
    items = evaluation_sets(real, n_sets, sizes, holdout=holdout, apart=apart)
    fns = method_functions(weights, m, k)
    digest = hashlib.sha1()  # cached baseline scores are reused only for these very sets
    for it in items:
        digest.update(f"{it['source']}/{it['label']}/{it['s']}".encode())
        digest.update(np.packbits(it["truth"]).tobytes())
    items_digest = digest.hexdigest()
    scores, seconds = {}, {}
    for method in methods:
        path = out_dir / f"scores-{method}.json"
        key = {"n_items": len(items), "items": items_digest, "m": m, "k": k,
               "weights": str(weights) if method in ("pancakes", "random_init") else None}
        if path.is_file() and method in ("kmeans", "slic"):
            cached = json.loads(path.read_text())
            if all(cached.get(a) == b for a, b in key.items()):
                scores[method], seconds[method] = cached["scores"], cached["seconds"]
                continue
        t0 = time.time()
        scores[method] = [score_item(fns[method](it["images"]), it["truth"], k) for it in items]
        seconds[method] = time.time() - t0
        path.write_text(json.dumps({**key, "seconds": seconds[method], "scores": scores[method]}))
        print(f"{method}: {len(items)} sets in {seconds[method]:.0f} s", flush=True)
    rows = summarise(items, scores)
    result = {"m": m, "k": k, "weights": str(weights or "bundled"), "holdout": list(holdout), "apart": list(apart),
              "n_sets": n_sets, "methods": list(methods), "seconds": seconds, "rows": rows,
              "means": group_means(rows, methods)}
    check_images = [real[name].images[:: max(1, len(real[name]) // 10)][:10] for name in holdout if name in real]
    result["checks_on"] = "leave-out images" if check_images else "synthetic images (no leave-out data)"
    if not check_images:
        check_images = [it["images"][:1] for it in items[:10]]
    if checks:
        result["checks"] = {
            method: {"constant_image_labels": constant_image_labels(fns[method]),
                     "shifted_crop_agreement": shifted_crop_agreement(fns[method], np.concatenate(check_images))}
            for method in methods if method in ("pancakes", "kmeans", "random_init")}
    if sweep and "pancakes" in methods:
        result["sweep"] = sweep_mk(weights, [it for it in items if it["group"] == "leave-out" and it["s"] == 3])
    (out_dir / "results.json").write_text(json.dumps(result, indent=1))
    (out_dir / "results.md").write_text(format_markdown(result))
    return result


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="python -m napari_pancakes.evaluate",
                                          description=__doc__.split("\n\n")[0])
    csv = lambda text: [t for t in text.split(",") if t]
    p.add_argument("--weights", default=None, help="safetensors file (default: the bundled weights)")
    p.add_argument("--out", default="runs/eval", help="folder for results.json, results.md and per-method scores")
    p.add_argument("--methods", type=csv, default=list(METHODS), help="comma-separated: pancakes,kmeans,slic,random_init")
    p.add_argument("--n-sets", type=int, default=8, help="sets per (source, label, S)")
    p.add_argument("--sizes", type=lambda t: [int(v) for v in t.split(",")], default=list(SIZES))
    p.add_argument("--holdout", type=csv, default=None, help="leave-out datasets (default: the campaign's group)")
    p.add_argument("--apart", type=csv, default=[],
                   help="training datasets averaged apart (e.g. a former leave-out group)")
    p.add_argument("--data-root", default=None, help="dataset folder (default: $NAPARI_PANCAKES_DATA)")
    p.add_argument("--cache-dir", default="runs/cache", help="preprocessed-dataset cache")
    p.add_argument("--sweep", action="store_true", help="also the M x K sweep on the leave-out group")
    p.add_argument("--no-checks", dest="checks", action="store_false", help="skip the content checks")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--m", type=int, default=M)
    p.add_argument("--k", type=int, default=K)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    result = evaluate(args.weights, args.out, args.methods, args.n_sets, args.sizes, args.holdout, args.data_root,
                      args.cache_dir, args.sweep, args.checks, args.threads, args.m, args.k, apart=args.apart)
    print(format_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
