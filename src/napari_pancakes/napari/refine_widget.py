"""Refine one label of a chosen protocol with clicks, a box and scribbles (dock widget).

Works on any Labels layer aligned with an Image layer (S, H, W) or (H, W): pick both, the
label id and the slice (and whether to start from the label's mask or from nothing), press
Refine, then prompt on the canvas: click (left: positive; with the 'negative' box, the 'x'
key, or Ctrl/Alt held: negative), or choose *box* / *scribble*
and drag a rectangle / draw a path on the 'refine prompts' Shapes layer. The preview updates
after each prompt; Accept writes the refined mask into that slice of the labels only; pixels
the label loses go to their next-most-probable protocol label (or the nearest other label).
The buttons sit outside the scrolling part, so Accept/Cancel stay reachable on small screens.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox, QComboBox, QFormLayout, QHBoxLayout, QLabel, QPushButton, QScrollArea, QSpinBox, QVBoxLayout, QWidget,
)
from scipy import ndimage as ndi

PREVIEW_NAME = "refine preview"
POINTS_NAME = "refine clicks"
SHAPES_NAME = "refine prompts"
THREAD_ABOVE_S = 0.04  # prompts slower than this (measured at start) go to a thread worker
PROBE_MAX_PIXELS = 512 * 512  # larger images, and the classical walker, go to the worker unmeasured:
# the timing prompt runs in the viewer's thread (3.6-4.2 s for the walker at 1024-3000 px, refine-large.md)
POS_COLOR, NEG_COLOR = "lime", "red"
NEGATIVE_KEY = "x"  # 'n' is "next protocol" in the explorer: one meaning per key
PROMPT_MODES = ("click", "box", "scribble")
# Where a session starts. A label far from the structure costs more clicks than no label: on duke_oct's
# fluid, 20.8 Dice after 5 clicks from the best Pancakes label against 62.8 from nothing
# (benchmarks/results/refine-augment-box-30.md), so the user can set the label's mask aside.
START_FROM = ("the label", "nothing")


class RefineWidget(QWidget):
    """Dock widget driving a :class:`~napari_pancakes.refine.RefineSession` on one slice."""

    def __init__(self, napari_viewer, refiner=None, refiner_loader: Callable | None = None):
        from ..refine import METHODS

        super().__init__()
        self.viewer = napari_viewer
        self._refiner = refiner
        self._loader = refiner_loader
        self.session = None
        self.use_thread = False
        self.worker = None
        self._pending: list[tuple[float, float, bool]] = []
        self._target = None  # (image layer, labels layer, slice index or None, label id)
        self._old_key_binding = None
        self._runner_up = None  # callable -> the protocol's next-most-probable labels (layer shape)
        self._n_shapes = 0
        self.last_message = ""

        self.image_combo, self.labels_combo = QComboBox(), QComboBox()
        self.label_spin = QSpinBox()
        self.label_spin.setRange(1, 2**31 - 1)
        self.slice_spin = QSpinBox()
        self.slice_spin.setRange(0, 0)
        self.negative_box = QCheckBox(f"negative prompts ({NEGATIVE_KEY})")
        self.auto_box = QCheckBox("seed with automatic clicks from the label")
        self.start_combo = QComboBox()
        self.start_combo.addItems(START_FROM)
        self.start_combo.setToolTip("the label: correct the chosen label; nothing: ignore its current mask and "
                                    "segment from the prompts alone (when the label is far off); Accept writes "
                                    "into this label either way")
        self.mode_combo = QComboBox()
        self.mode_combo.addItems(PROMPT_MODES)
        self.mode_combo.setToolTip("click: points on the canvas; box: drag a rectangle; scribble: draw a path")
        self.method_combo = QComboBox()
        self.method_combo.addItems(list(METHODS))
        self.method_combo.setCurrentText("hybrid")
        self.method_combo.setToolTip("hybrid: network + edge-following random walker; network alone; classical: "
                                     "random walker alone (see docs/refinement.md)")
        self.buttons = {name: QPushButton(name) for name in ("Refine", "Undo", "Redo", "Clear", "Accept", "Cancel")}
        self.status = QLabel("choose the labels and image layers, then Refine")
        self.status.setWordWrap(True)

        form = QFormLayout()
        form.addRow("labels", self.labels_combo)
        form.addRow("image", self.image_combo)
        form.addRow("label id", self.label_spin)
        form.addRow("image index", self.slice_spin)
        form.addRow("prompt", self.mode_combo)
        form.addRow("predictor", self.method_combo)
        form.addRow("start from", self.start_combo)
        row1, row2 = QHBoxLayout(), QHBoxLayout()
        for name in ("Refine", "Undo", "Redo"):
            row1.addWidget(self.buttons[name])
        for name in ("Clear", "Accept", "Cancel"):
            row2.addWidget(self.buttons[name])
        inner = QWidget()
        body = QVBoxLayout(inner)
        body.addLayout(form)
        body.addWidget(self.negative_box)
        body.addWidget(self.auto_box)
        body.addWidget(self.status)
        body.addStretch()
        self.scroll = QScrollArea()
        self.scroll.setWidgetResizable(True)
        self.scroll.setWidget(inner)
        lay = QVBoxLayout(self)
        lay.addLayout(row1)  # the buttons stay visible however small the dock is
        lay.addLayout(row2)
        lay.addWidget(self.scroll, 1)

        self.buttons["Refine"].clicked.connect(lambda: self.start())
        self.buttons["Undo"].clicked.connect(lambda: self.undo())
        self.buttons["Redo"].clicked.connect(lambda: self.redo())
        self.buttons["Clear"].clicked.connect(lambda: self.clear())
        self.buttons["Accept"].clicked.connect(lambda: self.accept())
        self.buttons["Cancel"].clicked.connect(lambda: self.cancel())
        self.labels_combo.currentIndexChanged.connect(self._labels_changed)
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self.viewer.dims.events.current_step.connect(self._follow_slice)
        self.mode_combo.currentTextChanged.connect(self._mode_changed)
        self._refresh_layers()
        self._update_buttons()

    # --- layer choice ----------------------------------------------------------------------
    def _layers(self, kind: str) -> list:
        from napari.layers import Image, Labels

        cls = Labels if kind == "labels" else Image
        return [ly for ly in self.viewer.layers if isinstance(ly, cls) and ly.name != PREVIEW_NAME]

    def _refresh_layers(self, event=None):
        for combo, kind in ((self.labels_combo, "labels"), (self.image_combo, "image")):
            current = combo.currentText()
            names = [ly.name for ly in self._layers(kind)]
            combo.blockSignals(True)
            combo.clear()
            combo.addItems(names)
            if current in names:
                combo.setCurrentText(current)
            combo.blockSignals(False)
        self._labels_changed()

    def _labels_changed(self, index=None):
        labels = self._layer(self.labels_combo.currentText())
        if labels is None:
            return
        self.label_spin.setValue(max(1, int(labels.selected_label)))
        self.slice_spin.setRange(0, labels.data.shape[0] - 1 if labels.ndim == 3 else 0)
        self._follow_slice()

    def _follow_slice(self, event=None):
        labels = self._layer(self.labels_combo.currentText())
        if labels is None or labels.ndim != 3 or self.session is not None:
            return
        s = int(np.round(labels.world_to_data(self.viewer.dims.point)[0]))
        self.slice_spin.setValue(int(np.clip(s, 0, labels.data.shape[0] - 1)))

    def set_target(self, labels_layer, image_layer, label_id: int, slice_index: int | None = None,
                   runner_up: Callable | None = None) -> bool:
        """Preselect what to refine (the explorer's *Refine label...* calls this): the labels and
        image layers, the label id and, for (S, H, W) layers, the image index (the viewer's
        slider moves there, since clicks must land on it). ``runner_up``: a callable giving the
        protocol's next-most-probable label per pixel (the labels layer's shape), where Accept
        sends the pixels the label loses. Nothing starts until Refine is pressed. Returns False
        (with a message) while a session is open or when a layer is not in the viewer."""
        if self.session is not None:
            return self._say("a session is already open: Accept or Cancel it first", False)
        for layer, kind in ((labels_layer, "labels"), (image_layer, "image")):
            if getattr(layer, "name", None) not in [ly.name for ly in self._layers(kind)]:  # plugin viewers proxy layers
                article = "a Labels" if kind == "labels" else "an Image"
                return self._say(f"'{getattr(layer, 'name', layer)}' is not {article} layer of this viewer", False)
        if int(label_id) < 1:
            return self._say("label 0 is the background; choose a label to refine", False)
        self._refresh_layers()  # picks up renamed layers too
        self._runner_up = (labels_layer.name, runner_up) if runner_up is not None else None
        self.labels_combo.setCurrentText(labels_layer.name)
        self.image_combo.setCurrentText(image_layer.name)
        self._labels_changed()  # slice range of this labels layer
        self.label_spin.setValue(int(label_id))
        where = ""
        if slice_index is not None and labels_layer.ndim == 3:
            s = int(np.clip(int(slice_index), 0, labels_layer.data.shape[0] - 1))
            axis = self.viewer.dims.ndim - labels_layer.ndim
            self.viewer.dims.set_point(axis, float(labels_layer.data_to_world((s, 0, 0))[0]))
            self.slice_spin.setValue(s)
            where = f" on image {s}"
        return self._say(f"label {int(label_id)} of '{labels_layer.name}'{where}: press Refine, then click", True)

    def _layer(self, name: str):
        return self.viewer.layers[name] if name and name in self.viewer.layers else None

    # --- the model ---------------------------------------------------------------------------
    @property
    def refiner(self):
        if self._refiner is None:
            if self._loader is not None:
                self._refiner = self._loader()
            else:
                from ..refine import load_refiner

                self._refiner = load_refiner()
        return self._refiner

    # --- session -------------------------------------------------------------------------------
    def start(self) -> bool:
        """Open a session on the chosen slice; returns False (with a message) on bad choices."""
        from ..refine import RefineSession, prompts_from_mask

        if self.session is not None:
            return self._say("a session is already open: Accept or Cancel it first", False)
        labels = self._layer(self.labels_combo.currentText())
        image = self._layer(self.image_combo.currentText())
        if labels is None or image is None:
            return self._say("choose a Labels layer and an Image layer", False)
        spatial = image.data.shape[:-1] if image.rgb else image.data.shape
        if tuple(spatial) != tuple(labels.data.shape) or labels.ndim not in (2, 3):
            return self._say(f"labels {labels.data.shape} and image {tuple(spatial)} are not aligned "
                             "(need the same (S, H, W) or (H, W))", False)
        s = self.slice_spin.value() if labels.ndim == 3 else None
        label_id = self.label_spin.value()
        img2d = np.asarray(image.data[s] if s is not None else image.data)
        lab2d = np.asarray(labels.data[s] if s is not None else labels.data)
        from_label = self.start_combo.currentText() == START_FROM[0]
        initial = lab2d == label_id if from_label else np.zeros(lab2d.shape, bool)
        method = self.method_combo.currentText()
        try:
            refiner = self.refiner if method != "classical" else None
            self.session = RefineSession(refiner, img2d, initial_mask=initial if initial.any() else None, method=method)
            h, w = self.session.shape
            self.call_seconds = None  # unmeasured: the worker
            if method != "classical" and h * w <= PROBE_MAX_PIXELS:
                probe = RefineSession(refiner, img2d, method=method)  # warm-up + timing of one prompt
                t0 = time.perf_counter()
                probe.add_click((h - 1) / 2, (w - 1) / 2, True)
                self.call_seconds = time.perf_counter() - t0
        except (ValueError, FileNotFoundError) as exc:
            self.session = None
            return self._say(f"cannot refine: {exc}", False)
        self.use_thread = self.call_seconds is None or self.call_seconds > THREAD_ABOVE_S
        self._target = (image, labels, s, label_id)
        self._add_temp_layers(labels, s)
        self._old_key_binding = self.viewer.bind_key(NEGATIVE_KEY, self._toggle_negative, overwrite=True)
        msg = f"refining label {label_id}" + (f" on image {s}" if s is not None else "")
        msg += "" if from_label else " from nothing"
        if self.auto_box.isChecked() and initial.any():
            pos, neg = prompts_from_mask(initial)
            self._submit([("click", y, x, True) for y, x in pos] + [("click", y, x, False) for y, x in neg])
            msg += f" (seeded with {len(pos)}+/{len(neg)}- automatic clicks)"
        self._show()
        return self._say(msg + ": click to add points", True)

    def _add_temp_layers(self, labels, s):
        preview = np.zeros(labels.data.shape, dtype=np.uint8)
        self.preview = self.viewer.add_labels(preview, name=PREVIEW_NAME, scale=labels.scale,
                                              translate=labels.translate, opacity=0.6)
        self.points = self.viewer.add_points(np.empty((0, labels.ndim)), name=POINTS_NAME, scale=labels.scale,
                                             translate=labels.translate, size=max(3, 0.015 * max(labels.data.shape[-2:])),
                                             face_color=POS_COLOR, border_color="white")
        self.points.mode = "pan_zoom"
        self.points.mouse_drag_callbacks.append(self._on_mouse)
        self.shapes = self.viewer.add_shapes(ndim=labels.ndim, name=SHAPES_NAME, scale=labels.scale,
                                             translate=labels.translate, edge_width=max(1, 0.005 * max(labels.data.shape[-2:])),
                                             edge_color=POS_COLOR, face_color="transparent")
        self._n_shapes = 0
        self.shapes.events.data.connect(self._on_shapes)
        self._mode_changed(self.mode_combo.currentText())

    def _mode_changed(self, mode=None):
        """Activate the layer and napari mode of the chosen prompt kind."""
        if self.session is None:
            return
        mode = mode or self.mode_combo.currentText()
        if mode == "click":
            self.viewer.layers.selection.active = self.points
        else:
            self.viewer.layers.selection.active = self.shapes
            self.shapes.mode = "add_rectangle" if mode == "box" else "add_path"
            self.shapes.current_edge_color = NEG_COLOR if (mode == "scribble" and self.negative_box.isChecked()) else POS_COLOR

    def _on_shapes(self, event=None):
        """A finished rectangle sets the box; a finished path adds a scribble."""
        if self.session is None or len(self.shapes.data) <= self._n_shapes:
            self._n_shapes = len(self.shapes.data)
            return
        new = list(zip(self.shapes.data[self._n_shapes:], self.shapes.shape_type[self._n_shapes:]))
        self._n_shapes = len(self.shapes.data)
        for verts, kind in new:
            self.add_shape_world(np.asarray(verts), kind)

    def add_shape_world(self, vertices_data, kind: str, positive: bool | None = None) -> bool:
        """Use a shape (vertices in the labels layer's data coordinates) as a prompt:
        'rectangle' -> the box, 'path'/'line'/other -> a scribble along its vertices."""
        if self.session is None:
            return self._say("press Refine first", False)
        _, labels, s, _ = self._target
        v = np.asarray(vertices_data, float).reshape(-1, labels.ndim)
        if s is not None and not np.all(np.round(v[:, 0]) == s):
            return self._say(f"draw on image {s} (the one being refined)", False)
        yx = v[:, -2:]
        if positive is None:
            positive = not self.negative_box.isChecked()
        if kind == "rectangle":
            box = (yx[:, 0].min(), yx[:, 1].min(), yx[:, 0].max(), yx[:, 1].max())
            self._submit([("box", box)])
        else:
            h, w = self.session.shape
            inside = (yx[:, 0] >= -0.5) & (yx[:, 0] <= h - 0.5) & (yx[:, 1] >= -0.5) & (yx[:, 1] <= w - 0.5)
            if not inside.any():
                return self._say("draw inside the image", False)
            pts = [(float(np.clip(y, 0, h - 1)), float(np.clip(x, 0, w - 1))) for y, x in yx[inside]]
            self._submit([("scribble", pts, bool(positive))])
        return True

    def _on_mouse(self, layer, event):
        """A click without dragging adds a point (dragging still pans)."""
        start = np.array(event.position)
        yield
        while event.type == "mouse_move":
            yield
        if np.linalg.norm(np.array(event.position) - start) > 0.5 * float(np.min(layer.scale[-2:])):
            return
        held = event.modifiers or ()
        negative = "Control" in held or "Alt" in held or self.negative_box.isChecked()
        self.click_world(event.position, positive=not negative)

    def _toggle_negative(self, viewer=None):
        self.negative_box.setChecked(not self.negative_box.isChecked())
        self._mode_changed()

    def click_world(self, world_position, positive: bool | None = None) -> bool:
        """Add a click given in world coordinates (what the canvas reports)."""
        if self.session is None:
            return self._say("press Refine first", False)
        _, labels, s, _ = self._target
        data = labels.world_to_data(world_position)
        if s is not None and int(np.round(data[0])) != s:
            return self._say(f"click on image {s} (the one being refined)", False)
        y, x = float(data[-2]), float(data[-1])
        h, w = self.session.shape
        if not (0 <= np.round(y) <= h - 1 and 0 <= np.round(x) <= w - 1):
            return self._say("click inside the image", False)
        y, x = float(np.clip(y, 0, h - 1)), float(np.clip(x, 0, w - 1))
        if positive is None:
            positive = not self.negative_box.isChecked()
        self._submit([("click", y, x, positive)])
        return True

    def _submit(self, clicks):
        self._pending += clicks
        if self.worker is not None:
            return
        if self.use_thread:
            self._start_worker()
        else:
            self._apply_pending()

    @staticmethod
    def _run_prompts(session, items):
        """Apply queued prompts in order (runs of clicks become one model call)."""
        clicks = []
        for item in items + [("end",)]:
            if item[0] == "click":
                clicks.append(item[1:])
                continue
            if clicks:
                session.add_clicks([(y, x) for y, x, p in clicks if p], [(y, x) for y, x, p in clicks if not p])
                clicks = []
            if item[0] == "box":
                session.set_box(item[1])
            elif item[0] == "scribble":
                session.add_scribble(item[1], item[2])

    def _apply_pending(self):
        items, self._pending = self._pending, []
        try:
            self._run_prompts(self.session, items)
        except ValueError as exc:
            self._say(str(exc), False)
        self._show()

    def _start_worker(self):
        from napari.qt.threading import create_worker

        items, self._pending = self._pending, []
        self.worker = create_worker(self._run_prompts, self.session, items, _start_thread=False)
        self.worker.finished.connect(self._worker_done)
        self.worker.errored.connect(lambda exc: self._say(f"refinement failed: {exc}", False))
        self.worker.start()
        self._say("updating...", True)

    def _worker_done(self):
        self.worker = None
        if self.session is None:
            return
        self._show()
        if self._pending:
            self._start_worker()

    def _show(self):
        """Redraw the preview (in place) and the click markers from the session state."""
        if self.session is None:
            return
        _, labels, s, label_id = self._target
        mask = self.session.mask
        if s is None:
            self.preview.data[...] = mask
        else:
            self.preview.data[s] = mask
        self.preview.refresh()
        clicks = self.session.clicks
        coords = [((s,) if s is not None else ()) + (y, x) for y, x, _ in clicks]
        self.points.data = np.array(coords, float).reshape(-1, labels.ndim)
        if clicks:
            self.points.face_color = [POS_COLOR if p else NEG_COLOR for _, _, p in clicks]
        self._update_buttons()
        extra = (", a box" if self.session.box is not None else "") + (
            f", {len(self.session.scribbles)} scribbles" if self.session.scribbles else "")
        self._say(f"{len(clicks)} clicks{extra}, {int(mask.sum())} pixels", True)

    def undo(self):
        if self.session is not None and self.worker is None:
            self.session.undo()
            self._show()

    def redo(self):
        if self.session is not None and self.worker is None:
            self.session.redo()
            self._show()

    def clear(self):
        if self.session is not None and self.worker is None:
            self.session.clear()
            self._show()

    def accept(self) -> bool:
        """Write the mask into the chosen slice: inside it -> this label; pixels of this label
        outside it -> their next-most-probable protocol label (when the explorer gave one,
        else the nearest other label; 0 only when no other label exists)."""
        if self.session is None:
            return self._say("nothing to accept", False)
        if self.worker is not None:
            return self._say("wait for the update to finish", False)
        _, labels, s, label_id = self._target
        mask = self.session.mask
        data = labels.data
        lab = np.array(data[s] if s is not None else data)
        removed = (lab == label_id) & ~mask
        if removed.any():
            lab[removed] = self._refill(lab, removed, labels, s, label_id)
        lab[mask] = label_id
        if s is not None:
            data[s] = lab
        else:
            data[...] = lab
        labels.refresh()
        n = int(mask.sum())
        self._end()
        return self._say(f"accepted: label {label_id} now covers {n} pixels" + (f" on image {s}" if s is not None else ""), True)

    def _refill(self, lab, removed, labels, s, label_id) -> np.ndarray:
        """Labels for the pixels ``removed`` from ``label_id``: the protocol's runner-up where
        known and different, else the nearest pixel of another label (0 if there is none)."""
        fill = np.zeros(int(removed.sum()), lab.dtype)
        todo = np.ones(fill.shape, bool)
        if self._runner_up is not None and self._runner_up[0] == labels.name:
            try:
                second = np.asarray(self._runner_up[1]())
                second = second[s] if s is not None else second
                cand = second[removed]
                ok = (cand != label_id) & (cand != 0)
                fill[ok], todo = cand[ok], ~ok
            except ValueError as exc:  # e.g. the image changed since the run
                self._say(f"runner-up labels unavailable ({exc}); using the nearest label", True)
        other = lab != label_id
        if todo.any() and other.any():
            idx = ndi.distance_transform_edt(~other, return_distances=False, return_indices=True)
            near = lab[idx[0], idx[1]][removed]
            fill[todo] = near[todo]
        return fill

    def cancel(self) -> bool:
        """Drop the session and the temporary layers; the labels are left as they were."""
        if self.session is None:
            return False
        self._end()
        return self._say("cancelled; labels unchanged", True)

    def _end(self):
        self.session = None
        self._pending = []
        for name in (PREVIEW_NAME, POINTS_NAME, SHAPES_NAME):
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
        self.viewer.bind_key(NEGATIVE_KEY, self._old_key_binding, overwrite=True)  # None unbinds
        self._old_key_binding = None
        _, labels, _, _ = self._target
        if labels in self.viewer.layers:
            self.viewer.layers.selection.active = labels
        self._target = None
        self._update_buttons()

    def _update_buttons(self):
        open_ = self.session is not None
        self.buttons["Refine"].setEnabled(not open_)
        for name in ("Clear", "Accept", "Cancel"):
            self.buttons[name].setEnabled(open_)
        self.buttons["Undo"].setEnabled(open_ and self.session.can_undo)
        self.buttons["Redo"].setEnabled(open_ and self.session.can_redo)

    def _say(self, message: str, ok: bool) -> bool:
        self.last_message = message
        self.status.setText(message)
        return ok
