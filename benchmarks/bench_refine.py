"""Benchmark click refinement with a simulated user on the leave-out datasets (never trained on).

For each dataset of ``LEAVE_OUT`` (read with the one reader at 256 x 256; target = label 1),
an evenly spaced subset of images, and each predictor (``network``, ``hybrid``,
``classical`` = seeded random walker, see ``napari_pancakes.refine.session``), three starts:

(a) from nothing, then clicks; (b) from the best Pancakes label of the set (the (m, k) with
the highest set Dice, M=8, K=20), then clicks; (c) a box (the
target's bounding box), then clicks. The simulated user clicks the largest error region at
its point farthest from the boundary. Reports Dice after 0..N clicks, NoC@85 / NoC@90
(capped at N), per dataset and averaged over datasets, and ms per prompt at 256 px.
Writes ``benchmarks/results/refine.{json,md}`` (``--tag`` adds a suffix).

    OMP_NUM_THREADS=1 python benchmarks/bench_refine.py --data ../shared/data --max-images 12 \\
        --weights runs/refiner-campaign/best.safetensors --pancakes-weights campaign/pancakes/best.safetensors

``--sizes`` writes only ``refine-sizes[-TAG].{json,md}`` (:func:`size_fidelity`: one click on
synthetic discs of radius 2-40 px; no data needed).

``--compare BASE.json CANDIDATE.json`` writes only ``refine-compare[-TAG].{json,md}``
(:func:`compare`: per-image paired differences with 95 % intervals; results written since the
per-image curves were kept).

``--ceiling`` writes only ``refine-ceiling.{json,md}``: what any click model could reach on
these targets, with no model run. "grid": Dice of the truth after the refiner's 128 x 128
working grid and back (the cost of the grid); "k components": Dice of the truth's k largest
connected components, i.e. a perfect user-and-model pair where each click yields one whole
component (an instance per click). Where a target has many components (all nuclei of an
image as one label), clicks that each add an instance cannot reach high Dice in a few clicks.

``--click-agreement`` writes only ``refine-click-agreement[-TAG].{json,md}``
(:func:`click_agreement`): does the network's answer already agree with every click the user has
given? If it does, fine-tuning its last layer on the clicks at test time has nothing to fit.

``--large`` writes only ``refine-large[-TAG].{json,md}`` (:func:`large_images`; no data needed):
seconds per prompt (a click, a negative click far away, a box) and the peak of memory that
Python allocations (numpy, scipy) took, on synthetic images of 256 to 3000 px a side.

``--locality`` writes only ``refine-locality[-TAG].{json,md}`` (:func:`locality`): after a negative
click kept something far from it (the shown mask holds pixels its answer without locality dropped), how
often does the next prompt remove them anyway?

Both models must have held the leave-out group out (their metadata say so; the run refuses
others): the shipped all-data weights trained on it.
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

RESULTS = Path(__file__).resolve().parent / "results"
MODES = ("a_nothing", "b_pancakes", "c_box")
MODE_NAMES = {"a_nothing": "(a) nothing", "b_pancakes": "(b) best Pancakes label", "c_box": "(c) box then clicks"}


def load_leave_out(root, max_images: int | None, cache: Path):
    from napari_pancakes.training.datasets import LEAVE_OUT, load_real_datasets

    real = load_real_datasets(list(LEAVE_OUT), root=root, res=256, cache_dir=cache, mni=False)
    out = {}
    for name, ds in real.items():
        idx = [i for i in range(len(ds)) if (ds.labels[i] == 1).sum() >= 16]
        if max_images and len(idx) > max_images:
            idx = [idx[i] for i in np.linspace(0, len(idx) - 1, max_images).round().astype(int)]
        out[name] = (ds.images[idx].astype(np.float32), ds.labels[idx] == 1, idx)
    return out


def best_pancakes_labels(images, truths, model, m: int = 8, k: int = 20):
    """Per-image masks of the best (m, k) candidate of the set (highest set Dice)."""
    from napari_pancakes import segment_set
    from napari_pancakes.metrics import pair_scores

    labels = segment_set(images, m, k, model=model)
    preds = [labels[:, s] for s in range(labels.shape[1])]
    scores = pair_scores(preds, list(truths), k)
    bm, bk = np.unravel_index(int(np.argmax(scores)), scores.shape)
    return [p[bm] == bk for p in preds], (int(bm), int(bk)), float(scores[bm, bk])


def summarise(curves: np.ndarray, times, n: int) -> dict:
    from napari_pancakes.training.simulate import clicks_to_reach

    return {"dice": [round(float(v), 4) for v in curves.mean(0)],
            "noc85": round(float(np.mean([clicks_to_reach(c, 0.85, n) for c in curves])), 2),
            "noc90": round(float(np.mean([clicks_to_reach(c, 0.90, n) for c in curves])), 2),
            "reached85": round(float(np.mean((curves >= 0.85).any(1))), 3),
            "ms_per_prompt_median": round(1000 * float(np.median(times)), 1) if times else None,
            "per_image": [[round(float(v), 4) for v in c] for c in curves]}


def compare(base: dict, cand: dict, at: int = 5) -> dict:
    """Paired per-image differences (candidate - base) of two results on the same images: Dice
    after ``at`` clicks and the mean over clicks 1..N, per method and start, pooled over the
    datasets' images, with 95 % intervals (``training.refiner.paired_difference``). Why: two
    stage-1 files differ by about one point on the 48-image mean, the size of that mean's own
    spread, so a recipe choice needs the interval, not two means."""
    from napari_pancakes.training.refiner import paired_difference

    for name, entry in base["sets"].items():
        other = cand["sets"].get(name, {})
        if any(other.get(key) != entry[key] for key in ("image_indices", "best_pair")):
            raise SystemExit(f"{name}: the two results are not on the same images and starts")
    out = {"base": base["weights"], "candidate": cand["weights"], "at": at, "methods": {}}
    for method in [m for m in base["methods"] if m in cand["methods"]]:
        out["methods"][method] = {}
        for mode in MODES:
            pairs = []
            for name, entry in base["sets"].items():
                other = cand["sets"][name]
                pairs += list(zip(entry[method][mode]["per_image"], other[method][mode]["per_image"]))
            b, c = (np.array(x) for x in zip(*pairs))
            out["methods"][method][mode] = {f"dice_at_{at}": paired_difference(list(c[:, at]), list(b[:, at])),
                                            "mean_1_to_n": paired_difference(list(c[:, 1:].mean(1)), list(b[:, 1:].mean(1)))}
    return out


def compare_markdown(res: dict) -> str:
    at = res["at"]
    md = (f"# Paired comparison on the leave-out images\n\nCandidate `{res['candidate']}` minus base `{res['base']}`, "
          f"per image (all datasets' images pooled), Dice points; 95 % interval (paired t). See `bench_refine.py --compare`.\n\n"
          f"| method | start | images | Dice after {at} | interval | mean over 1..N | interval |\n|---|---|---|---|---|---|---|\n")
    for method, modes in res["methods"].items():
        for mode, r in modes.items():
            d, m = r[f"dice_at_{at}"], r["mean_1_to_n"]
            md += (f"| {method} | {MODE_NAMES[mode]} | {d['pairs']} | {100 * d['mean_difference']:+.1f} | "
                   f"{100 * d['ci95'][0]:+.1f} .. {100 * d['ci95'][1]:+.1f} | {100 * m['mean_difference']:+.1f} | "
                   f"{100 * m['ci95'][0]:+.1f} .. {100 * m['ci95'][1]:+.1f} |\n")
    return md


def session_settings(pairs) -> dict:
    """``NAME=VALUE`` pairs -> {NAME: value} for module switches of ``refine.session`` (an experiment's
    variant, e.g. ``LOCAL_RADIUS=0.2``); the value takes the type of the switch's default."""
    import napari_pancakes.refine.session as session_module

    out = {}
    for pair in pairs or []:
        name, _, value = pair.partition("=")
        if not name.isupper() or not hasattr(session_module, name):
            raise SystemExit(f"--session {pair}: refine.session has no switch {name!r}")
        kind = type(getattr(session_module, name))
        try:
            out[name] = {"1": True, "true": True, "0": False, "false": False}[value.lower()] if kind is bool else kind(value)
        except (KeyError, ValueError):
            raise SystemExit(f"--session {pair}: {name} takes a {kind.__name__}") from None
    return out


def run(args) -> dict:
    import torch

    from napari_pancakes.refine import load_refiner
    from napari_pancakes.training.datasets import data_root
    from napari_pancakes.training.refiner import simulate_box
    from napari_pancakes.training.simulate import simulate_session

    torch.set_num_threads(1)
    import napari_pancakes.refine.session as session_module

    if args.hybrid_decay is not None:
        session_module.HYBRID_DECAY = args.hybrid_decay
    for name, value in session_settings(args.session).items():
        setattr(session_module, name, value)
    from napari_pancakes import load_model
    from napari_pancakes.training.datasets import read_colour_image, saw_leave_out

    refiner = load_refiner(args.weights, device="cpu")
    pancakes = load_model(args.pancakes_weights, device="cpu")
    # a benchmark of images the models never saw: refuse weights trained on the leave-out group
    # (the all-data stages that ship); pass the leave-out runs' files instead
    for what, flag, held in (("refiner", "--weights", refiner.metadata.get("leave_out")),
                             ("Pancakes", "--pancakes-weights", pancakes.metadata.get("holdout"))):
        if saw_leave_out(held):
            raise SystemExit(f"the {what} weights were trained on {saw_leave_out(held)}, which this benchmark "
                             f"holds out: pass {flag} with the leave-out run's file")
    root = data_root(args.data)
    data = load_leave_out(root, args.max_images, args.cache)
    if args.invert:  # polarity robustness: the same targets with every image's intensities inverted
        data = {name: (1 - images, truths, idx) for name, (images, truths, idx) in data.items()}
    res = {"inverted": args.invert, "colour": args.colour, "weights": str(args.weights or "bundled refiner_default.safetensors"),
           "weights_meta": {k: v for k, v in refiner.metadata.items() if k not in ("config",)},
           "clicks": args.clicks, "methods": args.methods, "max_images": args.max_images,
           "reused": str(args.reuse) if args.reuse else None, "hybrid_decay": args.hybrid_decay, "session": session_settings(args.session),
           "pancakes_weights": str(args.pancakes_weights or "bundled"),
           "pancakes_weights_steps": str(pancakes.metadata.get("steps", "?")),
           "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(), "sets": {}}
    reuse = json.loads(args.reuse.read_text()) if args.reuse else {"sets": {}}
    for name, (images, truths, idx) in data.items():
        starts, pair, set_dice = best_pancakes_labels(images, truths, pancakes)
        if args.colour:  # the session gets an RGB dataset's colour, as from a user; Pancakes took intensity
            images = [rgb if (rgb := read_colour_image(root, name, i, 256)) is not None else img
                      for img, i in zip(images, idx)]
        entry = {"images": len(images), "image_indices": [int(i) for i in idx], "best_pair": pair,
                 "best_pair_set_dice": round(set_dice, 4)}
        old = reuse["sets"].get(name, {})
        for method in args.methods:
            same_starts = all(old.get(key) == entry[key] for key in ("image_indices", "best_pair", "best_pair_set_dice"))
            if method in old and same_starts and reuse["clicks"] == args.clicks and reuse.get("colour", False) == args.colour:
                # refiner-independent (classical) curves from --reuse, when the Pancakes starts are the same too
                entry[method] = old[method]
                print(name, method, "reused from", args.reuse, flush=True)
                continue
            entry[method] = {}
            for mode in MODES:
                curves, times = [], []
                for img, truth, start in zip(images, truths, starts):
                    d, t = simulate_session(refiner, img, truth, args.clicks, method=method,
                                            initial_mask=start if mode == "b_pancakes" else None,
                                            box=simulate_box(truth, None) if mode == "c_box" else None)
                    curves.append(d)
                    times += t
                entry[method][mode] = summarise(np.array(curves), times, args.clicks)
            print(name, method, {m: entry[method][m]["dice"][5] for m in MODES}, flush=True)
        res["sets"][name] = entry
    res["mean"] = mean_over_sets(res["sets"], args.methods)
    res["load_average_1min_end"] = round(os.getloadavg()[0], 2)
    return res


def mean_over_sets(sets: dict, methods) -> dict:
    """The "mean" row: per method and mode, the mean over datasets of their :func:`summarise`
    entries (the median of their ms per prompt)."""
    out = {}
    for method in methods:
        out[method] = {}
        for mode in MODES:
            es = [e[method][mode] for e in sets.values()]
            out[method][mode] = {k: [round(float(v), 4) for v in np.mean([e[k] for e in es], 0)]
                                 if k == "dice" else round(float(np.mean([e[k] for e in es])), 2)
                                 for k in ("dice", "noc85", "noc90", "reached85")}
            out[method][mode]["ms_per_prompt_median"] = round(float(np.median(
                [e["ms_per_prompt_median"] for e in es])), 1)
    return out


def to_markdown(res: dict) -> str:
    n = res["clicks"]
    meta = res["weights_meta"]
    trained = (f"the mean of the weights of {', '.join(json.loads(meta['averaged_from']))}" if "averaged_from" in meta
               else f"{meta.get('iterations', '?')} iterations, {meta.get('train_minutes', '?')} min")
    lines = ["# Click refinement benchmark (leave-out datasets)", "",
             f"Simulated user (largest error region, farthest-from-boundary point), {n} clicks, images at 256 x 256, "
             f"target = label 1; up to {res['max_images']} evenly spaced images per dataset. Dice in %, mean over images "
             f"(the mean row: mean over datasets). NoC@X: clicks to reach Dice X% (capped at {n}). (c): Dice at 0 is "
             f"after the box alone. Refiner weights: {res['weights']} ({trained}). Pancakes weights for (b): step {res.get('pancakes_weights_steps', '?')}. CPU: {res['cpu_count']} cores, 1 torch thread, load average "
             f"{res['load_average_1min_end']} at the end."
             + (" **Every image inverted (1 - intensity).**" if res.get("inverted") else ""), ""]
    cols = " | ".join(str(i) for i in range(n + 1))
    for mode in MODES:
        lines += [f"## {MODE_NAMES[mode]}", "", f"| dataset | method | {cols} | NoC@85 | NoC@90 | ms/prompt |",
                  "|---|---|" + "---|" * (n + 1) + "---|---|---|"]
        rows = list(res["sets"].items()) + [("**mean**", res["mean"])]
        for name, e in rows:
            for method in res["methods"]:
                m = e[method][mode]
                vals = " | ".join(f"{100 * v:.1f}" for v in m["dice"])
                lines.append(f"| {name} | {method} | {vals} | {m['noc85']:.2f} | {m['noc90']:.2f} | "
                             f"{m['ms_per_prompt_median']} |")
        lines.append("")
    lines += ["## Best Pancakes label per dataset (start of (b))", "", "| dataset | images | best (m, k) | set Dice |",
              "|---|---|---|---|"]
    for name, e in res["sets"].items():
        lines.append(f"| {name} | {e['images']} | {tuple(e['best_pair'])} | {100 * e['best_pair_set_dice']:.1f} |")
    lines += ["", "## Targets", "",
              f"NoC@85 counts {n} for an image that never reaches 85, so a dataset where neither start reaches it "
              "pulls the mean ratio towards 1; the per-dataset rows and the share of images that reach 85 show where "
              "the ratio comes from.", "",
              "| method | dataset | Dice@5 (a) | NoC@85 (a) | NoC@85 (b) | (b)/(a) | reach 85 (a) | reach 85 (b) |",
              "|---|---|---|---|---|---|---|---|"]
    for method in res["methods"]:
        for name, e in [("**mean**", res["mean"])] + list(res["sets"].items()):
            a, b = e[method]["a_nothing"], e[method]["b_pancakes"]
            ratio = f"{b['noc85'] / a['noc85']:.2f}" if a["noc85"] else "-"
            lines.append(f"| {method} | {name} | {100 * a['dice'][5]:.1f} | {a['noc85']:.2f} | {b['noc85']:.2f} | "
                         f"{ratio} | {100 * a['reached85']:.0f} % | {100 * b['reached85']:.0f} % |")
    return "\n".join(lines) + "\n"


def ceilings(root, max_images: int | None, cache: Path, grid: int = 128, ks=(1, 3, 5, 10)) -> dict:
    """Per leave-out dataset: mean Dice (%) after the working grid and back, and of the k
    largest components of the truth; the median number of components."""
    from scipy import ndimage as ndi

    from napari_pancakes.preprocess import resize_image
    from napari_pancakes.training.simulate import dice

    out = {}
    for name, (_, truths, _) in load_leave_out(root, max_images, cache).items():
        rows = []
        for t in truths:
            back = resize_image(resize_image(t.astype(np.float32), (grid, grid)), t.shape) > 0.5
            lab, n = ndi.label(t)
            sizes = np.sort(np.bincount(lab.ravel())[1:])[::-1]
            rows.append([dice(back, t), n] + [2 * sizes[:k].sum() / (sizes[:k].sum() + t.sum()) for k in ks])
        rows = np.array(rows, float)
        out[name] = {"images": len(rows), "grid": round(100 * rows[:, 0].mean(), 1),
                     "components_median": float(np.median(rows[:, 1])),
                     **{f"{k}_components": round(100 * rows[:, 2 + i].mean(), 1) for i, k in enumerate(ks)}}
    return out


def click_agreement(root, max_images: int | None, cache: Path, weights, n_clicks: int) -> dict:
    """Per leave-out dataset, from nothing with the network alone: how many clicks does its answer
    (logits at the image's pixels, before ``honour_clicks``) label against the click's sign, for the
    click just given and for the earlier ones, and the mean logistic loss at the clicked pixels.

    Why: the issue suggests fine-tuning the last layer on the clicks at test time. That fit
    minimises exactly this loss; where the answer already agrees with every click it has nothing
    to learn from them."""
    import torch

    from napari_pancakes.refine import load_refiner
    from napari_pancakes.refine.session import RefineSession
    from napari_pancakes.training.simulate import next_click

    torch.set_num_threads(1)
    refiner = load_refiner(weights, device="cpu")
    out = {"weights": str(weights or "bundled refiner_default.safetensors"), "clicks": n_clicks, "sets": {}}
    for name, (images, truths, _) in load_leave_out(root, max_images, cache).items():
        counts = {"new": [0, 0], "earlier": [0, 0]}  # [disagreeing, total]
        losses = []
        for img, truth in zip(images, truths):
            truth = truth.astype(bool)
            session = RefineSession(refiner, img, method="network")
            given = []
            for _ in range(n_clicks):
                click = next_click(session.mask, truth)
                if click is None:
                    break
                (y, x), positive = click
                given.append((y, x, positive))
                session.add_click(y, x, positive)
                logits = refiner.upsample(session.state.logits, truth.shape)
                for j, (cy, cx, sign) in enumerate(given):
                    value = float(logits[cy, cx])
                    key = "new" if j == len(given) - 1 else "earlier"
                    counts[key][0] += (value > 0) != sign
                    counts[key][1] += 1
                    losses.append(float(np.logaddexp(0.0, -value if sign else value)))
        out["sets"][name] = {"images": len(images), **{f"{k}_disagree": v[0] for k, v in counts.items()},
                             **{f"{k}_total": v[1] for k, v in counts.items()},
                             "mean_click_loss": round(float(np.mean(losses)), 4)}
    return out


def click_agreement_markdown(res: dict) -> str:
    md = ("# Does the network's answer agree with the clicks?\n\n"
          f"`bench_refine.py --click-agreement`; refiner weights: {res['weights']}; network alone, from nothing, "
          f"up to {res['clicks']} simulated clicks per image, 256 px. A click disagrees when the logit at its pixel has "
          "the other sign (before the clicked spot is set by `honour_clicks`). Loss: the mean over clicked pixels, after each "
          "click, of log(1 + exp(-logit)) for a positive click and log(1 + exp(logit)) for a negative one, the quantity a test-time fit of the last layer on the clicks would "
          "lower.\n\n| dataset | images | newest click disagrees | earlier clicks disagree | mean loss at clicks |\n"
          "|---|---|---|---|---|\n")
    md += "".join(f"| {n} | {r['images']} | {r['new_disagree']} / {r['new_total']} | "
                  f"{r['earlier_disagree']} / {r['earlier_total']} | {r['mean_click_loss']} |\n"
                  for n, r in res["sets"].items())
    return md


def locality(root, max_images: int | None, cache: Path, weights, pancakes_weights, n_clicks: int) -> dict:
    """Per leave-out dataset and start ((a) nothing, (b) the best Pancakes label), hybrid: the
    negative clicks whose shown mask kept pixels that the same click's answer without locality
    dropped (``localise``),
    how many of those the next prompt removed anyway, the median number of pixels it removed and
    the share of them that were correct (in the target).

    Why: a negative click is local only if what it left alone survives later prompts too."""
    import torch

    from napari_pancakes import load_model
    from napari_pancakes.refine import load_refiner
    from napari_pancakes.refine.session import RefineSession
    from napari_pancakes.training.simulate import next_click

    torch.set_num_threads(1)
    refiner = load_refiner(weights, device="cpu")
    pancakes = load_model(pancakes_weights, device="cpu")
    out = {"weights": str(weights or "bundled refiner_default.safetensors"), "clicks": n_clicks, "sets": {}}
    for name, (images, truths, _) in load_leave_out(root, max_images, cache).items():
        starts = best_pancakes_labels(images, truths, pancakes)[0]
        out["sets"][name] = {}
        for mode, from_label in (("a_nothing", False), ("b_pancakes", True)):
            kept_events, removed_px, removed_correct = 0, [], []
            for img, truth, start in zip(images, truths, starts):
                truth = truth.astype(bool)
                session = RefineSession(refiner, img, initial_mask=start if from_label else None, method="hybrid")
                kept = None
                for _ in range(n_clicks):
                    click = next_click(session.mask, truth)
                    if click is None:
                        break
                    (y, x), positive = click
                    answer = None
                    if not positive:  # the same click without locality, then undone
                        was, session.local_negative = session.local_negative, False
                        answer = session.add_click(y, x, positive)
                        session.undo()
                        session.local_negative = was
                    session.add_click(y, x, positive)
                    if kept is not None:
                        gone = kept & ~session.mask
                        if gone.any():
                            removed_px.append(int(gone.sum()))
                            removed_correct.append(float((gone & truth).sum() / gone.sum()))
                    kept = None if answer is None else session.mask & ~answer
                    kept = kept if kept is not None and kept.any() else None
                    kept_events += kept is not None
            out["sets"][name][mode] = {
                "negative_clicks_that_kept": kept_events, "next_prompt_removed": len(removed_px),
                "median_removed_px": float(np.median(removed_px)) if removed_px else 0.0,
                "removed_correct_share": round(float(np.mean(removed_correct)), 2) if removed_correct else None}
    return out


def locality_markdown(res: dict) -> str:
    md = ("# Does a negative click stay local at the next prompt?\n\n"
          f"`bench_refine.py --locality`; refiner weights: {res['weights']}; hybrid, up to {res['clicks']} simulated "
          "clicks per image, 256 px. A negative click *kept* pixels when the shown mask holds pixels that its answer "
          "without locality (`localise`) dropped; counted: how often the next prompt removed some of them anyway, the median number "
          "removed, and the share of those that were in the target.\n\n| dataset | start | negative clicks that kept "
          "pixels | next prompt removed some | median px removed | share correct |\n|---|---|---|---|---|---|\n")
    md += "".join(f"| {n} | {MODE_NAMES[m]} | {r['negative_clicks_that_kept']} | {r['next_prompt_removed']} | "
                  f"{r['median_removed_px']:g} | {r['removed_correct_share']} |\n"
                  for n, modes in res["sets"].items() for m, r in modes.items())
    return md


SIZE_RADII = (2, 3, 4, 6, 8, 12, 20, 40)


def size_fidelity(weights, methods, radii=SIZE_RADII, side: int = 256) -> dict:
    """Does one click on a clearly bounded disc give that disc, whatever its size?

    Synthetic 256 px images (no data needed): a disc of each radius, bright on dark and dark on
    bright, on a flat or a smoothly textured background with noise, at three places; one click at
    its centre, or (separately) a box one pixel around it. Per radius and method: the median of
    predicted area / disc area and the mean Dice after the click, and the mean Dice after the box.
    A network that learnt a smallest object size instead of following edges answers a small disc
    with a blob many times its area, where the classical walker follows the edge."""
    import torch
    from scipy import ndimage as ndi

    from napari_pancakes.refine import load_refiner
    from napari_pancakes.refine.session import RefineSession
    from napari_pancakes.training.simulate import dice

    torch.set_num_threads(1)
    refiner = load_refiner(weights, device="cpu")
    yy, xx = np.mgrid[0:side, 0:side]
    rng = np.random.default_rng(0)
    out = {"weights": str(weights or "bundled refiner_default.safetensors"), "methods": list(methods),
           "radii": list(radii), "ratio_median": {}, "dice_mean": {}, "box_dice_mean": {}}
    cases = []
    for r in radii:
        for bg, fg in ((0.2, 0.8), (0.7, 0.3)):
            for textured in (False, True):
                for cy, cx in ((128, 128), (90, 170), (170, 84)):
                    img = np.full((side, side), bg, np.float32)
                    if textured:
                        img += (ndi.gaussian_filter(rng.normal(0, 1, img.shape), 12) * 1.5).astype(np.float32)
                    truth = np.hypot(yy - cy, xx - cx) < r
                    img[truth] = fg
                    cases.append((r, img + rng.normal(0, 0.03, img.shape).astype(np.float32), truth, (cy, cx)))
    for method in methods:
        ratios, dices, boxed = ({r: [] for r in radii} for _ in range(3))
        for r, img, truth, (cy, cx) in cases:
            mask = RefineSession(refiner, img, method=method).add_click(cy, cx, True)
            ratios[r].append(mask.sum() / truth.sum())
            dices[r].append(dice(mask, truth))
            box = (cy - r - 1, cx - r - 1, cy + r + 1, cx + r + 1)
            boxed[r].append(dice(RefineSession(refiner, img, method=method).set_box(box), truth))
        out["ratio_median"][method] = {str(r): round(float(np.median(v)), 2) for r, v in ratios.items()}
        out["dice_mean"][method] = {str(r): round(100 * float(np.mean(v)), 1) for r, v in dices.items()}
        out["box_dice_mean"][method] = {str(r): round(100 * float(np.mean(v)), 1) for r, v in boxed.items()}
    return out


def large_images(weights, methods, sides=(256, 1024, 2048, 3000)) -> dict:
    """Seconds per prompt and peak Python-allocated memory of a session on large images.

    Why: a slide or a radiograph is thousands of pixels a side, while every quality benchmark
    here is at 256 px; what a click costs there (and whether the walker's solve still ends) is
    measured on a bright disc in noise, a click at its centre, a negative click in the far
    corner, then a box around it (one session per method and size, after one warm-up prompt).
    """
    import tracemalloc

    from napari_pancakes.refine import load_refiner
    from napari_pancakes.refine.session import RefineSession
    from napari_pancakes.training.simulate import dice

    refiner = load_refiner(weights, device="cpu")
    out = {"weights": str(weights or "bundled"), "methods": list(methods), "sides": list(sides),
           "cpu": platform.machine(), "cpu_count": os.cpu_count(), "rows": []}
    for side in sides:
        rng = np.random.default_rng(side)
        yy, xx = np.ogrid[:side, :side]
        c, r = side / 2, side / 5
        image = (0.6 * ((yy - c) ** 2 + (xx - c) ** 2 < r**2) + 0.2 * rng.random((side, side))).astype(np.float32)
        truth = image > 0.5
        for method in methods:
            tracemalloc.start()
            t0 = time.perf_counter()
            session = RefineSession(refiner if method != "classical" else None, image, method=method)
            session.add_click(c, c)  # warm-up: first-use normalisation and caches
            session.undo()
            prepared = time.perf_counter() - t0
            times = {}
            for name, act in (("click", lambda: session.add_click(c, c)),
                              ("negative click", lambda: session.add_click(side / 20, side / 20, positive=False)),
                              ("box", lambda: session.set_box((c - 1.1 * r, c - 1.1 * r, c + 1.1 * r, c + 1.1 * r)))):
                t0 = time.perf_counter()
                act()
                times[name] = round(time.perf_counter() - t0, 3)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            out["rows"].append({"side": side, "method": method, "first_prompt_s": round(prepared, 3), **times,
                                "peak_python_MiB": round(peak / 2**20, 1),
                                "dice_after_box": round(dice(session.mask, truth), 3)})
            print(out["rows"][-1], flush=True)
    return out


def large_markdown(res: dict) -> str:
    md = ("# Click refinement on large images\n\n`bench_refine.py --large`; refiner weights: "
          f"{res['weights']}; {res['cpu']}, {res['cpu_count']} cores, one torch thread. A bright disc in noise; "
          "seconds per prompt (the first includes one-off normalisation), peak memory of Python allocations "
          "(numpy/scipy; torch's own not counted), Dice after the box.\n\n"
          "| side (px) | method | first prompt (s) | click (s) | negative click (s) | box (s) | peak (MiB) | Dice |\n"
          "|---|---|---|---|---|---|---|---|\n")
    md += "".join(f"| {r['side']} | {r['method']} | {r['first_prompt_s']} | {r['click']} | {r['negative click']} | "
                  f"{r['box']} | {r['peak_python_MiB']} | {r['dice_after_box']} |\n" for r in res["rows"])
    return md


def sizes_markdown(res: dict) -> str:
    radii = res["radii"]
    head = "| method | " + " | ".join(f"r={r}" for r in radii) + " |\n|---|" + "---|" * len(radii) + "\n"
    md = ("# One click on a disc: does the answer keep the disc's size?\n\n"
          f"`bench_refine.py --sizes`; refiner weights: {res['weights']}. 256 px synthetic images, a disc of radius r px "
          "(bright on dark and dark on bright, flat or textured background, three places: 12 images per radius), "
          "one click at its centre (or a box one pixel around it).\n\n## Median of predicted area / disc area (1 = right size)\n\n" + head)
    md += "".join(f"| {m} | " + " | ".join(str(res["ratio_median"][m][str(r)]) for r in radii) + " |\n"
                  for m in res["methods"])
    for key, title in (("dice_mean", "after the click"), ("box_dice_mean", "after a box instead")):
        md += f"\n## Mean Dice (%) {title}\n\n" + head
        md += "".join(f"| {m} | " + " | ".join(str(res[key][m][str(r)]) for r in radii) + " |\n"
                      for m in res["methods"])
    return md


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="data root (default: $NAPARI_PANCAKES_DATA)")
    ap.add_argument("--cache", type=Path, default=Path("runs/cache"))
    ap.add_argument("--max-images", type=int, default=12, help="evenly spaced images per dataset (0: all)")
    ap.add_argument("--clicks", type=int, default=10)
    ap.add_argument("--methods", nargs="+", default=["network", "hybrid", "classical"])
    ap.add_argument("--weights", type=Path, default=None,
                    help="refiner file (default: bundled); it must not have trained on the leave-out group")
    ap.add_argument("--pancakes-weights", type=Path, default=None,
                    help="Pancakes file for the (b) starts (default: bundled); it must not have trained on the "
                         "leave-out group, e.g. campaign/pancakes/best.safetensors")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--tag", default="", help="suffix of the result files")
    ap.add_argument("--hybrid-decay", type=float, default=None, help="override the hybrid's prior decay per prompt")
    ap.add_argument("--session", nargs="+", default=None, metavar="NAME=VALUE",
                    help="set refine.session switches for this run (an experiment's variant), e.g. LOCAL_RADIUS=0.2")
    ap.add_argument("--colour", action="store_true",
                    help="give RGB datasets' images to the session as RGB (the reader keeps intensity only)")
    ap.add_argument("--invert", action="store_true",
                    help="invert every image's intensities (1 - x): is the model robust to a modality's polarity?")
    ap.add_argument("--ceiling", action="store_true", help="only the reachable-Dice table (no model), refine-ceiling.*")
    ap.add_argument("--reuse", type=Path, default=None,
                    help="a result file whose curves for the same images are reused (for 'classical', which needs no weights)")
    ap.add_argument("--markdown", type=Path, default=None, metavar="RESULT_JSON",
                    help="only write RESULT.md again from RESULT.json (a result of this benchmark's main mode)")
    ap.add_argument("--compare", type=Path, nargs=2, default=None, metavar=("BASE_JSON", "CANDIDATE_JSON"),
                    help="only the paired per-image comparison of two results on the same images, "
                         "refine-compare[-TAG].*")
    ap.add_argument("--click-agreement", action="store_true",
                    help="only whether the network's answer agrees with every click, refine-click-agreement[-TAG].*")
    ap.add_argument("--locality", action="store_true",
                    help="only whether a negative click stays local at the next prompt, refine-locality[-TAG].*")
    ap.add_argument("--large", type=int, nargs="*", default=None, metavar="SIDE",
                    help="only seconds per prompt and memory on large synthetic images (default sides 256 1024 2048 "
                         "3000; no data needed), refine-large[-TAG].*")
    ap.add_argument("--sizes", action="store_true",
                    help="only the one-click size check on synthetic discs (no data needed), refine-sizes[-TAG].*")
    args = ap.parse_args(argv)
    from napari_pancakes.training.datasets import data_root

    tagged = lambda stem: stem + (f"-{args.tag}" if args.tag else "")  # noqa: E731
    if args.markdown:
        args.markdown.with_suffix(".md").write_text(to_markdown(json.loads(args.markdown.read_text())))
        return 0
    if args.compare:
        res = compare(*(json.loads(p.read_text()) for p in args.compare))
        write_results(args.out, tagged("refine-compare"), res, compare_markdown(res))
        return 0
    if args.large is not None:
        res = large_images(args.weights, args.methods, tuple(args.large) or (256, 1024, 2048, 3000))
        write_results(args.out, tagged("refine-large"), res, large_markdown(res))
        return 0
    if args.sizes:
        res = size_fidelity(args.weights, args.methods)
        write_results(args.out, tagged("refine-sizes"), res, sizes_markdown(res))
        return 0

    if data_root(args.data) is None or not data_root(args.data).is_dir():
        print("skip: no data root (--data or $NAPARI_PANCAKES_DATA)", file=sys.stderr)
        return 0
    if args.ceiling:
        res = ceilings(data_root(args.data), args.max_images, args.cache)
        cols = list(next(iter(res.values())))
        md = "# What clicks could reach on the leave-out targets (no model)\n\nSee `bench_refine.py --ceiling`.\n\n"
        md += "| dataset | " + " | ".join(cols) + " |\n|" + "---|" * (len(cols) + 1) + "\n"
        md += "".join(f"| {n} | " + " | ".join(str(v) for v in r.values()) + " |\n" for n, r in res.items())
        write_results(args.out, "refine-ceiling", res, md)
        return 0
    if args.click_agreement:
        res = click_agreement(data_root(args.data), args.max_images, args.cache, args.weights, args.clicks)
        write_results(args.out, tagged("refine-click-agreement"), res, click_agreement_markdown(res))
        return 0
    if args.locality:
        res = locality(data_root(args.data), args.max_images, args.cache, args.weights, args.pancakes_weights,
                       args.clicks)
        write_results(args.out, tagged("refine-locality"), res, locality_markdown(res))
        return 0
    res = run(args)
    write_results(args.out, tagged("refine"), res, to_markdown(res))
    return 0


def write_results(out: Path, stem: str, res: dict, md: str) -> None:
    """OUT/STEM.json and OUT/STEM.md, and the table on stdout (every mode of this benchmark)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(res, indent=1))
    (out / f"{stem}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    sys.exit(main())
