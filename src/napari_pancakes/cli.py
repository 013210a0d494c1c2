"""Command line: ``napari-pancakes segment INPUT... --m 8 --k 20 --out DIR``.

All inputs together form one set (a 3D volume or a TIFF stack contributes its slices).
Writes, per protocol, a label file aligned with each input and ``labels.json`` (names, the
preview's colours), a preview montage PNG and a ``summary.json``, all through
:mod:`.export` (the one label writer); refuses to overwrite unless ``--overwrite``, which
replaces the earlier result whole. Protocols are numbered most
informative first (as in the explorer); ``summary.json`` gives each one's model index.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

SAMPLE_DIR = Path(__file__).parent / "sample_data"
NAMES_FILE = "labels.json"  # per protocol folder: label names and the preview's colours
DESCRIPTION = "Segment a set of images into M candidate protocols of K labels each (Pancakes)."


def build_parser() -> argparse.ArgumentParser:
    from .model import K_RANGE, M_RANGE

    parser = argparse.ArgumentParser(prog="napari-pancakes", description=DESCRIPTION,
                                     epilog="napari-pancakes COMMAND -h lists a command's options.")
    sub = parser.add_subparsers(dest="command", required=True)
    seg = sub.add_parser("segment", help="segment a set of images into M protocols of K labels")
    seg.add_argument("inputs", nargs="*", help="image files or folders (PNG, TIFF, NIfTI)")
    seg.add_argument("--sample", action="store_true", help="segment the bundled sample set (nuclei microscopy)")
    seg.add_argument("--m", type=int, default=8, help=f"protocols, {M_RANGE[0]}..{M_RANGE[1]} (default 8)")
    seg.add_argument("--k", type=int, default=20, help=f"labels per protocol, {K_RANGE[0]}..{K_RANGE[1]} (default 20)")
    seg.add_argument("--out", required=True, help="output folder (created if missing)")
    seg.add_argument("--seed", type=int, default=0, help="0: canonical protocols; others: other draws")
    seg.add_argument("--device", default=None, help="cpu, cuda or mps (default: best available)")
    seg.add_argument("--weights", default=None, help="a .safetensors file (default: bundled weights)")
    seg.add_argument("--overwrite", action="store_true",
                     help="replace the result already in --out whole (its label files are removed first)")
    sub.add_parser("evaluate", help="evaluate on a folder of datasets (see python -m napari_pancakes.evaluate -h)",
                   add_help=False)
    from .cli_study import COMMAND_HELP  # parsed by cli_study.py; listed here so --help shows them

    for name, text in COMMAND_HELP.items():
        sub.add_parser(name, help=text, add_help=False)
    return parser


def sample_inputs() -> list[Path]:
    """The bundled real sample set (nuclei microscopy, CC0)."""
    from .io import expand_inputs

    return [p for p in expand_inputs([SAMPLE_DIR]) if "nuclei" in p.name]


def run_segment(args) -> dict:
    from tqdm import tqdm

    from . import io
    from .export import check_writable, clear_previous, hex_color, label_file_name, labels_document, write_label_file
    from .inference import check_mk, label_counts, protocol_order, protocol_stats, segment_set
    from .io_weights import load_model

    check_mk(args.m, args.k)
    if args.sample and args.inputs:
        raise ValueError("give either --sample or input files, not both")
    paths = sample_inputs() if args.sample else io.expand_inputs(args.inputs)
    out = Path(args.out)
    check_output_folder(out)
    sources = [io.read_source(p) for p in paths]
    check_unique_stems([s.path for s in sources])
    labels_files = {p: [protocol_dir(p) + "/" + label_file_name(s.path, s.kind) for s in sources] for p in range(args.m)}
    names_files = [protocol_dir(p) + "/" + NAMES_FILE for p in range(args.m)]
    targets = [out / f for fs in labels_files.values() for f in fs] + [out / f for f in names_files]
    targets += [out / "preview.png", out / "summary.json"]
    check_writable(targets, args.overwrite)

    members = [sl for s in sources for sl in s.slices]
    model = load_model(args.weights, device=args.device)
    t0 = time.perf_counter()
    with tqdm(total=len(members), desc="segmenting", unit="img", file=sys.stderr) as bar:
        labels = segment_set(members, args.m, args.k, model=model, seed=args.seed,
                             progress=lambda done, total: bar.update(done - bar.n))
    seconds = time.perf_counter() - t0
    per_image = [labels[:, i] for i in range(labels.shape[1])] if isinstance(labels, np.ndarray) else labels
    stats = protocol_stats(sum(label_counts(lab, args.k) for lab in per_image))
    order = protocol_order(stats)  # most informative first, single-label protocols last
    per_image = [lab[order] for lab in per_image]
    stats = [stats[p] for p in order]

    if args.overwrite:  # the new result replaces the old one whole: no file of it stays
        clear_previous(out / "summary.json")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    start = 0
    for s in sources:
        n = len(s.slices)
        part = per_image[start : start + n]
        start += n
        for p in range(args.m):
            lab = part[0][p] if s.kind == "2d" else np.stack([x[p] for x in part])
            written.append(str(write_label_file(out / protocol_dir(p) / label_file_name(s.path, s.kind), lab,
                                                affine=s.affine)))
    names = {i: f"label {i}" for i in range(args.k)}
    colors = {i: hex_color(c / 255) for i, c in enumerate(label_colors(args.k))}
    for p in range(args.m):
        document = labels_document(names, colors, {"labels": [Path(f).name for f in labels_files[p]]},
                                   protocol=p + 1, model_protocol=order[p] + 1, m=args.m, k=args.k, seed=args.seed)
        (out / names_files[p]).write_text(json.dumps(document, indent=1))
    import imageio.v3 as iio

    from .preprocess import to_image_list

    montage = make_montage(to_image_list(members)[0], per_image, args.k)
    rows = [f"protocol {p + 1}: {st['labels_in_use']} label" + "s" * (st["labels_in_use"] != 1)
            for p, st in enumerate(stats)]
    iio.imwrite(out / "preview.png", label_montage(montage, ["images"] + rows, member_names(sources)))
    summary = {
        "inputs": [str(p) for p in paths], "images_in_set": len(members), "m": args.m, "k": args.k,
        "seed": args.seed, "seconds": round(seconds, 3), "label_files": written,
        "files": {"labels": [f for fs in labels_files.values() for f in fs], "names": names_files},
        "weights": args.weights or "bundled",
        "protocols": [{"protocol": p + 1, "model_protocol": order[p] + 1, **{key: st[key] for key in (
            "labels_in_use", "effective_labels", "single_label")}} for p, st in enumerate(stats)],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def protocol_dir(p: int) -> str:
    """The folder of protocol ``p`` (0-based) in the output folder."""
    return f"protocol_{p + 1:02d}"


def check_output_folder(out: Path) -> None:
    """Refuse an output that cannot be a folder before anything runs (not after the model)."""
    for parent in (out, *out.parents):
        if parent.exists():
            if not parent.is_dir():
                what = "--out" if parent == out else f"--out {out}: its parent"
                raise ValueError(f"{what} {parent} is a file, not a folder; give a folder for the outputs")
            break


def check_unique_stems(paths) -> None:
    """Outputs are named after the inputs: two inputs with one name would overwrite each other."""
    from .io import stem_of

    groups: dict[str, list[str]] = {}
    for p in paths:
        groups.setdefault(stem_of(Path(p)), []).append(str(p))
    clashes = [f"{', '.join(ps)} (both '{stem}')" for stem, ps in groups.items() if len(ps) > 1]
    if clashes:
        raise ValueError(f"inputs share a file name, so their outputs would collide: {'; '.join(clashes)}; "
                         "rename one or segment them separately")


def member_names(sources) -> list[str]:
    """One column title per image of the set: the file name, with the slice for stacks/volumes."""
    names = []
    for s in sources:
        name = s.path.name
        names += [name] if s.kind == "2d" else [f"[{i}] {name}" for i in range(len(s.slices))]
    return names


def label_montage(montage: np.ndarray, row_titles: list[str], column_titles: list[str],
                  tile: int = 128, gap: int = 2) -> np.ndarray:
    """The preview with a title on each row (left) and each column (top)."""
    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.load_default(size=13)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        font = ImageFont.load_default()
    left, top = 150, 22
    h, w, _ = montage.shape
    canvas = Image.new("RGB", (w + left, h + top), (255, 255, 255))
    canvas.paste(Image.fromarray(montage), (left, top))
    draw = ImageDraw.Draw(canvas)
    for r, title in enumerate(row_titles):
        draw.text((6, top + r * (tile + gap) + tile // 2), title, fill=(0, 0, 0), font=font, anchor="lm")
    for c, title in enumerate(column_titles[: w // (tile + gap)]):
        text = title if draw.textlength(title, font=font) <= tile else title[: max(3, tile // 8 - 1)] + "..."
        draw.text((left + c * (tile + gap) + tile // 2, top // 2), text, fill=(0, 0, 0), font=font, anchor="mm")
    return np.asarray(canvas)


def label_colors(k: int, seed: int = 0) -> np.ndarray:
    """(k, 3) uint8 distinct colours; label 0 dark grey, the rest spread in hue."""
    import colorsys

    colors = np.zeros((k, 3), dtype=np.uint8)
    colors[0] = (40, 40, 40)
    golden = 0.618033988749895
    for i in range(1, k):
        h = (seed * 0.1 + i * golden) % 1.0
        r, g, b = colorsys.hsv_to_rgb(h, 0.65 + 0.35 * (i % 2), 0.95 - 0.25 * ((i // 2) % 2))
        colors[i] = (int(r * 255), int(g * 255), int(b * 255))
    return colors


def make_montage(images: list[np.ndarray], labels: list[np.ndarray], k: int, tile: int = 128, max_images: int = 8) -> np.ndarray:
    """RGB preview: first row the images, then one row per protocol (labels blended over images).

    Arguments:
        images: 2D intensity images of the set.
        labels: per image, (M, H, W) label maps.
    """
    from skimage.transform import resize

    from .preprocess import normalize_intensity

    n = min(len(images), max_images)
    m = labels[0].shape[0]
    colors = label_colors(k).astype(np.float32) / 255
    canvas = np.ones(((m + 1) * (tile + 2), n * (tile + 2), 3), dtype=np.float32)
    for j in range(n):
        grey = resize(normalize_intensity(images[j]), (tile, tile), order=1, anti_aliasing=True)
        x0 = j * (tile + 2)
        canvas[0:tile, x0 : x0 + tile] = grey[..., None]
        for p in range(m):
            lab = resize(labels[j][p], (tile, tile), order=0, preserve_range=True, anti_aliasing=False).astype(int)
            y0 = (p + 1) * (tile + 2)
            canvas[y0 : y0 + tile, x0 : x0 + tile] = 0.7 * colors[lab] + 0.3 * grey[..., None]
    return (np.clip(canvas, 0, 1) * 255).astype(np.uint8)


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
    n, m = summary["images_in_set"], summary["m"]
    single = sum(p["single_label"] for p in summary["protocols"])
    note = f"; {single} of them use{'s' * (single == 1)} only one label (numbered last)" if single else ""
    print(f"segmented {n} image{'s' * (n != 1)} into {m} protocol{'s' * (m != 1)} x {summary['k']} labels "
          f"in {summary['seconds']:.2f} s{note}; outputs in {args.out} (preview.png, protocol_XX/, summary.json)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
