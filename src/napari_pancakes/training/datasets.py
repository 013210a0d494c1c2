"""Real image sets at 128 x 128, the protocol derivation, and the real/synthetic mixing sampler.

Sources: every ``<data root>/<name>/{images,masks}/NNN.png`` folder (label ids, 0 =
background) and nilearn's bundled MNI152 2009 T1 brain (no download) sliced in 3
orientations, with tissue labels (grey/white matter/CSF) crossed with a fixed 3D Voronoi
parcellation, so the same brain offers coarse and fine protocols. Everything is
preprocessed once exactly as at inference (``prepare_image``: RGB -> intensity, percentile
normalisation, anti-aliased resize; masks nearest) and cached as .npz; nothing is read at
package import, and a missing data root just leaves the synthetic sets.

A training task (supplement F): pick a set from one dataset, derive a protocol from its
label maps (as annotated, a natural coarsening such as "both lungs", a random merge of
labels, or foreground vs background) and take one resulting label present in every member
as the binary target.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..preprocess import prepare_image, to_image_list
from .augment import augment_set
from .synthetic import synthetic_set

DATA_ROOT = Path(__file__).resolve().parents[4] / "shared" / "data"
CACHE_VERSION = 1
MIN_TARGET_PX = 16  # a target must cover at least this many pixels in every member
MNI_SLICE_WINDOW = 12  # members of an MNI set are slices at most this far apart


@dataclass
class RealDataset:
    """Images (N, R, R) float32 in [0, 1], label maps (N, R, R) uint8 and how to form sets.

    ``groups``: natural coarsenings, each an array mapping a label id to a coarse id.
    ``eval_group``: the coarsening whose labels are the evaluation targets (None: as is).
    ``stack``/``position``: for slices of one volume, members of a set come from one stack
    and lie within ``MNI_SLICE_WINDOW`` of each other (or are the closest available).
    """

    name: str
    images: np.ndarray
    labels: np.ndarray
    groups: list[np.ndarray] = field(default_factory=list)
    eval_group: np.ndarray | None = None
    stack: np.ndarray | None = None
    position: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.images)

    def set_indices(self, rng: np.random.Generator, s: int) -> np.ndarray:
        if self.stack is None:
            return rng.choice(len(self), size=s, replace=False)
        i = rng.integers(len(self))
        same = np.flatnonzero(self.stack == self.stack[i])
        dist = np.abs(self.position[same] - self.position[i])
        near = same[dist <= MNI_SLICE_WINDOW]
        if near.size < s:  # sparse stacks (e.g. a validation split): the s closest slices
            near = same[np.argsort(dist, kind="stable")[:s]]
        return rng.choice(near, size=min(s, near.size), replace=False)

    def eval_labels(self, idx) -> np.ndarray:
        lab = self.labels[idx]
        return lab if self.eval_group is None else self.eval_group[lab]


def _read_folder(folder: Path, res: int) -> tuple[np.ndarray, np.ndarray]:
    from skimage.io import imread
    from skimage.transform import resize

    images, labels = [], []
    for img_path in sorted((folder / "images").glob("*.png")):
        image = to_image_list([imread(img_path)])[0][0]
        mask = imread(folder / "masks" / img_path.name)
        images.append(prepare_image(image, res))
        labels.append(resize(mask, (res, res), order=0, preserve_range=True, anti_aliasing=False).astype(np.uint8))
    return np.stack(images), np.stack(labels)


def _mni_volumes(n_parcels: int, seed: int = 0):
    """T1 volume, tissue labels (0 outside brain, 1 CSF, 2 GM, 3 WM) and 3D Voronoi parcels."""
    from nilearn import datasets as nd

    t1 = nd.load_mni152_template(resolution=1).get_fdata().astype(np.float32)
    gm = nd.load_mni152_gm_template(resolution=1).get_fdata().astype(np.float32)
    wm = nd.load_mni152_wm_template(resolution=1).get_fdata().astype(np.float32)
    brain = nd.load_mni152_brain_mask(resolution=1).get_fdata() > 0
    csf = np.clip(1 - gm - wm, 0, 1)
    tissue = (np.argmax(np.stack([csf, gm, wm]), 0) + 1) * brain
    rng = np.random.default_rng(seed)
    inside = np.argwhere(brain)
    seeds = inside[rng.choice(len(inside), n_parcels, replace=False)].astype(np.float32)
    coords = np.argwhere(np.ones(brain.shape, bool)).astype(np.float32)
    parcel = np.empty(coords.shape[0], np.int64)
    for start in range(0, coords.shape[0], 1 << 20):
        chunk = coords[start:start + (1 << 20)]
        parcel[start:start + len(chunk)] = ((chunk[:, None] - seeds[None]) ** 2).sum(-1).argmin(1)
    return t1, tissue.astype(np.int64), parcel.reshape(brain.shape)


def _read_mni(res: int, n_parcels: int = 8, step: int = 2):
    """Slices of the MNI152 T1 in 3 orientations; fine label = (tissue - 1) * P + parcel + 1."""
    from skimage.transform import resize

    t1, tissue, parcel = _mni_volumes(n_parcels)
    fine = np.where(tissue > 0, (tissue - 1) * n_parcels + parcel + 1, 0)
    images, labels, stack, position = [], [], [], []
    for axis in range(3):
        for i in range(0, t1.shape[axis], step):
            lab = np.take(fine, i, axis=axis)
            if (lab > 0).mean() < 0.15:
                continue
            images.append(prepare_image(np.take(t1, i, axis=axis), res))
            labels.append(resize(lab, (res, res), order=0, preserve_range=True, anti_aliasing=False).astype(np.uint8))
            stack.append(axis)
            position.append(i)
    ids = np.arange(3 * n_parcels + 1)
    by_tissue = np.where(ids > 0, (ids - 1) // n_parcels + 1, 0)
    by_parcel = np.where(ids > 0, (ids - 1) % n_parcels + 1, 0)
    arrays = dict(images=np.stack(images), labels=np.stack(labels), stack=np.array(stack),
                  position=np.array(position), groups=np.stack([by_tissue, by_parcel]))
    return arrays


def _cached(cache_dir: Path | None, key: str, build) -> dict[str, np.ndarray]:
    if cache_dir is None:
        return build()
    path = Path(cache_dir) / f"{key}-v{CACHE_VERSION}.npz"
    if path.is_file():
        with np.load(path) as npz:
            return dict(npz)
    arrays = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)
    return arrays


JSRT_GROUPS = [np.array([0, 1, 1, 2, 3, 3])]  # lungs, heart, clavicles


def folder_names(root: Path = DATA_ROOT) -> list[str]:
    """Names of the dataset folders under ``root`` (empty if it does not exist)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "images").is_dir() and (p / "masks").is_dir())


def load_real_datasets(names: list[str] | None = None, root: Path = DATA_ROOT, res: int = 128,
                       cache_dir: Path | None = None, mni: bool = True) -> dict[str, RealDataset]:
    """The requested folders (default: all under ``root``) and, with ``mni``, "mni152"."""
    out: dict[str, RealDataset] = {}
    for name in names if names is not None else folder_names(root):
        folder = Path(root) / name
        if not (folder / "images").is_dir():
            continue
        arrays = _cached(cache_dir, f"{name}-{res}", lambda f=folder: dict(zip(("images", "labels"), _read_folder(f, res))))
        out[name] = RealDataset(name, arrays["images"], arrays["labels"],
                                groups=JSRT_GROUPS if name == "jsrt_scr_chest" else [])
    if mni:
        try:
            arrays = _cached(cache_dir, f"mni152-{res}", lambda: _read_mni(res))
        except ImportError:  # nilearn is an optional training dependency
            return out
        groups = list(arrays["groups"])
        out["mni152"] = RealDataset("mni152", arrays["images"], arrays["labels"], groups=groups,
                                    eval_group=groups[0], stack=arrays["stack"], position=arrays["position"])
    return out


def derive_target(rng: np.random.Generator, labels: np.ndarray, groups: list[np.ndarray] = (),
                  natural: float = 0.5) -> np.ndarray | None:
    """A binary target (S, H, W) from label maps (S, H, W), or None when no label fits.

    The protocol is the annotation itself, a natural coarsening (probability ``natural``
    when ``groups`` exist), a random merge of labels into 2..L groups, or foreground vs
    background; the target is one label of that protocol present (>= MIN_TARGET_PX) in
    every member and not covering every pixel.
    """
    n = int(labels.max()) + 1
    u = rng.random()
    if groups and rng.random() < natural:
        mapping = groups[rng.integers(len(groups))]
    elif u < 0.5 or n <= 2:
        mapping = np.arange(n)
    elif u < 0.85:
        mapping = rng.integers(0, rng.integers(2, n + 1), n)
    else:
        mapping = (np.arange(n) > 0).astype(np.int64)
    protocol = mapping[labels]
    counts = np.stack([np.bincount(p.ravel(), minlength=mapping.max() + 1) for p in protocol])
    ok = np.flatnonzero((counts >= MIN_TARGET_PX).all(0) & (counts < labels[0].size).all(0))
    if ok.size == 0:
        return None
    return protocol == rng.choice(ok)


class SetSampler:
    """Training sets: synthetic with probability ``synthetic_ratio``, else a real dataset
    chosen uniformly; then a derived binary target and within/across-set augmentation."""

    def __init__(self, real: dict[str, RealDataset], synthetic_ratio: float = 0.5, res: int = 128):
        self.real = list(real.values())
        self.synthetic_ratio = synthetic_ratio if self.real else 1.0
        self.res = res

    def sample(self, rng: np.random.Generator, s: int) -> tuple[np.ndarray, np.ndarray, str]:
        """Images (S, R, R) float32, target (S, R, R) float32 and the source name."""
        while True:
            if rng.random() < self.synthetic_ratio:
                images, labels = synthetic_set(rng, s, self.res)
                groups, name = [], "synthetic"
            else:
                ds = self.real[rng.integers(len(self.real))]
                idx = ds.set_indices(rng, s)
                images, labels, groups, name = ds.images[idx], ds.labels[idx].astype(np.int64), ds.groups, ds.name
            images, labels = augment_set(rng, images, labels)
            target = derive_target(rng, labels, groups)
            if target is not None:
                return images, target.astype(np.float32), name


def validation_sets(real: dict[str, RealDataset], n_per_source: int, s: int = 3, seed: int = 1234,
                    res: int = 128) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """Fixed evaluation sets (images, label maps with the evaluation labels), no augmentation.

    Synthetic ones come from a seed stream the training sampler never uses.
    """
    rng = np.random.default_rng(seed)
    out = {"synthetic": [synthetic_set(rng, s, res) for _ in range(n_per_source)]}
    for name, ds in real.items():
        sets = []
        for _ in range(n_per_source):
            idx = ds.set_indices(rng, s)
            sets.append((ds.images[idx], ds.eval_labels(idx).astype(np.int64)))
        out[name] = sets
    return out
