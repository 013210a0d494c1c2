"""npe2 reader and writer for label maps with names: a TIFF stack plus a ``.labels.json`` sidecar.

The writer takes a Labels layer (its ``features`` 'index'/'name' columns give the names); the
reader opens the JSON (or the TIFF next to it) and gives the names back as ``features``, so a
saved, named label map reopens with its names shown on hover.
"""
from __future__ import annotations

from pathlib import Path

from ..export import NAMES_SUFFIX, export_label_map, read_label_map


def get_reader(path):
    """Return a reader when ``path`` is a napari-pancakes label map, else None (napari tries others)."""
    if isinstance(path, list):
        return None
    p = Path(path)
    return read_labels if p.name.endswith(NAMES_SUFFIX) else None


def read_labels(path):
    """One Labels layer with names in ``features`` and the saved scale."""
    labels, meta = read_label_map(path)
    names = meta["names"]
    ids = sorted(names)
    attrs = {
        "name": Path(str(path)).name.split(".")[0],
        "features": {"index": ids, "name": [names[i] for i in ids]},
    }
    if meta.get("scale"):
        attrs["scale"] = meta["scale"]
    return [(labels, attrs, "labels")]


def write_labels(path: str, data, attributes: dict) -> list[str]:
    """Write a Labels layer to ``path`` (.tif) plus names JSON and areas CSV; returns the files written.

    napari asks before replacing the file the user typed; the sidecars follow it.
    """
    features = attributes.get("features")
    names = {}
    if features is not None and "index" in features and "name" in features:
        names = {int(i): str(n) for i, n in zip(features["index"], features["name"])}
    paths = export_label_map(path, data, names=names, scale=attributes.get("scale"),
                             formats=("tiff",), overwrite=True)
    return [str(p) for group in paths.values() for p in group]
