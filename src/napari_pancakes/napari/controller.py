"""Everything the protocol explorer does, without Qt: run, replace, browse, choose, name, merge, measure, export.

The widget (:mod:`.explorer`) is a thin view on this class, so notebooks and tests drive the
same code headless, with a real ``napari.Viewer`` or a Qt-free ``napari.components.ViewerModel``.

A run is split in three so that only pure computation happens off the GUI thread:
:meth:`ProtocolController.prepare` (GUI thread: validate the layer, snapshot its data),
:func:`compute` (any thread: a generator yielding per image, cancellable between images) and
:meth:`ProtocolController.apply` (GUI thread: replace the old layers by the new ones).

Label ids in the layers are the model's labels plus one (1..K), so that 0 stays napari's
background and "send to background" has somewhere to send to.
"""
from __future__ import annotations

import contextlib
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..export import NIFTI_AFFINE, area_summary, export_label_map, label_areas, label_dtype
from ..inference import PancakesPredictor, check_mk, label_counts, protocol_order, protocol_stats
from ..preprocess import rgb_to_intensity

TAG = "pancakes"  # key of our entry in layer.metadata: how protocol layers are recognised
HISTORY_LIMIT = 20

Confirm = Callable[[str], bool]


@dataclass
class RunRequest:
    """A validated, detached snapshot of what to segment (safe to hand to a worker thread)."""

    image_name: str
    images: list  # 2D float/int arrays, one per image of the set
    spatial_shape: tuple  # shape of one protocol's label layer: (S, H, W) or (H, W)
    scale: tuple
    translate: tuple
    units: tuple | None
    m: int
    k: int
    seed: int
    affine: list | None = None  # a NIfTI image's affine (its layer metadata): export writes labels with it
    labels: np.ndarray = field(default=None, repr=False)  # (M, S, H, W), filled by compute
    cache: "EncodedSet | None" = field(default=None, repr=False)  # the image layer's predictor slot
    stats: list = field(default=None, repr=False)  # per protocol (model order), filled by compute
    order: list = field(default=None, repr=False)  # model protocol indices, most informative first


@dataclass
class EncodedSet:
    """One image layer's :class:`PancakesPredictor` and the fingerprint of the data it encoded."""

    key: tuple | None = None
    predictor: PancakesPredictor | None = None


@dataclass
class Edit:
    """One undoable change of a working label map."""

    layer: object
    kind: str  # "rename", "merge", "background"
    names: dict  # names before the change
    flat_index: np.ndarray | None = None  # pixels whose label changed
    old_values: np.ndarray | None = None


def compute(request: RunRequest, model) -> Iterator[tuple[str, int, int]]:
    """Label the set, filling ``request.labels``, ``stats`` and ``order``; yields ``(phase, done,
    total)`` often: "encode" (the network, once per image layer and data) and "label" (after each
    band of rows, so a caller can stop within a fraction of a second even at M=32, K=64).

    The network runs only when the image layer's cached predictor (``request.cache``) holds
    other data: changing M, K or the seed re-labels from the cache. Thread-safe (touches no
    layer); stopping the generator early cancels the run and keeps the previous cache.
    """
    total = len(request.images)
    cache = request.cache if request.cache is not None else EncodedSet()
    key = _fingerprint(request.images)
    if cache.predictor is None or cache.key != key or cache.predictor.model is not model:
        predictor = PancakesPredictor(model)
        yield "encode", 0, total
        for done, _ in predictor.iter_set_images(request.images, batch=2):
            yield "encode", done, total
        cache.key, cache.predictor = key, predictor
    n_images = total if len(request.spatial_shape) == 3 else 1
    out = np.zeros((request.m, n_images) + tuple(request.spatial_shape[-2:]), label_dtype(request.k))
    counts = np.zeros((request.m, request.k), np.int64)
    done = 0
    for step in cache.predictor.iter_steps(request.m, request.k, request.seed):
        if step is not None:
            i, labels, _ = step
            out[:, i] = labels + 1
            counts += label_counts(labels, request.k)
            done = i + 1
        yield "label", done, total
    request.stats = protocol_stats(counts)
    request.order = protocol_order(request.stats)
    request.labels = out


def _fingerprint(images) -> tuple:
    """Identity of an image set's pixels (shapes, dtypes and a CRC of the bytes)."""
    crc = 0
    for im in images:
        crc = zlib.crc32(np.ascontiguousarray(im).view(np.uint8).ravel(), crc)
    return tuple((im.shape, str(im.dtype)) for im in images) + (crc,)


def protocol_name(image_name: str, m: int, k: int) -> str:
    """Layer name of protocol ``m`` (1-based): all protocols of an image share the prefix."""
    return f"{image_name} protocol {m} (K={k})"


def chosen_name(image_name: str) -> str:
    return f"{image_name} chosen"


def tag(layer) -> dict:
    """Our metadata entry of a layer ({} for layers we did not make)."""
    return getattr(layer, "metadata", {}).get(TAG, {}) if layer is not None else {}


class ProtocolController:
    """The protocol explorer's state and actions on one napari viewer.

    Arguments:
        viewer: a ``napari.Viewer`` or ``napari.components.ViewerModel``.
        model: a Pancakes model to use (tests inject a random-init one); None loads the bundled
            weights on the first run.
        model_loader: how to load the model when ``model`` is None.
    """

    def __init__(self, viewer, model=None, model_loader: Callable | None = None):
        self.viewer = viewer
        self._model = model
        self._model_loader = model_loader
        self.history: list[Edit] = []
        self.current: int = 0  # index (0-based) of the protocol shown alone
        self.image_name: str | None = None  # image whose protocols are browsed
        self._encoded: dict[int, tuple] = {}  # id(image layer) -> (layer, EncodedSet): one predictor per layer

    # ----------------------------------------------------------------- model
    @property
    def model(self):
        """The model, loaded on first use (it may be slow or fail: only a run needs it)."""
        if self._model is None:
            if self._model_loader is None:
                from ..io_weights import load_model

                self._model_loader = load_model
            self._model = self._model_loader()
        return self._model

    # ----------------------------------------------------------------- run
    def prepare(self, layer, m: int = 8, k: int = 20, seed: int = 0) -> RunRequest:
        """Check that ``layer`` is an image the model can take and snapshot it.

        Raises ``ValueError`` with a message for the user when it is not: no layer, a non-image
        layer, multiscale, 4D or more, RGB stacks of unusual shape, bad M/K.
        """
        from napari.layers import Image

        m, k = check_mk(m, k)
        if layer is None:
            raise ValueError("no image layer chosen: open an image first "
                             "(e.g. File > Open Sample > Pancakes protocol explorer > Nuclei)")
        if not isinstance(layer, Image):
            raise ValueError(
                f"layer '{layer.name}' is a {type(getattr(layer, '__wrapped__', layer)).__name__} layer; "
                "choose an Image layer "
                "(a 2D image, an (S, H, W) stack or a 3D volume)"
            )
        if layer.multiscale:
            raise ValueError(f"layer '{layer.name}' is multiscale; open a single-resolution image")
        spatial_ndim = layer.ndim  # for RGB napari already excludes the colour axis
        shape = tuple(layer.data.shape)
        if not layer.rgb and len(shape) >= 3 and shape[-1] in (3, 4) and shape[-1] < min(shape[-3], shape[-2]):
            raise ValueError(
                f"layer '{layer.name}' {shape} looks like colour images opened as {shape[-1]} separate channels; "
                "open it as RGB (viewer.add_image(data, rgb=True)) or keep one channel"
            )
        if spatial_ndim not in (2, 3):
            raise ValueError(
                f"layer '{layer.name}' has {spatial_ndim} spatial dimensions {tuple(layer.data.shape)}; "
                "Pancakes takes a 2D image, an (S, H, W) stack or a (Z, Y, X) volume (set of slices)"
            )
        data = np.asarray(layer.data)
        if layer.rgb:
            data = rgb_to_intensity(data)
        spatial_shape = tuple(data.shape)
        images = [data] if data.ndim == 2 else list(data)
        units = tuple(str(u) for u in layer.units) if getattr(layer, "units", None) is not None else None
        self._encoded = {i: v for i, v in self._encoded.items() if v[0] in self.viewer.layers}  # forget removed layers
        # keyed by the layer itself: a plugin's viewer hands out a new proxy object per access
        cache = self._encoded.setdefault(id(getattr(layer, "__wrapped__", layer)), (layer, EncodedSet()))[1]
        return RunRequest(
            image_name=layer.name,
            images=images,
            spatial_shape=spatial_shape,
            scale=tuple(layer.scale),
            translate=tuple(layer.translate),
            units=units,
            m=m,
            k=k,
            seed=int(seed or 0),
            affine=layer.metadata.get(NIFTI_AFFINE),
            cache=cache,
        )

    def previous_layers(self, image_name: str) -> list:
        """Protocol layers made earlier for ``image_name`` (the ones a re-run replaces)."""
        return [ly for ly in self.viewer.layers if tag(ly).get("role") == "protocol" and tag(ly).get("source") == image_name]

    def apply(self, request: RunRequest, confirm: Confirm | bool = True) -> list:
        """Replace the previous protocol layers of the image by the results of ``request``.

        ``confirm(message) -> bool`` is asked only when previous layers were edited (painted,
        renamed, merged); a bool answers it up front (tests and notebooks). Returns the new
        layers, or [] when the user declined (the old layers then stay as they were).
        """
        return [ly for ly in self.apply_steps(request, confirm) if ly is not None]

    def apply_steps(self, request: RunRequest, confirm: Confirm | bool = True) -> Iterator:
        """:meth:`apply` one layer at a time (a generator), so a GUI can give the event loop a
        turn between layers: adding or removing a Labels layer in a Qt viewer takes a noticeable
        moment (0.3-0.6 s each on a small machine). A re-run therefore puts its results into
        the image's existing protocol layers (new pixels, names and metadata; a fraction of the
        cost), adds only the layers it lacks and removes only the ones left over. Yields each
        protocol layer in order, and None after each removal."""
        if request.labels is None:
            raise RuntimeError("the run has not finished; nothing to add")
        old = self.protocols(request.image_name)
        edited = [ly.name for ly in old if is_edited(ly)]
        if edited and not _ask(confirm, f"Re-running replaces {len(old)} protocol layer(s) of "
                                        f"'{request.image_name}'; these were edited: {', '.join(edited)}. Discard them?"):
            return
        self.history = [e for e in self.history if e.layer not in old]
        self.image_name = request.image_name
        labels, request.labels = request.labels, None  # the layers own the data now
        order = request.order or list(range(request.m))
        reusable = [ly for ly in old if ly.data.shape == labels.shape[1:] or (
            len(request.spatial_shape) == 2 and ly.data.shape == labels.shape[2:])]
        surplus = [ly for ly in old if ly not in reusable[: request.m]]
        if surplus:
            # one batch: napari cleans its scene graph (a full gc.collect, ~0.2 s) once per
            # batch instead of once per removed layer (where napari has batched_update)
            batched = getattr(self.viewer.layers, "batched_update", contextlib.nullcontext)
            with batched():
                for ly in surplus:
                    self.viewer.layers.remove(ly)
            yield None
        first = None
        for rank, p in enumerate(order):
            data = labels[p] if len(request.spatial_shape) == 3 else labels[p, 0]
            stats = request.stats[p] if request.stats else {}
            meta = {"role": "protocol", "source": request.image_name, "protocol": rank + 1, "model_protocol": p + 1,
                    "m": request.m, "k": request.k, "seed": request.seed,
                    **({NIFTI_AFFINE: request.affine} if request.affine is not None else {}),
                    **{key: stats[key] for key in ("labels_in_use", "effective_labels", "single_label") if key in stats}}
            name = protocol_name(request.image_name, rank + 1, request.k)
            visible = rank == 0  # the most informative protocol shown alone, as show_protocol(0) does
            if rank < len(reusable):
                layer = self._reuse_labels(reusable[rank], data, name, request, meta, visible)
            else:
                layer = self._add_labels(data, name, request, meta, visible=visible)
            if rank == 0:
                self.current, first = 0, layer
                self.viewer.layers.selection.active = layer
            yield layer
        self.viewer.layers.selection.active = first  # inserting selects each new layer: back to protocol 1

    def _reuse_labels(self, layer, data, name, request: RunRequest, meta: dict, visible: bool):
        """Put a new protocol into an existing protocol layer of the same shape. Only what
        changed is set: every property set makes napari update the canvas and the layer list."""
        if layer.name != name:
            layer.name = name
        if not np.allclose(layer.scale, request.scale):
            layer.scale = request.scale
        if not np.allclose(layer.translate, request.translate):
            layer.translate = request.translate
        if names_of(layer) != default_names(meta["k"]):
            layer.features = names_table(default_names(meta["k"]))
        layer.data = data
        layer.metadata = {**layer.metadata, TAG: {**meta, "crc": checksum(data), "edited": False}}
        if layer.visible != visible:
            layer.visible = visible
        return layer

    def run(self, layer, m: int = 8, k: int = 20, seed: int = 0, confirm: Confirm | bool = True,
            progress: Callable[[int, int], None] | None = None) -> list:
        """Synchronous run (notebooks, tests): prepare, compute and apply in one call."""
        request = self.prepare(layer, m, k, seed)
        last = None
        for phase, done, total in compute(request, self.model):
            if progress is not None and phase == "label" and done != last:
                progress(done, total)
                last = done
        return self.apply(request, confirm)

    def _add_labels(self, data, name, request: RunRequest, meta: dict, names: dict | None = None, visible=True):
        """Add a Labels layer aligned with the image; protocol layers go below the image's
        chosen layer, so that they never cover the label map the user works on."""
        from napari.layers import Labels

        k = meta["k"]
        names = names or default_names(k)
        layer = Labels(
            data, name=name, scale=request.scale, translate=request.translate,
            features=names_table(names), metadata={TAG: {**meta, "crc": checksum(data), "edited": False}},
            opacity=0.6, visible=visible,
        )
        if request.units is not None:
            try:
                layer.units = request.units
            except Exception:  # units are a nicety; never fail a run over them
                pass
        position = len(self.viewer.layers)
        if meta["role"] == "protocol":
            chosen = [i for i, ly in enumerate(self.viewer.layers)
                      if tag(ly).get("role") == "chosen" and tag(ly).get("source") == meta["source"]]
            position = min(chosen, default=position)
        self.viewer.layers.insert(position, layer)
        return layer

    # ----------------------------------------------------------------- browsing
    def protocols(self, image_name: str | None = None) -> list:
        """Protocol layers of ``image_name`` (default: the browsed image) in protocol order."""
        name = image_name or self.image_name
        return sorted(self.previous_layers(name), key=lambda ly: tag(ly)["protocol"])

    def show_protocol(self, index: int) -> object | None:
        """Show protocol ``index`` (0-based, wraps around) alone and select it."""
        layers = self.protocols()
        if not layers:
            return None
        self.current = index % len(layers)
        for i, ly in enumerate(layers):
            ly.visible = i == self.current
        shown = layers[self.current]
        self.viewer.layers.selection.active = shown
        return shown

    def step(self, delta: int = 1):
        """Show the next (``delta=1``) or previous (``-1``) protocol alone."""
        return self.show_protocol(self.current + delta)

    def show_all(self) -> None:
        for ly in self.protocols():
            ly.visible = True

    def set_grid(self, enabled: bool) -> None:
        """napari's grid mode: every visible layer in its own tile (protocols side by side)."""
        if enabled:
            self.show_all()
        self.viewer.grid.enabled = bool(enabled)
        self.viewer.reset_view()  # fit every tile (or the single view) in the canvas

    def current_slice(self, layer=None) -> int:
        """Index of the image of the set under the viewer's slider in ``layer`` (default: the
        browsed protocols); 0 for a 2D image."""
        if layer is None:
            layers = self.protocols()
            layer = layers[0] if layers else None
        return slice_under_slider(self.viewer, layer)

    def thumbnails(self, size: int = 96, slice_index: int | None = None) -> list[np.ndarray]:
        """RGBA uint8 (size, size, 4) previews of every protocol on one image of the set."""
        s = self.current_slice() if slice_index is None else slice_index
        out = []
        for ly in self.protocols():
            plane = ly.data[s] if ly.ndim == 3 else ly.data
            step = max(1, int(np.ceil(max(plane.shape) / size)))
            small = np.asarray(plane[::step, ::step])
            rgba = (np.asarray(ly.colormap.map(small.ravel())).reshape(small.shape + (4,)) * 255).astype(np.uint8)
            rgba[..., 3] = 255
            out.append(rgba)
        return out

    # ----------------------------------------------------------------- choosing
    def choose(self, layer=None, confirm: Confirm | bool = True):
        """Copy a protocol layer (default: the one shown) into the working layer "<image> chosen".

        An existing chosen layer is replaced, after ``confirm`` if it was edited. Returns the
        chosen layer, or None when declined.
        """
        if layer is None:
            layers = self.protocols()
            if not layers:
                raise ValueError("no protocols yet: run Pancakes on an image first")
            layer = layers[self.current % len(layers)]
        info = tag(layer)
        if info.get("role") != "protocol":
            raise ValueError(f"layer '{layer.name}' is not a protocol layer made by this explorer")
        source = info["source"]
        name = chosen_name(source)
        old = [ly for ly in self.viewer.layers if tag(ly).get("role") == "chosen" and tag(ly).get("source") == source]
        if any(is_edited(ly) for ly in old) and not _ask(
            confirm, f"'{name}' has edits (names, merges or painting). Replace it with protocol {info['protocol']}?"
        ):
            return None
        for ly in old:
            self.viewer.layers.remove(ly)
        self.history = [e for e in self.history if e.layer not in old]
        request = RunRequest(source, [], layer.data.shape, tuple(layer.scale), tuple(layer.translate),
                             tuple(str(u) for u in layer.units) if getattr(layer, "units", None) is not None else None,
                             info["m"], info["k"], info["seed"])
        chosen = self._add_labels(np.array(layer.data, copy=True), name, request,
                                  {**{k: v for k, v in info.items() if k not in ("crc", "edited")}, "role": "chosen"},
                                  names=names_of(layer))
        chosen.opacity = 0.7
        for ly in self.protocols(source):
            ly.visible = False
        self.viewer.layers.selection.active = chosen
        return chosen

    def working(self, layer=None):
        """The label map edits apply to: ``layer``, else the chosen layer of the browsed image."""
        if layer is not None:
            return layer
        for ly in reversed(list(self.viewer.layers)):
            if tag(ly).get("role") == "chosen" and (self.image_name is None or tag(ly).get("source") == self.image_name):
                return ly
        raise ValueError("no chosen label map yet: pick a protocol with 'Use this protocol' first")

    def source_image(self, layer=None):
        """The Image layer a protocol or chosen layer was made from (default: the working
        layer), or None when it is no longer in the viewer (removed or renamed)."""
        from napari.layers import Image

        layer = self.working(layer)
        name = tag(layer).get("source")
        if name is None or name not in self.viewer.layers:
            return None
        image = self.viewer.layers[name]
        return image if isinstance(image, Image) else None

    def runner_up(self, layer=None) -> np.ndarray:
        """Per pixel, the second most probable label id (1..K) of the protocol ``layer`` (default:
        the working layer) was made from, with the layer's shape: where a pixel goes when its
        first choice is taken away. Computed from the image's cached encoding (no network run).
        Raises ``ValueError`` when the image is gone or changed since the run."""
        layer = self.working(layer)
        info, image = tag(layer), self.source_image(layer)
        entry = self._encoded.get(id(getattr(image, "__wrapped__", image))) if image is not None else None
        if entry is None or entry[1].predictor is None or "model_protocol" not in info:
            raise ValueError(f"no encoding of the image of '{layer.name}': run the explorer on it first")
        request = self.prepare(image, info["m"], info["k"], info["seed"])
        if entry[1].key != _fingerprint(request.images):
            raise ValueError(f"the image '{image.name}' changed since the run: run the explorer on it again")
        second = entry[1].predictor.runner_up(info["model_protocol"] - 1, info["m"], info["k"], info["seed"])
        out = np.stack(second) if layer.ndim == 3 else second[0]
        return out.astype(layer.data.dtype) + 1

    # ----------------------------------------------------------------- naming and editing
    def names(self, layer=None) -> dict[int, str]:
        return names_of(self.working(layer))

    def rename(self, label: int, name: str, layer=None) -> None:
        """Give label ``label`` a name (shown by napari on hover through ``features``)."""
        layer = self.working(layer)
        label = int(label)
        if label <= 0:
            raise ValueError("label 0 is the background; it cannot be renamed")
        name = str(name).strip()
        if not name:
            raise ValueError("a label name cannot be empty")
        names = names_of(layer)
        self._record(Edit(layer, "rename", dict(names)))
        names[label] = name
        _set_names(layer, names)

    def merge(self, labels, layer=None, name: str | None = None) -> int:
        """Merge ``labels`` into the smallest of them; returns the id they now share."""
        layer = self.working(layer)
        ids = sorted({int(v) for v in labels})
        if len(ids) < 2:
            raise ValueError("select at least two labels to merge")
        if ids[0] <= 0:
            raise ValueError("merge labels into each other, not into the background; use 'To background'")
        target = ids[0]
        names = names_of(layer)
        self._relabel(layer, ids[1:], target, "merge", names)
        for i in ids[1:]:
            names.pop(i, None)
        if name:
            names[target] = str(name)
        _set_names(layer, names)
        return target

    def to_background(self, label: int, layer=None) -> None:
        """Send a label to the background (0): its pixels stop being a class."""
        layer = self.working(layer)
        label = int(label)
        if label <= 0:
            raise ValueError("label 0 already is the background")
        names = names_of(layer)
        self._relabel(layer, [label], 0, "background", names)
        names.pop(label, None)
        _set_names(layer, names)

    def _relabel(self, layer, sources, target, kind, names) -> None:
        data = layer.data
        mask = np.isin(data, sources)
        flat = np.flatnonzero(mask)
        self._record(Edit(layer, kind, dict(names), flat, data.ravel()[flat].copy()))
        data[mask] = target
        layer.data = data  # refreshes the view and emits the data event
        _mark_edited(layer)

    def _record(self, edit: Edit) -> None:
        self.history.append(edit)
        del self.history[:-HISTORY_LIMIT]
        _mark_edited(edit.layer)

    def undo(self) -> str | None:
        """Undo the last rename/merge/background; returns what was undone (None if nothing)."""
        if not self.history:
            return None
        edit = self.history.pop()
        layer = edit.layer
        if edit.flat_index is not None:
            data = layer.data
            data.ravel()[edit.flat_index] = edit.old_values  # layer data is C-contiguous (we made it)
            layer.data = data
        _set_names(layer, edit.names)
        return edit.kind

    # ----------------------------------------------------------------- measuring and export
    def measure(self, layer=None) -> list[dict]:
        """Per-image, per-label areas (pixels and physical, from the layer scale)."""
        layer = self.working(layer)
        return label_areas(layer.data, tuple(layer.scale), names_of(layer))

    def label_table(self, layer=None) -> list[dict]:
        """One row per label: id, name, colour, per-image pixels and areas, images present in."""
        layer = self.working(layer)
        data = layer.data
        n_images = data.shape[0] if data.ndim == 3 else 1
        summary = area_summary(label_areas(data, tuple(layer.scale)), n_images)
        names = names_of(layer)
        rows = []
        for label in sorted(set(summary) | {i for i in names if i > 0}):
            entry = summary.get(label, {"per_image_pixels": [0] * n_images, "per_image_area": [0.0] * n_images, "present_in": 0})
            rows.append({"label": label, "name": names.get(label, f"label {label}"),
                         "color": tuple(float(c) for c in layer.get_color(label)), **entry})
        return rows

    def export(self, stem: str | Path, layer=None, formats=("tiff",), overwrite: bool = False) -> dict:
        """Write the working label map, its names/colours JSON and its area CSV (see :mod:`..export`);
        a label map of a NIfTI image is written as NIfTI with that image's affine."""
        layer = self.working(layer)
        names = names_of(layer)
        colors = {i: layer.get_color(i) for i in names if i > 0}
        return export_label_map(stem, layer.data, names=names, colors=colors, scale=tuple(layer.scale),
                                formats=formats, overwrite=overwrite, affine=tag(layer).get(NIFTI_AFFINE))


# --------------------------------------------------------------------- helpers
def default_names(k: int) -> dict[int, str]:
    return {0: "background", **{i: f"label {i}" for i in range(1, k + 1)}}


def names_table(names: dict[int, str]) -> dict:
    """``features`` for a Labels layer: napari matches the 'index' column to label ids."""
    ids = sorted(names)
    return {"index": np.array(ids, dtype=np.int64), "name": [names[i] for i in ids]}


def names_from_features(features) -> dict[int, str]:
    """Label id -> name from Labels ``features`` (a table or dict with 'index' and 'name');
    the inverse of :func:`names_table`."""
    if features is None or "index" not in features or "name" not in features:
        return {0: "background"}
    return {int(i): str(n) for i, n in zip(features["index"], features["name"])}


def names_of(layer) -> dict[int, str]:
    return names_from_features(layer.features)


def _set_names(layer, names: dict[int, str]) -> None:
    layer.features = names_table(names)
    _mark_edited(layer)


def _mark_edited(layer) -> None:
    meta = dict(layer.metadata)
    meta[TAG] = {**meta.get(TAG, {}), "edited": True}
    layer.metadata = meta


def slice_under_slider(viewer, layer) -> int:
    """Index of the image of ``layer``'s set under the viewer's slider (0 for a 2D layer or None)."""
    if layer is None or layer.ndim < 3:
        return 0
    data_point = layer.world_to_data(viewer.dims.point)
    return int(np.clip(round(float(data_point[0])), 0, layer.data.shape[0] - 1))


def checksum(data) -> int:
    return zlib.crc32(np.ascontiguousarray(data).view(np.uint8).ravel())


def is_edited(layer) -> bool:
    """Was the layer changed by the user (names, merges, painting) since we made it?"""
    info = tag(layer)
    return bool(info.get("edited")) or info.get("crc") != checksum(layer.data)


def _ask(confirm: Confirm | bool, message: str) -> bool:
    return bool(confirm) if isinstance(confirm, bool) else bool(confirm(message))
