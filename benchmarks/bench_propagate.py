"""Correct once, fix everywhere: Dice on the *other* images of a set before and after one correction.

    NAPARI_PANCAKES_DATA=../shared/data python benchmarks/bench_propagate.py [--sets 8] [--s 6] \
        [--m 8] [--k 20] [--clicks 5] [--out benchmarks/results/propagate.json]

On each held-out dataset (``training.datasets.LEAVE_OUT``, never seen in training), for random
sets of S images (read with ``load_real_datasets`` at 128 px), whose target (label 1 of the
annotation) is present in every image:

1. the user picks a (protocol, label) and applies it as a saved :class:`Protocol`: either the
   one with the best Set Dice over the whole set ("set": the oracle choice used to score the
   explorer, which already knows every image's truth) or the best on image 1 alone ("image": the
   user picks what looks right on the image they are about to correct);
2. the simulated user corrects that label on image 1 only, either by painting the true mask
   ("paint") or with ``--clicks`` clicks of the click-refinement model, each placed by the
   simulated user of ``refine.simulate`` ("clicks");
3. :meth:`ProtocolSet.propagate` learns the label from that one mask and re-labels the set.

Reported per dataset and overall: mean Dice of the label on images 2..S before and after
(the corrected image is excluded), the gain, and the share of sets where it improved.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch


CHOICES = ("set", "image")
MODES = ("paint", "clicks")


def dice(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    den = a.sum() + b.sum()
    return 1.0 if den == 0 else float(2 * (a & b).sum() / den)


def choose_sets(ds, rng, n_sets, s):
    """Sets of s images whose label 1 covers at least 16 pixels in every member."""
    ok = np.flatnonzero((ds.labels == 1).reshape(len(ds), -1).sum(1) >= 16)
    if ok.size < s:
        return []
    return [rng.choice(ok, size=s, replace=False) for _ in range(n_sets)]


def clicked_mask(refiner, image, start, truth, n_clicks):
    from napari_pancakes.refine import RefineSession
    from napari_pancakes.refine.simulate import next_click

    session = RefineSession(refiner, image, initial_mask=start)
    for _ in range(n_clicks):
        click = next_click(session.mask, truth)
        if click is None:
            break
        (y, x), positive = click
        session.add_click(y, x, positive)
    return session.mask.copy()


def one_set(model, refiner, images, truth, labels, choice, args) -> dict:
    """Choose a (protocol, label), correct it on image 1 (paint, clicks), propagate, measure."""
    from napari_pancakes.metrics import pair_scores
    from napari_pancakes.protocol import Protocol, ProtocolSet

    n = len(truth) if choice == "set" else 1
    scores = pair_scores(labels[:, :n], truth[:n], args.k, "dice")
    pm, pk = np.unravel_index(int(np.argmax(scores)), scores.shape)
    protocol = Protocol.from_model(model, args.m, args.k, int(pm))
    label = int(pk) + 1
    row = {"choice": choice, "protocol": int(pm) + 1, "label": label}
    for mode in args.modes.split(","):
        ps = ProtocolSet(protocol, images, model=model)
        before = [dice(lab == label, t) for lab, t in zip(ps.labels, truth)]
        if mode == "paint":
            corrected = truth[0]
        else:
            corrected = clicked_mask(refiner, images[0], ps.labels[0] == label, truth[0], args.clicks)
        if not corrected.any() or corrected.all():
            continue
        ps.propagate(0, corrected, label, **({} if args.keep is None else {"keep": args.keep}),
                     **({} if args.bias is None else {"bias": args.bias}))
        after = [dice(lab == label, t) for lab, t in zip(ps.labels, truth)]
        row[mode] = {"corrected_dice": round(dice(corrected, truth[0]), 4), "image1_before": round(before[0], 4),
                     "image1_after": round(after[0], 4), "before": round(float(np.mean(before[1:])), 4),
                     "after": round(float(np.mean(after[1:])), 4),
                     "gain": round(float(np.mean(after[1:]) - np.mean(before[1:])), 4)}
    return row


def summarise(rows, names, choice, mode) -> dict:
    per = {}
    for name in names + ["all"]:
        sel = [r[mode] for r in rows if mode in r and r["choice"] == choice and name in ("all", r["dataset"])]
        if sel:
            per[name] = {"sets": len(sel), **{key: round(float(np.mean([r[key] for r in sel])), 4)
                                              for key in ("before", "after", "gain", "image1_before", "image1_after")},
                         "improved": round(float(np.mean([r["gain"] > 0 for r in sel])), 3)}
    return per


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--datasets", default=None, help="comma-separated (default: training.datasets.LEAVE_OUT)")
    parser.add_argument("--sets", type=int, default=8)
    parser.add_argument("--s", type=int, default=6)
    parser.add_argument("--m", type=int, default=8)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--clicks", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bias", choices=("dice", "fit"), default=None,
                        help="how the corrected label's bias is set (default: protocol.BIAS)")
    parser.add_argument("--keep", type=float, default=None, help="weight of the other images' anchor (default: protocol.KEEP)")
    parser.add_argument("--modes", default=",".join(MODES), help="paint,clicks")
    parser.add_argument("--out", default=None)
    parser.add_argument("--weights", default=None, help="Pancakes file (default: bundled); on the leave-out "
                        "group it must have held that group out, e.g. campaign/pancakes/best.safetensors")
    parser.add_argument("--refiner-weights", default=None, help="refiner file (default: bundled); the same rule, "
                        "e.g. runs/refiner-campaign/best.safetensors")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from napari_pancakes import load_model, segment_set
    from napari_pancakes.protocol import BIAS, KEEP
    from napari_pancakes.refine import load_refiner
    from napari_pancakes.training.datasets import LEAVE_OUT, data_root, load_real_datasets, saw_leave_out

    if data_root() is None:
        print("set NAPARI_PANCAKES_DATA to the shared datasets folder", file=sys.stderr)
        return 2
    names = args.datasets.split(",") if args.datasets else list(LEAVE_OUT)
    data = load_real_datasets(names, res=128, mni=False)
    model = load_model(args.weights, device="cpu")
    refiner = load_refiner(args.refiner_weights, device="cpu")
    for what, flag, held in (("Pancakes", "--weights", model.metadata.get("holdout")),
                             ("refiner", "--refiner-weights", refiner.metadata.get("leave_out"))):
        seen = [n for n in saw_leave_out(held) if n in names]
        if seen:
            raise SystemExit(f"the {what} weights were trained on {seen}: pass {flag} with a file that held them out")

    def weights_note() -> str:
        return (f"Pancakes {args.weights or 'bundled'} (step {model.metadata.get('steps', '?')}), refiner "
                f"{args.refiner_weights or 'bundled'} (iteration {refiner.metadata.get('iterations', '?')})")
    rng = np.random.default_rng(args.seed)
    rows = []
    t0 = time.perf_counter()
    for name in names:
        if name not in data:
            print(f"{name}: not found, skipped", flush=True)
            continue
        ds = data[name]
        for idx in choose_sets(ds, rng, args.sets, args.s):
            images = ds.images[idx]
            truth = ds.labels[idx] == 1
            labels = segment_set(images, args.m, args.k, model=model)
            for choice in CHOICES:
                row = one_set(model, refiner, images, truth, labels, choice, args)
                rows.append({"dataset": name, "images": [int(i) for i in idx], **row})
                print(f"{name:18s} {choice:5s} set {len(rows):2d}: protocol {row['protocol']} label {row['label']:2d}  "
                      + "  ".join(f"{m}: {row[m]['before']:.3f} -> {row[m]['after']:.3f}" for m in MODES if m in row),
                      flush=True)
    summary = {f"{choice}/{mode}": summarise(rows, names, choice, mode) for choice in CHOICES
               for mode in args.modes.split(",")}
    seconds = time.perf_counter() - t0
    lines = ["| choice / correction | dataset | sets | image 1 before -> after | others: Dice before | after | gain "
             "| sets improved |", "|---|---|---|---|---|---|---|---|"]
    for mode, per in summary.items():
        for name, v in per.items():
            lines.append(f"| {mode} | {name} | {v['sets']} | {v['image1_before']:.3f} -> {v['image1_after']:.3f} | "
                         f"{v['before']:.3f} | {v['after']:.3f} | {v['gain']:+.3f} | {100 * v['improved']:.0f} % |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({
            "what": "Dice of the chosen label on the other images of a set, before and after propagating one "
                    "corrected image (image 1)", "m": args.m, "k": args.k, "s": args.s, "clicks": args.clicks,
            "datasets": names, "seed": args.seed, "keep": args.keep if args.keep is not None else KEEP,
            "bias": args.bias or BIAS, "weights": weights_note(), "seconds": round(seconds, 1), "torch": torch.__version__,
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "summary": summary, "sets": rows}, indent=1))
        out.with_suffix(".md").write_text(
            f"# Propagating one correction (`benchmarks/bench_propagate.py`)\n\nM = {args.m}, K = {args.k}, S = {args.s}, "
            f"keep = {args.keep if args.keep is not None else KEEP}, bias = {args.bias or BIAS}, datasets {', '.join(names)}, "
            f"{args.clicks} clicks, weights {weights_note()}; Dice on images 2..S (the corrected image "
            f"excluded).\n\n{table}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
