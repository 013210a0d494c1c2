"""``segment_set``: a set of images -> M candidate protocols, each a K-label map per image.

:class:`PancakesPredictor` does the work: ``phi`` and the head features are computed once
per image at the working resolution and cached (float16), so any M, K and seed is answered
without running the network again; the (M, K) pair weights are computed once per call, and
logits (the head's own :meth:`ProtocolHead.logits`) are resampled to each image's own size
one band of rows at a time, keeping only the argmax (and the probabilities when asked).
``segment_set`` and ``iter_segment_set`` are thin wrappers over it.
"""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch

from .io_weights import best_device, load_model
from .model import K_RANGE, M_RANGE, Pancakes
from .preprocess import normalize_intensity, resize_image, to_image_list

PHI_BATCH = 8  # images per forward pass of the U-Net
BAND_ELEMENTS = 1 << 24  # logits held at once while resampling (64 MB of float32)


def check_mk(m: int, k: int) -> tuple[int, int]:
    """Validate the number of protocols M and labels K."""
    for name, value, (lo, hi) in (("m (protocols)", m, M_RANGE), ("k (labels)", k, K_RANGE)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name} must be an integer in {lo}..{hi}, got {value!r}")
        if not lo <= int(value) <= hi:
            raise ValueError(f"{name} must be in {lo}..{hi}, got {value}")
    return int(m), int(k)


def protocol_offsets(m: int, seed: int | None) -> torch.Tensor | None:
    """Fractional shifts of the protocol codes: seed 0 (or None) gives the canonical protocols."""
    if not seed:
        return None
    rng = np.random.default_rng(int(seed))
    return torch.from_numpy(rng.uniform(0.0, 1.0, size=m).astype(np.float32))


def flat_3x3(image: np.ndarray) -> np.ndarray:
    """Pixels whose 3 x 3 neighbourhood (edges repeated) holds one value: exactly
    ``maximum_filter(image, 3) == minimum_filter(image, 3)`` with ``mode="nearest"``, by shifted
    comparisons. Why: with the filters ``segment_set`` took 8.9 s for three 4096 px images, with
    this 4.8 s (``benchmarks/results/inference-large-before-flat3x3.json``, ``inference-large.json``)."""
    a = np.asarray(image)
    p = np.pad(a, 1, mode="edge")
    row = (p[:, :-2] == p[:, 1:-1]) & (p[:, 1:-1] == p[:, 2:])  # (h + 2, w): each pixel equals its left and right
    return row[:-2] & row[1:-1] & row[2:] & (p[:-2, 1:-1] == p[1:-1, 1:-1]) & (p[1:-1, 1:-1] == p[2:, 1:-1])


def interpolation_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) linear resampling weights, rows summing to 1.

    Bilinear (half-pixel centres, as ``torch.nn.functional.interpolate``) when enlarging,
    area averaging (anti-aliased) when shrinking. Resampling logits with it equals resampling
    them with the usual image functions, and it can be applied to any band of rows.
    """
    w = np.zeros((n_out, n_in), dtype=np.float32)
    scale = n_in / n_out
    if n_out >= n_in:
        src = (np.arange(n_out) + 0.5) * scale - 0.5
        src = np.clip(src, 0, n_in - 1)
        i0 = np.floor(src).astype(int)
        i1 = np.minimum(i0 + 1, n_in - 1)
        frac = (src - i0).astype(np.float32)
        rows = np.arange(n_out)
        np.add.at(w, (rows, i0), 1 - frac)
        np.add.at(w, (rows, i1), frac)
    else:
        for r in range(n_out):
            a, b = r * scale, (r + 1) * scale
            lo, hi = int(np.floor(a)), min(int(np.ceil(b)), n_in)
            for c in range(lo, hi):
                w[r, c] = min(b, c + 1) - max(a, c)
        w /= w.sum(axis=1, keepdims=True)
    return w


class PancakesPredictor:
    """Segment one set of images for any number of (M, K, seed) choices, running the network once.

    :meth:`set_images` validates and normalises the images and runs ``phi = f(x)`` and the
    image branch of the head, once per image, and caches the head features; :meth:`protocols`
    (or :meth:`iter_protocols`) then answers any M, K and seed from that cache: only the code
    branch (M*K tiny MLP evaluations) and the per-pixel inner products run again.

    Memory: the cache holds the features at the working resolution in float16, D x r x r x 2
    bytes per image whatever the image size (1 MiB for the bundled D = 32, r = 128), plus, for
    images with uniform regions, one int32 region map of the image's own size and D floats per
    region. The images themselves are not kept.

    Uniform regions: a region where the image (as the network sees it, after normalisation) is
    exactly constant holds no structure, yet a network can paint patterns into it (padding and
    receptive-field artefacts: rectangles on a blank image). With ``uniform_regions=True`` (the
    default) every constant region of at least ``min_uniform_area`` pixels gets one label per
    protocol, the argmax of its mean logits (exactly the mean over the region of the
    resampled logits), and the returned probabilities there are the softmax of those mean
    logits, so ``probs.argmax() == labels`` everywhere. A constant image is one such region.

    Arguments:
        model: a loaded model; the bundled one when None.
        device: "cpu", "cuda", "mps" or None (best available).
        uniform_regions: give each constant region one label (see above).
    """

    def __init__(self, model: Pancakes | None = None, device: str | None = None, uniform_regions: bool = True):
        if model is None:
            model = load_model(device=device)
        elif device is not None:
            model = model.to(best_device(device))
        self.model = model.eval()
        self.uniform_regions = bool(uniform_regions)
        self.shapes: list[tuple[int, int]] = []
        self._features: torch.Tensor | None = None  # (S, D, r, r) float16, CPU
        self._regions: list[tuple[np.ndarray, torch.Tensor] | None] = []  # per image: (region map, mean features)

    @property
    def n_images(self) -> int:
        return len(self.shapes)

    @property
    def cache_bytes(self) -> int:
        """Bytes held by the cache (features and region maps)."""
        n = 0 if self._features is None else self._features.numel() * self._features.element_size()
        return n + sum(r[0].nbytes + r[1].numel() * 4 for r in self._regions if r is not None)

    def set_images(self, images) -> "PancakesPredictor":
        """Validate, normalise and encode a set (any input :func:`segment_set` takes)."""
        for _ in self.iter_set_images(images):
            pass
        return self

    def iter_set_images(self, images, batch: int = PHI_BATCH) -> Iterator[tuple[int, int]]:
        """:meth:`set_images` as a generator yielding ``(done, total)`` after each batch of images.

        The cache is replaced only when the generator runs to the end; stopping it early
        leaves the previous set in place.
        """
        items, _ = to_image_list(images)
        dev = next(self.model.parameters()).device
        res = self.model.config.resolution
        feats, regions = [], []
        # Grad modes are thread-local and a generator may be resumed or abandoned in another
        # thread (a GUI worker), so no ``inference_mode`` block may span a ``yield``.
        for start in range(0, len(items), max(1, int(batch))):
            chunk = items[start : start + max(1, int(batch))]
            normalised = [normalize_intensity(im) for im in chunk]
            x = torch.from_numpy(np.stack([resize_image(im, (res, res)) for im in normalised]))[:, None].to(dev)
            with torch.inference_mode():
                g = self.model.features(self.model.phi(x)).float().cpu()  # (n, D, r, r)
            feats.append(g.half())
            for j, im in enumerate(normalised):
                regions.append(self._uniform_regions(im, g[j]) if self.uniform_regions else None)
            yield start + len(chunk), len(items)
        self._features = torch.cat(feats)
        self._regions = regions
        self.shapes = [tuple(im.shape) for im in items]

    def _uniform_regions(self, image: np.ndarray, feats: torch.Tensor):
        """(region map int32, 0 = not uniform; (n_regions, D) mean features) or None."""
        from scipy import ndimage

        h, w = image.shape
        min_area = max(64, int(np.ceil(64 * h * w / feats.shape[-1] ** 2)))  # >= 8 x 8 working pixels
        if h * w < min_area:
            return None
        flat = flat_3x3(image)
        if flat.sum() < min_area:
            return None
        regions, n = ndimage.label(flat)
        sizes = np.bincount(regions.ravel(), minlength=n + 1)
        keep = np.flatnonzero(sizes >= min_area)
        keep = keep[keep > 0]
        if keep.size == 0:
            return None
        remap = np.zeros(n + 1, np.int32)
        remap[keep] = np.arange(1, keep.size + 1)
        regions = remap[regions]
        # mean of the resampled features over each region = features weighted by Ry^T mask Rx
        r = feats.shape[-1]
        ry = torch.from_numpy(interpolation_matrix(h, r))
        rx = torch.from_numpy(interpolation_matrix(w, r))
        means = torch.empty(keep.size, feats.shape[0])
        for i in range(keep.size):
            mask = torch.from_numpy((regions == i + 1).astype(np.float32))
            weight = ry.T @ mask @ rx  # (r, r)
            means[i] = (feats * weight).sum((1, 2)) / weight.sum()
        return regions, means

    def _check_ready(self):
        if self._features is None:
            raise RuntimeError("no images yet: call set_images(images) first")

    def iter_protocols(self, m: int = 8, k: int = 20, seed: int | None = 0, return_probs: bool = False,
                       ) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
        """Yield ``(index, labels (M, H, W), probs (M, K, H, W) or None)`` image by image."""
        for step in self.iter_steps(m, k, seed, return_probs):
            if step is not None:
                yield step

    def iter_steps(self, m: int = 8, k: int = 20, seed: int | None = 0, return_probs: bool = False):
        """:meth:`iter_protocols` yielding ``None`` after every band of rows as well, so that a
        caller (a GUI worker) can stop within a fraction of a second even for M = 32, K = 64."""
        m, k = check_mk(m, k)
        self._check_ready()
        label_dtype = np.uint8 if k <= 256 else np.int32
        with torch.inference_mode():  # not across the yields below (see iter_set_images)
            weights, bias = self.model.pair_weights(m, k, protocol_offsets(m, seed))  # (M, K, D), (M, K)
            weights, bias = weights.float().cpu(), bias.float().cpu()
        # below, nothing requires grad: weights, biases and cached features are plain tensors
        for i, shape in enumerate(self.shapes):
            feats = self._features[i].float()
            labels = np.empty((m,) + shape, dtype=label_dtype)
            probs = np.empty((m, k) + shape, dtype=np.float32) if return_probs else None
            if return_probs:  # every logit is needed
                for y0, y1, logits in _logit_bands(self.model.h, feats, weights, bias, shape):
                    band = (y1 - y0, shape[1])
                    labels[:, y0:y1] = logits.argmax(-1).T.reshape((m,) + band).numpy()
                    probs[:, :, y0:y1] = torch.softmax(logits, -1).permute(1, 2, 0).reshape((m, k) + band).numpy()
                    yield None
            else:
                for _ in _label_bands(self.model.h, feats, weights, bias, shape, labels):
                    yield None
            if self._regions[i] is not None:
                _flatten_regions(self.model.h, self._regions[i], weights, bias, labels, probs)
            yield i, labels, probs

    def protocols(self, m: int = 8, k: int = 20, seed: int | None = 0, return_probs: bool = False,
                  progress: Callable[[int, int], None] | None = None):
        """Labels (and probabilities) of every image for M protocols of K labels; the same
        outputs as :func:`segment_set`, from the cache."""
        labels, probs = [], []
        for i, lab, pr in self.iter_protocols(m, k, seed, return_probs):
            labels.append(lab)
            probs.append(pr)
            if progress is not None:
                progress(i + 1, self.n_images)
        same = len({lab.shape for lab in labels}) == 1
        out_labels = np.stack(labels, axis=1) if same else labels
        if not return_probs:
            return out_labels
        return out_labels, (np.stack(probs, axis=1) if same else probs)

    def runner_up(self, protocol: int, m: int, k: int, seed: int | None = 0) -> list[np.ndarray]:
        """Per image, the second most probable label (H, W) of protocol ``protocol`` (0-based)
        of the (M, K, seed) grid: where a pixel goes when its first choice is taken away."""
        m, k = check_mk(m, k)
        self._check_ready()
        if not 0 <= int(protocol) < m:
            raise ValueError(f"protocol must be in 0..{m - 1}, got {protocol}")
        out = []
        with torch.inference_mode():
            weights, bias = self.model.pair_weights(m, k, protocol_offsets(m, seed))
            weights, bias = weights[protocol : protocol + 1].float().cpu(), bias[protocol : protocol + 1].float().cpu()
            for i, shape in enumerate(self.shapes):
                second = np.empty(shape, dtype=np.uint8 if k <= 256 else np.int32)
                for y0, y1, logits in _logit_bands(self.model.h, self._features[i].float(), weights, bias, shape):
                    second[y0:y1] = logits[:, 0].topk(2, dim=-1).indices[:, 1].reshape(y1 - y0, shape[1]).numpy()
                out.append(second)
        return out


def _logit_bands(head, feats, weights, bias, shape):
    """Yield ``(y0, y1, logits (pixels, M, K))`` for the rows y0..y1 of an image of size ``shape``
    (pixels in row-major order; K innermost, which makes the argmax over K fast).

    The logits are linear in the features and resampling is linear with weights summing to
    one, so resampling the D feature channels and then applying the pair weights gives
    exactly the resampled logits, at a fraction of the cost (D is much smaller than M*K).
    Rows are processed in bands so that no more than ``BAND_ELEMENTS`` logits exist at once.
    """
    d, r, _ = feats.shape
    h, w = shape
    m, k, _ = weights.shape
    if (h, w) != (r, r):
        rx = torch.from_numpy(interpolation_matrix(w, r))
        ry = torch.from_numpy(interpolation_matrix(h, r))
        cols = torch.einsum("dyx,wx->dyw", feats, rx)  # (D, r, W)
    band = max(1, BAND_ELEMENTS // max(1, m * k * w))
    for y0 in range(0, h, band):
        y1 = min(h, y0 + band)
        g = feats[:, y0:y1] if (h, w) == (r, r) else torch.einsum("hy,dyw->dhw", ry[y0:y1], cols)  # (D, band, W)
        pixels = g.reshape(d, -1).T[:, :, None, None]  # each pixel one "image" of 1 x 1
        yield y0, y1, head.logits(pixels, weights, bias)[:, :, :, 0, 0]


def _taps(weights: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The support of each row of a resampling matrix as taps: ``(index (T, n_out) int64,
    weight (T, n_out) float32)`` with T the widest support. Narrower rows repeat their last
    index with weight 0, which leaves minima, maxima and weighted sums unchanged."""
    support = weights > 0
    first = support.argmax(1)
    last = weights.shape[1] - 1 - support[:, ::-1].argmax(1)
    steps = np.arange(int((last - first).max()) + 1)[:, None]
    index = np.minimum(first[None] + steps, last[None])
    tap_weight = np.where(first[None] + steps <= last[None], np.take_along_axis(weights.T, index, 0), 0.0)
    return torch.from_numpy(index), torch.from_numpy(tap_weight.astype(np.float32))


def _window_min_max(low: torch.Tensor, high: torch.Tensor, index: torch.Tensor, axis: int):
    """Min of ``low`` and max of ``high`` along ``axis`` over the source indices each output
    index draws from (``index`` from :func:`_taps`)."""
    out_min, out_max = low.index_select(axis, index[0]), high.index_select(axis, index[0])
    for t in range(1, index.shape[0]):
        out_min = torch.minimum(out_min, low.index_select(axis, index[t]))
        out_max = torch.maximum(out_max, high.index_select(axis, index[t]))
    return out_min, out_max


def _label_bands(head, feats, weights, bias, shape, out: np.ndarray):
    """Fill ``out`` (M, H, W) with the argmax labels, band by band (yields after each band).

    Exact shortcut: a resampled logit is a convex combination (non-negative weights summing to
    one) of the logits at the working-resolution pixels it is made from, so where protocol m
    gives all of those pixels the same label k, k is also the argmax of the combination. Labels
    are therefore computed at the working resolution first (in the output's small integer
    type), and the resampled features and full logits only at the pixels whose sources
    disagree (the label boundaries), protocol by protocol, gathered from the few source taps
    of each pixel rather than by dense matrix products.
    """
    d, r, _ = feats.shape
    h, w = shape
    m, k, _ = weights.shape
    small = torch.uint8 if out.dtype == np.uint8 else torch.int32
    pixels = feats.reshape(d, -1).T[:, :, None, None]  # each pixel one "image" of 1 x 1: K innermost, fast argmax
    low = head.logits(pixels, weights, bias)[:, :, :, 0, 0].argmax(-1).to(small).T.reshape(m, r, r).contiguous()
    if (h, w) == (r, r):
        out[:] = low.numpy()
        yield
        return
    rx = interpolation_matrix(w, r)
    y_index, y_weight = _taps(interpolation_matrix(h, r))
    x_index, _ = _taps(rx)
    lo_min, lo_max = _window_min_max(low, low, x_index, axis=2)  # over source columns: (M, r, W)
    cols = (feats.reshape(d * r, r) @ torch.from_numpy(rx).T).reshape(d, r, w)  # resampled along x: (D, r, W)
    cols = cols.permute(1, 2, 0).reshape(r * w, d).contiguous()  # one row of D features per (source row, x)
    band = max(1, BAND_ELEMENTS // max(1, m * k * w))
    for y0 in range(0, h, band):
        y1 = min(h, y0 + band)
        first, last = _window_min_max(lo_min, lo_max, y_index[:, y0:y1].contiguous(), axis=1)  # over source rows: (M, b, W)
        labels = first.reshape(m, -1)
        mixed = (first != last).reshape(m, -1)
        for p in range(m):
            index = torch.nonzero(mixed[p]).squeeze(1)
            if not index.numel():
                continue
            ys, xs = index // w + y0, index % w
            g = sum(cols.index_select(0, y_index[t, ys] * w + xs) * y_weight[t, ys, None]
                    for t in range(y_index.shape[0]))  # (n, D)
            logits = head.logits(g[:, :, None, None], weights[p : p + 1], bias[p : p + 1])[:, 0, :, 0, 0]
            labels[p, index] = logits.argmax(-1).to(small)
        out[:, y0:y1] = labels.reshape(m, y1 - y0, w).numpy()
        yield


def _flatten_regions(head, regions, weights, bias, labels, probs) -> None:
    """Give every uniform region the label (and probabilities) of its mean logits, in place."""
    region_map, means = regions
    logits = head.logits(means.T[None, :, :, None], weights, bias)[0, :, :, :, 0]  # (M, K, n_regions)
    best = logits.argmax(1).numpy()  # (M, n_regions)
    mask = region_map > 0
    index = region_map[mask] - 1
    for p in range(labels.shape[0]):
        labels[p][mask] = best[p][index]
    if probs is not None:
        soft = torch.softmax(logits, 1).numpy()  # (M, K, n_regions)
        for p in range(labels.shape[0]):
            for c in range(soft.shape[1]):
                probs[p, c][mask] = soft[p, c][index]


def label_counts(labels: np.ndarray, k: int) -> np.ndarray:
    """(M, H, W) or (M, S, H, W) labels in 0..K-1 -> (M, K) pixel counts per label."""
    flat = np.asarray(labels).reshape(labels.shape[0], -1)
    return np.stack([np.bincount(row, minlength=k)[:k] for row in flat])


def protocol_stats(counts: np.ndarray, min_share: float = 0.001) -> list[dict]:
    """Per protocol, from its (M, K) label counts over the set: ``labels_in_use`` (labels on at
    least ``min_share`` of the pixels), ``effective_labels`` (exp of the entropy of the label
    shares: K for K equal labels, 1 for one label) and ``single_label``."""
    counts = np.asarray(counts, dtype=np.float64)
    share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    out = []
    for row in share:
        nz = row[row > 0]
        in_use = int((row >= min_share).sum())
        out.append({"labels_in_use": in_use, "effective_labels": float(np.exp(-(nz * np.log(nz)).sum())),
                    "single_label": in_use <= 1})
    return out


def protocol_order(stats: list[dict]) -> list[int]:
    """Protocol indices, most informative first: single-label protocols last, then by
    effective number of labels (labels in use, weighted by how evenly they split the set);
    ties keep the model's order."""
    return sorted(range(len(stats)), key=lambda i: (stats[i]["single_label"], -round(stats[i]["effective_labels"], 6), i))


def iter_segment_set(
    images,
    m: int = 8,
    k: int = 20,
    *,
    model: Pancakes | None = None,
    device: str | None = None,
    seed: int | None = 0,
    return_probs: bool = False,
    uniform_regions: bool = True,
) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
    """Yield ``(index, labels, probs)`` image by image (see :func:`segment_set`).

    ``labels`` has shape (M, H_s, W_s); ``probs`` (M, K, H_s, W_s) float32 or None. Stopping
    the iteration early (e.g. a cancelled GUI run) leaves nothing behind.
    """
    m, k = check_mk(m, k)
    predictor = PancakesPredictor(model, device=device, uniform_regions=uniform_regions).set_images(images)
    yield from predictor.iter_protocols(m, k, seed, return_probs)


def segment_set(
    images,
    m: int = 8,
    k: int = 20,
    *,
    model: Pancakes | None = None,
    device: str | None = None,
    seed: int | None = 0,
    return_probs: bool = False,
    progress: Callable[[int, int], None] | None = None,
    uniform_regions: bool = True,
):
    """Segment a set of images into ``m`` candidate protocols of ``k`` labels each.

    Arguments:
        images: a (S, H, W) stack (the set), one (H, W) image, RGB/RGBA variants
            (..., 3|4), or a list of 2D arrays of possibly different shapes.
        m: number of protocols, 1..32 (paper default 8).
        k: labels per protocol, 2..64 (paper default 20).
        model: a loaded model (:func:`load_model`); the bundled one when None.
        device: "cpu", "cuda", "mps" or None (best available).
        seed: 0 gives the canonical protocols; other seeds give other draws of protocols.
            Results are deterministic for a given seed.
        return_probs: also return softmax probabilities over the K labels.
        progress: called as ``progress(done, total)`` after each image is labelled.
        uniform_regions: give each exactly constant region (a blank image, a padded border)
            one label per protocol instead of the network's artefacts there (see
            :class:`PancakesPredictor`).

    Returns:
        labels: int array (M, S, H, W) with values in 0..K-1, aligned pixel for pixel with
            the input (a list of (M, H_s, W_s) arrays when the images differ in shape).
        probs (only when ``return_probs``): float32 (M, S, K, H, W) or a list of
            (M, K, H_s, W_s) arrays.
    """
    m, k = check_mk(m, k)
    predictor = PancakesPredictor(model, device=device, uniform_regions=uniform_regions).set_images(images)
    return predictor.protocols(m, k, seed, return_probs, progress)
