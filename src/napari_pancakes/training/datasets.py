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

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..preprocess import prepare_image, resize_image, to_image_list
from .augment import augment_set
from .synthetic import synthetic_set

DATA_ENV = "NAPARI_PANCAKES_DATA"  # environment variable naming the data root
# The fixed leave-out group: four modalities (dermoscopy, CT, H&E histology, OCT) that the
# campaign runs of both networks never train on; their validation is the generalisation check.
LEAVE_OUT = ("ph2_skin", "lung_ct_kaggle2d", "monuseg_nuclei", "duke_oct_dme_fluid")
CACHE_VERSION = 1
MIN_TARGET_PX = 16  # a target must cover at least this many pixels in every member
MNI_SLICE_WINDOW = 12  # members of an MNI set are slices at most this far apart
VAL_EVERY = 10  # every 10th subject of a dataset is validation-only (split_validation)
MNI_SUBJECT_SLICES = 20  # MNI "subjects" for the split: blocks of this many voxels along one axis


@dataclass
class RealDataset:
    """Images (N, R, R) float32 in [0, 1], label maps (N, R, R) uint8 and how to form sets.

    ``groups``: natural coarsenings, each an array mapping a label id to a coarse id.
    ``eval_group``: the coarsening whose labels are the evaluation targets (None: as is).
    ``stack``/``position``: for slices of one volume, members of a set come from one stack
    and lie within ``MNI_SLICE_WINDOW`` of each other (or are the closest available).
    ``subject``: images with the same id are correlated (slices of one patient, quadrants of
    one slide, two eyes of one child); None: every image is its own subject.
    """

    name: str
    images: np.ndarray
    labels: np.ndarray
    groups: list[np.ndarray] = field(default_factory=list)
    eval_group: np.ndarray | None = None
    stack: np.ndarray | None = None
    position: np.ndarray | None = None
    subject: np.ndarray | None = None

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

    def subset(self, sel: np.ndarray) -> "RealDataset":
        """The images selected by ``sel`` (index or mask), with their per-image arrays."""
        per_image = lambda a: None if a is None else a[sel]
        return RealDataset(self.name, self.images[sel], self.labels[sel], self.groups, self.eval_group,
                           per_image(self.stack), per_image(self.position), per_image(self.subject))

    def validation_mask(self, every: int = VAL_EVERY) -> np.ndarray:
        """True for the validation images: every ``every``-th subject, in order of first appearance.

        Whole subjects go to one side, so validation never scores a slice whose neighbour was
        trained on (the source notes of brats2013_flair, chasedb1_vessels, monuseg_nuclei,
        duke_oct_dme_fluid and aortoiliac_angio ask for this). Without subject ids this is
        every ``every``-th image.
        """
        subject = np.arange(len(self)) if self.subject is None else self.subject
        _, first, inverse = np.unique(subject, return_index=True, return_inverse=True)
        rank = np.argsort(np.argsort(first, kind="stable"), kind="stable")  # subject order of appearance
        return rank[inverse.ravel()] % every == 0


def saw_leave_out(held_out) -> list[str]:
    """The ``LEAVE_OUT`` datasets that a weights file was trained on, from the list of datasets its
    metadata says it held out (a list, the JSON text a safetensors header stores, or None: all).
    Benchmarks of the leave-out group refuse weights for which this is not empty."""
    if isinstance(held_out, str):
        held_out = json.loads(held_out)
    return [n for n in LEAVE_OUT if n not in (held_out or [])]


def split_validation(real: dict[str, RealDataset], every: int = VAL_EVERY):
    """(training, validation) datasets by name: whole subjects, see ``RealDataset.validation_mask``."""
    train, val = {}, {}
    for name, ds in real.items():
        is_val = ds.validation_mask(every)
        train[name], val[name] = ds.subset(~is_val), ds.subset(is_val)
    return train, val


# Which images share a subject, from each dataset's SOURCE.md index ("| NNN | original file |"):
# a regular expression whose first group names the subject, or a block size of consecutive
# indices where the notes only say neighbours are correlated (or give k // 11 for Duke's
# 11 B-scans per patient). Datasets not listed: one subject per image.
SUBJECT_OF = {
    "brats2013_flair": r"pat(\d+)",  # 6 patients, every 3rd axial slice
    "chasedb1_vessels": r"Image_(\d+)[LR]",  # two eyes of one child
    "monuseg_nuclei": r"(TCGA-[A-Za-z0-9-]+)\.",  # 4 quadrants of one slide
    "duke_oct_dme_fluid": 11,  # 11 B-scans per patient
    "aortoiliac_angio": 10,  # "consecutive numbers may come from the same patient/run"
}


def subjects_from_notes(folder: Path, name: str, n: int) -> np.ndarray | None:
    """Subject id per image of ``folder`` (see ``SUBJECT_OF``); None when unknown or unreadable."""
    import re

    rule = SUBJECT_OF.get(name)
    if rule is None:
        return None
    if isinstance(rule, int):
        return np.arange(n) // rule
    notes = folder / "SOURCE.md"
    if not notes.is_file():
        return None
    found: dict[int, str] = {}
    for line in notes.read_text(encoding="utf-8", errors="replace").splitlines():
        row = re.match(r"^\|\s*(\d{3,})\s*\|(.*)", line)
        hit = re.search(rule, row.group(2)) if row else None
        if hit:
            found[int(row.group(1))] = hit.group(1)
    if len(found) != n or set(found) != set(range(n)):
        return None  # the index does not match the images: do not guess
    names = [found[i] for i in range(n)]
    return np.unique(names, return_inverse=True)[1].ravel()


def _image_paths(folder: Path) -> list[Path]:
    """A dataset folder's image files in the reader's order: an image's index everywhere."""
    return sorted((folder / "images").glob("*.png"))


def _read_folder(folder: Path, res: int) -> tuple[np.ndarray, np.ndarray]:
    from skimage.io import imread
    from skimage.transform import resize

    images, labels = [], []
    for img_path in _image_paths(folder):
        image = to_image_list([imread(img_path)])[0][0]
        mask = imread(folder / "masks" / img_path.name)
        images.append(prepare_image(image, res))
        labels.append(resize(mask, (res, res), order=0, preserve_range=True, anti_aliasing=False).astype(np.uint8))
    return np.stack(images), np.stack(labels)


def read_colour_image(root: Path, name: str, index: int, res: int) -> np.ndarray | None:
    """Image ``index`` of dataset folder ``name`` as (res, res, 3) float32 R, G, B (not normalised),
    resized as :func:`_read_folder` resizes its intensity; None when the file is grey.

    Why: the reader keeps one intensity channel per image (what Pancakes and the refiner's
    network take), so a benchmark of anything that uses colour must read the colour itself.
    """
    from skimage.io import imread

    path = _image_paths(Path(root) / name)[index]
    arr = np.asarray(imread(path))
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        return None
    rgb = arr[..., :3].astype(np.float32)
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]):
        return None
    return np.stack([resize_image(rgb[..., c], (res, res)) for c in range(3)], -1)


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


# Natural coarsenings of multi-label annotations (label id -> coarse id), the one home of
# per-dataset settings.
DATASET_GROUPS = {
    "jsrt_scr_chest": [np.array([0, 1, 1, 2, 3, 3])],  # lungs, heart, clavicles
    "covid_cxr_anatomy": [np.array([0, 1, 1, 2, 3])],  # lungs, mediastinum, airways
    "brats2013_flair": [np.array([0, 1, 1, 1, 1]), np.array([0, 1, 2, 1, 1])],  # whole tumour; core vs oedema
    "drishti_gs_disc_cup": [np.array([0, 1, 1])],  # whole disc
    "dental_crown_root": [np.array([0, 1, 1])],  # whole tooth
}


def data_root(path: str | Path | None = None) -> Path | None:
    """The folder of ``<name>/{images,masks}`` datasets: ``path`` if given, else ``$NAPARI_PANCAKES_DATA``.

    Returns None when neither is set: callers then train or evaluate on synthetic sets only
    (nothing is guessed from where the package is installed).
    """
    import os

    if path:
        return Path(path)
    env = os.environ.get(DATA_ENV)
    return Path(env) if env else None


def folder_names(root: Path | None = None) -> list[str]:
    """Names of the dataset folders under ``root`` (empty if it is None or does not exist)."""
    root = data_root(root)
    if root is None or not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "images").is_dir() and (p / "masks").is_dir())


def load_real_datasets(names: list[str] | None = None, root: Path | None = None, res: int = 128,
                       cache_dir: Path | None = None, mni: bool = True) -> dict[str, RealDataset]:
    """The requested folders (default: all under ``root``) and, with ``mni``, "mni152"."""
    out: dict[str, RealDataset] = {}
    root = data_root(root)
    for name in (names if names is not None else folder_names(root)) if root is not None else []:
        folder = Path(root) / name
        if not (folder / "images").is_dir():
            continue
        arrays = _cached(cache_dir, f"{name}-{res}", lambda f=folder: dict(zip(("images", "labels"), _read_folder(f, res))))
        out[name] = RealDataset(name, arrays["images"], arrays["labels"],
                                groups=DATASET_GROUPS.get(name, []),
                                subject=subjects_from_notes(folder, name, len(arrays["images"])))
    if mni:
        try:
            arrays = _cached(cache_dir, f"mni152-{res}", lambda: _read_mni(res))
        except ImportError:  # nilearn is an optional training dependency
            return out
        groups = list(arrays["groups"])
        out["mni152"] = RealDataset("mni152", arrays["images"], arrays["labels"], groups=groups,
                                    eval_group=groups[0], stack=arrays["stack"], position=arrays["position"],
                                    subject=arrays["stack"] * 1000 + arrays["position"] // MNI_SUBJECT_SLICES)
    return out


# Images that scikit-image ships (no download), by kind: histology (IHC), fundus, microscopy,
# astronomy (small bright blobs), photographs and textures. None is labelled.
BUNDLED_IMAGES = ("immunohistochemistry", "retina", "microaneurysms", "cell", "hubble_deep_field", "coins",
                  "camera", "astronaut", "chelsea", "coffee", "rocket", "moon", "grass", "gravel", "brick")


def bundled_images(res: int = 256) -> RealDataset:
    """The images of ``BUNDLED_IMAGES`` as an unlabelled dataset (labels all 0): from each, its
    largest centred square and the four half-size squares at that square's corners, grey, at
    ``res``; one subject per source image.

    Why: the refiner's targets drawn from the image itself (superpixel regions, painted shapes)
    need no annotation, so any image adds variety of texture, noise and contrast beyond the
    annotated folders; these ship with scikit-image, so a fresh machine has them. An image that a
    later scikit-image no longer ships (it would have to be downloaded) is left out with a warning."""
    import warnings

    from skimage import data as skdata

    images, subject = [], []
    for k, name in enumerate(BUNDLED_IMAGES):
        try:
            raw = getattr(skdata, name)()
        except Exception as err:  # noqa: BLE001 - moved to a download, renamed, or no network
            warnings.warn(f"bundled_images: scikit-image's {name!r} is not available ({err}); left out")
            continue
        img = to_image_list([raw])[0][0]  # RGB(A) -> intensity as the folders are read (_read_folder)
        side = min(img.shape)
        y0, x0 = (img.shape[0] - side) // 2, (img.shape[1] - side) // 2
        square = img[y0:y0 + side, x0:x0 + side]
        half = side // 2
        for crop in (square, square[:half, :half], square[:half, half:], square[half:, :half], square[half:, half:]):
            images.append(prepare_image(crop, res))
            subject.append(k)
    if not images:
        raise RuntimeError("none of scikit-image's bundled images could be read (datasets.BUNDLED_IMAGES)")
    images = np.stack(images).astype(np.float32)
    return RealDataset("bundled_images", images, np.zeros(images.shape, np.uint8), subject=np.array(subject))


def protocol_mapping(rng: np.random.Generator, labels: np.ndarray, groups=(), natural: float = 0.5,
                     one_vs_rest: float = 0.0) -> np.ndarray | None:
    """A random protocol over annotated label ids, as a lookup table (label id -> protocol label).

    With probability ``natural`` (when ``groups`` exist) a natural coarsening; otherwise the
    annotation as is, a random merge into 2..L groups, foreground vs background, or (with
    probability ``one_vs_rest``) one present label against the rest. None if no label is present.
    """
    n = int(labels.max()) + 1
    u = rng.random()
    if groups and rng.random() < natural:
        return groups[rng.integers(len(groups))]
    if u < one_vs_rest:
        present = np.flatnonzero(np.bincount(labels.ravel(), minlength=n)[1:]) + 1
        return (np.arange(n) == rng.choice(present)).astype(np.int64) if present.size else None
    u = (u - one_vs_rest) / (1 - one_vs_rest)
    if u < 0.5 or n <= 2:
        return np.arange(n)
    if u < 0.85:
        return rng.integers(0, rng.integers(2, n + 1), n)
    return (np.arange(n) > 0).astype(np.int64)


def derive_target(rng: np.random.Generator, labels: np.ndarray, groups: list[np.ndarray] = (),
                  natural: float = 0.5) -> np.ndarray | None:
    """A binary target (S, H, W) from label maps (S, H, W), or None when no label fits.

    The protocol is the annotation itself, a natural coarsening (probability ``natural``
    when ``groups`` exist), a random merge of labels into 2..L groups, or foreground vs
    background; the target is one label of that protocol present (>= MIN_TARGET_PX) in
    every member and not covering every pixel.
    """
    mapping = protocol_mapping(rng, labels, groups, natural)
    protocol = mapping[labels]
    counts = np.stack([np.bincount(p.ravel(), minlength=mapping.max() + 1) for p in protocol])
    ok = np.flatnonzero((counts >= MIN_TARGET_PX).all(0) & (counts < labels[0].size).all(0))
    if ok.size == 0:
        return None
    return protocol == rng.choice(ok)


def _compact(protocol: np.ndarray) -> np.ndarray:
    """Renumber the labels used in (S, H, W) to 0..L-1 (order kept)."""
    _, inverse = np.unique(protocol, return_inverse=True)
    return inverse.reshape(protocol.shape).astype(np.int64)


def derive_partition(rng: np.random.Generator, labels: np.ndarray, groups: list[np.ndarray] = (),
                     max_labels: int = 40, natural: float = 0.5) -> np.ndarray | None:
    """A protocol's structures as one target (S, H, W): labels 0..L-1, -1 where unsupervised.

    The dense counterpart of :func:`derive_target`: the same protocol family (as annotated,
    a natural coarsening, a random merge, foreground vs background, or one label vs the
    rest), but every structure of the protocol is a target at once
    (:func:`..loss.best_protocol_partition_loss`). The group that holds the annotation's
    background (id 0) is left free (-1): background is rarely one structure (body and air on
    an X-ray), and leaving it free lets the protocol's other labels split it, as the
    paper's binary loss does. Protocols with more than ``max_labels`` structures are randomly
    merged down to it. None when no structure is left.
    """
    mapping = protocol_mapping(rng, labels, groups, natural, one_vs_rest=0.15)
    if mapping is None:
        return None
    protocol = mapping[labels]
    free = protocol == mapping[0]
    if free.all():
        return None
    protocol = np.where(free, -1, _compact(np.where(free, protocol.min() - 1, protocol)) - 1)
    n_used = int(protocol.max()) + 1
    if n_used > max_labels:  # merge down, every group used
        merged = rng.permutation(np.resize(np.arange(max_labels), n_used))
        protocol = np.where(free, -1, merged[np.maximum(protocol, 0)])
    return protocol


def intensity_partition(rng: np.random.Generator, images: np.ndarray, max_labels: int = 6) -> np.ndarray:
    """A set-level intensity protocol (S, H, W): quantile levels of the pooled, lightly smoothed set.

    These pseudo-protocols put the family that makes set-level k-means strong (cells,
    membranes, tissue classes) into the training distribution, for any real image, labelled
    or not; the learned protocols can then add semantics on top of it.
    """
    from scipy import ndimage as ndi

    n_levels = int(rng.integers(2, max_labels + 1))
    sigma = rng.uniform(0.0, 1.5)
    smooth = ndi.gaussian_filter(images, (0, sigma, sigma)) if sigma > 0.3 else images
    edges = np.quantile(smooth, np.sort(rng.uniform(0.05, 0.95, n_levels - 1)))
    return _compact(np.digitize(smooth, np.unique(edges)))


class SetSampler:
    """Training sets: synthetic with probability ``synthetic_ratio``, else a real dataset
    chosen uniformly; within/across-set augmentation; then a protocol-derived target.

    ``pseudo_ratio`` of the real sets get an intensity pseudo-protocol instead of one derived
    from their annotation.
    """

    def __init__(self, real: dict[str, RealDataset], synthetic_ratio: float = 0.5, res: int = 128,
                 pseudo_ratio: float = 0.0):
        self.real = list(real.values())
        self.synthetic_ratio = synthetic_ratio if self.real else 1.0
        self.pseudo_ratio = pseudo_ratio
        self.res = res

    def _draw(self, rng: np.random.Generator, s: int):
        if rng.random() < self.synthetic_ratio:
            images, labels = synthetic_set(rng, s, self.res)
            groups, name = [], "synthetic"
        else:
            ds = self.real[rng.integers(len(self.real))]
            idx = ds.set_indices(rng, s)
            images, labels, groups, name = ds.images[idx], ds.labels[idx].astype(np.int64), ds.groups, ds.name
        images, labels = augment_set(rng, images, labels)
        return images, labels, groups, name

    def sample(self, rng: np.random.Generator, s: int) -> tuple[np.ndarray, np.ndarray, str]:
        """Images (S, R, R) float32, binary target (S, R, R) float32 and the source name."""
        while True:
            images, labels, groups, name = self._draw(rng, s)
            target = derive_target(rng, labels, groups)
            if target is not None:
                return images, target.astype(np.float32), name

    def sample_partition(self, rng: np.random.Generator, s: int, max_labels: int) -> tuple[np.ndarray, np.ndarray, str]:
        """Images (S, R, R) float32, protocol labels (S, R, R) int64 in 0..L-1 and the source name."""
        while True:
            images, labels, groups, name = self._draw(rng, s)
            if name != "synthetic" and rng.random() < self.pseudo_ratio:
                return images, intensity_partition(rng, images, min(6, max_labels)), name + ":intensity"
            target = derive_partition(rng, labels, groups, max_labels)
            if target is not None:
                return images, target, name


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


# --- transport pack: the read datasets in one file small enough to travel to a GPU machine ---
_PACK_FIELDS = ("eval_group", "stack", "position", "subject")


def write_pack(real: dict[str, RealDataset], path: str | Path, quality: int = 85) -> Path:
    """Write datasets as read by :func:`load_real_datasets` to one .npz (no pickles).

    Why: a lent GPU machine receives at most 64 MiB and cannot reach ``../shared``; the float32
    cache is ~360 MB. Images become 8-bit JPEG (``quality``; intensities are already in [0, 1]),
    label maps stay exact (uint8, deflated), and subjects/stacks/groups travel with them so the
    validation split is the same as from the data root. Read back with :func:`read_pack`.
    """
    import io

    from PIL import Image

    arrays: dict[str, np.ndarray] = {"names": np.array(list(real))}
    for name, ds in real.items():
        blobs = []
        for img in ds.images:
            buf = io.BytesIO()
            Image.fromarray((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)).save(buf, format="JPEG", quality=quality)
            blobs.append(np.frombuffer(buf.getvalue(), np.uint8))
        arrays[f"{name}/jpeg"] = np.concatenate(blobs)
        arrays[f"{name}/jpeg_ends"] = np.cumsum([len(b) for b in blobs])
        arrays[f"{name}/labels"] = ds.labels
        arrays[f"{name}/n_groups"] = np.array(len(ds.groups))
        for g, grp in enumerate(ds.groups):
            arrays[f"{name}/group{g}"] = np.asarray(grp)
        for key in _PACK_FIELDS:
            if getattr(ds, key) is not None:
                arrays[f"{name}/{key}"] = np.asarray(getattr(ds, key))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


def read_pack(path: str | Path, names: list[str] | None = None, exclude=()) -> dict[str, RealDataset]:
    """The datasets of a :func:`write_pack` file (all, or those in ``names``; none in ``exclude``,
    which are not decoded), images as float32."""
    import io

    from PIL import Image

    out: dict[str, RealDataset] = {}
    with np.load(path, allow_pickle=False) as npz:
        for name in (str(n) for n in npz["names"]):
            if (names is not None and name not in names) or name in exclude:
                continue
            data, ends = npz[f"{name}/jpeg"], npz[f"{name}/jpeg_ends"]
            starts = np.concatenate([[0], ends[:-1]])
            images = np.stack([np.asarray(Image.open(io.BytesIO(data[a:b].tobytes())), np.float32) / 255
                               for a, b in zip(starts, ends)])
            groups = [npz[f"{name}/group{g}"] for g in range(int(npz[f"{name}/n_groups"]))]
            extra = {key: npz[f"{name}/{key}"] for key in _PACK_FIELDS if f"{name}/{key}" in npz.files}
            out[name] = RealDataset(name, images, npz[f"{name}/labels"], groups=groups, **extra)
    return out
