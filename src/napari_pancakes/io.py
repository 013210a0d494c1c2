"""Reading image sets from files and writing label maps aligned with them.

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
    """One input file: its slices (members of the set) and what is needed to write labels back."""

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


def label_path(out_dir: Path, source: Source, protocol: int) -> Path:
    """Where protocol ``protocol``'s labels for ``source`` go (format follows the input)."""
    ext = {"volume": ".nii.gz", "stack": ".tif"}.get(source.kind)
    if ext is None:
        s = suffix_of(source.path)
        ext = ".nii.gz" if s in (".nii", ".nii.gz") else (".tif" if s in (".tif", ".tiff") else ".png")
    return out_dir / f"protocol_{protocol + 1:02d}" / f"{stem_of(source.path)}_labels{ext}"


def write_labels(path: Path, labels: np.ndarray, source: Source) -> None:
    """Write one label map (2D, or (S, H, W) for stacks/volumes) in the format of ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    s = suffix_of(path)
    if s == ".nii.gz":
        import nibabel as nib

        data = np.moveaxis(labels, 0, -1) if labels.ndim == 3 else labels  # slices back to the last axis
        affine = source.affine if source.affine is not None else np.eye(4)
        nib.save(nib.Nifti1Image(data.astype(np.uint8 if labels.max() < 256 else np.int32), affine), str(path))
    elif s == ".tif":
        import tifffile

        tifffile.imwrite(str(path), labels, compression="zlib")
    else:
        import imageio.v3 as iio

        iio.imwrite(str(path), labels.astype(np.uint8))


def check_writable(paths, overwrite: bool) -> None:
    """Refuse to overwrite: raise FileExistsError naming the existing outputs unless ``overwrite``."""
    existing = [str(p) for p in paths if Path(p).exists()]
    if existing and not overwrite:
        more = f" (and {len(existing) - 3} more)" if len(existing) > 3 else ""
        raise FileExistsError(
            f"output exists: {', '.join(existing[:3])}{more}; choose another folder or pass --overwrite"
        )


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


def montage(images: list[np.ndarray], labels: list[np.ndarray], k: int, tile: int = 128, max_images: int = 8) -> np.ndarray:
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
