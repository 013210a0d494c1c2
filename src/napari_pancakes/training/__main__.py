"""Command line: ``python -m napari_pancakes.training {train,export,evaluate,curve,pack} ...``
(also installed as ``napari-pancakes-train``)."""
from __future__ import annotations

import argparse
from pathlib import Path


def _csv(text: str) -> list[str]:
    return [t for t in text.split(",") if t]


def _pair(text: str) -> tuple[int, int]:
    lo, hi = (int(v) for v in text.split(","))
    return lo, hi


def build_parser() -> argparse.ArgumentParser:
    from .train import TrainConfig

    d = TrainConfig()
    p = argparse.ArgumentParser(prog="napari-pancakes-train", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train or resume a model")
    t.add_argument("--out", default=d.out, help="run directory (checkpoints, metrics.csv, log)")
    t.add_argument("--steps", type=int, default=d.steps, help="stop after this many optimiser steps")
    t.add_argument("--minutes", type=float, default=d.minutes, help="stop after this wall time (0: no limit)")
    t.add_argument("--device", default=d.device, choices=["cpu", "cuda", "mps"])
    t.add_argument("--resume", action="store_true", help="continue from OUT/last.pt if it exists")
    t.add_argument("--holdout", type=_csv, default=d.holdout, help="comma-separated datasets never trained on")
    t.add_argument("--synthetic-ratio", type=float, default=d.synthetic_ratio)
    t.add_argument("--batch-sets", type=int, default=d.batch_sets, help="sets per optimiser step")
    t.add_argument("--init", default=d.init,
                   help="start a new run from these safetensors weights (e.g. the bundled pancakes_default.safetensors)")
    t.add_argument("--lr", type=float, default=d.lr)
    t.add_argument("--spread-weight", type=float, default=d.spread_weight,
                   help="weight of the feature-spread term that prevents collapse (0: off)")
    t.add_argument("--binary", dest="dense", action="store_false",
                   help="the paper's loss: one binary label per set (default: whole derived protocols)")
    t.add_argument("--pseudo-ratio", type=float, default=d.pseudo_ratio,
                   help="share of real sets trained on an intensity pseudo-protocol")
    t.add_argument("--padding", default=d.padding, choices=["zeros", "reflect"], help="conv padding of a new model")
    t.add_argument("--low-res-steps", type=int, default=d.low_res_steps,
                   help="train the first N steps at half resolution (progressive resolution)")
    t.add_argument("--low-res-share", type=float, default=d.low_res_share,
                   help="after the first N, this share of steps at half resolution too")
    t.add_argument("--warmup", type=int, default=d.warmup, help="linear warm-up steps")
    t.add_argument("--s-range", type=_pair, default=d.s_range, help="set size range, e.g. 2,5")
    t.add_argument("--m-range", type=_pair, default=d.m_range)
    t.add_argument("--k-range", type=_pair, default=d.k_range)
    t.add_argument("--seed", type=int, default=d.seed)
    t.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads")
    t.add_argument("--log-every", type=int, default=d.log_every)
    t.add_argument("--val-every-min", type=float, default=d.val_every_min)
    t.add_argument("--val-sets", type=int, default=d.val_sets, help="validation sets per source")
    t.add_argument("--ckpt-every-min", type=float, default=d.ckpt_every_min)
    t.add_argument("--data-root", default=d.data_root, help="dataset folder (default: $NAPARI_PANCAKES_DATA)")
    t.add_argument("--cache-dir", default=d.cache_dir)
    t.add_argument("--features", type=int, default=d.features, help="U-Net width of a new model (paper: 32)")
    t.add_argument("--no-mni", dest="mni", action="store_false", help="leave out the nilearn MNI152 slices")
    t.add_argument("--pack", default=d.pack, help="read the datasets from this `pack` file (at 128 px) instead")

    e = sub.add_parser("export", help="write a checkpoint's model as safetensors")
    e.add_argument("checkpoint", type=Path)
    e.add_argument("out", type=Path)

    from ..evaluate import build_parser as evaluation_parser

    evaluation_parser(sub.add_parser("evaluate", help="the evaluation harness (python -m napari_pancakes.evaluate)"))

    c = sub.add_parser("curve", help="plot a run's training loss and validation Set Dice")
    c.add_argument("run", type=Path)
    c.add_argument("out", type=Path)

    k = sub.add_parser("pack", help="write every dataset of the data root (and MNI152) to one file for a GPU machine")
    k.add_argument("out", type=Path)
    k.add_argument("--res", type=int, default=128, help="128 for `train --pack`, 256 for the refiner's --pack")
    k.add_argument("--data-root", default=None, help="dataset folder (default: $NAPARI_PANCAKES_DATA)")
    k.add_argument("--cache-dir", default="runs/cache")
    k.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    return p


def main(argv: list[str] | None = None) -> None:
    import sys

    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if args.command == "train":
        from .train import TrainConfig, train

        fields = TrainConfig.__dataclass_fields__
        train(TrainConfig(**{k: v for k, v in vars(args).items() if k in fields}))
    elif args.command == "export":
        from .train import export_checkpoint

        print(export_checkpoint(args.checkpoint, args.out))
    elif args.command == "evaluate":
        from ..evaluate import main as evaluation_main

        evaluation_main(argv[1:])
    elif args.command == "curve":
        from .curve import plot_training_curve

        print(plot_training_curve(args.run, args.out))
    elif args.command == "pack":
        from .datasets import load_real_datasets, write_pack

        if args.out.exists() and not args.overwrite:
            raise SystemExit(f"{args.out} exists; pass --overwrite to replace it")
        real = load_real_datasets(root=args.data_root, res=args.res, cache_dir=Path(args.cache_dir), mni=True)
        print(write_pack(real, args.out), sorted(real))


if __name__ == "__main__":
    main()
