"""Reading image sets from files (writing label maps is :mod:`.export`'s job).

Supported: PNG/JPEG/BMP (2D, grey or RGB), TIFF (2D, RGB or a (S, H, W) stack) and NIfTI
(2D, or 3D where the slices along the last axis form the set).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".nii", ".nii.gz")


def suffix_of(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def stem_of(path: Path) -> str:
    s = suffix_of(path)
    return path.name[: -len(s)] if s else path.name


@dataclass
class Source:
    """One input file: its slices (members of the set) and what is needed to write labels back
    (a NIfTI file's affine: :func:`napari_pancakes.export.write_label_file` keeps it)."""

    path: Path
    slices: list[np.ndarray]
    kind: str  # "2d", "stack" (TIFF) or "volume" (NIfTI, slices along the last axis)
    affine: np.ndarray | None = None
    header: object | None = field(default=None, repr=False)


def expand_inputs(inputs) -> list[Path]:
    """Files and folders -> sorted list of supported image files (folders not recursed)."""
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and suffix_of(f) in IMAGE_SUFFIXES)
            if not found:
                raise ValueError(f"folder {p} contains no supported images ({', '.join(IMAGE_SUFFIXES)})")
            paths.extend(found)
        elif p.is_file():
            if suffix_of(p) not in IMAGE_SUFFIXES:
                raise ValueError(f"{p}: unsupported file type; supported: {', '.join(IMAGE_SUFFIXES)}")
            paths.append(p)
        else:
            raise ValueError(f"input not found: {p}")
    if not paths:
        raise ValueError("no input images given")
    return paths


def read_source(path: Path) -> Source:
    """Read one file into a :class:`Source`."""
    s = suffix_of(path)
    try:
        if s in (".nii", ".nii.gz"):
            import nibabel as nib

            img = nib.load(str(path))
            data = np.asarray(img.dataobj)
            data = np.squeeze(data)
            if data.ndim == 2:
                return Source(path, [data], "2d", img.affine, img.header)
            if data.ndim != 3:
                raise ValueError(f"{path}: NIfTI with {data.ndim} dimensions; 2D or 3D expected")
            return Source(path, [data[..., z] for z in range(data.shape[-1])], "volume", img.affine, img.header)
        if s in (".tif", ".tiff"):
            import tifffile

            data = tifffile.imread(str(path))
        else:
            import imageio.v3 as iio

            data = iio.imread(str(path))
    except ValueError:
        raise
    except Exception as exc:  # a decoder's own message (e.g. imageio's "no backend") would mislead
        raise ValueError(f"{path} is not a valid {s.lstrip('.').upper()} image (it could not be decoded)") from exc
    data = np.squeeze(np.asarray(data))
    is_rgb = data.ndim >= 3 and data.shape[-1] in (3, 4) and data.shape[-1] < min(data.shape[-3:-1])
    spatial = data.ndim - (1 if is_rgb else 0)
    if spatial == 2:
        return Source(path, [data], "2d")
    if spatial == 3:
        return Source(path, list(data), "stack")
    raise ValueError(f"{path}: image of shape {data.shape} is neither 2D nor a stack of 2D images")
