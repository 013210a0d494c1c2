"""The one label writer: label maps to files other tools read, and back (no Qt, no napari).

Every label file of the package is written here, by :func:`write_label_file`, through one table
of formats (:data:`WRITERS`: TIFF, PNG, NIfTI) with one dtype rule (:func:`label_dtype`: the
smallest unsigned type) and one overwrite rule (:func:`check_writable` refuses before the first
byte is written; with ``overwrite``, :func:`clear_previous` first removes every file the earlier
result's manifest lists, so no file of an older run stays mixed with the new one). The command
line (``segment``, ``apply``), the explorer's Export button and napari's *File > Save* use it.

NIfTI layout: a (S, H, W) label stack is a volume with the S images along NIfTI's last axis,
exactly as :func:`napari_pancakes.io.read_source` reads a volume into images, so a label map
written with its image's affine lies on the image voxel for voxel.

An exported label map travels as up to four files sharing one stem, so that names and measurements are
never separated from the pixels they describe:

- ``<stem>.tif``: the (S, H, W) or (H, W) label stack (uint8/uint16; readable by tifffile, Fiji, napari);
- ``<stem>_000.png`` ...: one 16-bit-safe PNG per image (for tools that want one file per image);
- ``<stem>.nii.gz``: NIfTI, for volumes (voxel size from the layer scale);
- ``<stem>.labels.json``: label id -> name and colour, plus the scale and the label file names;
- ``<stem>.areas.csv``: one row per (image, label): pixels and physical area.

Nothing is overwritten unless ``overwrite=True``: every target is checked before the first byte
is written, so a refused export leaves the disk untouched.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

NAMES_SUFFIX = ".labels.json"
LABELS_FORMAT = "napari-pancakes-labels/1"
NIFTI_AFFINE = "nifti_affine"  # layer metadata key: the 4x4 affine of a NIfTI image (and its labels)
NIFTI_LAYOUT = "images-last"  # (S, H, W) stored as NIfTI (H, W, S), as io.read_source reads volumes
AREAS_SUFFIX = ".areas.csv"


def label_dtype(max_label: int) -> np.dtype:
    """The smallest unsigned type holding ``max_label`` (files stay small and readable)."""
    if max_label < 0:
        raise ValueError("label ids must be non-negative")
    return np.dtype(np.uint8 if max_label <= 255 else np.uint16 if max_label <= 65535 else np.uint32)


def _write_tiff(path: Path, data: np.ndarray, affine, scale) -> None:
    import tifffile

    tifffile.imwrite(path, data, compression="zlib", photometric="minisblack")


def _write_png(path: Path, data: np.ndarray, affine, scale) -> None:
    import imageio.v3 as iio

    if data.ndim != 2:
        raise ValueError(f"a PNG holds one 2D image, got a label map of shape {data.shape}")
    if data.dtype.itemsize > 2:
        raise ValueError(f"PNG holds labels up to 65535; this map goes to {int(data.max())}: use TIFF or NIfTI")
    iio.imwrite(path, data)


def _write_nifti(path: Path, data: np.ndarray, affine, scale) -> None:
    """(S, H, W) -> NIfTI (H, W, S); the affine given (the image's), else the pixel size from ``scale``."""
    import nibabel as nib

    vol = np.moveaxis(data, 0, -1) if data.ndim == 3 else data
    if affine is None:
        spacing = [float(s) for s in (scale if scale is not None else [1.0] * data.ndim)]
        spacing = spacing[1:] + spacing[:1] if data.ndim == 3 else spacing
        affine = np.diag(spacing + [1.0] * (4 - len(spacing)))
    img = nib.Nifti1Image(np.ascontiguousarray(vol), np.asarray(affine, dtype=float))
    nib.save(img, str(path))


# format -> (file suffix, writer(path, data, affine, scale)); other suffixes read as these formats
WRITERS = {"tiff": (".tif", _write_tiff), "png": (".png", _write_png), "nifti": (".nii.gz", _write_nifti)}
FORMATS = tuple(WRITERS)
SUFFIX_FORMATS = {".tif": "tiff", ".tiff": "tiff", ".png": "png", ".nii": "nifti", ".nii.gz": "nifti"}


def format_of(path: str | Path) -> str:
    """The label format a file name asks for (by its suffix)."""
    name = Path(path).name.lower()
    for suffix, fmt in SUFFIX_FORMATS.items():
        if name.endswith(suffix):
            return fmt
    raise ValueError(f"{path}: no label format for this suffix; use one of {', '.join(SUFFIX_FORMATS)}")


def label_file_name(input_path: str | Path, kind: str = "2d") -> str:
    """``<stem>_labels.<ext>`` for the labels of one input file: NIfTI for NIfTI input, TIFF
    for TIFF input and for stacks, PNG otherwise."""
    from .io import stem_of, suffix_of

    input_path = Path(input_path)
    fmt = {".nii": "nifti", ".nii.gz": "nifti", ".tif": "tiff", ".tiff": "tiff"}.get(suffix_of(input_path))
    fmt = fmt or ("nifti" if kind == "volume" else "tiff" if kind == "stack" else "png")
    return f"{stem_of(input_path)}_labels{WRITERS[fmt][0]}"


def write_label_file(path: str | Path, labels: np.ndarray, *, affine=None, scale=None) -> Path:
    """Write one label file, its format chosen by the suffix of ``path`` and its dtype by
    :func:`label_dtype`. ``affine`` (NIfTI only): the image's, so the labels lie on it; else the
    voxel size comes from ``scale``. Callers check with :func:`check_writable` first."""
    path = Path(path)
    data = np.asarray(labels)
    if not np.issubdtype(data.dtype, np.integer) or (data.size and int(data.min()) < 0):
        raise ValueError(f"a label map must hold non-negative integers, got dtype {data.dtype}")
    data = data.astype(label_dtype(int(data.max()) if data.size else 0), copy=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    WRITERS[format_of(path)][1](path, data, affine, scale)
    return path


def check_writable(paths, overwrite: bool) -> None:
    """The overwrite rule: raise FileExistsError naming the existing outputs unless ``overwrite``."""
    existing = [str(p) for p in paths if Path(p).exists()]
    if existing and not overwrite:
        more = f" (and {len(existing) - 3} more)" if len(existing) > 3 else ""
        raise FileExistsError(
            f"output exists: {', '.join(existing[:3])}{more}; choose another name or folder, "
            "or overwrite it (--overwrite; overwrite=True)"
        )


def manifest_files(manifest: str | Path) -> list[Path]:
    """The files an earlier result lists in its manifest's ``files`` (kind -> names relative to it)."""
    manifest = Path(manifest)
    try:
        document = json.loads(manifest.read_text())
        files = document.get("files") or {}
        if not files and document.get("label_files"):  # a segment summary.json from before "files"
            files = {"labels": [str(Path(Path(f).parent.name) / Path(f).name) for f in document["label_files"]]}
    except (OSError, ValueError, AttributeError, TypeError):
        return []
    folder = manifest.parent.resolve()
    out = []
    for names in files.values() if isinstance(files, dict) else []:
        for name in names if isinstance(names, list) else []:
            p = (folder / str(name)).resolve()
            if folder in p.parents:  # never outside the result's folder
                out.append(p)
    return out


def clear_previous(manifest: str | Path) -> list[Path]:
    """Before an overwrite: delete the files of the earlier result ``manifest`` describes (and
    folders left empty), so the new result is not mixed with files of the old one."""
    removed = []
    folder = Path(manifest).parent.resolve()
    for p in manifest_files(manifest):
        if p.is_file():
            p.unlink()
            removed.append(p)
            parent = p.parent
            while parent != folder and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
                parent = parent.parent
    return removed


def as_stack(labels: np.ndarray) -> np.ndarray:
    """(H, W) -> (1, H, W); (S, H, W) unchanged; anything else is refused."""
    labels = np.asarray(labels)
    if labels.ndim == 2:
        return labels[None]
    if labels.ndim != 3:
        raise ValueError(f"a label map must be (H, W) or (S, H, W), got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"a label map must hold integers, got dtype {labels.dtype}")
    return labels


def label_areas(
    labels: np.ndarray,
    scale: Sequence[float] | None = None,
    names: Mapping[int, str] | None = None,
    *,
    include_background: bool = False,
) -> list[dict]:
    """Per-image, per-label areas of an (S, H, W) or (H, W) label map.

    Arguments:
        labels: integer label map; 0 is background.
        scale: physical size of a pixel along each axis of ``labels`` (the napari layer
            ``scale``); only the last two entries matter. None means 1 per pixel.
        names: label id -> name, copied into the rows.
        include_background: also report label 0.

    Returns:
        rows ``{"image", "label", "name", "pixels", "area"}`` for every label present in an
        image, ordered by image then label. ``area`` = pixels x pixel area, computed by
        ``skimage.measure.regionprops_table`` with the pixel spacing.
    """
    from skimage.measure import regionprops_table

    stack = as_stack(labels)
    spacing = (1.0, 1.0) if scale is None else tuple(float(s) for s in tuple(scale)[-2:])
    names = names or {}
    rows = []
    for s, image in enumerate(stack):
        image = np.asarray(image)
        if include_background:
            image = image.astype(np.int64) + 1  # regionprops ignores 0
        table = regionprops_table(image, properties=("label", "area"), spacing=spacing)
        pixels = np.bincount(image.ravel(), minlength=int(image.max()) + 1)
        for lab, area in zip(table["label"], table["area"]):
            lab_id = int(lab) - (1 if include_background else 0)
            rows.append({
                "image": s,
                "label": lab_id,
                "name": names.get(lab_id, ""),
                "pixels": int(pixels[int(lab)]),
                "area": float(area),
            })
    return rows


def area_summary(rows: Iterable[dict], n_images: int) -> dict[int, dict]:
    """Label id -> ``{"per_image_pixels": [...], "per_image_area": [...], "present_in": n}``."""
    out: dict[int, dict] = {}
    for r in rows:
        entry = out.setdefault(r["label"], {
            "per_image_pixels": [0] * n_images,
            "per_image_area": [0.0] * n_images,
            "present_in": 0,
        })
        entry["per_image_pixels"][r["image"]] = r["pixels"]
        entry["per_image_area"][r["image"]] = r["area"]
        entry["present_in"] += r["pixels"] > 0
    return out


def export_paths(stem: str | Path, formats: Iterable[str], n_images: int) -> dict[str, list[Path]]:
    """Every file an export with these formats would write (checked before writing)."""
    stem = _strip_known_suffix(Path(stem))
    paths: dict[str, list[Path]] = {}
    for fmt in formats:
        if fmt not in FORMATS:
            raise ValueError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
        suffix = WRITERS[fmt][0]
        if fmt == "png":  # one file per image
            paths[fmt] = [stem.with_name(f"{stem.name}_{i:03d}{suffix}") for i in range(n_images)]
        else:
            paths[fmt] = [stem.with_name(stem.name + suffix)]
    paths["names"] = [stem.with_name(stem.name + NAMES_SUFFIX)]
    paths["areas"] = [stem.with_name(stem.name + AREAS_SUFFIX)]
    return paths


def export_label_map(
    stem: str | Path,
    labels: np.ndarray,
    *,
    names: Mapping[int, str] | None = None,
    colors: Mapping[int, Sequence[float]] | None = None,
    scale: Sequence[float] | None = None,
    formats: Iterable[str] = ("tiff",),
    overwrite: bool = False,
    affine=None,
) -> dict[str, list[Path]]:
    """Write a label map, its names/colours JSON and its area CSV next to each other.

    Arguments:
        stem: path without extension (a trailing .tif/.png/.nii.gz is dropped), e.g.
            ``out/nuclei_chosen``.
        labels: (S, H, W) or (H, W) integer label map, 0 = background.
        names: label id -> name; colors: label id -> RGB(A) floats in 0..1.
        scale: pixel size per axis of ``labels`` (stored in the JSON, the NIfTI header, the CSV).
        formats: any of "tiff", "png" (one file per image), "nifti".
        overwrite: replace the earlier export of this stem whole (its label files go first);
            otherwise ``FileExistsError`` lists the existing files and nothing is written.
        affine: the 4x4 affine of the image the labels were made from (a NIfTI image's, carried
            in its layer metadata): the NIfTI file keeps it. None: the voxel size from ``scale``.

    Returns:
        kind -> written paths ("tiff", "png", "nifti", "names", "areas").
    """
    stack = as_stack(labels)
    formats = tuple(formats)
    if not formats:
        raise ValueError(f"choose at least one export format ({', '.join(FORMATS)})")
    paths = export_paths(stem, formats, len(stack))
    check_writable([p for group in paths.values() for p in group], overwrite)
    if overwrite:
        clear_previous(paths["names"][0])
    data = np.asarray(labels)
    for fmt in formats:
        for p, part in zip(paths[fmt], stack if fmt == "png" else [data]):
            write_label_file(p, part, affine=affine, scale=scale)

    names = {int(k): str(v) for k, v in (names or {}).items()}
    ids = sorted(set(int(i) for i in np.unique(data)) | set(names))
    names = {i: names.get(i, "background" if i == 0 else f"label {i}") for i in ids}
    meta = labels_document(names, {i: hex_color(c) for i, c in (colors or {}).items()},
                           {k: [p.name for p in v] for k, v in paths.items() if k in FORMATS},
                           shape=list(data.shape), scale=[float(s) for s in scale] if scale is not None else None,
                           nifti_layout=NIFTI_LAYOUT)
    paths["names"][0].write_text(json.dumps(meta, indent=1))
    rows = label_areas(data, scale, names)
    with open(paths["areas"][0], "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["image", "label", "name", "pixels", "area"])
        writer.writeheader()
        writer.writerows(rows)
    return paths


def labels_document(names: Mapping[int, str], colors: Mapping[int, str | None], files: dict, **extra) -> dict:
    """The names/colours JSON written beside label files (an export, an applied protocol, a
    segmented protocol): label id -> name and "#rrggbb" colour, and the label files it describes
    (kind -> file names relative to the JSON: the manifest :func:`clear_previous` reads)."""
    return {"format": LABELS_FORMAT, **extra, "files": files,
            "labels": [{"id": int(i), "name": str(n), "color": colors.get(i)} for i, n in sorted(names.items())]}


def read_label_map(path: str | Path) -> tuple[np.ndarray, dict]:
    """Read back what :func:`export_label_map` wrote, from the ``.labels.json`` or the ``.tif``.

    Returns:
        labels: the label stack as written; meta: the JSON content plus ``names`` (id -> name)
            and ``colors`` (id -> "#rrggbb" or None).
    """
    path = Path(path)
    json_path = path if path.name.endswith(NAMES_SUFFIX) else _strip_known_suffix(path).with_name(
        _strip_known_suffix(path).name + NAMES_SUFFIX
    )
    if not json_path.is_file():
        raise FileNotFoundError(f"no label names file {json_path} next to {path}")
    meta = json.loads(json_path.read_text())
    if meta.get("format") != LABELS_FORMAT:
        raise ValueError(f"{json_path} is not a napari-pancakes label names file")
    files = meta.get("files", {})
    if "tiff" in files:
        import tifffile

        labels = tifffile.imread(json_path.with_name(files["tiff"][0]))
    elif "png" in files:
        import imageio.v3 as iio

        labels = np.stack([iio.imread(json_path.with_name(f)) for f in files["png"]])
        labels = labels.reshape(meta["shape"])
    elif "nifti" in files:
        import nibabel as nib

        vol = np.asarray(nib.load(json_path.with_name(files["nifti"][0])).dataobj)
        if meta.get("nifti_layout") == NIFTI_LAYOUT:
            labels = np.ascontiguousarray(np.moveaxis(vol, -1, 0) if vol.ndim == 3 else vol)
        else:  # files written before 0.x reversed every axis
            labels = np.ascontiguousarray(vol.transpose(tuple(range(vol.ndim))[::-1]))
    else:
        raise ValueError(f"{json_path} names no label file")
    meta["names"] = {int(e["id"]): e["name"] for e in meta["labels"]}
    meta["colors"] = {int(e["id"]): e["color"] for e in meta["labels"]}
    return labels, meta


def _strip_known_suffix(path: Path) -> Path:
    name = path.name
    for suffix in (NAMES_SUFFIX, AREAS_SUFFIX, ".nii.gz", ".tiff", ".tif", ".png", ".nii"):
        if name.lower().endswith(suffix):
            return path.with_name(name[: -len(suffix)])
    return path


def hex_color(color: Sequence[float]) -> str:
    r, g, b = (int(round(float(c) * 255)) for c in tuple(color)[:3])
    return f"#{r:02x}{g:02x}{b:02x}"
