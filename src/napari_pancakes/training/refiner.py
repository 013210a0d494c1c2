"""Train the click model by simulated interaction (ScribblePrompt-style), on CPU, resumably.

Data: every dataset of the data root except ``LEAVE_OUT`` (``--leave-out``; read with the one reader,
:func:`~napari_pancakes.training.datasets.load_real_datasets`, at 256 px), nilearn's MNI152
slices, and synthetic shapes. Every 10th subject of each source (whole patients, the split of
the Pancakes campaign) is kept for validation (the checkpoint is chosen on it, never on LEAVE_OUT).

Each example starts from nothing, from a corrupted ground truth (eroded, dilated, shifted,
partial, merged with a blob) or from a Pancakes label (the shipped Pancakes model run on sets
of training images; the candidate label closest to the target), receives a first prompt
(a click, a bounding box, or positive/negative scribbles), then up to ``steps`` rounds of:
predict, let the simulated user correct the largest error (a click, sometimes a scribble),
feed the detached logits back as the prior. The loss is taken after every round.

With ``--superpixel-prob`` a share of the real crops get a target that no annotator drew: a
region of a Felzenszwalb over-segmentation of the crop, or a few neighbouring regions merged
(ScribblePrompt's synthetic labels), so the model learns to follow the image's own boundaries
wherever the prompts point, on modalities and structures that no dataset here labels.

    OMP_NUM_THREADS=1 python -m napari_pancakes.training.refiner --data ../shared/data \\
        --out runs/refiner-campaign --until 18:25 --steps 8

Resumable: ``OUT/checkpoint.safetensors`` (model + optimiser tensors) and
``OUT/checkpoint.json`` (step, elapsed time, RNG states, log); ``OUT/best.safetensors`` is the
refiner file (loadable with ``load_refiner``) with the best validation score so far.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from ..preprocess import normalize_intensity, resize_image
from ..refine.network import MASK_LOGIT, RefinerConfig, RefinerNet, encode_input, with_box_channel
from .. import io_weights
from ..io_weights import save_weights
from ..refine.predictor import DEFAULT_REFINER_WEIGHTS, REFINER_FORMAT, load_refiner
from .augment import modality_augment
from .simulate import dice, next_click
from .datasets import LEAVE_OUT, DATASET_GROUPS, bundled_images, data_root, folder_names, load_real_datasets, read_pack

STORE = 256  # real data are read at this size and cropped/zoomed to the working resolution
PANCAKES_MK = (8, 20)
SMALL_RADII = (1.5, 8.0)  # default semi-axes range of a painted small shape, grid pixels (small_target)


@dataclass(frozen=True)
class Recipe:
    """What the training examples are made of: the share of each kind of target and start.

    One object from the command line to :meth:`Source.sample` and :func:`make_example` (and the
    worker processes), and recorded in every ``best.safetensors`` (metadata ``recipe``), so a
    shipped file says how it was trained. Shares are probabilities per example (real crops for
    the target kinds; a crop's target is a group of similar regions, else a superpixel region,
    else a small target, else an annotated label)."""

    synthetic_prob: float = 0.15  # a synthetic image and shape instead of a real crop
    superpixel_prob: float = 0.0  # superpixel_target: a region nobody annotated
    similar_prob: float = 0.0  # similar_regions_target: one click may mean all instances
    small_prob: float = 0.0  # small_target: a small labelled blob or painted shape
    small_radii: tuple[float, float] = SMALL_RADII  # ... its painted shapes' semi-axes, grid px
    invert_prob: float = 0.0  # the crop's intensities inverted (polarity differs between modalities)
    poor_start_prob: float = 0.0  # pancakes_start: any overlapping label, not the best
    augment_prob: float = 0.0  # modality_augment on a real crop (+ transposition): unseen scanners
    box_prob: float = 0.25  # a box as the first prompt of an example with no starting mask
    # (the rest of those: clicks with probability 0.5, else a scribble)
    zoom_out_prob: float = 0.0  # zoom_out on a real crop: structures smaller than any crop shows them
    bundled_prob: float = 0.0  # a crop of an unlabelled image scikit-image ships (datasets.bundled_images),
    # its target a superpixel region or a painted small shape: variety beyond the annotated modalities
    box_superpixel_prob: float = 0.0  # a real crop whose first prompt is a box: its target replaced by a
    # superpixel region. More superpixel targets helped boxes and hurt clicks from nothing (session 12,
    # refine-compare-superpixel-0.6-vs-control-30.md), so this gives them to boxes alone.

    def __post_init__(self):
        # a share outside [0, 1] would silently act as 0 or 1 in make_example: refuse it
        bad = {k: v for k, v in asdict(self).items() if k.endswith("_prob") and not 0 <= v <= 1}
        if bad:
            raise ValueError(f"recipe shares must lie in [0, 1]: {bad}")


# --- data -----------------------------------------------------------------------------------
def ellipse_coords(yy, xx, cy: float, cx: float, a: float, b: float, th: float):
    """(u, v): the grid in the frame of an ellipse centred at (cy, cx) with semi-axes a, b turned by
    th; u**2 + v**2 < 1 is the ellipse (shapes of synthetic_example and small_target)."""
    dy, dx = yy - cy, xx - cx
    return (dy * np.cos(th) + dx * np.sin(th)) / a, (-dy * np.sin(th) + dx * np.cos(th)) / b


def synthetic_example(rng: np.random.Generator, r: int) -> tuple[np.ndarray, np.ndarray]:
    """A random image of blobs/ellipses with noise and blur; the target is one of its shapes."""
    yy, xx = np.mgrid[0:r, 0:r].astype(np.float32)
    img = ndi.gaussian_filter(rng.normal(0, 1, (r, r)), rng.uniform(4, 20)).astype(np.float32)
    img = (img - img.min()) / (np.ptp(img) + 1e-6) * rng.uniform(0, 0.6)
    labels = np.zeros((r, r), np.uint8)
    n = int(rng.integers(1, 7))
    for i in range(1, n + 1):
        cy, cx = rng.uniform(0.1, 0.9, 2) * r
        a, b = rng.uniform(0.04, 0.3, 2) * r
        th = rng.uniform(0, np.pi)
        u, v = ellipse_coords(yy, xx, cy, cx, a, b, th)
        ang = np.arctan2(v, u)
        wobble = 1 + sum(rng.uniform(0, 0.25) * np.cos(k * ang + rng.uniform(0, 6.28)) for k in (2, 3, 5))
        shape = u**2 + v**2 < wobble**2
        if rng.random() < 0.3:  # ring-like / irregular structures
            shape &= ~(u**2 + v**2 < (0.5 * wobble) ** 2)
        labels[shape] = i
        tex = ndi.gaussian_filter(rng.normal(0, 1, (r, r)), rng.uniform(0.5, 3)).astype(np.float32)
        img[shape] = rng.uniform(0, 1) + 0.15 * rng.uniform(0, 1) * tex[shape]
    img = ndi.gaussian_filter(img, rng.uniform(0, 1.5)) + rng.normal(0, rng.uniform(0, 0.12), (r, r))
    present = [i for i in range(1, n + 1) if (labels == i).sum() > 10]
    if not present:
        return synthetic_example(rng, r)
    target = labels == rng.choice(present)
    return normalize_intensity(img.astype(np.float32)), target


def pick_target(rng, lab: np.ndarray, groups, min_px: float, component_prob: float = 0.2):
    """One binary target from a label map: a label, a natural group of labels, or one component."""
    if groups and rng.random() < 0.4:
        lab = groups[rng.integers(len(groups))][lab]
    counts = np.bincount(lab.ravel())
    ids = [v for v in np.flatnonzero(counts) if v and counts[v] >= min_px]
    if not ids:
        return None
    target = lab == rng.choice(ids)
    if rng.random() < component_prob:
        comp, n = ndi.label(target)
        if n > 1:
            sizes = np.bincount(comp.ravel())[1:]
            ok = np.flatnonzero(sizes >= min_px)
            if len(ok):
                target = comp == rng.choice(ok) + 1
    return target


def superpixel_target(img: np.ndarray, rng: np.random.Generator, min_px: int = 12,
                      max_share: float = 0.6) -> np.ndarray | None:
    """A target from the image alone: one Felzenszwalb region (random scale) or it merged with up
    to two neighbouring regions; None when no region has between ``min_px`` pixels and
    ``max_share`` of the image."""
    from skimage.segmentation import felzenszwalb

    seg = felzenszwalb(img, scale=float(np.exp(rng.uniform(np.log(20), np.log(400)))),
                       sigma=float(rng.uniform(0.3, 1.2)), min_size=int(rng.integers(10, 60)))
    counts = np.bincount(seg.ravel())
    ok = np.flatnonzero((counts >= min_px) & (counts <= max_share * seg.size))
    if not len(ok):
        return None
    target = seg == rng.choice(ok)
    for _ in range(int(rng.integers(0, 3))):
        neighbours = np.unique(seg[ndi.binary_dilation(target) & ~target])
        if not len(neighbours):
            break
        merged = target | (seg == rng.choice(neighbours))
        if merged.mean() > max_share:
            break
        target = merged
    return target


def similar_regions_target(img: np.ndarray, rng: np.random.Generator, min_px: int = 12,
                           max_share: float = 0.5) -> np.ndarray | None:
    """A many-instance target from the image alone: every compact, instance-sized Felzenszwalb region whose
    mean and spread of intensity and whose size are close to those of one seed region and that stand
    out from their surroundings ("all the things like this one"), at least three regions; None when
    the crop has no such group.

    Why: a target such as all nuclei of a stain that no training dataset has (monuseg's H&E, median
    82 components) needs one click to mean "all of these"; the leave-out group shows the model
    learns that for the stains it saw but not beyond (benchmarks/results/refine-ceiling.md).
    Single-region superpixel targets (:func:`superpixel_target`) teach the opposite.
    Measured: 15 % of crops for 125.8 CPU minutes changed nothing on the leave-out group (monuseg
    after 5 clicks 18.0 vs 21.2, benchmarks/results/refine-similar.md); off by default."""
    from skimage.segmentation import felzenszwalb

    seg = felzenszwalb(img, scale=float(np.exp(rng.uniform(np.log(8), np.log(120)))),
                       sigma=float(rng.uniform(0.3, 1.0)), min_size=int(rng.integers(6, 30)))
    counts = np.bincount(seg.ravel()).astype(np.float64)
    mean = np.bincount(seg.ravel(), img.ravel()) / np.maximum(counts, 1)
    std = np.sqrt(np.maximum(np.bincount(seg.ravel(), img.ravel() ** 2) / np.maximum(counts, 1) - mean**2, 0))
    boxes = ndi.find_objects(seg + 1)  # region v's bounding box is boxes[v]
    hw = np.array([(b[0].stop - b[0].start, b[1].stop - b[1].start) if b else (1, 1) for b in boxes], np.float64)
    compact = ((counts / hw.prod(1) > 0.4)  # blobs, not rings
               & (hw.min(1) / hw.max(1) > 0.25))  # nor strips along an edge
    surround = np.bincount(seg.ravel(), ndi.uniform_filter(img, 15).ravel()) / np.maximum(counts, 1)
    stands_out = ((np.abs(mean - surround) > 0.06)  # an instance differs from its neighbourhood
                  & (np.abs(mean - np.median(img)) > 0.1))  # and is not background between instances
    sized = compact & stands_out & (counts >= min_px) & (counts <= 0.04 * seg.size)
    if sized.sum() < 3:
        return None
    seed = rng.choice(np.flatnonzero(sized))
    tol = rng.uniform(0.03, 0.12)
    like = (sized & (np.abs(mean - mean[seed]) < tol) & (np.abs(std - std[seed]) < tol)
            & (counts > counts[seed] / 4) & (counts < counts[seed] * 4))
    if like.sum() < 3:
        return None
    target = like[seg]
    return target if 0.01 <= target.mean() <= max_share else None


def nearest_labels(lab: np.ndarray, size: int) -> np.ndarray:
    """A square label map resampled to (size, size) by the label at each new pixel's centre
    (labels are never blended)."""
    step = lab.shape[0] / size
    sel = np.minimum((np.arange(size) * step + step / 2).astype(int), lab.shape[0] - 1)
    return lab[np.ix_(sel, sel)]


def zoom_out(rng: np.random.Generator, img: np.ndarray, lab: np.ndarray, lo: float = 0.4, hi: float = 0.8):
    """(image, label map) shrunk to a random ``lo``-``hi`` share of the grid side and mirrored out to
    fill it again, at a random offset.

    A crop only ever enlarges a dataset's structures (crops are half to all of the image), so
    every structure the network learnt filled at least its native share of the field of view.
    Images it never saw can show them much smaller (nuclei in a whole tile, fluid pockets in a
    wide OCT scan); here they appear at down to 0.4 of that, and the mirrored copies are more
    instances of the same label, as in a tile of many nuclei.
    """
    r = img.shape[0]
    s = int(round(r * rng.uniform(lo, hi)))
    small = resize_image(img, (s, s))
    y0, x0 = rng.integers(0, r - s + 1, 2)
    pads = ((y0, r - s - y0), (x0, r - s - x0))
    return np.pad(small, pads, mode="symmetric"), np.pad(nearest_labels(lab, s), pads, mode="symmetric")


def small_target(img: np.ndarray, lab: np.ndarray, rng: np.random.Generator, min_px: int = 6,
                 max_share: float = 0.015,
                 radii: tuple[float, float] = SMALL_RADII) -> tuple[np.ndarray, np.ndarray] | None:
    """(image, target) with a small, clearly bounded target: a labelled component covering
    ``min_px`` pixels to ``max_share`` of the crop that differs from the 2-pixel ring around it
    and does not touch the crop's edge, or (half of the time, and where the labels have none) a
    small random shape painted into the crop with a contrast to its surroundings (semi-axes drawn
    log-uniformly from ``radii``, in pixels of the crop).

    Why: a click on a clearly bounded disc of radius 3 px (256 px image) gave a mask 200 times its
    area with the best stage-1 file (radius 6: 27 times; 12: 1.5 times): the labelled structures
    are mostly large, so the network learnt a smallest size rather than to follow the edge
    (``bench_refine.py --sizes``, benchmarks/results/refine-sizes-*.md). Small label fragments
    without an edge of their own (a vessel cut by the crop, an island of a tissue class) would
    teach the opposite, so they are not used."""
    r = img.shape[0]
    if rng.random() < 0.5:
        comps = []
        for v in np.unique(lab):
            if v == 0:
                continue
            comp, n = ndi.label(lab == v)
            if not n:
                continue
            sizes = np.bincount(comp.ravel())[1:]
            for i in np.flatnonzero((sizes >= min_px) & (sizes <= max_share * lab.size)):
                t = comp == i + 1
                if t[0].any() or t[-1].any() or t[:, 0].any() or t[:, -1].any():
                    continue
                ring = ndi.binary_dilation(t, iterations=2) & ~t
                if abs(img[t].mean() - img[ring].mean()) > 0.08:
                    comps.append(t)
        if comps:
            return img, comps[rng.integers(len(comps))]
    yy, xx = np.mgrid[0:r, 0:r].astype(np.float32)
    a, b = np.exp(rng.uniform(np.log(radii[0]), np.log(radii[1]), 2))
    cy, cx = rng.uniform(0.1, 0.9, 2) * r
    th = rng.uniform(0, np.pi)
    u, v = ellipse_coords(yy, xx, cy, cx, a, b, th)
    wobble = 1 + rng.uniform(0, 0.2) * np.cos(3 * np.arctan2(v, u) + rng.uniform(0, 6.28))
    target = u**2 + v**2 < wobble**2
    if target.sum() < min_px:
        return None
    ring = ndi.binary_dilation(target, iterations=3) & ~target
    around = float(img[ring].mean())
    level = around + rng.choice([-1, 1]) * rng.uniform(0.15, 0.5)
    if not 0 <= level <= 1:
        level = around - (level - around)  # the other sign keeps it inside [0, 1]
    soft = ndi.gaussian_filter(target.astype(np.float32), rng.uniform(0, 0.8))
    out = img * (1 - soft) + np.clip(level, 0, 1) * soft + soft * rng.normal(0, 0.03, img.shape).astype(np.float32)
    return out.astype(np.float32), target


class Source:
    """One real dataset: training/validation indices, optional Pancakes labels at working size."""

    def __init__(self, ds, r: int, unlabelled: bool = False):
        self.name, self.images, self.labels = ds.name, ds.images, ds.labels
        self.groups = DATASET_GROUPS.get(ds.name, list(ds.groups))
        # the split of the Pancakes campaign (whole subjects); an unlabelled source (bundled_images) has
        # nothing to validate on: every image trains, its targets drawn from the image
        is_val = np.zeros(len(self.images), bool) if unlabelled else ds.validation_mask()
        self.val, self.train = np.flatnonzero(is_val), np.flatnonzero(~is_val)
        self.r = r
        self.pancakes: dict[int, np.ndarray] = {}  # image index -> (M, r, r) labels
        self.unlabelled = unlabelled

    def work(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Whole image i at working size (image, label map)."""
        img = resize_image(self.images[i].astype(np.float32), (self.r, self.r))
        return img, nearest_labels(self.labels[i], self.r)

    def sample(self, rng, with_pancakes: bool, recipe: Recipe = Recipe()):
        """(image, target, pancakes labels or None) at working size, augmented; a crop's target is
        a group of similar regions (:func:`similar_regions_target`) with probability
        ``recipe.similar_prob``, else a superpixel region (:func:`superpixel_target`) with
        probability ``recipe.superpixel_prob``, else a small target with an edge
        (:func:`small_target`) with probability ``recipe.small_prob``; the image is inverted
        (1 - intensity) with probability ``recipe.invert_prob``: the same structure can
        be bright in one modality and dark in another; before the target is chosen, a crop is
        shown smaller (:func:`zoom_out`) with probability ``recipe.zoom_out_prob``. Trained
        without inversion, the stage-1 GPU file reaches 43.4 Dice on duke_oct's fluid after 5
        clicks, 57.4 with every image inverted, and on monuseg after a box 57.7 as is, 4.5
        inverted (benchmarks/results/refine-gpu-superpixel.md and
        refine-gpu-superpixel-inverted.md, ``bench_refine.py --invert``)."""
        r = self.r
        if self.unlabelled:  # no label to pick: a superpixel region, else a painted small shape
            recipe = replace(recipe, similar_prob=0.0, superpixel_prob=0.7, small_prob=0.3)
        for _ in range(20):
            if with_pancakes and self.pancakes:
                keys = list(self.pancakes)
                i = keys[rng.integers(len(keys))]
                img, lab = self.work(i)
                pan = self.pancakes[i]
            else:
                i = int(self.train[rng.integers(len(self.train))])
                n = self.images.shape[1]
                s = int(rng.integers(n // 2, n + 1))
                y0, x0 = rng.integers(0, n - s + 1, 2)
                img = resize_image(self.images[i, y0:y0 + s, x0:x0 + s].astype(np.float32), (r, r))
                lab = nearest_labels(self.labels[i, y0:y0 + s, x0:x0 + s], r)
                pan = None
                if recipe.zoom_out_prob and rng.random() < recipe.zoom_out_prob:
                    img, lab = zoom_out(rng, img, lab)
            target = None
            u = rng.random() if pan is None else 1.0
            if u < recipe.similar_prob:
                target = similar_regions_target(np.clip(img, 0, 1), rng)
            elif u < recipe.similar_prob + recipe.superpixel_prob:
                target = superpixel_target(np.clip(img, 0, 1), rng)
            elif u < recipe.similar_prob + recipe.superpixel_prob + recipe.small_prob:
                got = small_target(np.clip(img, 0, 1), lab, rng, radii=recipe.small_radii)
                if got is not None:
                    img, target = got
            if target is None:
                target = pick_target(rng, lab, self.groups, min_px=12)
            if target is None or target.all():
                continue
            img = np.clip(img, 0, 1) ** rng.uniform(0.7, 1.4)
            if recipe.invert_prob and rng.random() < recipe.invert_prob:
                img = 1 - img
            if recipe.augment_prob and rng.random() < recipe.augment_prob:
                img = modality_augment(rng, img)
                if rng.random() < 0.5:  # with the flips below: all eight right-angle orientations
                    img, target = img.T, target.T
                    pan = pan.transpose(0, 2, 1) if pan is not None else None
            if rng.random() < 0.5:
                img, target = img[:, ::-1], target[:, ::-1]
                pan = pan[:, :, ::-1] if pan is not None else None
            if rng.random() < 0.5:
                img, target = img[::-1], target[::-1]
                pan = pan[:, ::-1] if pan is not None else None
            return (np.ascontiguousarray(img, np.float32), np.ascontiguousarray(target),
                    None if pan is None else np.ascontiguousarray(pan))
        return None


def compute_pancakes_labels(sources: list[Source], per_source: int, set_size: int = 8, log=print):
    """Run the shipped Pancakes model on sets of training (and all validation) images."""
    from ..inference import segment_set
    from ..io_weights import load_model

    model = load_model(device="cpu")
    m, k = PANCAKES_MK
    for src in sources:
        rng = np.random.default_rng(len(src.name))
        pick = list(rng.choice(src.train, min(per_source, len(src.train)), replace=False)) + list(src.val[:8])
        for j in range(0, len(pick), set_size):
            chunk = pick[j:j + set_size]
            imgs = np.stack([src.work(int(i))[0] for i in chunk])
            labs = segment_set(imgs, m, k, model=model, device="cpu")
            for s, i in enumerate(chunk):
                src.pancakes[int(i)] = labs[:, s].astype(np.uint8)
        log(f"pancakes labels: {src.name} {len(pick)} images")


def pancakes_start(pan: np.ndarray, target: np.ndarray, rng: np.random.Generator | None,
                   poor_prob: float = 0.0) -> np.ndarray | None:
    """The Pancakes candidate label closest to ``target`` (with ``rng``: sometimes one of the top 5;
    with probability ``poor_prob`` any label with Dice >= 0.05 to the target, mostly poor ones).

    Why poor starts: the user picks one label for a whole set, and on some images (or a modality
    the model never saw) it is poor: the best label of duke_oct's fluid has set Dice 10.3
    (benchmarks/results/refine-small.md). Trained only on the best labels, the click model keeps
    such a start and carves it piece by piece, one negative click at a time."""
    m, r, _ = pan.shape
    k = int(pan.max()) + 1
    flat = (pan.reshape(m, -1).astype(np.int64) + (np.arange(m) * k)[:, None]).ravel()
    size = np.bincount(flat, minlength=m * k)
    inter = np.bincount(flat, weights=np.tile(target.ravel(), m).astype(np.float64), minlength=m * k)
    d = 2 * inter / (size + target.sum() + 1e-9)
    order = np.argsort(-d)
    overlapping = np.flatnonzero(d >= 0.05)
    if rng is not None and poor_prob and len(overlapping) and rng.random() < poor_prob:
        pick = overlapping[rng.integers(len(overlapping))]
    else:
        pick = order[0] if rng is None or rng.random() < 0.7 else order[rng.integers(5)]
    if d[pick] < 0.05:
        return None
    return pan[pick // k] == pick % k


def corrupt_mask(target: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A plausible wrong starting mask: eroded, dilated, shifted, partial, or with an extra blob."""
    kind = rng.choice(["erode", "dilate", "shift", "partial", "merge", "merge_far"])
    r = target.shape[0]
    yy, xx = np.mgrid[0:r, 0:r]
    if kind == "erode":
        return ndi.binary_erosion(target, iterations=int(rng.integers(1, 6)))
    if kind == "dilate":
        return ndi.binary_dilation(target, iterations=int(rng.integers(1, 8)))
    if kind == "shift":
        return np.roll(target, tuple(rng.integers(-8, 9, 2)), axis=(0, 1))
    if kind == "partial":
        th = rng.uniform(0, 2 * np.pi)
        cy, cx = np.argwhere(target).mean(0)
        return target & ((yy - cy) * np.cos(th) + (xx - cx) * np.sin(th) < rng.uniform(-0.2, 0.5) * r / 4)
    # target plus random blobs of background (far ones teach: a negative click there is local)
    out = target.copy()
    for _ in range(int(rng.integers(1, 4))):
        cy, cx = rng.uniform(0, r, 2)
        out |= (yy - cy) ** 2 + (xx - cx) ** 2 < rng.uniform(3, r / 6) ** 2
    return out


# --- prompts ---------------------------------------------------------------------------------
def simulate_box(target: np.ndarray, rng: np.random.Generator | None) -> tuple[float, float, float, float]:
    """Bounding box (y0, x0, y1, x1) of the target, jittered by up to 10% of its size with ``rng``."""
    ys, xs = np.nonzero(target)
    y0, y1, x0, x1 = float(ys.min()), float(ys.max()), float(xs.min()), float(xs.max())
    if rng is not None:
        h, w = y1 - y0 + 1, x1 - x0 + 1
        j = rng.uniform(-0.1, 0.1, 4) * np.array([h, w, h, w])
        y0, x0, y1, x1 = y0 + j[0], x0 + j[1], y1 + j[2], x1 + j[3]
    r = target.shape[0] - 1
    return tuple(float(np.clip(v, 0, r)) for v in (y0, x0, y1, x1))


def simulate_scribble(region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A thin scribble (float map, 1 on the stroke) inside ``region``: part of its skeleton."""
    from skimage.morphology import skeletonize

    core = ndi.binary_erosion(region, iterations=int(rng.integers(0, 3))) if region.sum() > 50 else region
    if not core.any():
        core = region
    skel = skeletonize(core)
    pts = np.argwhere(skel)
    out = np.zeros(region.shape, np.float32)
    if len(pts) == 0:
        return out
    p = pts[rng.integers(len(pts))]
    extent = max(3.0, np.sqrt(region.sum()) * rng.uniform(0.3, 1.2))
    near = skel & ((np.indices(region.shape) - p[:, None, None]) ** 2).sum(0).__le__(extent**2)
    comp, _ = ndi.label(near, structure=np.ones((3, 3)))
    stroke = comp == comp[tuple(p)]
    out[stroke] = 1
    if rng.random() < 0.5:  # a slightly wider stroke
        out = np.maximum(out, ndi.binary_dilation(stroke).astype(np.float32) * 0.7)
    return out


def correction(pred: np.ndarray, target: np.ndarray, rng, pos, neg, smaps, scribble_prob: float):
    """Add the simulated user's next correction (a click, sometimes a scribble) in place."""
    c = next_click(pred, target, rng, top_fraction=0.3)
    if c is None:
        return
    (y, x), positive = c
    if rng.random() < scribble_prob:
        region = (target & ~pred) if positive else (pred & ~target)
        comp, _ = ndi.label(region)
        stroke = simulate_scribble(comp == comp[y, x], rng)
        if stroke.any():
            k = 0 if positive else 1
            smaps[k] = stroke if smaps[k] is None else np.maximum(smaps[k], stroke)
            return
    (pos if positive else neg).append((float(y), float(x)))


# --- training loop -----------------------------------------------------------------------------
def dice_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    inter = (p * target).sum((1, 2, 3))
    d = 1 - (2 * inter + 1) / (p.sum((1, 2, 3)) + target.sum((1, 2, 3)) + 1)
    return bce + d.mean()


class Example:
    __slots__ = ("img", "target", "prior", "pos", "neg", "box", "smaps")

    def __init__(self, img, target):
        self.img, self.target, self.prior = img, target, None
        self.pos, self.neg, self.box, self.smaps = [], [], None, [None, None]

    def encode(self, config):
        return encode_input(self.img, self.pos, self.neg, self.prior, config, box=self.box,
                            pos_map=self.smaps[0], neg_map=self.smaps[1])


def mask_prior(mask: np.ndarray) -> np.ndarray:
    """A starting mask as the prior-logits channel (+-MASK_LOGIT), as the predictor feeds one."""
    return np.where(mask, MASK_LOGIT, -MASK_LOGIT).astype(np.float32)


def make_example(sources, rng, r: int, recipe: Recipe = Recipe()) -> Example:
    """One training example with its first prompt (or starting mask), made as ``recipe`` says."""
    while True:
        pan_mode = rng.random() < 0.3
        synthetic = rng.random() < recipe.synthetic_prob or not sources
        if synthetic:
            img, target = synthetic_example(rng, r)
            pan = None
        else:
            pool = sources
            if any(s.unlabelled for s in sources):  # recipe.bundled_prob of the crops from those
                unlabelled = rng.random() < recipe.bundled_prob or all(s.unlabelled for s in sources)
                pool = [s for s in sources if s.unlabelled == unlabelled]
            got = pool[rng.integers(len(pool))].sample(rng, pan_mode, recipe)
            if got is None:
                continue
            img, target, pan = got
        ex = Example(img, target)
        start = None
        if pan is not None:
            start = pancakes_start(pan, target, rng, poor_prob=recipe.poor_start_prob)
        elif rng.random() < 0.3:
            start = corrupt_mask(target, rng)
        if start is not None:
            ex.prior = mask_prior(start)
            if rng.random() < 0.8:
                correction(start, target, rng, ex.pos, ex.neg, ex.smaps, scribble_prob=0.25)
        else:
            u, clicks = rng.random(), (1 - recipe.box_prob) * 2 / 3
            if u < clicks:
                correction(np.zeros_like(target), target, rng, ex.pos, ex.neg, ex.smaps, scribble_prob=0.0)
            elif u < clicks + recipe.box_prob:
                if not synthetic and recipe.box_superpixel_prob and rng.random() < recipe.box_superpixel_prob:
                    region = superpixel_target(np.clip(img, 0, 1), rng)
                    if region is not None:
                        target = region
                        ex = Example(img, target)
                ex.box = simulate_box(target, rng)
            else:
                ex.smaps[0] = simulate_scribble(target, rng)
                if rng.random() < 0.5 and (~target).any():
                    ex.smaps[1] = simulate_scribble(~target, rng)
        return ex


def train_step(net, opt, examples, config, rng, steps: int, pool=None, x=None) -> float:
    """Up to ``steps`` rounds of predict -> loss -> simulated correction on one batch.

    On CUDA the forward pass runs in bfloat16 autocast; with ``pool`` (:class:`ExamplePool`) the
    corrections and input encoding of each round run in its worker processes. ``x``: the batch's
    first input when already encoded (:meth:`ExamplePool.batch` encodes where it makes)."""
    dev = next(net.parameters()).device
    t = torch.from_numpy(np.stack([e.target for e in examples]).astype(np.float32))[:, None].to(dev)
    x = encode_batch(examples, config) if x is None else x
    total = 0.0
    for step in range(steps):
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            logits = net(torch.from_numpy(x).to(dev)).float()
        loss = dice_bce(logits, t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        opt.step()
        total += float(loss.detach())
        if step == steps - 1:
            break
        lg = logits.detach()[:, 0].cpu().numpy()
        examples, x = feed_back(examples, lg, config, rng) if pool is None else pool.feed_back(examples, lg, config, rng)
    return total / steps


def encode_batch(examples, config) -> np.ndarray:
    return np.stack([e.encode(config) for e in examples])


def feed_back(examples, logits: np.ndarray, config, rng):
    """The previous round's logits become each example's prior and the simulated user corrects
    its prediction; returns the examples and their next input."""
    for e, l in zip(examples, logits):
        e.prior = l.copy()
        correction(l > 0, e.target, rng, e.pos, e.neg, e.smaps, scribble_prob=0.15)
    return examples, encode_batch(examples, config)


# --- worker processes (a GPU step is faster than one core can simulate the user) --------------
_WORKER_SOURCES: list = []  # set in the parent before the fork; the workers inherit it


def _worker_make(job):
    seed, n, config, recipe = job
    rng = np.random.default_rng(seed)
    examples = [make_example(_WORKER_SOURCES, rng, config.resolution, recipe) for _ in range(n)]
    return examples, encode_batch(examples, config)


def _worker_feed_back(job):
    examples, logits, config, seed = job
    return feed_back(examples, logits, config, np.random.default_rng(seed))


class ExamplePool:
    """Examples made, corrected and encoded in ``workers`` forked processes.

    Why: on a GPU the network's step takes milliseconds while one core needs ~0.5 s to make a
    batch of 64 examples and ~0.15 s per round to correct and encode them. The workers inherit
    the sources at fork (no copy of the image arrays); each job gets a seed drawn from the
    trainer's generator, so a run is reproducible for a given worker count. The next batch is
    made while the current one trains."""

    def __init__(self, sources, workers: int, config, recipe: Recipe = Recipe()):
        import multiprocessing as mp

        global _WORKER_SOURCES
        _WORKER_SOURCES = sources
        self.workers, self.config, self.recipe = workers, config, recipe
        self.pool = mp.get_context("fork").Pool(workers)
        self.pending = None

    def _chunks(self, items):
        k = -(-len(items) // self.workers)
        return [items[i:i + k] for i in range(0, len(items), k)]

    def _make_async(self, n, rng):
        sizes = [len(c) for c in self._chunks(list(range(n)))]
        jobs = [(int(rng.integers(2**63)), m, self.config, self.recipe) for m in sizes]
        return self.pool.map_async(_worker_make, jobs)

    def batch(self, n: int, rng) -> tuple[list[Example], np.ndarray]:
        """``n`` new examples and their first input (encoded by the worker that made them)."""
        if self.pending is None:
            self.pending = self._make_async(n, rng)
        parts = self.pending.get()
        self.pending = self._make_async(n, rng)
        return [e for p in parts for e in p[0]], np.concatenate([p[1] for p in parts])

    def feed_back(self, examples, logits, config, rng):
        chunks = self._chunks(examples)
        starts = np.cumsum([0] + [len(c) for c in chunks])
        jobs = [(c, logits[a:a + len(c)], config, int(rng.integers(2**63))) for c, a in zip(chunks, starts)]
        parts = self.pool.map(_worker_feed_back, jobs)
        return [e for p in parts for e in p[0]], np.concatenate([p[1] for p in parts])

    def close(self):
        self.pool.terminate()


# --- validation (training sources only) --------------------------------------------------------
def validation_pairs(sources: list[Source], per_source: int = 6):
    """Fixed (name, image, target, pancakes start or None) from the validation images."""
    rng = np.random.default_rng(4321)
    out = []
    for src in sources:
        for i in src.val[:per_source]:
            img, lab = src.work(int(i))
            target = pick_target(rng, lab, [], min_px=12, component_prob=0.0)
            if target is None or target.all():
                continue
            pan = src.pancakes.get(int(i))
            out.append((src.name, img, target, None if pan is None else pancakes_start(pan, target, None)))
    srng = np.random.default_rng(99)
    for _ in range(per_source):
        img, target = synthetic_example(srng, sources[0].r if sources else 128)
        out.append(("synthetic", img, target, None))
    return out


@torch.no_grad()
def evaluate(net, config, pairs, n_clicks: int = 5, per_pair: bool = False) -> dict:
    """Mean Dice after 1..n simulated clicks from nothing, box + 0..2 clicks, Pancakes label + 1..3
    clicks, and a corrupted ground truth + 1..3 clicks ("corrupted": :func:`corrupt_mask`, seeded by
    the pair's index, so every file meets the same masks). The last asks what the others do not:
    that a negative click removes a false region and a positive one restores a missed part, as
    when a user edits an existing mask (a file that scored best without it left 59 % of a false
    band after a negative click, where the shipped file left 12 %). With ``per_pair`` also each
    pair's mean over its parts (``per_pair``), for a paired comparison of two files."""
    net.eval()
    dev = next(net.parameters()).device

    def run(img, target, prior, box, n):
        pos, neg, out = [], [], []
        pred = prior > 0 if prior is not None else np.zeros_like(target)
        for c in range(n):
            if c or box is None:
                click = next_click(pred, target)
                if click is None:
                    out += [1.0] * (n - c)
                    break
                (pos if click[1] else neg).append(click[0])
            x = torch.from_numpy(encode_input(img, pos, neg, prior, config, box=box))[None].to(dev)
            prior = net(x)[0, 0].cpu().numpy()
            pred = prior > 0
            out.append(dice(pred, target))
        return out

    a, b, c, d, each = [], [], [], [], []
    for j, (_, img, target, pstart) in enumerate(pairs):
        a.append(run(img, target, None, None, n_clicks))
        d.append(run(img, target, mask_prior(corrupt_mask(target, np.random.default_rng(j))), None, 3))
        b.append(run(img, target, None, simulate_box(target, None), 3))
        if pstart is not None:
            c.append(run(img, target, mask_prior(pstart), None, 3))
        each.append(np.mean([np.mean(a[-1]), np.mean(b[-1]), np.mean(d[-1])]
                            + ([np.mean(c[-1])] if pstart is not None else [])))
    net.train()
    res = {"nothing": np.round(np.mean(a, 0), 4).tolist(), "box": np.round(np.mean(b, 0), 4).tolist(),
           "pancakes": np.round(np.mean(c, 0), 4).tolist() if c else [],
           "corrupted": np.round(np.mean(d, 0), 4).tolist()}
    res["score"] = round(float(np.mean([np.mean(a), np.mean(b), np.mean(d)] + ([np.mean(c)] if c else []))), 4)
    if per_pair:
        res["per_pair"] = [round(float(v), 4) for v in each]
    return res


def paired_difference(scores: list[float], baseline: list[float]) -> dict:
    """Mean per-pair difference of two files' validation scores (same pairs) and its 95 %
    interval (paired t): whether a candidate beats the shipped file by more than the spread of
    the pairs, not only in the mean (one run's checkpoints differ by about 0.01)."""
    from scipy import stats

    diff = np.asarray(scores, float) - np.asarray(baseline, float)
    ci = stats.ttest_rel(scores, baseline).confidence_interval(0.95)
    return {"pairs": len(diff), "mean_difference": round(float(diff.mean()), 4),
            "ci95": [round(float(ci.low), 4), round(float(ci.high), 4)]}


# --- checkpoints ------------------------------------------------------------------------------
def save_checkpoint(out: Path, net, opt, state: dict):
    """``out/checkpoint.safetensors`` + ``out/checkpoint.json``, written by the package's one checkpoint
    writer (:func:`..io_weights.save_checkpoint`), with the torch RNG state."""
    io_weights.save_checkpoint(out / "checkpoint.safetensors", net, opt, state, {"torch": torch.get_rng_state()},
                               json_path=out / "checkpoint.json")


def load_checkpoint(out: Path, net, opt) -> dict:
    """Restore ``net``, ``opt`` and the torch RNG from ``out``; returns the run state (step, elapsed, log, ...)."""
    model_state, opt_state, rng, meta = io_weights.load_checkpoint(out / "checkpoint.safetensors",
                                                                   json_path=out / "checkpoint.json")
    net.load_state_dict(model_state)
    opt.load_state_dict(opt_state)
    torch.set_rng_state(rng["torch"])
    return io_weights.checkpoint_run_state(meta)


def _deadline_seconds(until: str) -> float:
    """Seconds from now until the next HH:MM (UTC; a time already past today means tomorrow)."""
    import datetime as dt

    now = dt.datetime.now(dt.timezone.utc)
    h, m = (int(v) for v in until.split(":"))
    end = now.replace(hour=h, minute=m, second=0, microsecond=0)
    if end <= now:  # e.g. --until 00:40 started at 22:30
        end += dt.timedelta(days=1)
    return (end - now).total_seconds()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=None, help="data root (default: $NAPARI_PANCAKES_DATA)")
    ap.add_argument("--cache", type=Path, default=Path("runs/cache"))
    ap.add_argument("--out", type=Path, default=Path("runs/refiner-campaign"))
    ap.add_argument("--minutes", type=float, default=60.0, help="training budget (total, across resumes)")
    ap.add_argument("--until", default=None, help="HH:MM UTC: stop then (overrides --minutes for this run)")
    ap.add_argument("--init", type=Path, default=DEFAULT_REFINER_WEIGHTS, help="start from these weights ('' = scratch)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5, help="most interaction rounds per example")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pancakes-per-source", type=int, default=48)
    ap.add_argument("--eval-every", type=float, default=10.0, help="minutes between validation + checkpoint")
    ap.add_argument("--superpixel-prob", type=float, default=0.0,
                    help="share of real crops whose target is a superpixel region (superpixel_target)")
    ap.add_argument("--similar-prob", type=float, default=0.0,
                    help="share of real crops whose target is every region like one seed region "
                         "(similar_regions_target: one click may mean all instances)")
    ap.add_argument("--small-prob", type=float, default=0.0,
                    help="share of real crops whose target is small with an edge of its own: a labelled blob "
                         "or a painted shape (small_target)")
    ap.add_argument("--poor-start-prob", type=float, default=0.0,
                    help="share of Pancakes starts drawn from any label overlapping the target, not the best "
                         "(pancakes_start): a poor chosen label must be droppable by clicks")
    ap.add_argument("--small-radii", type=float, nargs=2, default=SMALL_RADII, metavar=("LO", "HI"),
                    help="range of a painted small shape's semi-axes in working-grid pixels (small_target)")
    ap.add_argument("--invert-prob", type=float, default=0.0,
                    help="share of real crops whose intensities are inverted (Source.sample)")
    ap.add_argument("--box-prob", type=float, default=Recipe.box_prob,
                    help="share of examples without a starting mask whose first prompt is a box "
                         "(the rest: clicks twice as often as a scribble)")
    ap.add_argument("--box-superpixel-prob", type=float, default=0.0,
                    help="share of real crops with a box as first prompt whose target is a superpixel region")
    ap.add_argument("--zoom-out-prob", type=float, default=0.0,
                    help="share of real crops shrunk to 40-80 %% of the grid and mirrored out (zoom_out)")
    ap.add_argument("--augment-prob", type=float, default=0.0,
                    help="share of real crops shown as another scanner might (augment.modality_augment: "
                         "intensity curve, speckle, blur, noise) and transposed half the time")
    ap.add_argument("--bundled-prob", type=float, default=0.0,
                    help="share of real crops taken from unlabelled images that scikit-image ships "
                         "(datasets.bundled_images), with targets drawn from the image itself")
    ap.add_argument("--leave-out", default=",".join(LEAVE_OUT),
                    help="comma-separated datasets not read ('' = train on all: the stage that ships, once "
                         "the recipe is settled on the leave-out benchmark)")
    ap.add_argument("--pack", type=Path, default=None,
                    help="read the datasets from this file (python -m napari_pancakes.training pack --res 256) "
                         "instead of the data root (a GPU machine)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (bfloat16 autocast)")
    ap.add_argument("--workers", type=int, default=0,
                    help="processes that make and correct examples (ExamplePool; 0 = in the trainer)")
    ap.add_argument("--evaluate", type=Path, nargs="+", default=None, metavar="WEIGHTS",
                    help="only score these refiner files on the run's validation pairs (training sources; "
                         "the Pancakes starts come from the bundled Pancakes weights) and write OUT/evaluate.json, "
                         "with each later file's per-pair difference from the first and its 95 %% interval")
    ap.add_argument("--average", type=Path, nargs="+", default=None, metavar="WEIGHTS",
                    help="only write OUT/average.safetensors, the mean of these refiner files' weights "
                         "(io_weights.average_refiner_files), and stop")
    args = ap.parse_args(argv)
    if args.average:
        from ..io_weights import average_refiner_files

        print(average_refiner_files(args.average, args.out / "average.safetensors"))
        return
    try:  # before anything is read or written
        recipe = Recipe(superpixel_prob=args.superpixel_prob, similar_prob=args.similar_prob,
                        small_prob=args.small_prob, small_radii=tuple(args.small_radii),
                        invert_prob=args.invert_prob, poor_start_prob=args.poor_start_prob,
                        augment_prob=args.augment_prob, box_prob=args.box_prob,
                        zoom_out_prob=args.zoom_out_prob, box_superpixel_prob=args.box_superpixel_prob,
                        bundled_prob=args.bundled_prob)
    except ValueError as err:
        ap.error(str(err))

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    logf = open(out / "log.txt", "a")

    def log(msg):
        line = f"{time.strftime('%H:%M:%S')} {msg}"
        print(line, flush=True)
        logf.write(line + "\n")
        logf.flush()

    config = RefinerConfig()
    r = config.resolution
    if args.init and str(args.init) and Path(args.init).is_file():
        net = with_box_channel(load_refiner(args.init, device="cpu").net).train()
        log(f"initialised from {args.init}")
    else:
        net = RefinerNet(config)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    state = {"it": 0, "elapsed": 0.0, "best_score": -1.0, "log": [], "budget_s": args.minutes * 60}
    if (out / "checkpoint.json").exists():
        state = load_checkpoint(out, net, opt)
        log(f"resumed at iteration {state['it']} ({state['elapsed'] / 60:.1f} min done)")
    state["budget_s"] = args.minutes * 60  # total across resumes, also when resuming
    if args.until:
        state["budget_s"] = state["elapsed"] + _deadline_seconds(args.until)
    rng = np.random.default_rng(args.seed)
    if "np_rng" in state:
        rng.bit_generator.state = state["np_rng"]

    leave_out = [n for n in args.leave_out.split(",") if n]
    if args.pack:
        real = read_pack(args.pack, exclude=leave_out)
        log(f"datasets from {args.pack}")
    else:
        root = data_root(args.data)
        names = [n for n in folder_names(root) if n not in leave_out]
        real = load_real_datasets(names, root=root, res=STORE, cache_dir=args.cache, mni=True)
    sources = [Source(ds, r) for name, ds in real.items() if name not in leave_out]
    log(f"sources: {[s.name for s in sources]} (+ synthetic); leave-out not read: {leave_out}")
    compute_pancakes_labels(sources, args.pancakes_per_source, log=log)
    val = validation_pairs(sources)
    log(f"{len(val)} validation pairs from training sources")

    def score_file(path, per_pair: bool = False) -> dict:
        return evaluate(with_box_channel(load_refiner(path, device="cpu").net), config, val, per_pair=per_pair)

    if args.evaluate:  # the same pairs for every file: a fair choice when the Pancakes starts changed
        scores = {str(w): score_file(w, per_pair=True) for w in args.evaluate}
        first_key = str(args.evaluate[0])
        for w, ev in scores.items():
            if w != first_key:  # each later file against the first (the shipped one)
                ev["vs_first"] = paired_difference(ev["per_pair"], scores[first_key]["per_pair"])
            log(f"evaluate {w}: { {k: v for k, v in ev.items() if k != 'per_pair'} }")
        (out / "evaluate.json").write_text(json.dumps(scores, indent=1))
        return
    if (out / "best.safetensors").is_file() and state["it"] > 0:
        # the validation pairs depend on the bundled Pancakes weights (the starts from a label):
        # score the best file again on today's pairs, so that a new checkpoint is compared fairly
        again = score_file(out / "best.safetensors")
        log(f"best.safetensors on these validation pairs: {again['score']} (recorded: {state['best_score']})")
        state["best_score"] = again["score"]

    if recipe.bundled_prob:  # examples only: they have no labels to validate on
        sources = sources + [Source(bundled_images(STORE), r, unlabelled=True)]
        log(f"bundled images: {len(sources[-1].images)} crops, {recipe.bundled_prob:.0%} of real crops")
    run_info = {"leave_out": leave_out, "batch": args.batch, "device": args.device,
                "recipe": asdict(recipe)}  # into best.safetensors
    pool = ExamplePool(sources, args.workers, config, recipe) if args.workers > 0 else None
    net.to(args.device)  # after the fork: the workers never touch the GPU
    opt.load_state_dict(opt.state_dict())  # moves a resumed optimiser's state to the device
    t_start = time.time() - state["elapsed"]
    last_eval = time.time()
    run_loss = []
    net.train()
    while True:
        elapsed = time.time() - t_start
        if elapsed >= state["budget_s"]:
            break
        frac = min(1.0, elapsed / max(state["budget_s"], 1.0))
        lr = args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac))) * min(1.0, (state["it"] + 1) / 50)
        for g in opt.param_groups:
            g["lr"] = lr
        steps = int(rng.integers(1, args.steps + 1))
        if pool is None:
            batch, x = [make_example(sources, rng, r, recipe) for _ in range(args.batch)], None
        else:
            batch, x = pool.batch(args.batch, rng)
        run_loss.append(train_step(net, opt, batch, config, rng, steps, pool, x))
        state["it"] += 1
        if state["it"] % 25 == 0:
            log(f"it {state['it']} {elapsed / 60:.1f} min lr {lr:.2e} loss {np.mean(run_loss):.4f}")
            state["log"].append({"it": state["it"], "min": round(elapsed / 60, 2), "loss": round(float(np.mean(run_loss)), 4)})
            run_loss = []
        if time.time() - last_eval > args.eval_every * 60:
            _checkpoint(out, net, opt, state, rng, t_start, val, config, log, run_info)
            last_eval = time.time()
    _checkpoint(out, net, opt, state, rng, t_start, val, config, log, run_info, final=True)
    if pool is not None:
        pool.close()
    log(f"done: {state['it']} iterations, {(time.time() - t_start) / 60:.1f} min")


def _checkpoint(out, net, opt, state, rng, t_start, val, config, log, run_info, final=False):
    ev = evaluate(net, config, val)
    state["elapsed"] = time.time() - t_start
    state["np_rng"] = rng.bit_generator.state
    entry = {"it": state["it"], "min": round(state["elapsed"] / 60, 2), "val": ev, "final": final}
    state["log"].append(entry)
    log(f"it {state['it']} validation (training sources) {ev}")
    if ev["score"] > state["best_score"]:
        state["best_score"] = ev["score"]
        save_weights(net, out / "best.tmp.safetensors", fmt=REFINER_FORMAT,
                     extra={"iterations": state["it"], "train_minutes": round(state["elapsed"] / 60, 1),
                            "validation": ev, **run_info})
        (out / "best.tmp.safetensors").replace(out / "best.safetensors")
        log(f"new best (score {ev['score']}) -> best.safetensors")
    save_checkpoint(out, net, opt, state)
    (out / "log.json").write_text(json.dumps(state["log"], indent=0))


if __name__ == "__main__":
    main()
