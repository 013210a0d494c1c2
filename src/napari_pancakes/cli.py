"""Command line: ``napari-pancakes segment INPUT... --m 8 --k 20 --out DIR``.

All inputs together form one set (a 3D volume or a TIFF stack contributes its slices).
Writes, per protocol, a label file aligned with each input, a preview montage PNG and a
``summary.json``; refuses to overwrite unless ``--overwrite``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

SAMPLE_DIR = Path(__file__).parent / "sample_data"


def build_parser() -> argparse.ArgumentParser:
    from .model import K_RANGE, M_RANGE

    parser = argparse.ArgumentParser(prog="napari-pancakes", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    seg = sub.add_parser("segment", help="segment a set of images into M protocols of K labels")
    seg.add_argument("inputs", nargs="*", help="image files or folders (PNG, TIFF, NIfTI)")
    seg.add_argument("--sample", action="store_true", help="segment the bundled sample set (nuclei microscopy)")
    seg.add_argument("--m", type=int, default=8, help=f"protocols, {M_RANGE[0]}..{M_RANGE[1]} (default 8)")
    seg.add_argument("--k", type=int, default=20, help=f"labels per protocol, {K_RANGE[0]}..{K_RANGE[1]} (default 20)")
    seg.add_argument("--out", required=True, help="output folder")
    seg.add_argument("--seed", type=int, default=0, help="0: canonical protocols; others: other draws")
    seg.add_argument("--device", default=None, help="cpu, cuda or mps (default: best available)")
    seg.add_argument("--weights", default=None, help="a .safetensors file (default: bundled weights)")
    seg.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    sub.add_parser("evaluate", help="evaluate on a folder of datasets (see python -m napari_pancakes.evaluate -h)",
                   add_help=False)
    return parser


def sample_inputs() -> list[Path]:
    """The bundled real sample set (nuclei microscopy, CC0)."""
    from .io import expand_inputs

    return [p for p in expand_inputs([SAMPLE_DIR]) if "nuclei" in p.name]


def run_segment(args) -> dict:
    from tqdm import tqdm

    from . import io
    from .inference import check_mk, segment_set
    from .io_weights import load_model

    check_mk(args.m, args.k)
    paths = sample_inputs() if args.sample else io.expand_inputs(args.inputs)
    if args.sample and args.inputs:
        raise ValueError("give either --sample or input files, not both")
    out = Path(args.out)
    sources = [io.read_source(p) for p in paths]
    targets = [io.label_path(out, s, p) for p in range(args.m) for s in sources]
    targets += [out / "preview.png", out / "summary.json"]
    io.check_writable(targets, args.overwrite)
    stems = [io.stem_of(s.path) for s in sources]
    if len(set(stems)) != len(stems):
        raise ValueError("two inputs share a file name; their outputs would collide - rename one")

    members = [sl for s in sources for sl in s.slices]
    model = load_model(args.weights, device=args.device)
    t0 = time.perf_counter()
    with tqdm(total=len(members), desc="segmenting", unit="img", file=sys.stderr) as bar:
        labels = segment_set(members, args.m, args.k, model=model, seed=args.seed,
                             progress=lambda done, total: bar.update(done - bar.n))
    seconds = time.perf_counter() - t0
    per_image = [labels[:, i] for i in range(labels.shape[1])] if isinstance(labels, np.ndarray) else labels

    written = []
    start = 0
    for s in sources:
        n = len(s.slices)
        part = per_image[start : start + n]
        start += n
        for p in range(args.m):
            lab = part[0][p] if s.kind == "2d" else np.stack([x[p] for x in part])
            path = io.label_path(out, s, p)
            io.write_labels(path, lab, s)
            written.append(str(path))
    import imageio.v3 as iio

    from .preprocess import to_image_list

    iio.imwrite(out / "preview.png", io.montage(to_image_list(members)[0], per_image, args.k))
    summary = {
        "inputs": [str(p) for p in paths], "images_in_set": len(members), "m": args.m, "k": args.k,
        "seed": args.seed, "seconds": round(seconds, 3), "label_files": written,
        "weights": args.weights or "bundled",
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "evaluate":
        from .evaluate import main as evaluate_main

        return evaluate_main(argv[1:])
    if argv and argv[0] in ("apply", "analyze"):  # study commands live in cli_study.py
        from .cli_study import main as study_main

        return study_main(argv)
    args = build_parser().parse_args(argv)
    try:
        summary = run_segment(args)
    except (ValueError, FileExistsError, FileNotFoundError) as exc:
        print(f"napari-pancakes: error: {exc}", file=sys.stderr)
        return 2
    print(f"segmented {summary['images_in_set']} images into {summary['m']} protocols x {summary['k']} labels "
          f"in {summary['seconds']:.2f} s; outputs in {args.out} (preview.png, protocol_XX/)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
