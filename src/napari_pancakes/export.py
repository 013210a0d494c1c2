"""Writing a chosen label map to files other tools read, and reading it back (no Qt, no napari).

A label map travels as up to four files sharing one stem, so that names and measurements are
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

FORMATS = ("tiff", "png", "nifti")
NAMES_SUFFIX = ".labels.json"
AREAS_SUFFIX = ".areas.csv"


def label_dtype(max_label: int) -> np.dtype:
    """The smallest unsigned type holding ``max_label`` (files stay small and readable)."""
    if max_label < 0:
        raise ValueError("label ids must be non-negative")
    return np.dtype(np.uint8 if max_label <= 255 else np.uint16 if max_label <= 65535 else np.uint32)


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
        if fmt == "tiff":
            paths[fmt] = [stem.with_name(stem.name + ".tif")]
        elif fmt == "png":
            paths[fmt] = [stem.with_name(f"{stem.name}_{i:03d}.png") for i in range(n_images)]
        else:
            paths[fmt] = [stem.with_name(stem.name + ".nii.gz")]
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
) -> dict[str, list[Path]]:
    """Write a label map, its names/colours JSON and its area CSV next to each other.

    Arguments:
        stem: path without extension (a trailing .tif/.png/.nii.gz is dropped), e.g.
            ``out/nuclei_chosen``.
        labels: (S, H, W) or (H, W) integer label map, 0 = background.
        names: label id -> name; colors: label id -> RGB(A) floats in 0..1.
        scale: pixel size per axis of ``labels`` (stored in the JSON, the NIfTI header, the CSV).
        formats: any of "tiff", "png" (one file per image), "nifti".
        overwrite: replace existing files; otherwise ``FileExistsError`` lists them and nothing
            is written.

    Returns:
        kind -> written paths ("tiff", "png", "nifti", "names", "areas").
    """
    stack = as_stack(labels)
    formats = tuple(formats)
    if not formats:
        raise ValueError(f"choose at least one export format ({', '.join(FORMATS)})")
    paths = export_paths(stem, formats, len(stack))
    existing = [p for group in paths.values() for p in group if p.exists()]
    if existing and not overwrite:
        listed = ", ".join(str(p) for p in existing[:5]) + (" ..." if len(existing) > 5 else "")
        raise FileExistsError(f"export would overwrite {len(existing)} file(s): {listed}; pass overwrite=True")
    first = next(iter(paths.values()))[0]
    first.parent.mkdir(parents=True, exist_ok=True)

    data = np.asarray(labels)
    data = data.astype(label_dtype(int(data.max()) if data.size else 0), copy=False)
    for fmt in formats:
        if fmt == "tiff":
            import tifffile

            tifffile.imwrite(paths[fmt][0], data, compression="zlib", photometric="minisblack")
        elif fmt == "png":
            import imageio.v3 as iio

            png_data = data.astype(np.uint8 if data.dtype == np.uint8 else np.uint16, copy=False)
            for p, image in zip(paths[fmt], as_stack(png_data)):
                iio.imwrite(p, image)
        else:
            _write_nifti(paths[fmt][0], data, scale)

    names = {int(k): str(v) for k, v in (names or {}).items()}
    ids = sorted(set(int(i) for i in np.unique(data)) | set(names))
    meta = {
        "format": "napari-pancakes-labels/1",
        "shape": list(data.shape),
        "scale": [float(s) for s in scale] if scale is not None else None,
        "files": {k: [p.name for p in v] for k, v in paths.items() if k in FORMATS},
        "labels": [
            {"id": i, "name": names.get(i, "background" if i == 0 else f"label {i}"),
             "color": _hex(colors[i]) if colors and i in colors else None}
            for i in ids
        ],
    }
    paths["names"][0].write_text(json.dumps(meta, indent=1))
    rows = label_areas(data, scale, names)
    with open(paths["areas"][0], "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["image", "label", "name", "pixels", "area"])
        writer.writeheader()
        writer.writerows(rows)
    return paths


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
    if meta.get("format") != "napari-pancakes-labels/1":
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
        labels = np.ascontiguousarray(vol.transpose(tuple(range(vol.ndim))[::-1]))
    else:
        raise ValueError(f"{json_path} names no label file")
    meta["names"] = {int(e["id"]): e["name"] for e in meta["labels"]}
    meta["colors"] = {int(e["id"]): e["color"] for e in meta["labels"]}
    return labels, meta


def _write_nifti(path: Path, data: np.ndarray, scale) -> None:
    import nibabel as nib

    # NIfTI is x-fastest; napari arrays are (Z, Y, X): reverse the axes and the spacing.
    vol = np.ascontiguousarray(data.transpose(tuple(range(data.ndim))[::-1]))
    spacing = [float(s) for s in (scale if scale is not None else [1.0] * data.ndim)][::-1]
    affine = np.diag(spacing[:3] + [1.0] * (4 - min(3, len(spacing))))[:4, :4]
    img = nib.Nifti1Image(vol, affine)
    img.header.set_zooms(spacing[: vol.ndim])
    nib.save(img, str(path))


def _strip_known_suffix(path: Path) -> Path:
    name = path.name
    for suffix in (NAMES_SUFFIX, AREAS_SUFFIX, ".nii.gz", ".tiff", ".tif", ".png", ".nii"):
        if name.lower().endswith(suffix):
            return path.with_name(name[: -len(suffix)])
    return path


def _hex(color: Sequence[float]) -> str:
    r, g, b = (int(round(float(c) * 255)) for c in tuple(color)[:3])
    return f"#{r:02x}{g:02x}{b:02x}"
