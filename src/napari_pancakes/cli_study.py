"""Command line for studies: apply a saved protocol to a collection, rank labels against an outcome.

``napari-pancakes apply PROTOCOL.json INPUTS... --out DIR [--scheduler tcp://host:8786]``
writes ``DIR/<name>_labels.<png|tif|nii.gz>`` per input (3D volumes as slices, NIfTI keeps its
affine) and ``DIR/labels.json`` (names, colours, the protocol).

``napari-pancakes analyze INPUTS... --table outcomes.csv --outcome COLUMN --out DIR`` writes
``ranking.csv`` (every (protocol, label) ranked by association, BH-corrected), ``measurements.csv``
(area and mean intensity per image) and ``plot.png`` (the top label against the outcome).

Existing outputs are never replaced unless ``--overwrite``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

COMMAND_HELP = {  # one line each, also shown by the top-level ``napari-pancakes --help``
    "apply": "label new images with a saved protocol (same label ids and names)",
    "analyze": "rank (protocol, label) pairs by association with an outcome",
}
COMMANDS = tuple(COMMAND_HELP)


def build_parser() -> argparse.ArgumentParser:
    from .model import K_RANGE, M_RANGE

    parser = argparse.ArgumentParser(prog="napari-pancakes", description="studies with a chosen protocol")
    sub = parser.add_subparsers(dest="command", required=True)
    ap = sub.add_parser("apply", help=COMMAND_HELP["apply"])
    ap.add_argument("protocol", help="a protocol .json saved from the explorer or Protocol.save")
    ap.add_argument("inputs", nargs="+", help="image files or folders (PNG, TIFF, NIfTI 2D/3D)")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--batch", type=int, default=8, help="images per forward pass (memory is bounded by it)")
    ap.add_argument("--scheduler", default=None, help="dask.distributed scheduler address, e.g. tcp://host:8786 "
                    "(workers must see the same paths)")
    _common(ap)

    an = sub.add_parser("analyze", help=COMMAND_HELP["analyze"])
    an.add_argument("inputs", nargs="+", help="image files or folders: the collection (one row per image in --table)")
    an.add_argument("--table", required=True, help="CSV: an image name or index column plus outcome columns")
    an.add_argument("--outcome", required=True, help="the outcome column to test")
    an.add_argument("--id-column", default=None, help="the image column (default: image/name/file/id/index, else the first)")
    an.add_argument("--protocol", default=None, help="analyse one saved protocol instead of all M protocols")
    an.add_argument("--m", type=int, default=8, help=f"protocols, {M_RANGE[0]}..{M_RANGE[1]} (default 8)")
    an.add_argument("--k", type=int, default=20, help=f"labels per protocol, {K_RANGE[0]}..{K_RANGE[1]} (default 20)")
    an.add_argument("--seed", type=int, default=0)
    an.add_argument("--measure", choices=("area", "intensity"), default="area")
    an.add_argument("--kind", choices=("numeric", "groups"), default=None,
                    help="force the outcome type (default: numeric when every value is a number)")
    an.add_argument("--pixel-size", type=float, nargs=2, default=None, metavar=("DY", "DX"),
                    help="physical pixel size (areas in these units squared; default: 1 per pixel)")
    an.add_argument("--out", required=True, help="output folder")
    _common(an)
    return parser


def _common(p):
    p.add_argument("--weights", default=None, help="a .safetensors file (default: bundled weights)")
    p.add_argument("--device", default=None, help="cpu, cuda or mps (default: best available)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (apply: the earlier result "
                   "in --out whole, its label files removed first)")


def _load(args):
    from .io_weights import load_model

    model = load_model(args.weights, device=args.device)
    if args.weights:
        model.metadata = {**getattr(model, "metadata", {}), "path": str(Path(args.weights).resolve())}
    return model


def run_apply(args) -> str:
    from tqdm import tqdm

    from . import io
    from .protocol import Protocol, apply_to_files

    protocol = Protocol.load(args.protocol)  # malformed or foreign files fail here, before any work
    paths = io.expand_inputs(args.inputs)
    model = None
    if args.scheduler is None:
        model = _load(args)
        protocol.check_model(model, f"protocol file {args.protocol}")
    t0 = time.perf_counter()
    with tqdm(total=len(paths), desc="applying", unit="file", file=sys.stderr) as bar:
        written = apply_to_files(protocol, paths, args.out, model=model, overwrite=args.overwrite, batch=args.batch,
                                 scheduler=args.scheduler, progress=lambda done, total: bar.update(done - bar.n))
    return (f"labelled {len(written)} file(s) with protocol {protocol.index + 1} of M={protocol.m}, K={protocol.k} "
            f"in {time.perf_counter() - t0:.1f} s; outputs and labels.json in {args.out}")


def collection(inputs) -> tuple[list, list[str]]:
    """Images and names of a collection: a file's stem, ``<stem>_zNNN`` for slices of a volume/stack."""
    from . import io

    images, names = [], []
    for path in io.expand_inputs(inputs):
        source = io.read_source(path)
        stem = io.stem_of(path)
        if source.kind == "2d":
            images.append(source.slices[0])
            names.append(stem)
        else:
            images.extend(source.slices)
            names.extend(f"{stem}_z{i:03d}" for i in range(len(source.slices)))
    return images, names


def run_analyze(args) -> str:
    from tqdm import tqdm

    from . import analysis
    from .export import check_writable
    from .inference import check_mk
    from .protocol import Protocol

    check_mk(args.m, args.k)
    out = Path(args.out)
    targets = [out / "ranking.csv", out / "measurements.csv", out / "plot.png"]
    check_writable(targets, args.overwrite)
    table = analysis.read_outcomes(args.table, args.id_column)
    protocol = Protocol.load(args.protocol) if args.protocol else None
    images, names = collection(args.inputs)
    analysis.match_outcome(table, args.outcome, names)  # fail before the model runs
    model = _load(args)
    if protocol is not None:
        protocol.check_model(model, f"protocol file {args.protocol}")
    with tqdm(total=len(images), desc="measuring", unit="img", file=sys.stderr) as bar:
        measurements, ranking = analysis.analyze(
            images, table, args.outcome, m=args.m, k=args.k, seed=args.seed, model=model, protocol=protocol,
            scale=args.pixel_size, image_names=names, measure=args.measure, kind=args.kind,
            progress=lambda done, total: bar.update(done - bar.n))
    out.mkdir(parents=True, exist_ok=True)
    ranking.to_csv(targets[0], overwrite=args.overwrite)
    analysis.write_csv(targets[1], measurements.rows())
    if ranking.rows:
        analysis.save_plot(analysis.plot_association(measurements, ranking), targets[2], overwrite=args.overwrite)
        top = ranking.rows[0]
        best = (f"top: protocol {top['protocol']}, {top['name']} ({top['test']} effect {top['effect']:+.2f}, "
                f"q = {top['q']:.3g})")
    else:
        best = "no label was present in enough images to test"
    dropped = f"; {ranking.dropped} image(s) without a value left out" if ranking.dropped else ""
    return f"tested {len(ranking.rows)} labels on {ranking.n_images - ranking.dropped} images{dropped}; {best}; outputs in {out}"


def main(argv) -> int:
    args = build_parser().parse_args(argv)
    try:
        message = run_apply(args) if args.command == "apply" else run_analyze(args)
    except (ValueError, FileExistsError, FileNotFoundError) as exc:
        print(f"napari-pancakes {args.command}: error: {exc}", file=sys.stderr)
        return 2
    print(message)
    return 0
