"""The training loop: mixed real/synthetic sets, best-pair set loss, resumable checkpoints.

Each step draws ``batch_sets`` sets, each with its own S in [2, 5], M in [5, 15] and
K in [5, 40] (paper sec. 3.2); the U-Net runs once on all images of the batch and the set
loss (:mod:`.loss`) picks the winning protocol per set without autograd. Checkpoints
(model, optimiser, step, every RNG) are written atomically every few minutes and at exit, so
a run can be stopped and resumed, also across machines. Validation Set Dice (M=8, K=20,
S=3, hard labels as at inference) is logged to ``metrics.csv``; the best checkpoint by the
mean over synthetic and training-dataset validation sets (held-out datasets are logged but
never used for selection) is kept as ``best.safetensors``. Checkpoints are safetensors plus
JSON (:func:`..io_weights.save_checkpoint`), never pickles.
"""
from __future__ import annotations

import csv
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..io_weights import load_checkpoint, save_checkpoint, save_weights
from ..metrics import set_dice
from ..model import Pancakes, PancakesConfig
from .datasets import LEAVE_OUT, SetSampler, load_real_datasets, read_pack, split_validation, validation_sets
from .loss import best_pair_loss, best_protocol_partition_loss, feature_spread

VAL_M, VAL_K = 8, 20


@dataclass
class TrainConfig:
    """Command-line options of ``train`` (see ``__main__``)."""

    out: str = "runs/default"
    steps: int = 100_000
    minutes: float = 0.0  # wall-clock budget; 0 = no limit
    device: str = "cpu"
    resume: bool = False
    init: str = ""  # safetensors weights to start a new run from (ignored when resuming)
    holdout: list[str] = field(default_factory=lambda: list(LEAVE_OUT))
    synthetic_ratio: float = 0.5
    batch_sets: int = 4
    lr: float = 1e-4
    warmup: int = 200
    weight_decay: float = 1e-4
    clip: float = 1.0
    spread_weight: float = 0.0  # anti-collapse term of the binary loss, see SetLoss
    dense: bool = True  # supervise whole derived protocols (best_protocol_partition_loss), not one label
    pseudo_ratio: float = 0.2  # share of real sets with an intensity pseudo-protocol as target
    padding: str = "reflect"  # conv padding of a new model (PancakesConfig.padding)
    low_res_steps: int = 0  # progressive resolution: the first steps at half resolution (a quarter of the compute)
    low_res_share: float = 0.0  # after those, this share of steps at half resolution too (about 5x faster each)
    s_range: tuple[int, int] = (2, 5)
    m_range: tuple[int, int] = (5, 15)
    k_range: tuple[int, int] = (5, 40)
    seed: int = 0
    threads: int = 2
    log_every: int = 20
    val_every_min: float = 5.0
    val_sets: int = 12
    ckpt_every_min: float = 5.0
    data_root: str = ""  # "" -> $NAPARI_PANCAKES_DATA (see datasets.data_root)
    cache_dir: str = "runs/cache"
    mni: bool = True
    pack: str = ""  # a write_pack file at 128 px instead of the data root (a lent GPU machine)
    features: int = 32  # U-Net width (PancakesConfig.features); saved with the weights


class SetLoss(nn.Module):
    """Batch of sets -> mean set loss; a module so DistributedDataParallel can wrap it.

    Targets are binary maps (the paper's loss, :func:`best_pair_loss`) or, with ``dense``,
    whole protocols with labels 0..L-1 (:func:`best_protocol_partition_loss`).

    ``spread_weight`` adds ``||mean_x G(x)||^2`` per image (G: the unit head features), which
    is 1 when every pixel has the same feature and ~0 when features spread over the sphere.
    Without it the best-pair loss collapses within ~25 steps: a set with a large target is
    served best by one label covering the whole image, the features of every pixel align with
    that label, the softmax saturates and no gradient is left for the other sets (measured:
    loss frozen at the all-one-label value 0.536 with gradient norm ~0.001 on two fixed sets;
    with weight 1 it fell to 0.26 in 100 steps).
    """

    def __init__(self, model: Pancakes, spread_weight: float = 1.0, dense: bool = False):
        super().__init__()
        self.model = model
        self.spread_weight = spread_weight
        self.dense = dense

    def forward(self, x: torch.Tensor, targets: list[torch.Tensor], mks: list[tuple[int, int]]):
        feats = self.model.features(self.model.phi(x))
        losses, start = [], 0
        set_loss = best_protocol_partition_loss if self.dense else best_pair_loss
        for target, (m, k) in zip(targets, mks):
            s = target.shape[0]
            w, b = self.model.pair_weights(m, k)
            loss, _ = set_loss(feats[start:start + s], w, b, target, self.model.h.logits)
            losses.append(loss)
            start += s
        total = torch.stack(losses).mean()
        if self.spread_weight:
            total = total + self.spread_weight * feature_spread(feats)
        return total


def _dist_info() -> tuple[int, int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


@torch.no_grad()
def predict_labels(model: Pancakes, images: np.ndarray, m: int = VAL_M, k: int = VAL_K) -> np.ndarray:
    """Hard label maps (M, S, H, W) for images already at the working resolution."""
    dev = next(model.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))[:, None].to(dev)
    logits = model(x, m, k)
    return logits.argmax(2).transpose(0, 1).cpu().numpy()


def validate(model: Pancakes, sets: dict[str, list[tuple[np.ndarray, np.ndarray]]]) -> dict[str, float]:
    """Mean Set Dice per source over every label present in all members of each set.

    Label 0 (background, or dropped pieces in synthetic sets) is not a target.
    """
    was_training = model.training
    model.eval()
    out = {}
    for name, items in sets.items():
        scores = []
        for images, labels in items:
            pred = predict_labels(model, images)
            present = set.intersection(*(set(np.unique(lab[lab > 0]).tolist()) for lab in labels))
            scores += [set_dice(pred, labels == v, VAL_K) for v in sorted(present)]
        out[name] = float(np.mean(scores)) if scores else float("nan")
    model.train(was_training)
    return out


def selection_score(scores: dict[str, float], holdout: list[str]) -> float:
    """Mean validation Set Dice over the sources the model trains on (never the held-out ones)."""
    vals = [v for k, v in scores.items() if k not in holdout and not math.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


def init_weights(model: nn.Module) -> None:
    """He-normal convolutions with zero biases for a new model.

    PyTorch's default init shrinks the signal at every layer: through the ~20 convolutions of
    U-Net + head, ``phi`` varies by ~0.002 across pixels against a ~0.1 constant, so the
    unit-normalised head features point the same way everywhere, every pixel gets one label,
    and the best-pair loss settles on "one label covers the image" (measured: validation Set
    Dice stayed at the all-one-label value for 370 steps). He init keeps per-pixel
    variation (std 0.15-0.2) and all K labels in use from step 0.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, a=0.25, nonlinearity="leaky_relu")  # PReLU starts at 0.25
            nn.init.zeros_(module.bias)


def _rng_state(rng: np.random.Generator) -> dict:
    """JSON-ready numpy and python RNG states (torch's byte state travels as a tensor)."""
    version, internal, gauss = random.getstate()
    return {"numpy": rng.bit_generator.state, "python": [version, list(internal), gauss]}


def _set_rng_state(rng: np.random.Generator, state: dict, torch_state: torch.Tensor | None) -> None:
    rng.bit_generator.state = state["numpy"]
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if torch_state is not None:
        torch.set_rng_state(torch_state.to(torch.uint8))


def export_weights(model: Pancakes, path: Path, step: int, cfg: TrainConfig, scores: dict | None = None,
                   trained_on: list[str] | None = None) -> Path:
    """Safetensors weights with training provenance in the metadata."""
    extra = {"steps": step, "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
             "data": trained_on or [], "holdout": cfg.holdout, "synthetic_ratio": cfg.synthetic_ratio,
             "lr": cfg.lr, "batch_sets": cfg.batch_sets}
    if scores:
        extra["val_set_dice"] = scores
    return save_weights(model, path, extra=extra)


def draw_batch(sampler: SetSampler, rng: np.random.Generator, cfg: TrainConfig, device="cpu"):
    """One training step's ``cfg.batch_sets`` sets: images (N, 1, R, R), a target per set and
    its (M, K), each set with its own S, M and K from the config's ranges."""
    images, targets, mks = [], [], []
    for _ in range(cfg.batch_sets):
        s = int(rng.integers(cfg.s_range[0], cfg.s_range[1] + 1))
        m, k = int(rng.integers(cfg.m_range[0], cfg.m_range[1] + 1)), int(rng.integers(cfg.k_range[0], cfg.k_range[1] + 1))
        if cfg.dense:
            img, tgt, _ = sampler.sample_partition(rng, s, max_labels=k)
        else:
            img, tgt, _ = sampler.sample(rng, s)
        images.append(img)
        targets.append(torch.from_numpy(tgt).to(device))
        mks.append((m, k))
    return torch.from_numpy(np.concatenate(images))[:, None].to(device), targets, mks


def half_resolution(x: torch.Tensor, targets: list[torch.Tensor]):
    """Progressive resolution: the 2x2 mean of the images, every other pixel of the targets."""
    return torch.nn.functional.avg_pool2d(x, 2), [t[:, ::2, ::2].contiguous() for t in targets]


def _lr_at(step: int, cfg: TrainConfig) -> float:
    return cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup))


def train(cfg: TrainConfig) -> dict:
    """Run (or resume) training; returns the last validation scores."""
    rank, world, local_rank = _dist_info()
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group("nccl" if cfg.device == "cuda" else "gloo")
    device = torch.device(f"cuda:{local_rank}" if cfg.device == "cuda" else cfg.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.set_num_threads(cfg.threads)
    try:  # numpy's BLAS threads fight torch's for the same cores; data work is tiny matrices
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:
        pass
    out = Path(cfg.out)
    main_proc = rank == 0
    if main_proc:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))

    def report(line: str) -> None:
        """Progress to stdout and to ``out/log.txt`` (read by the training-curve plot); main process only."""
        print(line, flush=True)
        with (out / "log.txt").open("a") as fh:
            fh.write(line + "\n")

    if cfg.pack:
        real = read_pack(cfg.pack)
    else:
        real = load_real_datasets(root=cfg.data_root or None, cache_dir=Path(cfg.cache_dir), mni=cfg.mni)
    held = {k: v for k, v in real.items() if k in cfg.holdout}
    train_real, val_real = split_validation({k: v for k, v in real.items() if k not in cfg.holdout})
    sampler = SetSampler(train_real, cfg.synthetic_ratio, pseudo_ratio=cfg.pseudo_ratio)
    trained_on = ["synthetic"] + sorted(train_real)
    val = validation_sets({**val_real, **held}, cfg.val_sets) if main_proc else {}

    torch.manual_seed(cfg.seed + rank)
    rng = np.random.default_rng(cfg.seed + 1000 * rank)
    if cfg.init:
        # continue from released weights (e.g. the bundled ones): model only, fresh optimiser
        from ..io_weights import load_model

        model = load_model(cfg.init, device="cpu")
    else:
        model = Pancakes(PancakesConfig(features=cfg.features, padding=cfg.padding))
        init_weights(model)
    model = model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, best, elapsed_before = 0, -1.0, 0.0
    last_ckpt = out / "last.safetensors"
    if cfg.resume and (out / "last.safetensors.json").is_file():
        model_state, opt_state, rng_tensors, ck = load_checkpoint(last_ckpt, device)
        model = Pancakes(PancakesConfig(**ck["config"])).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        model.load_state_dict(model_state)
        opt.load_state_dict(opt_state)
        step, best, elapsed_before = ck["step"], ck["best"], ck.get("elapsed", 0.0)
        best_json = out / "best_state.safetensors.json"
        if best_json.is_file():  # a validation after the last save may have raised the bar
            best = max(best, float(json.loads(best_json.read_text()).get("best", best)))
        mine = rank if rank < len(ck["rng"]) else 0
        _set_rng_state(rng, ck["rng"][mine], rng_tensors.get(f"torch{mine}"))
        if main_proc:
            report(f"resumed from {last_ckpt} at step {step} (best {best:.4f})")
    loss_module: nn.Module = SetLoss(model, cfg.spread_weight, cfg.dense)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        loss_module = DistributedDataParallel(loss_module, device_ids=[local_rank] if device.type == "cuda" else None)

    def checkpoint(path: Path, scores: dict | None = None) -> None:
        states = [(_rng_state(rng), torch.get_rng_state())]
        if world > 1:
            import torch.distributed as dist

            gathered = [None] * world
            dist.all_gather_object(gathered, states[0])
            states = gathered
        rngs, torch_states = [s[0] for s in states], [s[1] for s in states]
        if main_proc:
            save_checkpoint(path, model, opt,
                            {"step": step, "best": best, "elapsed": elapsed_before + time.time() - t0, "rng": rngs,
                             "train_config": asdict(cfg), "trained_on": trained_on, "scores": scores},
                            {f"torch{i}": t for i, t in enumerate(torch_states)})

    def run_validation() -> dict:
        nonlocal best
        scores = validate(model, val)
        score = selection_score(scores, cfg.holdout)
        row = {"step": step, "minutes": round((elapsed_before + time.time() - t0) / 60, 2), "select": score, **scores}
        metrics = out / "metrics.csv"
        new = not metrics.is_file()
        with metrics.open("a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
        report("val " + " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
        if score > best:
            best = score
            checkpoint(out / "best_state.safetensors", scores)
            export_weights(model, out / "best.safetensors", step, cfg, scores, trained_on)
        return scores

    t0 = time.time()
    deadline = t0 + cfg.minutes * 60 if cfg.minutes > 0 else math.inf
    last_val = last_save = t0
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    scores: dict = {}
    if main_proc and step == 0:
        scores = run_validation()  # the random-init reference point
    model.train()
    window_loss, window_t, window_n = 0.0, time.time(), 0
    while True:
        now = time.time()
        flags = torch.tensor([step >= cfg.steps or now >= deadline, now - last_val >= cfg.val_every_min * 60,
                              now - last_save >= cfg.ckpt_every_min * 60], dtype=torch.int32)
        if world > 1:
            import torch.distributed as dist

            dist.broadcast(flags, 0)
        stop, do_val, do_save = flags.tolist()
        if stop:
            break
        if do_val:
            if main_proc:
                scores = run_validation()
            last_val = time.time()
        if do_save:
            checkpoint(last_ckpt)
            last_save = time.time()
        x, targets, mks = draw_batch(sampler, rng, cfg, device)
        half = step < cfg.low_res_steps or (  # a per-step draw that leaves the data stream's RNG untouched
            cfg.low_res_share > 0 and np.random.default_rng([cfg.seed, step]).random() < cfg.low_res_share)
        if half:
            x, targets = half_resolution(x, targets)
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg)
        with autocast:
            loss = loss_module(x, targets, mks)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        opt.step()
        step += 1
        window_loss += float(loss.detach())
        window_n += 1
        if main_proc and step % cfg.log_every == 0:
            rate = window_n / (time.time() - window_t)
            report(f"step {step} loss {window_loss / window_n:.4f} lr {_lr_at(step, cfg):.2e} "
                   f"scale {float(model.h.scale.detach()):.1f} {rate:.2f} steps/s")
            window_loss, window_t, window_n = 0.0, time.time(), 0
    checkpoint(last_ckpt)
    if main_proc:
        scores = run_validation()
        report(f"done: step {step}, best selection score {best:.4f}, "
               f"{(elapsed_before + time.time() - t0) / 60:.1f} min in total")
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    return scores


def export_checkpoint(checkpoint: Path, path: Path) -> Path:
    """Model-only safetensors weights (what the package ships) from a training checkpoint."""
    model_state, _, _, ck = load_checkpoint(checkpoint)
    model = Pancakes(PancakesConfig(**ck["config"]))
    model.load_state_dict(model_state)
    cfg = TrainConfig(**{k: tuple(v) if k.endswith("_range") else v for k, v in ck["train_config"].items()})
    trained_on = ck.get("trained_on", [])
    return export_weights(model, Path(path), ck["step"], cfg, ck.get("scores"), trained_on)
