"""Train the click model by simulated interaction (ScribblePrompt-style), on CPU, resumably.

Each example starts from nothing or from a corrupted mask (eroded, dilated, shifted, partial,
or a Pancakes-like intensity label), then ``steps`` rounds of: predict, let the simulated user
click the largest error, feed the (detached) logits back as the prior. Data: random synthetic
shapes plus the real training sets; ph2_skin and drive_vessels are held out for evaluation.

    python -m napari_pancakes.training.refiner --minutes 90 --out runs/refiner
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from ..preprocess import normalize_intensity, resize_image, to_image_list
from ..refine.model import DEFAULT_REFINER_WEIGHTS, MASK_LOGIT, RefinerConfig, RefinerNet, encode_input, save_refiner
from ..refine.simulate import next_click

TRAIN_SETS = ("jsrt_scr_chest", "dsb2018_nuclei")
HELDOUT_SETS = ("ph2_skin", "drive_vessels")
STORE = 256  # real data are kept at this size and cropped/zoomed to the working resolution


def default_data_dir() -> Path:
    """../shared/data next to the repository (checkouts keep data outside the package)."""
    return Path(__file__).resolve().parents[3].parent / "shared" / "data"


# --- data -----------------------------------------------------------------------------------
def load_real_set(folder: Path, size: int = STORE):
    """(images (N, size, size) float32 in [0, 1], label maps (N, size, size) uint8)."""
    from PIL import Image

    imgs, labs = [], []
    for p in sorted((folder / "images").glob("*.png")):
        im, _ = to_image_list(np.asarray(Image.open(p)))
        lab = np.asarray(Image.open(folder / "masks" / p.name))
        imgs.append(resize_image(normalize_intensity(im[0]), (size, size)))
        from skimage.transform import resize

        labs.append(resize(lab, (size, size), order=0, preserve_range=True, anti_aliasing=False).astype(np.uint8))
    return np.stack(imgs), np.stack(labs)


def synthetic_example(rng: np.random.Generator, r: int) -> tuple[np.ndarray, np.ndarray]:
    """A random image of blobs/ellipses with noise and blur; the target is one of its shapes."""
    yy, xx = np.mgrid[0:r, 0:r].astype(np.float32)
    img = ndi.gaussian_filter(rng.normal(0, 1, (r, r)), rng.uniform(4, 20)).astype(np.float32)
    img = (img - img.min()) / (np.ptp(img) + 1e-6) * rng.uniform(0, 0.6)
    labels = np.zeros((r, r), np.uint8)
    n = int(rng.integers(1, 7))
    for i in range(1, n + 1):
        cy, cx = rng.uniform(0.1, 0.9, 2) * r
        a, b = rng.uniform(0.04, 0.3, 2) * r
        th = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = (dy * np.cos(th) + dx * np.sin(th)) / a
        v = (-dy * np.sin(th) + dx * np.cos(th)) / b
        ang = np.arctan2(v, u)
        wobble = 1 + sum(rng.uniform(0, 0.25) * np.cos(k * ang + rng.uniform(0, 6.28)) for k in (2, 3, 5))
        shape = u**2 + v**2 < wobble**2
        if rng.random() < 0.3:  # ring-like / irregular structures
            shape &= ~(u**2 + v**2 < (0.5 * wobble) ** 2)
        labels[shape] = i
        tex = ndi.gaussian_filter(rng.normal(0, 1, (r, r)), rng.uniform(0.5, 3)).astype(np.float32)
        img[shape] = rng.uniform(0, 1) + 0.15 * rng.uniform(0, 1) * tex[shape]
    img = ndi.gaussian_filter(img, rng.uniform(0, 1.5)) + rng.normal(0, rng.uniform(0, 0.12), (r, r))
    present = [i for i in range(1, n + 1) if (labels == i).sum() > 10]
    if not present:
        return synthetic_example(rng, r)
    target = labels == rng.choice(present)
    return normalize_intensity(img.astype(np.float32)), target


class RealSampler:
    """Random crop/zoom, flip, gamma of a real image and one of its labels as the target."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, component_prob: float = 0.0):
        self.images, self.labels, self.component_prob = images, labels, component_prob

    def __call__(self, rng: np.random.Generator, r: int):
        for _ in range(20):
            i = int(rng.integers(len(self.images)))
            s = int(rng.integers(STORE // 2, STORE + 1))
            y0, x0 = rng.integers(0, STORE - s + 1, 2)
            lab = self.labels[i, y0 : y0 + s, x0 : x0 + s]
            ids = [v for v in np.unique(lab) if v and (lab == v).sum() * (r / s) ** 2 > 12]
            if not ids:
                continue
            target = lab == rng.choice(ids)
            if rng.random() < self.component_prob:
                comp, n = ndi.label(target)
                sizes = np.bincount(comp.ravel())[1:]
                ok = np.flatnonzero(sizes * (r / s) ** 2 > 12)
                if len(ok):
                    target = comp == rng.choice(ok) + 1
            img = self.images[i, y0 : y0 + s, x0 : x0 + s]
            img = resize_image(img, (r, r))
            target = resize_image(target.astype(np.float32), (r, r)) > 0.5
            if not target.any():
                continue
            img = np.clip(img, 0, 1) ** rng.uniform(0.7, 1.4)
            if rng.random() < 0.5:
                img, target = img[:, ::-1], target[:, ::-1]
            if rng.random() < 0.5:
                img, target = img[::-1], target[::-1]
            return np.ascontiguousarray(img, np.float32), np.ascontiguousarray(target)
        return synthetic_example(rng, r)


# --- initial masks a user might start from ----------------------------------------------------
def corrupt_mask(target: np.ndarray, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A plausible wrong starting mask: eroded, dilated, shifted, partial, or Pancakes-like."""
    kind = rng.choice(["erode", "dilate", "shift", "partial", "pancakes", "pancakes", "merge"])
    r = target.shape[0]
    if kind == "erode":
        return ndi.binary_erosion(target, iterations=int(rng.integers(1, 6)))
    if kind == "dilate":
        return ndi.binary_dilation(target, iterations=int(rng.integers(1, 8)))
    if kind == "shift":
        return np.roll(target, tuple(rng.integers(-8, 9, 2)), axis=(0, 1))
    if kind == "partial":
        yy, xx = np.mgrid[0:r, 0:r]
        th = rng.uniform(0, 2 * np.pi)
        cy, cx = np.argwhere(target).mean(0)
        return target & ((yy - cy) * np.cos(th) + (xx - cx) * np.sin(th) < rng.uniform(-0.2, 0.5) * r / 4)
    if kind == "merge":  # target plus a random blob of background
        cy, cx = rng.uniform(0, r, 2)
        yy, xx = np.mgrid[0:r, 0:r]
        return target | ((yy - cy) ** 2 + (xx - cx) ** 2 < rng.uniform(4, r / 5) ** 2)
    # Pancakes-like: the intensity band (of a smoothed, quantised image) that best matches the target
    q = int(rng.integers(3, 9))
    sm = ndi.gaussian_filter(image, rng.uniform(0.5, 2.5))
    edges = np.quantile(sm, np.linspace(0, 1, q + 1)[1:-1])
    bands = np.digitize(sm, edges)
    scores = [2 * (target & (bands == b)).sum() / (target.sum() + (bands == b).sum() + 1e-6) for b in range(q)]
    return bands == int(np.argmax(scores))


# --- training loop -----------------------------------------------------------------------------
def dice_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    inter = (p * target).sum((1, 2, 3))
    dice = 1 - (2 * inter + 1) / (p.sum((1, 2, 3)) + target.sum((1, 2, 3)) + 1)
    return bce + dice.mean()


def make_batch(samplers, weights, rng, batch: int, r: int):
    imgs, targets, priors, pos, neg = [], [], [], [], []
    for _ in range(batch):
        src = rng.choice(len(samplers), p=weights)
        img, target = samplers[src](rng, r)
        prior, p, n = None, [], []
        if rng.random() < 0.55:
            prior = np.where(corrupt_mask(target, img, rng), MASK_LOGIT, -MASK_LOGIT).astype(np.float32)
            first = rng.random() < 0.5
        else:
            first = True
        if first:
            start = prior > 0 if prior is not None else np.zeros_like(target)
            c = next_click(start, target, rng, top_fraction=0.5)
            if c is not None:
                (p if c[1] else n).append(c[0])
        imgs.append(img), targets.append(target), priors.append(prior), pos.append(p), neg.append(n)
    return imgs, targets, priors, pos, neg


def train_step(net, opt, batch, config, rng, steps: int) -> float:
    imgs, targets, priors, pos, neg = batch
    t = torch.from_numpy(np.stack(targets).astype(np.float32))[:, None]
    total = 0.0
    for step in range(steps):
        x = torch.from_numpy(np.stack([encode_input(im, p, n, pr, config)
                                       for im, p, n, pr in zip(imgs, pos, neg, priors)]))
        logits = net(x)
        loss = dice_bce(logits, t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        opt.step()
        total += float(loss.detach())
        if step == steps - 1:
            break
        lg = logits.detach()[:, 0].numpy()
        for j in range(len(imgs)):
            priors[j] = lg[j].copy()
            c = next_click(lg[j] > 0, targets[j], rng, top_fraction=0.3)
            if c is not None:
                (pos[j] if c[1] else neg[j]).append(c[0])
    return total / steps


def _save_checkpoint(path: Path, net, opt, it: int, elapsed: float, log: list):
    from safetensors.torch import save_file

    state = {f"net.{k}": v.detach().contiguous() for k, v in net.state_dict().items()}
    for i, s in opt.state_dict()["state"].items():
        for k, v in s.items():
            if torch.is_tensor(v):
                state[f"opt.{i}.{k}"] = v.detach().reshape(v.shape).contiguous()
    meta = {"it": str(it), "elapsed": str(elapsed), "config": json.dumps(net.config.to_dict()), "log": json.dumps(log[-200:])}
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp), metadata=meta)
    tmp.replace(path)


def _load_checkpoint(path: Path, net, opt):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
    sd = opt.state_dict()
    for key, v in tensors.items():
        if key.startswith("opt."):
            _, i, k = key.split(".", 2)
            sd["state"].setdefault(int(i), {})[k] = v
    opt.load_state_dict(sd)
    return int(meta["it"]), float(meta["elapsed"]), json.loads(meta.get("log", "[]"))


def evaluate(net, config, data, n_clicks: int = 5) -> dict:
    """Mean Dice after 1..n simulated clicks from nothing on (image, target) pairs at working size."""
    from ..refine.model import Refiner
    from ..refine.simulate import dice

    ref = Refiner(net, device="cpu")
    net.eval()
    out = np.zeros(n_clicks)
    for img, target in data:
        pos, neg, prior, pred = [], [], None, np.zeros_like(target)
        for c in range(n_clicks):
            click = next_click(pred, target)
            if click is None:
                out[c:] += 1.0
                break
            (pos if click[1] else neg).append(click[0])
            prior = ref.predict_work(img, pos, neg, prior)
            pred = prior > 0
            out[c] += dice(pred, target)
    net.train()
    return {f"dice@{i + 1}": round(float(v / len(data)), 4) for i, v in enumerate(out)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=default_data_dir())
    ap.add_argument("--out", type=Path, default=Path("runs/refiner"))
    ap.add_argument("--minutes", type=float, default=60.0, help="wall-clock training budget (total, across resumes)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3, help="interaction rounds per example")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ship", type=Path, default=DEFAULT_REFINER_WEIGHTS, help="where to write the final weights")
    ap.add_argument("--save-every", type=float, default=5.0, help="minutes between checkpoints")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    config = RefinerConfig()
    r = config.resolution
    net = RefinerNet(config)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt = args.out / "checkpoint.safetensors"
    it, elapsed, log = 0, 0.0, []
    if ckpt.exists():
        it, elapsed, log = _load_checkpoint(ckpt, net, opt)
        print(f"resumed at iteration {it} ({elapsed / 60:.1f} min done)", flush=True)
    rng = np.random.default_rng(args.seed + it)

    samplers, weights, used = [synthetic_example], [0.3], ["synthetic"]
    for name, w, comp in (("jsrt_scr_chest", 0.35, 0.0), ("dsb2018_nuclei", 0.35, 0.3)):
        folder = args.data / name
        if folder.is_dir():
            samplers.append(RealSampler(*load_real_set(folder), component_prob=comp))
            weights.append(w)
            used.append(name)
    weights = np.array(weights) / sum(weights)
    val = []
    vrng = np.random.default_rng(1234)
    for name in HELDOUT_SETS:
        folder = args.data / name
        if folder.is_dir():
            ims, labs = load_real_set(folder, r)
            tid = 1 if name == "ph2_skin" else 2
            val += [(ims[i], labs[i] == tid) for i in vrng.choice(len(ims), 6, replace=False)]
    print(f"training on {used} (weights {np.round(weights, 2).tolist()}), {len(val)} validation pairs", flush=True)

    budget = args.minutes * 60
    t_start = time.time() - elapsed
    last_save = time.time()
    run_loss = []
    net.train()
    while True:
        elapsed = time.time() - t_start
        if elapsed >= budget:
            break
        frac = elapsed / budget
        lr = args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac))) * min(1.0, (it + 1) / 50)
        for g in opt.param_groups:
            g["lr"] = lr
        steps = int(rng.integers(1, args.steps + 2))
        loss = train_step(net, opt, make_batch(samplers, weights, rng, args.batch, r), config, rng, steps)
        run_loss.append(loss)
        it += 1
        if it % 25 == 0:
            print(f"it {it} {elapsed / 60:.1f} min lr {lr:.2e} loss {np.mean(run_loss):.4f}", flush=True)
            log.append({"it": it, "min": round(elapsed / 60, 2), "loss": round(float(np.mean(run_loss)), 4)})
            run_loss = []
        if time.time() - last_save > args.save_every * 60:
            ev = evaluate(net, config, val) if val else {}
            log.append({"it": it, "min": round(elapsed / 60, 2), "heldout": ev})
            print(f"it {it} held-out {ev}", flush=True)
            _save_checkpoint(ckpt, net, opt, it, time.time() - t_start, log)
            _ship(net, args, it, time.time() - t_start, used, ev)
            last_save = time.time()
    ev = evaluate(net, config, val) if val else {}
    log.append({"it": it, "min": round((time.time() - t_start) / 60, 2), "heldout": ev, "final": True})
    _save_checkpoint(ckpt, net, opt, it, time.time() - t_start, log)
    _ship(net, args, it, time.time() - t_start, used, ev)
    (args.out / "log.json").write_text(json.dumps(log, indent=1))
    print(f"done: {it} iterations, {(time.time() - t_start) / 60:.1f} min, held-out {ev}", flush=True)


def _ship(net, args, it, seconds, used, ev):
    tmp = args.ship.with_name(args.ship.stem + ".partial.safetensors")
    save_refiner(net, tmp, extra={"iterations": it, "train_minutes": round(seconds / 60, 1), "data": used,
                                  "batch": args.batch, "max_steps": args.steps + 1, "heldout_dice": ev})
    tmp.replace(args.ship)


if __name__ == "__main__":
    main()
