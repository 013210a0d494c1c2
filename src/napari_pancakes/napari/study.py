"""What the study dock does, without Qt: save a protocol from a layer, apply it to another image
layer, propagate a correction, rank labels against an outcome table, show a (protocol, label).

The dock (:mod:`.study_widget`) is a thin view on :class:`StudyController`; notebooks and tests
drive the same code with a ``napari.components.ViewerModel``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..export import NIFTI_AFFINE, hex_color
from ..protocol import Protocol, ProtocolSet, apply_protocol, model_for
from .controller import TAG, names_of, names_table, slice_under_slider, tag

STUDY_ROLE = "applied"  # role of layers made by Apply in our metadata entry


def protocol_layers(viewer) -> list:
    """Labels layers a protocol can be saved from: explorer protocols, chosen and applied layers."""
    return [ly for ly in viewer.layers if tag(ly).get("role") in ("protocol", "chosen", STUDY_ROLE)]


def image_layers(viewer) -> list:
    from napari.layers import Image

    return [ly for ly in viewer.layers if isinstance(ly, Image)]


def _as_stack(data) -> np.ndarray:
    data = np.asarray(data)
    return data[None] if data.ndim == 2 else data


class StudyController:
    """Study actions on one viewer.

    Arguments:
        viewer: a ``napari.Viewer`` or ``ViewerModel``.
        model: the Pancakes model (None: the bundled weights, loaded on first use).
    """

    def __init__(self, viewer, model=None):
        self.viewer = viewer
        self._model = model
        self.sets: dict[str, ProtocolSet] = {}  # layer name -> cached features for propagation
        self.history: list[tuple] = []  # (layer, previous data, propagation record)
        self.measurements = None
        self.ranking = None
        self.ranked_layers: list = []  # protocol layers, in the order of the measurements' M axis

    @property
    def model(self):
        if self._model is None:
            from ..io_weights import load_model

            self._model = load_model()
        return self._model

    # ----------------------------------------------------------------- protocol files
    def protocol_from_layer(self, layer) -> Protocol:
        """The protocol a layer shows, with its names, colours, merges and labels sent to background.

        Merges and background sends are read from the layer itself: each label id of the
        explorer's protocol layer (if still in the viewer) is mapped to the id most of its pixels
        now carry in ``layer``; a label absent from the set whose name was removed (merged or
        sent to background) is sent to background.
        """
        info = tag(layer)
        if "study_protocol" in info or info.get("role") == STUDY_ROLE:  # applied, or learnt by a propagation
            protocol = Protocol.from_dict(info.get("study_protocol") or info["protocol"])
            protocol.names.update(names_of(layer))  # names edited in the layer travel with it
            return protocol
        if info.get("role") not in ("protocol", "chosen"):
            raise ValueError(f"layer '{getattr(layer, 'name', layer)}' was not made by the protocol explorer; "
                             "choose a protocol or '... chosen' layer")
        # the explorer shows protocols ranked; "model_protocol" is the model's own (1-based) index
        m, k, seed = info["m"], info["k"], info.get("seed", 0)
        index = info.get("model_protocol", info["protocol"]) - 1
        names = names_of(layer)
        colors = {i: hex_color(layer.get_color(i)) for i in names if i > 0 and layer.get_color(i) is not None}
        merges, background = {}, []
        original = self._original(info)
        if original is not None and info.get("role") == "chosen":
            now, before = _as_stack(layer.data).ravel(), _as_stack(original.data).ravel()
            for i in range(1, k + 1):
                hit = now[before == i]
                if hit.size == 0:  # absent from this set: removed from the names means edited away
                    if i not in names:
                        background.append(i)
                    continue
                target = int(np.bincount(hit).argmax())
                if target == 0:
                    background.append(i)
                elif target != i:
                    merges[i] = target
        return Protocol.from_model(self.model, m, k, index, seed=seed, names=names, colors=colors, merges=merges,
                                   background=background)

    def _original(self, info):
        for ly in self.viewer.layers:
            t = tag(ly)
            if t.get("role") == "protocol" and t.get("source") == info.get("source") and t.get("protocol") == info.get("protocol"):
                return ly
        return None

    def save_protocol(self, layer, path: str | Path, overwrite: bool = False) -> Protocol:
        protocol = self.protocol_from_layer(layer)
        protocol.save(path, overwrite=overwrite)
        return protocol

    def load_protocol(self, path: str | Path) -> Protocol:
        return Protocol.load(path, model=self.model)

    # ----------------------------------------------------------------- apply
    def apply(self, protocol: Protocol, image_layer, progress=None):
        """Label ``image_layer`` with ``protocol``: a new Labels layer with its names and colours.

        A lazy (Dask) image layer gets a lazy label layer, computed chunk by chunk as it is viewed.
        """
        data = self.prepare_apply(protocol, image_layer)
        return self.finish_apply(protocol, image_layer, apply_protocol(protocol, data, model=self.model,
                                                                       progress=progress))

    def prepare_apply(self, protocol: Protocol, image_layer):
        """Check the protocol against the model and the layer; its data as intensities (lazy stays lazy)."""
        model_for(protocol, self.model)
        if getattr(image_layer, "multiscale", False):
            raise ValueError(f"layer '{image_layer.name}' is multiscale; open a single-resolution image")
        data = _intensity(image_layer, lazy=True)
        if data.ndim not in (2, 3):
            raise ValueError(f"layer '{image_layer.name}' has shape {data.shape}; a 2D image, an (S, H, W) stack "
                             "or a (Z, Y, X) volume is needed")
        return data

    def apply_lazy(self, protocol: Protocol, data):
        """A lazy label array for lazy (Dask) data."""
        return apply_protocol(protocol, data, model=self.model)

    def finish_apply(self, protocol: Protocol, image_layer, labels):
        """Add (or replace) the Labels layer of an applied protocol (GUI thread)."""
        name = f"{image_layer.name} protocol {protocol.index + 1} (K={protocol.k}) applied"
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        names = protocol.label_names()
        layer = self.viewer.add_labels(
            labels, name=name, scale=tuple(image_layer.scale), translate=tuple(image_layer.translate),
            features=names_table(names), opacity=0.6,
            metadata={TAG: {"role": STUDY_ROLE, "source": image_layer.name, "protocol_file": None,
                            "protocol": protocol.to_dict(), "m": protocol.m, "k": protocol.k,
                            "seed": protocol.seed, **_affine_of(image_layer)}})
        _set_colors(layer, protocol.colors, protocol.k)
        return layer

    # ----------------------------------------------------------------- correct once, fix everywhere
    def propagate(self, layer, label: int | None = None, slice_index: int | None = None):
        """Learn label ``label`` (default: the layer's selected label) from its extent on image
        ``slice_index`` (default: the one under the slider) and re-label every image of the set.

        The corrected image keeps the user's mask for that label. Returns the propagation record;
        :meth:`undo` restores the layer and the protocol. Synchronous; a GUI runs the three steps
        :meth:`prepare_propagate` (GUI thread), :meth:`compute_propagate` (any thread) and
        :meth:`finish_propagate` (GUI thread) so that the viewer keeps drawing.
        """
        job = self.prepare_propagate(layer, label, slice_index)
        return self.finish_propagate(self.compute_propagate(job))

    def prepare_propagate(self, layer, label: int | None = None, slice_index: int | None = None) -> dict:
        """Check the layer and snapshot what a propagation needs (the corrected image's mask, the
        set's intensities the first time); raises ``ValueError`` with a message for the user."""
        info = tag(layer)
        if info.get("role") not in ("protocol", "chosen", STUDY_ROLE):
            raise ValueError(f"layer '{layer.name}' is not a protocol, chosen or applied layer")
        source = info.get("source")
        if source not in self.viewer.layers:
            raise ValueError(f"the image '{source}' this layer was made from is no longer in the viewer")
        label = int(layer.selected_label if label is None else label)
        stack = _as_stack(layer.data)
        s = self.current_slice(layer) if slice_index is None else int(slice_index)
        job = {"layer": layer, "info": info, "key": layer.name, "image": s, "label": label,
               "mask": stack[s] == label, "drawn": np.array(stack[s], copy=True), "set": self.sets.get(layer.name)}
        if job["set"] is None:  # the first correction of this layer: the set is encoded in compute
            job["protocol"] = self.protocol_from_layer(layer)
            job["images"] = np.array(_intensity(self.viewer.layers[source]), copy=True)
        return job

    def compute_propagate(self, job: dict) -> dict:
        """The network work of a propagation (any thread; touches no layer): encode the set the
        first time, learn the label, re-label every image. Fills ``job['record']`` and ``['labels']``.

        Learning needs autograd, and torch's grad / inference mode is per thread: a pooled worker
        thread can carry the inference mode of a generator an earlier run left suspended (a
        cancelled explorer run), so both are set here whatever the thread holds."""
        import torch

        with torch.inference_mode(False), torch.enable_grad():
            if job["set"] is None:
                job["set"] = ProtocolSet(job["protocol"], job["images"], model=self.model)
            ps = job["set"]
            job["record"] = ps.propagate(job["image"], job["mask"], job["label"])
        job["labels"] = np.stack(ps.labels)
        return job

    def finish_propagate(self, job: dict):
        """Put a computed propagation into its layer, mark what changed, keep it for undo (GUI thread)."""
        layer, ps, s = job["layer"], job["set"], job["image"]
        self.sets[job["key"]] = ps
        previous = np.array(layer.data, copy=True)
        new = job["labels"].astype(layer.data.dtype, copy=False)
        new[s] = job["drawn"]  # the corrected image stays as the user drew it
        layer.data = new if layer.data.ndim == 3 else new[0]
        meta = dict(layer.metadata)
        # the role stays (the explorer still finds its chosen layer); the learnt protocol travels with the layer
        meta[TAG] = {**meta.get(TAG, {}), "edited": True, "study_protocol": ps.protocol.to_dict()}
        layer.metadata = meta
        self._show_changes(layer, previous != np.asarray(layer.data))
        self.history.append((layer, previous, job["record"], job["info"]))
        return job["record"]

    def changes_name(self, layer) -> str:
        return f"{layer.name} changed"

    def _show_changes(self, layer, changed) -> None:
        """A Labels layer marking (1) every pixel the propagation changed; replaced by the next one."""
        name = self.changes_name(layer)
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        if changed is None:
            return
        marks = self.viewer.add_labels(changed.astype(np.uint8), name=name, scale=tuple(layer.scale),
                                       translate=tuple(layer.translate), opacity=0.9,
                                       metadata={TAG: {"role": "changes", "source": layer.name}})
        _set_colors(marks, {1: "#ff00ff"}, 1)
        self.viewer.layers.selection.active = layer

    def undo(self):
        """Undo the last propagation: the layer's pixels and protocol as they were."""
        if not self.history:
            return None
        layer, previous, record, info = self.history.pop()
        layer.data = previous
        self._show_changes(layer, None)
        meta = dict(layer.metadata)
        meta[TAG] = info
        layer.metadata = meta
        ps = self.sets.get(layer.name)
        if ps is not None:
            ps.undo()
        return record

    def current_slice(self, layer) -> int:
        return slice_under_slider(self.viewer, layer)

    # ----------------------------------------------------------------- population analysis
    def analyze(self, image_layer, table, outcome: str, measure: str = "area", kind: str | None = None,
                image_names=None):
        """Rank every (protocol, label) of the explorer's protocol layers of ``image_layer``.

        Areas use the layer scale; image names default to the layer's ``metadata['names']`` or
        the indices 0..S-1 (an outcome table may use either).
        """
        from .. import analysis

        layers = sorted((ly for ly in self.viewer.layers
                         if tag(ly).get("role") == "protocol" and tag(ly).get("source") == image_layer.name),
                        key=lambda ly: tag(ly)["protocol"])
        if not layers:
            raise ValueError(f"no protocols of '{image_layer.name}' yet: run the protocol explorer on it first")
        if not isinstance(table, analysis.OutcomeTable):
            table = analysis.read_outcomes(table)
        images = _as_stack(image_layer.data)
        names = image_names or image_layer.metadata.get("names") or [str(i) for i in range(len(images))]
        values = analysis.match_outcome(table, outcome, names)
        k = tag(layers[0])["k"]
        labels = np.stack([_as_stack(ly.data).astype(np.int64) - 1 for ly in layers])  # ids 1..K -> 0..K-1
        self.measurements = analysis.measure_labels(labels, images, scale=tuple(image_layer.scale), image_names=names,
                                                    protocols=[tag(ly)["protocol"] for ly in layers], k=k)
        self.ranking = analysis.rank_labels(self.measurements, values, outcome=outcome, measure=measure, kind=kind)
        self.ranked_layers = layers
        return self.ranking

    def show_row(self, row: int):
        """Show the protocol layer of ranked row ``row`` alone, with its label highlighted."""
        r = self.ranking.rows[row]
        shown = None
        for ly in self.ranked_layers:
            ly.visible = tag(ly)["protocol"] == r["protocol"]
            if ly.visible:
                shown = ly
        if shown is not None:
            shown.selected_label = r["label"]
            shown.show_selected_label = True
            self.viewer.layers.selection.active = shown
        return shown


def _intensity(layer, lazy: bool = False):
    """The layer's pixels as intensities (RGB converted); Dask data stays lazy when ``lazy``."""
    from ..preprocess import rgb_to_intensity

    data = layer.data if lazy else np.asarray(layer.data)
    return rgb_to_intensity(np.asarray(data)) if layer.rgb else data


def _affine_of(image_layer) -> dict:
    """The NIfTI affine an image layer carries (the plugin's NIfTI reader), for its label layers."""
    affine = getattr(image_layer, "metadata", {}).get(NIFTI_AFFINE)
    return {} if affine is None else {NIFTI_AFFINE: affine}


def _set_colors(layer, colors: dict, k: int) -> None:
    if not colors:
        return
    try:
        from napari.utils.colormaps import DirectLabelColormap

        base = {i: layer.get_color(i) for i in range(1, k + 1)}
        base.update({int(i): c for i, c in colors.items()})
        base[None] = "transparent"
        base[0] = "transparent"
        layer.colormap = DirectLabelColormap(color_dict=base)
    except Exception:  # colours are a nicety; the names and ids are what matter
        pass
