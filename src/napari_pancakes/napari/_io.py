"""npe2 readers and writer: label maps with names (a label file plus a ``.labels.json`` sidecar),
and NIfTI images.

The writer takes a Labels layer (its ``features`` 'index'/'name' columns give the names, its
colormap the colours) and writes it with :func:`..export.export_label_map` in the format its
file name asks for (.tif, .png, .nii.gz); the label reader opens the JSON and gives the names
back as ``features``, so a saved, named label map reopens with its names shown on hover. The
NIfTI reader opens a volume as a stack of its slices (as the command line reads it) and keeps
the file's affine in the layer metadata, so labels made from it are exported on the same grid.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..export import NAMES_SUFFIX, NIFTI_AFFINE, export_label_map, format_of, read_label_map
from ..io import read_source, stem_of, suffix_of
from .controller import TAG, names_from_features, names_table


def get_reader(path):
    """Return a reader when ``path`` is a napari-pancakes label map or a NIfTI image, else None
    (napari tries others)."""
    if isinstance(path, list):
        return None
    p = Path(path)
    if p.name.endswith(NAMES_SUFFIX):
        return read_labels
    return read_nifti if suffix_of(p) in (".nii", ".nii.gz") else None


def read_nifti(path):
    """One Image layer: a 2D image, or a volume as (Z, H, W) slices along its last axis, with the
    voxel size as scale and the affine in ``metadata`` (export writes labels back with it)."""
    source = read_source(Path(path))
    data = source.slices[0] if source.kind == "2d" else np.stack(source.slices)
    zooms = [float(z) for z in source.header.get_zooms()[: data.ndim]]
    scale = zooms[-1:] + zooms[:-1] if data.ndim == 3 else zooms
    return [(data, {"name": stem_of(Path(path)), "scale": scale,
                    "metadata": {NIFTI_AFFINE: np.asarray(source.affine).tolist()}}, "image")]


def read_labels(path):
    """One Labels layer with names in ``features`` and the saved scale."""
    labels, meta = read_label_map(path)
    attrs = {"name": Path(str(path)).name.split(".")[0], "features": names_table(meta["names"])}
    if meta.get("scale"):
        attrs["scale"] = meta["scale"]
    return [(labels, attrs, "labels")]


def write_labels(path: str, data, attributes: dict) -> list[str]:
    """Write a Labels layer to ``path`` (.tif, .png per image, .nii.gz) plus names/colours JSON
    and areas CSV, through the export; returns the files written.

    napari asks before replacing the file the user typed; the sidecars follow it.
    """
    names = names_from_features(attributes.get("features"))
    colors = {}
    colormap = attributes.get("colormap")
    if colormap is not None and hasattr(colormap, "map"):
        ids = [i for i in names if i > 0]
        colors = dict(zip(ids, np.asarray(colormap.map(np.asarray(ids)))[:, :3])) if ids else {}
    affine = (attributes.get("metadata") or {}).get(TAG, {}).get(NIFTI_AFFINE)
    paths = export_label_map(path, data, names=names, colors=colors, scale=attributes.get("scale"),
                             formats=(format_of(path),), overwrite=True, affine=affine)
    return [str(p) for group in paths.values() for p in group]
