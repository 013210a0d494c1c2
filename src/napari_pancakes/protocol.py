"""A chosen protocol as a file, applied to new images, and taught by one correction (no Qt).

A :class:`Protocol` is what a user picked in the explorer, in a form that reproduces it on any
image later: the grid (M, K), the protocol index, the seed, a hash of the model weights, the
names and colours of the labels, the merges and the labels sent to background, and any label
directions learnt from a correction. Saved as a small JSON (:meth:`Protocol.save`).

Applying it (:func:`apply_protocol`) needs one pass of the U-Net per image and one (K, D) matrix
product per pixel, and works in batches: a stream of arrays, an in-memory stack, a Dask array
(processed chunk by chunk, optionally on a ``dask.distributed`` cluster), or files on disk
(:func:`apply_to_files`, which writes each label file as soon as its batch is done).

A protocol is a codebook over per-pixel features (``logit_k = <w_k, G(x)> + b_k``), so a
correction of one label on one image can update that label's direction and bias
(:func:`fit_label`) and re-label every image (:class:`ProtocolSet.propagate`).

Label ids in the outputs are the model's labels plus one (1..K, 0 = background), as in the
explorer's layers, then merges and background sends are applied.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from .export import label_dtype
from .inference import PHI_BATCH, PancakesPredictor, check_mk, interpolation_matrix, protocol_offsets
from .preprocess import to_image_list

FORMAT = "napari-pancakes-protocol/1"
NAMES_FILE = "labels.json"  # written beside applied label files
BATCH = PHI_BATCH
CONNECT_TIMEOUT = 10.0  # seconds to reach a dask scheduler before giving up
# Weight of "the other images keep the label where it was sure" in a propagation, and how the
# corrected label's bias is set (fit_label): chosen on four training datasets with the shipped
# weights (benchmarks/results/propagate_tune/step3489/), never on the held-out ones.
KEEP = 2.0
BIAS = "fit"


# --------------------------------------------------------------------- weights identity
def weights_hash(model) -> str:
    """SHA-256 of the model's tensors (names, shapes, dtypes and bytes), cached on the model.

    Two models give the same protocols if and only if this matches, whatever file they came from.
    """
    cached = getattr(model, "_pancakes_hash", None)
    if cached is not None:
        return cached
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    digest = h.hexdigest()
    try:
        model._pancakes_hash = digest
    except AttributeError:  # pragma: no cover - exotic module wrappers
        pass
    return digest


class WeightsMismatch(ValueError):
    """The protocol was made with other model weights than the ones loaded."""


# --------------------------------------------------------------------- the protocol
@dataclass
class Protocol:
    """One chosen protocol: enough to reproduce its label maps on new images.

    Attributes:
        m, k: the grid the protocol was drawn from (M protocols of K labels).
        index: the protocol, 0-based (layer "protocol 3" is index 2).
        seed: the draw of protocols (0: canonical).
        weights_hash: :func:`weights_hash` of the model that made it.
        names: output label id -> name (0 = background).
        colors: output label id -> "#rrggbb".
        merges: output id -> id it was merged into.
        background: output ids sent to background (0).
        learned: model label (0-based) -> {"w": [D floats], "b": float} replacing the label's
            direction (already multiplied by the logit scale) and bias after a correction;
            {"off": True} removes a label from the argmax (it was absorbed by a corrected label).
        weights: where the weights came from ("bundled" or a path), a hint for workers.
    """

    m: int
    k: int
    index: int
    seed: int = 0
    weights_hash: str = ""
    names: dict[int, str] = field(default_factory=dict)
    colors: dict[int, str] = field(default_factory=dict)
    merges: dict[int, int] = field(default_factory=dict)
    background: list[int] = field(default_factory=list)
    learned: dict[int, dict] = field(default_factory=dict)
    weights: str = "bundled"

    def __post_init__(self):
        check_mk(self.m, self.k)
        if isinstance(self.index, bool) or not isinstance(self.index, (int, np.integer)) or not 0 <= self.index < self.m:
            raise ValueError(f"protocol index must be an integer in 0..{self.m - 1} (M = {self.m}), got {self.index!r}")
        self.index, self.seed = int(self.index), int(self.seed or 0)
        self.names = {int(i): str(n) for i, n in self.names.items()}
        self.colors = {int(i): str(c) for i, c in self.colors.items()}
        self.merges = {int(a): int(b) for a, b in self.merges.items()}
        self.background = sorted({int(b) for b in self.background})
        self.learned = {int(i): dict(v) for i, v in self.learned.items()}
        for i in list(self.merges) + self.background + list(self.learned):
            if not 0 <= i <= self.k:
                raise ValueError(f"label id {i} is outside 0..{self.k}")

    # ---- construction
    @classmethod
    def from_model(cls, model, m: int, k: int, index: int, seed: int = 0, **kw) -> "Protocol":
        """A protocol of ``model`` with default names (label i) and no edits."""
        names = kw.pop("names", None) or {0: "background", **{i: f"label {i}" for i in range(1, k + 1)}}
        return cls(m=m, k=k, index=index, seed=seed, weights_hash=weights_hash(model), names=names,
                   weights=kw.pop("weights", None) or _weights_origin(model), **kw)

    # ---- label ids
    def mapping(self) -> np.ndarray:
        """(K,) output id of each model label (0-based model label -> 0..K)."""
        out = np.arange(1, self.k + 1, dtype=np.int64)
        for _ in range(self.k):  # follow chains of merges (a -> b -> c)
            new = np.array([self.merges.get(int(v), int(v)) for v in out])
            if np.array_equal(new, out):
                break
            out = new
        out[np.isin(out, self.background)] = 0
        return out

    def output_ids(self) -> list[int]:
        return sorted(set(int(i) for i in self.mapping()) | {0})

    def label_names(self) -> dict[int, str]:
        """Name of every id that can appear in the output."""
        return {i: self.names.get(i, "background" if i == 0 else f"label {i}") for i in self.output_ids()}

    # ---- files
    def to_dict(self) -> dict:
        d = asdict(self)
        d["names"] = {str(i): n for i, n in sorted(self.names.items())}
        d["colors"] = {str(i): c for i, c in sorted(self.colors.items())}
        d["merges"] = {str(i): t for i, t in sorted(self.merges.items())}
        d["learned"] = {str(i): v for i, v in sorted(self.learned.items())}
        return {"format": FORMAT, **d}

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the protocol as JSON; refuses to replace an existing file unless ``overwrite``."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"protocol file {path} exists; choose another name or pass overwrite=True")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        tmp.replace(path)  # never leave a half-written protocol
        return path

    @classmethod
    def from_dict(cls, d: dict, source: str = "protocol") -> "Protocol":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ValueError(f"{source} is not a napari-pancakes protocol (expected \"format\": \"{FORMAT}\")")
        missing = [key for key in ("m", "k", "index", "weights_hash") if key not in d]
        if missing:
            raise ValueError(f"{source} lacks the field(s) {', '.join(missing)}")
        fields = {f for f in cls.__dataclass_fields__}
        try:
            return cls(**{key: value for key, value in d.items() if key in fields})
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{source} is invalid: {exc}") from exc

    @classmethod
    def load(cls, path: str | Path, model=None) -> "Protocol":
        """Read a protocol file; with ``model``, refuse (:class:`WeightsMismatch`) if its weights differ."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"protocol file not found: {path}")
        try:
            d = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"protocol file {path} is not valid JSON ({exc})") from exc
        protocol = cls.from_dict(d, f"protocol file {path}")
        if model is not None:
            protocol.check_model(model, str(path))
        return protocol

    def check_model(self, model, source: str = "the protocol") -> None:
        found = weights_hash(model)
        if found != self.weights_hash:
            raise WeightsMismatch(
                f"{source} was made with other model weights (hash {self.weights_hash[:12]}..., "
                f"loaded weights {found[:12]}...; saved from {self.weights}); load those weights "
                "(--weights) or choose and save the protocol again with these"
            )

    # ---- the codebook
    def codebook(self, model) -> tuple[torch.Tensor, torch.Tensor]:
        """(K, D) scaled label directions and (K,) biases, with learned corrections applied."""
        with torch.inference_mode():
            w, b = model.pair_weights(self.m, self.k, protocol_offsets(self.m, self.seed))
        w, b = w[self.index].float().cpu().clone(), b[self.index].float().cpu().clone()
        for j, entry in self.learned.items():
            if entry.get("off"):
                w[j] = 0.0
                b[j] = -1e4
            else:
                w[j] = torch.tensor(entry["w"], dtype=torch.float32)
                b[j] = float(entry["b"])
        return w, b


def _weights_origin(model) -> str:
    meta = getattr(model, "metadata", None) or {}
    return str(meta.get("path", "bundled"))


# --------------------------------------------------------------------- model loading in workers
_MODELS: dict = {}


def model_for(protocol: Protocol, model=None):
    """``model`` checked against the protocol, or (in a worker) the protocol's weights loaded once."""
    if model is None:
        key = protocol.weights
        if key not in _MODELS:
            from .io_weights import load_model

            _MODELS[key] = load_model(None if key == "bundled" else key, device="cpu")
        model = _MODELS[key]
    protocol.check_model(model)
    return model


# --------------------------------------------------------------------- features and labels
class _CodebookModel:
    """The model, with ``pair_weights`` answering a protocol's (K, D) codebook as a grid of M = 1.

    A :class:`PancakesPredictor` built on it computes labels exactly as for the model's own
    protocols (same resampling, bands and uniform regions), through its public methods.
    """

    def __init__(self, model, w: torch.Tensor, b: torch.Tensor):
        self._model, self.codebook = model, (w, b)

    def pair_weights(self, m, k, protocol_offset=None):
        w, b = self.codebook
        return w[None], b[None]

    def eval(self):
        return self

    def __getattr__(self, name):
        return getattr(self._model, name)


def codebook_predictor(model, w: torch.Tensor, b: torch.Tensor) -> PancakesPredictor:
    return PancakesPredictor(_CodebookModel(model, w, b))


def predicted_labels(predictor: PancakesPredictor, k: int, mapping: np.ndarray):
    """Yield ``(i, output labels (H, W))`` for the predictor's cached set under its codebook."""
    for i, lab, _ in predictor.iter_protocols(1, k, None):
        yield i, _output(lab[0], mapping)


def _output(labels: np.ndarray, mapping: np.ndarray) -> np.ndarray:
    return mapping[labels].astype(label_dtype(int(mapping.max())), copy=False)


def iter_apply(protocol: Protocol, images: Iterable, model=None, batch: int = BATCH) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(i, labels)`` for each 2D image of ``images`` (any iterable, consumed lazily).

    Only ``batch`` images and their features are held at a time.
    """
    model = model_for(protocol, model)
    w, b = protocol.codebook(model)
    mapping = protocol.mapping()
    predictor = codebook_predictor(model, w, b)
    chunk: list[np.ndarray] = []
    start = 0

    def flush():
        predictor.set_images(chunk)
        return [(start + j, lab) for j, lab in predicted_labels(predictor, protocol.k, mapping)]

    for image in images:
        chunk.append(np.asarray(image))
        if len(chunk) == batch:
            yield from flush()
            start += len(chunk)
            chunk = []
    if chunk:
        yield from flush()


def apply_protocol(protocol: Protocol, images, model=None, *, batch: int = BATCH, scheduler=None,
                   progress: Callable[[int, int], None] | None = None):
    """Label ``images`` with ``protocol``: same label ids and names as where it was chosen.

    Arguments:
        images: a (S, H, W) stack or one (H, W) image, a list of 2D arrays, any iterable of 2D
            arrays (streamed), or a ``dask.array`` of shape (S, H, W) or (H, W).
        model: the model (checked against the protocol's weights hash); None loads the
            protocol's weights.
        batch: images per forward pass; memory is bounded by it, not by the number of images.
        scheduler: a ``dask.distributed`` scheduler address ("tcp://host:8786") or Client to run
            a Dask array on; None computes locally.
        progress: ``progress(done, total)`` after each image (total None for iterators).

    Returns:
        for a Dask array input, a lazy Dask array of labels (chunk by chunk; computed and
        returned as numpy when ``scheduler`` is given); for arrays, an (S, H, W) or (H, W)
        array; for lists / iterables, a list of 2D arrays.
    """
    if _is_dask(images):
        lazy = apply_dask(protocol, images, model=model)
        if scheduler is None:
            return lazy
        with connect(scheduler) as client:
            return client.compute(lazy).result()
    if scheduler is not None:
        raise ValueError("scheduler= needs a Dask array (or files with apply_to_files); in-memory inputs run locally")
    single = isinstance(images, np.ndarray) and images.ndim == 2 or (
        isinstance(images, np.ndarray) and images.ndim == 3 and images.shape[-1] in (3, 4) and images.shape[-1] < min(images.shape[:2]))
    stack = isinstance(images, np.ndarray)
    if stack:
        items, _ = to_image_list(images)  # validates and splits RGB / stacks
    else:
        items = images
    total = len(items) if hasattr(items, "__len__") else None
    out = []
    for i, lab in iter_apply(protocol, items, model=model, batch=batch):
        out.append(lab)
        if progress is not None:
            progress(i + 1, total)
    if single:
        return out[0]
    if stack and len({o.shape for o in out}) == 1:
        return np.stack(out)
    return out


# --------------------------------------------------------------------- dask
def _is_dask(x) -> bool:
    return type(x).__module__.startswith("dask.array") and hasattr(x, "chunks")


def _apply_block(block: np.ndarray, protocol_dict: dict, holder=None) -> np.ndarray:
    """Label one chunk (2D image or stack of whole images); runs wherever Dask puts it."""
    protocol = Protocol.from_dict(protocol_dict)
    model = holder.model if isinstance(holder, _LocalModel) else None
    images = [block] if block.ndim == 2 else list(block)
    labels = [lab for _, lab in iter_apply(protocol, images, model=model)]
    dtype = label_dtype(protocol.k)
    return labels[0].astype(dtype) if block.ndim == 2 else np.stack(labels).astype(dtype)


def apply_dask(protocol: Protocol, images, model=None, images_per_chunk: int = BATCH):
    """A lazy Dask array of labels: each chunk of whole images is labelled when computed.

    ``model`` is used by local (threaded) schedulers; a distributed worker loads the protocol's
    weights once per process (checked against the hash) and is never sent the model.
    """
    import dask.array as da

    if images.ndim not in (2, 3):
        raise ValueError(f"a Dask array of images must be (H, W) or (S, H, W), got shape {images.shape}")
    if images.ndim == 3:
        images = images.rechunk({0: min(images_per_chunk, max(1, images.chunks[0][0])), 1: -1, 2: -1})
    else:
        images = images.rechunk(-1)
    dtype = label_dtype(protocol.k)
    # the protocol travels as plain JSON-able data; a local model is passed only to local schedulers
    return da.map_blocks(_apply_block, images, protocol.to_dict(), _LocalModel(model), dtype=dtype)


def lazy_folder(inputs):
    """A folder (or files) of same-sized 2D images opened as a lazy (S, H, W) Dask array.

    Nothing is read but the first file (for the shape); each image is read when its chunk is
    computed, so :func:`apply_protocol` on it streams the folder chunk by chunk.
    """
    import dask
    import dask.array as da

    from . import io

    paths = io.expand_inputs(inputs if isinstance(inputs, (list, tuple)) else [inputs])
    first = io.read_source(paths[0])
    if first.kind != "2d":
        raise ValueError(f"{paths[0]} is a stack or volume; a lazy folder holds 2D images (use apply_to_files)")
    shape, dtype = first.slices[0].shape, first.slices[0].dtype

    def read(path):
        source = io.read_source(path)
        if source.kind != "2d" or source.slices[0].shape != shape:
            raise ValueError(f"{path}: shape {source.slices[0].shape} differs from {paths[0].name} {shape}; "
                             "a lazy stack needs images of one size (use apply_to_files)")
        return source.slices[0].astype(dtype, copy=False)

    return da.stack([da.from_delayed(dask.delayed(read)(p), shape, dtype) for p in paths])


class _LocalModel:
    """Holds a model for threaded schedulers; pickles to None so cluster workers load their own."""

    def __init__(self, model):
        self.model = model

    def __reduce__(self):
        return (_LocalModel, (None,))


class connect:
    """Context manager: a ``dask.distributed.Client`` for an address (or the Client given).

    An unreachable scheduler raises ``ValueError`` naming the address within ``timeout`` s.
    """

    def __init__(self, scheduler, timeout: float | None = None):
        self.scheduler, self.client, self.own = scheduler, None, False
        self.timeout = CONNECT_TIMEOUT if timeout is None else timeout

    def __enter__(self):
        try:
            from distributed import Client
        except ImportError as exc:
            raise ValueError("--scheduler needs dask.distributed: pip install 'dask[distributed]'") from exc
        if isinstance(self.scheduler, Client):
            self.client = self.scheduler
            return self.client
        address = str(self.scheduler)
        if "://" not in address:
            raise ValueError(f"scheduler address {address!r} should look like tcp://host:8786")
        try:
            self.client = Client(address, timeout=f"{self.timeout}s", set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise ValueError(f"could not reach the dask scheduler at {address} within {self.timeout:g} s ({exc}); "
                             "is it running, and is the address right?") from exc
        self.own = True
        return self.client

    def __exit__(self, *exc):
        if self.own and self.client is not None:
            self.client.close()
        return False


# --------------------------------------------------------------------- files
def target_path(out_dir: Path, path: Path) -> Path:
    """Where the labels of input ``path`` go: ``OUT/<stem>_labels.<png|tif|nii.gz>`` (format follows the input)."""
    from .export import label_file_name

    return Path(out_dir) / label_file_name(path)


def names_json(protocol: Protocol, files: Sequence[str]) -> dict:
    """The names/colours file written beside applied label files (same label list as an export)."""
    from .export import labels_document

    return labels_document(protocol.label_names(), protocol.colors, {"labels": list(files)},
                           protocol=protocol.to_dict())


def apply_to_files(protocol: Protocol, inputs, out_dir, model=None, *, overwrite: bool = False, batch: int = BATCH,
                   scheduler=None, progress: Callable[[int, int], None] | None = None) -> list[Path]:
    """Apply ``protocol`` to image files / folders, writing ``OUT/<stem>_labels.<ext>`` per input.

    Files are read one at a time and each label file is written as soon as its images are done,
    so memory does not grow with the number of files. A 3D NIfTI volume (or TIFF stack) is a set
    of slices and gets one label volume back (NIfTI keeps the input's affine). ``labels.json``
    (names, colours, the protocol) is written beside. Every target is checked first: nothing is
    replaced without ``overwrite``, and with it the earlier result's files (listed in its
    ``labels.json``) are removed first, so no file of an older run stays mixed with the new ones. With ``scheduler`` (address or Client), each file is a task on
    a dask.distributed cluster whose workers see the same paths.

    Returns the written label files.
    """
    from . import io
    from .export import check_writable, clear_previous, write_label_file

    paths = io.expand_inputs(inputs)
    out_dir = Path(out_dir)
    targets = [target_path(out_dir, p) for p in paths]
    if len(set(targets)) != len(targets):
        raise ValueError("two inputs share a file name; their outputs would collide - rename one")
    names_path = out_dir / NAMES_FILE
    check_writable(targets + [names_path], overwrite)

    def write_names():
        if overwrite:
            clear_previous(names_path)
        out_dir.mkdir(parents=True, exist_ok=True)
        names_path.write_text(json.dumps(names_json(protocol, [t.name for t in targets]), indent=1))

    if scheduler is not None:  # connect first: an unreachable scheduler writes nothing
        with connect(scheduler) as client:
            write_names()
            return _apply_files_distributed(client, protocol, paths, targets, progress)
    model = model_for(protocol, model)
    write_names()
    total = len(paths)

    pending: list = []  # [source, labels so far, target] in input order

    def slices():
        for path, target in zip(paths, targets):
            source = io.read_source(path)
            pending.append([source, [], target])
            yield from source.slices

    written = []
    for _, lab in iter_apply(protocol, slices(), model=model, batch=batch):
        pending[0][1].append(lab)
        while pending and len(pending[0][1]) == len(pending[0][0].slices):
            source, labs, target = pending.pop(0)
            write_label_file(target, labs[0] if source.kind == "2d" else np.stack(labs), affine=source.affine)
            written.append(target)
            if progress is not None:
                progress(len(written), total)
    return written


def _apply_file(protocol_dict: dict, path: str, target: str) -> str:
    """One file, on a cluster worker: read, label, write; returns the written path."""
    from . import io
    from .export import write_label_file

    protocol = Protocol.from_dict(protocol_dict)
    source = io.read_source(Path(path))
    labs = [lab for _, lab in iter_apply(protocol, source.slices)]
    write_label_file(target, labs[0] if source.kind == "2d" else np.stack(labs), affine=source.affine)
    return target


def _apply_files_distributed(client, protocol, paths, targets, progress) -> list[Path]:
    from distributed import as_completed

    futures = client.map(_apply_file, [protocol.to_dict()] * len(paths), [str(p.resolve()) for p in paths],
                         [str(t.resolve()) for t in targets], pure=False)
    written = []
    for future in as_completed(futures, loop=client.loop):
        written.append(Path(future.result()))
        if progress is not None:
            progress(len(written), len(paths))
    order = {t.resolve(): i for i, t in enumerate(targets)}
    return sorted(written, key=lambda p: order[p])


# --------------------------------------------------------------------- learning from a correction
def image_features(model, image: np.ndarray) -> torch.Tensor:
    """(D, r, r) per-pixel features of one 2D image at the working resolution."""
    from .preprocess import prepare_image

    dev = next(model.parameters()).device
    with torch.inference_mode():
        x = torch.from_numpy(prepare_image(image, model.config.resolution))[None, None].to(dev)
        return model.features(model.phi(x))[0].float().cpu()


def full_features(feats: torch.Tensor, shape) -> torch.Tensor:
    """Features (D, r, r) resampled to an image's (H, W), exactly as the logits are."""
    d, r, _ = feats.shape
    h, w = shape
    if (h, w) == (r, r):
        return feats
    ry = torch.from_numpy(interpolation_matrix(h, r))
    rx = torch.from_numpy(interpolation_matrix(w, r))
    return torch.einsum("hy,dyx,wx->dhw", ry, feats, rx)


def fit_label(feats: torch.Tensor, mask: np.ndarray, w: torch.Tensor, b: torch.Tensor, j: int, *,
              ring: int | None = None, far: float = 1.0, steps: int = 300, lr: float = 0.5,
              max_pixels: int = 4000, seed: int = 0, context: torch.Tensor | None = None, keep: float = 0.0,
              bias: str = "dice"):
    """New direction and bias of model label ``j`` from one corrected mask; the other labels stay.

    Arguments:
        feats: (D, H, W) features of the corrected image at its size (:func:`full_features`).
        mask: (H, W) bool, the corrected extent of the label.
        w, b: (K, D) scaled directions and (K,) biases of the protocol (the others stay fixed).
        j: the model label (0-based) being corrected.
        ring: width in pixels of the band just outside the mask (default 6 % of the image side).
        far: weight of the pixels farther out (a sample), relative to the band.
        context, keep: (n, D) features sampled from the set's other images and the weight of a
            term keeping the label's probability there as it was (binary cross-entropy against
            the old probability): a correction moves the label on other images only as far as
            the corrected image requires.

    Fitting: starting from the label's current direction and bias, softmax cross-entropy against
    the fixed other labels: pixels inside the mask should go to ``j``; pixels in the band just
    outside it, and those the protocol gave to ``j`` outside it, should not; a sample of the
    rest (weight ``far``) should not either. With ``bias="dice"`` the bias is then set to the
    value that maximises Dice with the mask on this image (a 1-D search); with ``"fit"`` the
    fitted bias stays (the ``keep`` term then also anchors it). Returns ``(w_j (D,), b_j float)``.
    """
    from scipy import ndimage as ndi

    if bias not in ("dice", "fit"):
        raise ValueError(f"bias must be 'dice' or 'fit', got {bias!r}")
    mask = np.asarray(mask, bool)
    d, h, wd = feats.shape
    if mask.shape != (h, wd):
        raise ValueError(f"mask shape {mask.shape} does not match the image {(h, wd)}")
    if not mask.any():
        raise ValueError("the corrected mask is empty: paint or click the label on the image first")
    if mask.all():
        raise ValueError("the corrected mask covers the whole image; nothing outside it to learn from")
    ring = ring or max(2, int(round(0.06 * min(h, wd))))
    flat = feats.reshape(d, -1).T  # (HW, D)
    others = [i for i in range(w.shape[0]) if i != j]
    competitors = flat @ w[others].T + b[others]  # (HW, K-1): fixed
    current = (flat @ w.T + b).argmax(1).numpy().reshape(h, wd)
    near = (ndi.binary_dilation(mask, iterations=ring) & ~mask) | ((current == j) & ~mask)
    rng = np.random.default_rng(seed)
    groups = [(_sample(np.flatnonzero(mask.ravel()), max_pixels, rng), True, 1.0),
              (_sample(np.flatnonzero(near.ravel()), max_pixels, rng), False, 1.0),
              (_sample(np.flatnonzero((~mask & ~near).ravel()), max_pixels, rng), False, far)]
    groups = [(flat[i], competitors[i], inside, weight) for i, inside, weight in groups if i.size and weight > 0]
    if context is not None and keep > 0:
        ctx_comp = context @ w[others].T + b[others]
        with torch.no_grad():
            z_old = context @ w[j] + b[j]
            lse_o = torch.logsumexp(ctx_comp, 1)
            p_old = torch.sigmoid(z_old - lse_o)  # softmax_j = sigmoid(z_j - logsumexp(others))
    wj = torch.nn.Parameter(w[j].clone().float())
    bj = torch.nn.Parameter(b[j].clone().float())
    opt = torch.optim.Adam([wj, bj], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            loss = 0.0
            for f, comp, inside, weight in groups:
                z = f @ wj + bj
                lse_others = torch.logsumexp(comp, 1)
                lse_all = torch.logsumexp(torch.stack([z, lse_others], 1), 1)
                # inside: -log p_j; outside: -log (1 - p_j)
                loss = loss + weight * ((lse_all - z) if inside else (lse_all - lse_others)).mean()
            if context is not None and keep > 0:  # other images: stay where the old label was sure
                logit = context @ wj + bj - lse_o
                loss = loss + keep * torch.nn.functional.binary_cross_entropy_with_logits(logit, p_old)
            opt.zero_grad()
            loss.backward()
            opt.step()
    wj = wj.detach()
    if bias == "fit":
        return wj, float(bj.detach())
    # the bias maximising Dice with the mask on this image: label j wins where b_j > margin
    margin = (competitors.max(1).values - flat @ wj).numpy()
    truth = mask.ravel()
    order = np.argsort(margin)
    hits = np.cumsum(truth[order])
    candidates = np.quantile(margin, np.linspace(0.0, 1.0, 201))
    won = np.searchsorted(margin[order], candidates, side="left")  # pixels with margin < candidate
    tp = np.where(won > 0, hits[np.maximum(won - 1, 0)], 0)
    dice = 2 * tp / np.maximum(won + truth.sum(), 1)
    return wj, float(candidates[int(np.argmax(dice))])


def _sample(index: np.ndarray, n: int, rng) -> np.ndarray:
    return index if index.size <= n else rng.choice(index, size=n, replace=False)


@dataclass
class Propagation:
    """What one propagated correction changed (kept for undo and for display)."""

    label: int  # output id that was corrected
    image: int  # image it was corrected on
    before: Protocol
    after: Protocol
    changed: list[float]  # per image, fraction of pixels whose label changed
    area_before: list[int]  # per image, pixels of ``label`` before / after
    area_after: list[int]

    def summary(self) -> str:
        moved = float(np.mean(self.changed)) * 100
        n = sum(c > 0 for c in self.changed)
        return (f"label {self.label} learnt from image {self.image + 1}: {n} of {len(self.changed)} images changed, "
                f"{moved:.1f} % of pixels on average; its area went from {sum(self.area_before)} to "
                f"{sum(self.area_after)} px")


class ProtocolSet:
    """A protocol applied to an in-memory set, with its features cached for corrections.

    Arguments:
        protocol: the protocol; images: the set (anything :func:`segment_set` takes);
        model: checked against the protocol (None loads the protocol's weights).
    """

    def __init__(self, protocol: Protocol, images, model=None):
        self.items, _ = to_image_list(images)
        self.model = model_for(protocol, model)
        self.protocol = protocol
        self.predictor = codebook_predictor(self.model, *protocol.codebook(self.model)).set_images(self.items)
        self.history: list[Propagation] = []
        self._feature_cache: dict[int, torch.Tensor] = {}
        self.labels = self.relabel()

    def relabel(self, protocol: Protocol | None = None) -> list[np.ndarray]:
        """Label maps (H, W) of every image under ``protocol`` (default: the current one)."""
        protocol = protocol or self.protocol
        self.predictor.model.codebook = protocol.codebook(self.model)
        return [lab for _, lab in predicted_labels(self.predictor, protocol.k, protocol.mapping())]

    def propagate(self, image: int, mask: np.ndarray, label: int, **fit_options) -> Propagation:
        """Learn output label ``label`` from its corrected ``mask`` on image ``image``; re-label all.

        Model labels merged into ``label`` are absorbed by the corrected one; the other labels
        keep their directions. Returns what changed; :meth:`undo` restores the previous state.
        """
        if not 0 <= int(image) < len(self.items):
            raise ValueError(f"image index {image} is outside 0..{len(self.items) - 1}")
        label = int(label)
        mapping = self.protocol.mapping()
        members = np.flatnonzero(mapping == label)
        if label == 0 or members.size == 0:
            raise ValueError(f"label {label} is {'the background' if label == 0 else 'not in this protocol'}; "
                             "choose a label of the protocol to correct")
        j = int(members[0])
        w, b = self.protocol.codebook(self.model)
        feats = full_features(self._features(image), self.items[image].shape)
        fit_options.setdefault("keep", KEEP)
        fit_options.setdefault("bias", BIAS)
        if fit_options["keep"]:
            rng = np.random.default_rng(0)
            others = [i for i in range(len(self.items)) if i != image]
            ctx = [self._features(i).reshape(w.shape[1], -1).T for i in others]
            fit_options["context"] = torch.cat([c[rng.choice(len(c), min(len(c), 2000), replace=False)] for c in ctx]) \
                if ctx else None
        wj, bj = fit_label(feats, mask, w, b, j, **fit_options)
        learned = dict(self.protocol.learned)
        learned[j] = {"w": [float(x) for x in wj], "b": bj}
        for other in members[1:]:
            learned[int(other)] = {"off": True}
        before = self.protocol
        after = replace(before, learned=learned)
        old = self.labels
        new = self.relabel(after)
        record = Propagation(label, int(image), before, after,
                             [float(np.mean(o != n)) for o, n in zip(old, new)],
                             [int((o == label).sum()) for o in old], [int((n == label).sum()) for n in new])
        self.protocol, self.labels = after, new
        self.history.append(record)
        return record

    def _features(self, i: int) -> torch.Tensor:
        """(D, r, r) features of image ``i``, computed on the first correction and kept."""
        if i not in self._feature_cache:
            self._feature_cache[i] = image_features(self.model, self.items[i])
        return self._feature_cache[i]

    def undo(self) -> Propagation | None:
        """Undo the last propagation (labels and protocol as before it); None if there is none."""
        if not self.history:
            return None
        record = self.history.pop()
        self.protocol = record.before
        self.labels = self.relabel()
        return record
