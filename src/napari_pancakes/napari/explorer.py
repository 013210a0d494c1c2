"""The protocol explorer dock widget: a Qt view on :class:`.controller.ProtocolController`.

Four panels, top to bottom, follow the data: Run (image, M, K, seed, progress, Cancel),
Protocols (gallery of the M candidates on the current image, next/previous, grid, "Use this
protocol"), Labels (names, colours, areas; merge, to background, undo, "Refine label..."
which opens the click-refinement dock widget) and Export.

Inference runs in a ``napari.qt.threading`` generator worker that yields once per image, so
the viewer keeps drawing and Cancel takes effect between images. Errors never escape as
tracebacks: they end as a ``show_error`` notification and leave the layers as they were.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QSize, Qt, QTimer
from qtpy.QtGui import QColor, QIcon, QImage, QPixmap
from qtpy.QtWidgets import (
    QAbstractItemView,
    QFrame,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QMessageBox,
    QProgressBar,
    QScrollArea,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ..export import export_paths, manifest_files
from ..model import K_RANGE, M_RANGE
from ._qt import Failure, add_row, push_button, refill_combo
from .controller import ProtocolController, checksum, compute, tag

# Single-letter viewer shortcuts (letters napari leaves free in 0.9; never Ctrl+Q).
SHORTCUTS = {"n": "next protocol", "h": "previous protocol", "u": "use the shown protocol"}
THUMB = 64
# the shown protocol's thumbnail: a thick, bright frame that reads on any colour map
CHECKED_STYLE = "QToolButton:checked { border: 3px solid #ffd21f; border-radius: 3px; background: #5a4a00; }"
PLUGIN_NAME = "napari-pancakes"
REFINE_WIDGET_NAME = "Click refinement"  # display_name of the refine widget in napari.yaml


@thread_worker
def _run_in_thread(controller: ProtocolController, request):
    """Load the model if needed and segment image by image; errors are returned, not raised,
    so that napari never turns them into a traceback dialog."""
    try:
        model = controller.model
        yield "load", 0, len(request.images)
        _warm_up_labels()
        yield from compute(request, model)
    except Exception as exc:  # reported to the user by _on_returned
        return Failure(exc)
    return request


def _warm_up_labels() -> None:
    """Build a tiny Labels layer (no viewer) once per process, off the GUI thread: napari's first
    Labels layer of a session costs most of a second to set up (colormaps, caches), which would
    otherwise freeze the viewer when the first protocol layer is added."""
    global _LABELS_WARM
    if not _LABELS_WARM:
        from napari.layers import Labels

        Labels(np.zeros((2, 4, 4), np.uint8))
        _LABELS_WARM = True


_LABELS_WARM = False


class ExplorerWidget(QWidget):
    """Dock widget: run Pancakes on an image layer, browse the M protocols, choose, name, export.

    Arguments:
        napari_viewer: the viewer (npe2 passes it).
        model: inject a model (tests); None loads the bundled weights on the first run.
    """

    def __init__(self, napari_viewer, model=None):
        super().__init__()
        self.viewer = napari_viewer
        self.controller = ProtocolController(napari_viewer, model=model)
        self.worker = None
        self._adding = False  # layers of a finished run are being added, one per event-loop turn
        self.last_message = ""  # the last notification, for tests and scripts
        self._filling_table = False
        self._table_cache = None
        self._shown_slice = None
        self._table_pending = False  # a table refresh is scheduled for the next event-loop turn
        self._watched = []  # chosen layers whose data events refresh the table
        self._run_started = 0.0
        self._encoded_in_run = False

        # everything in a scroll area: the dock fits a 1366 x 768 screen whatever is expanded
        inner = QWidget()
        layout = QVBoxLayout(inner)
        layout.setContentsMargins(4, 4, 4, 4)
        self.sections = {}  # title -> collapsible section (fold what a small screen does not need)
        for title, panel in (("Run", self._build_run_panel()),
                             ("Protocols (N next, H previous, U use)", self._build_protocol_panel()),
                             ("Labels of the chosen protocol", self._build_label_panel()),
                             ("Export the chosen label map", self._build_export_panel())):
            self.sections[title.split(" (")[0]] = _section(title, panel)
            layout.addWidget(self.sections[title.split(" (")[0]])
        layout.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        scroll.setWidget(inner)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)
        self.setMinimumWidth(inner.sizeHint().width() + 24)

        layers = self.viewer.layers
        self._connections = [(e, self._refresh_layer_choices)
                             for e in (layers.events.inserted, layers.events.removed, layers.events.reordered)]
        self._connections.append((layers.events.inserted, self._follow_new_image))
        self._connections.append((layers.selection.events.active, self._follow_selected_image))
        self._connections.append((self.viewer.dims.events.current_step, self._on_slice_changed))
        for emitter, callback in self._connections:
            emitter.connect(callback)
        self._refresh_layer_choices()
        self._bind_keys()
        viewer, connections = self.viewer, self._connections
        # closing the dock frees the letters and stops viewer events reaching a deleted widget
        self.destroyed.connect(lambda *_: _release(viewer, connections))

    # ----------------------------------------------------------------- panels
    def _build_run_panel(self) -> QWidget:
        box = QWidget()
        form = QFormLayout(box)
        self.layer_combo = QComboBox()
        self.layer_combo.setToolTip("The set: an (S, H, W) stack, one 2D image, RGB, or a (Z, Y, X) volume (set of slices)")
        self.layer_combo.currentTextChanged.connect(self._on_layer_changed)
        form.addRow("image", self.layer_combo)
        self.m_spin = _spin(*M_RANGE, 8, "number of candidate protocols M")
        self.k_spin = _spin(*K_RANGE, 20, "labels per protocol K")
        self.seed_spin = _spin(0, 2**31 - 1, 0, "0 gives the canonical protocols; other seeds other draws")
        form.addRow("protocols M", self.m_spin)
        form.addRow("labels K", self.k_spin)
        form.addRow("seed", self.seed_spin)
        self.run_button = push_button("Run", self.start_run)
        self.cancel_button = push_button("Cancel", self.cancel_run)
        self.cancel_button.setEnabled(False)
        add_row(form, self.run_button, self.cancel_button)
        self.progress = QProgressBar()
        self.progress.setFormat("%v / %m images")
        self.progress.setTextVisible(True)
        self.progress.setValue(0)
        form.addRow(self.progress)
        return box

    def _build_protocol_panel(self) -> QWidget:
        box = QWidget()
        layout = QVBoxLayout(box)
        self.gallery = QWidget()
        self.gallery_layout = QGridLayout(self.gallery)
        self.gallery_layout.setContentsMargins(0, 0, 0, 0)
        self.gallery.setStyleSheet(CHECKED_STYLE)
        self.gallery_buttons: list[QToolButton] = []
        layout.addWidget(self.gallery)
        self.prev_button = push_button("< Prev", lambda: self.step(-1))
        self.next_button = push_button("Next >", lambda: self.step(1))
        self.grid_check = QCheckBox("grid")
        self.grid_check.setToolTip("napari grid mode: all protocols side by side, each tile named")
        self.grid_check.toggled.connect(self.set_grid)
        add_row(layout, self.prev_button, self.next_button, self.grid_check)
        self.choose_button = push_button("Use this protocol", self.choose,
                                         "Copy the shown protocol to '<image> chosen', the label map you name, edit and export")
        layout.addWidget(self.choose_button)
        return box

    def _build_label_panel(self) -> QWidget:
        box = QWidget()
        layout = QVBoxLayout(box)
        self.table = QTableWidget(0, 6)
        self.table.setHorizontalHeaderLabels(["id", "", "name", "images", "pixels", "area"])
        for column, tip in ((3, "images of the set where the label is present / images in the set"),
                            (4, "pixels of the label in the image under the slider"),
                            (5, "area of the label in the image under the slider (pixels x pixel area from the layer scale)")):
            self.table.horizontalHeaderItem(column).setToolTip(tip)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.verticalHeader().setVisible(False)
        header = self.table.horizontalHeader()
        for column in (0, 3, 4, 5):
            header.setSectionResizeMode(column, QHeaderView.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.Fixed)
        self.table.setColumnWidth(1, 22)
        header.setSectionResizeMode(2, QHeaderView.Stretch)
        self.table.setMinimumHeight(120)
        self.table.setIconSize(QSize(14, 14))
        self.table.itemChanged.connect(self._on_item_changed)
        layout.addWidget(self.table)
        self.absent_check = QCheckBox("show labels absent from every image")
        self.absent_check.setToolTip("labels of the protocol that no pixel of the set has (hidden by default)")
        self.absent_check.toggled.connect(lambda _: self.refresh_table())
        layout.addWidget(self.absent_check)
        self.merge_button = push_button("Merge selected", self.merge_selected)
        self.background_button = push_button("To background", self.selected_to_background)
        self.undo_button = push_button("Undo", self.undo)
        add_row(layout, self.merge_button, self.background_button, self.undo_button)
        self.refine_button = push_button("Refine label...", self.refine_selected,
                                         "Correct the first selected label on the image under the slider with clicks "
                                         "(opens the Click refinement panel)")
        layout.addWidget(self.refine_button)
        return box

    def _build_export_panel(self) -> QWidget:
        box = QWidget()
        layout = QHBoxLayout(box)
        self.format_checks = {fmt: QCheckBox(label) for fmt, label in (("tiff", "TIFF"), ("png", "PNG"), ("nifti", "NIfTI"))}
        self.format_checks["tiff"].setChecked(True)
        for check in self.format_checks.values():
            layout.addWidget(check)
        self.export_button = push_button("Export...", self._export_dialog,
                                         "Label map + <name>.labels.json (names, colours) + <name>.areas.csv")
        layout.addWidget(self.export_button)
        self.save_protocol_button = push_button("Save protocol...", self.save_protocol,
                                                "The chosen protocol as a file (M, K, protocol, seed, weights' hash, "
                                                "names, colours, merges) to label more images the same way: "
                                                "the Study panel or napari-pancakes apply")
        layout.addWidget(self.save_protocol_button)
        return box

    # ----------------------------------------------------------------- messages
    def notify(self, message: str, error: bool = False) -> None:
        self.last_message = message
        (show_error if error else show_info)(message)

    def confirm(self, message: str) -> bool:
        """Ask the user (replaced by a stub in tests)."""
        answer = QMessageBox.question(self, "napari-pancakes", message, QMessageBox.Yes | QMessageBox.No, QMessageBox.No)
        return answer == QMessageBox.Yes

    # ----------------------------------------------------------------- run
    def _refresh_layer_choices(self, event=None) -> None:
        current = self.layer_combo.currentText()
        names = [ly.name for ly in self.viewer.layers if _is_input_image(ly)]
        keep = refill_combo(self.layer_combo, names, names[-1] if names else "")
        if keep != current:
            self._on_layer_changed(keep)
        removed = getattr(event, "value", None) if getattr(event, "type", "") == "removed" else None
        if removed is not None and tag(removed) and not self._adding:  # a protocol/chosen layer was deleted
            self.refresh_gallery()
            self.refresh_table()

    def _follow_new_image(self, event=None) -> None:
        """A newly added image (opened sample, dropped file) becomes the one to segment."""
        layer = getattr(event, "value", None)
        if _is_input_image(layer) and not self.busy:
            self.layer_combo.setCurrentText(layer.name)

    def _follow_selected_image(self, event=None) -> None:
        """Selecting an image in the layer list makes it the one to segment."""
        layer = getattr(event, "value", None)
        if _is_input_image(layer) and layer.name != self.layer_combo.currentText() and not self.busy:
            self.layer_combo.setCurrentText(layer.name)

    def _on_layer_changed(self, name: str) -> None:
        if name and self.controller.protocols(name):
            self.controller.image_name = name
            self.refresh_gallery()
            self.refresh_table()

    def selected_layer(self):
        name = self.layer_combo.currentText()
        return self.viewer.layers[name] if name in self.viewer.layers else None

    @property
    def busy(self) -> bool:
        """A run is computing or its layers are still being added."""
        return self.worker is not None or self._adding

    def start_run(self) -> bool:
        """Validate the choices and start the worker; False (and a message) if they are not valid."""
        if self.busy:
            self.notify("a run is already in progress; cancel it first", error=True)
            return False
        try:
            request = self.controller.prepare(self.selected_layer(), self.m_spin.value(), self.k_spin.value(),
                                              self.seed_spin.value())
        except ValueError as exc:
            self.notify(str(exc), error=True)
            return False
        self.progress.setRange(0, len(request.images))
        self.progress.setValue(0)
        self._run_started = time.perf_counter()
        self._encoded_in_run = False
        self.worker = _run_in_thread(self.controller, request)
        self.worker.yielded.connect(self._on_progress)
        self.worker.returned.connect(self._on_returned)
        self.worker.aborted.connect(self._on_aborted)
        self.worker.finished.connect(self._on_finished)
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.worker.start()
        return True

    def cancel_run(self) -> None:
        """Ask the worker to stop after the current image; nothing is added."""
        if self.worker is not None:
            self.worker.quit()
            self.cancel_button.setEnabled(False)

    def _on_progress(self, value) -> None:
        phase, done, total = value
        self._encoded_in_run |= phase == "encode"
        self.progress.setFormat({"load": "loading the model...", "encode": "network: %v / %m images"}.get(
            phase, "labelling: %v / %m images"))
        self.progress.setRange(0, total)
        self.progress.setValue(done)

    def _on_returned(self, result) -> None:
        if isinstance(result, Failure):
            self.notify(f"Pancakes run failed: {result.exc}", error=True)
            return
        try:
            steps = self.controller.apply_steps(result, confirm=self.confirm)
        except Exception as exc:
            self.notify(f"could not add the protocols: {exc}", error=True)
            return
        self._adding = True
        self.run_button.setEnabled(False)
        self._add_next(steps, result.image_name, [])

    def _add_next(self, steps, image_name: str, added: list) -> None:
        """Add one protocol layer, then yield to the event loop (the viewer stays responsive)."""
        try:
            layer = next(steps)  # None after removing an old layer
            if layer is not None:
                added.append(layer)
        except StopIteration:
            self._adding = False
            self.run_button.setEnabled(self.worker is None)
            if not added:
                self.notify("kept the previous (edited) protocols; the new run was discarded")
                return
            seconds = time.perf_counter() - self._run_started
            how = "" if self._encoded_in_run else " (re-labelled from the cached network output)"
            single = sum(bool(tag(ly).get("single_label")) for ly in added)
            note = f"; {single} use{'s' * (single == 1)} only one label (listed last)" if single else ""
            self.progress.setFormat(f"done: {len(added)} protocols in {seconds:.1f} s")
            self.notify(f"{len(added)} protocols of '{image_name}' in {seconds:.1f} s{how}{note}. "
                        "N / H step through them, U uses the one shown")
            self.refresh_gallery()
            return
        except Exception as exc:  # e.g. the image layer was removed while the worker ran
            self._adding = False
            self.run_button.setEnabled(self.worker is None)
            self.notify(f"could not add the protocols: {exc}", error=True)
            return
        QTimer.singleShot(0, lambda: self._add_next(steps, image_name, added))

    def _on_aborted(self) -> None:
        self.notify("run cancelled; nothing was changed")

    def _on_finished(self) -> None:
        self.worker = None
        self.run_button.setEnabled(not self._adding)
        self.cancel_button.setEnabled(False)

    # ----------------------------------------------------------------- browsing
    def refresh_gallery(self) -> None:
        """One thumbnail button per protocol, on the image under the slider."""
        for button in self.gallery_buttons:
            self.gallery_layout.removeWidget(button)
            button.deleteLater()
        self.gallery_buttons = []
        protocols = self.controller.protocols() if self.controller.image_name else []
        size, columns = (THUMB, 4) if len(protocols) <= 8 else (THUMB * 3 // 4, 4)  # M up to 32: more rows, same width
        thumbs = self.controller.thumbnails(size) if protocols else []
        self._shown_slice = self.controller.current_slice() if protocols else None
        for i, (layer, rgba) in enumerate(zip(protocols, thumbs)):
            button = QToolButton()
            button.setToolButtonStyle(Qt.ToolButtonTextUnderIcon)
            button.setIcon(QIcon(_pixmap(rgba)))
            button.setIconSize(QSize(size, size))
            info = tag(layer)
            used = info.get("labels_in_use")
            button.setText(f"{info['protocol']}" + ("" if used is None else f"\n{used} label" + "s" * (used != 1)))
            effective = info.get("effective_labels")
            button.setToolTip(f"{layer.name}: {used} of {info['k']} labels in use" + (
                f", as even as {effective:.1f} equal labels (protocols are sorted by this)" if effective else "") + (
                " - one label everywhere: nothing to see" if info.get("single_label") else ""))
            button.setCheckable(True)
            button.setChecked(i == self.controller.current)
            button.clicked.connect(lambda _=False, i=i: self.show_protocol(i))
            self.gallery_layout.addWidget(button, i // columns, i % columns)
            self.gallery_buttons.append(button)

    def _on_slice_changed(self, event=None) -> None:
        if self.controller.image_name and self.controller.protocols():
            if self.controller.current_slice() != self._shown_slice:
                self.refresh_gallery()
                self.refresh_table()

    def show_protocol(self, index: int) -> None:
        if not self.controller.protocols():
            self.notify("no protocols to step through yet: choose an image and press Run")
            return
        self.grid_check.setChecked(False)
        self.controller.show_protocol(index)
        for i, button in enumerate(self.gallery_buttons):
            button.setChecked(i == self.controller.current)

    def step(self, delta: int) -> None:
        self.show_protocol(self.controller.current + delta)

    def set_grid(self, enabled: bool) -> None:
        """Grid mode with every protocol's name (hence its number) written in its tile."""
        for layer in self.controller.protocols():
            layer.name_overlay.font_size = 7  # "<image> protocol m (K=k)" fits a tile
            layer.name_overlay.visible = bool(enabled)
        self.controller.set_grid(enabled)

    def _bind_keys(self) -> None:
        actions = {"n": lambda viewer: self.step(1), "h": lambda viewer: self.step(-1), "u": lambda viewer: self.choose()}
        for key, func in actions.items():
            self.viewer.bind_key(key, func, overwrite=True)

    # ----------------------------------------------------------------- choosing and naming
    def choose(self) -> None:
        try:
            chosen = self.controller.choose(confirm=self.confirm)
        except ValueError as exc:
            self.notify(str(exc), error=True)
            return
        if chosen is not None:
            self.notify(f"'{chosen.name}' is the working label map: name, merge and export it")
            # painting, click refinement (Accept) or any other change of the pixels changes the
            # areas: keep the table in step, once per event-loop turn
            for emitter in (chosen.events.paint, chosen.events.data, chosen.events.set_data, chosen.events.features):
                emitter.connect(self._schedule_table_refresh)
                self._connections.append((emitter, self._schedule_table_refresh))
        self.refresh_table()

    def _schedule_table_refresh(self, event=None) -> None:
        if not self._table_pending:
            self._table_pending = True
            QTimer.singleShot(0, self._scheduled_table_refresh)

    def _scheduled_table_refresh(self) -> None:
        self._table_pending = False
        self.refresh_table()

    def refresh_table(self) -> None:
        """Fill the label table from the chosen layer (areas on the image under the slider)."""
        try:
            layer = self.controller.working()
        except ValueError:
            layer = None
        rows = self._label_rows(layer) if layer is not None else []
        if not self.absent_check.isChecked():
            rows = [row for row in rows if row["present_in"] > 0]
        s = self.controller.current_slice(layer) if layer is not None else 0
        unit = _area_unit(layer)
        self.table.horizontalHeaderItem(5).setText(f"area ({unit})")
        # with pixel units and unit scale the area repeats the pixel count: hide it
        self.table.setColumnHidden(5, layer is None or (unit == "px²" and all(float(v) == 1 for v in layer.scale)))
        self._filling_table = True
        selected = set(self.selected_labels())
        self.table.clearSelection()
        self.table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            n_images = len(row["per_image_pixels"])
            cells = [
                _item(str(row["label"])),
                _item("", color=row["color"]),
                _item(row["name"], editable=True),
                _item(f"{row['present_in']} / {n_images}"),
                _item(f"{row['per_image_pixels'][s]:,}"),
                _item(_format_area(row["per_image_area"][s])),
            ]
            for c, item in enumerate(cells):
                if c >= 3:
                    item.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter)
                self.table.setItem(r, c, item)
        for r, row in enumerate(rows):  # keep the user's selection across refreshes
            if row["label"] in selected:
                _add_row_to_selection(self.table, r)
        self._filling_table = False

    def _label_rows(self, layer) -> list[dict]:
        """Label table rows, measured again only when the pixels, names or scale changed
        (moving the slider only picks another column of the cached per-image areas)."""
        key = (id(layer), checksum(layer.data), tuple(layer.features["name"]) if "name" in layer.features else (),
               tuple(layer.scale))
        if self._table_cache is None or self._table_cache[0] != key:
            self._table_cache = (key, self.controller.label_table(layer))
        return self._table_cache[1]

    def _on_item_changed(self, item: QTableWidgetItem) -> None:
        if self._filling_table or item.column() != 2:
            return
        label = int(self.table.item(item.row(), 0).text())
        try:
            self.controller.rename(label, item.text())
        except ValueError as exc:
            self.notify(str(exc), error=True)
            self.refresh_table()

    def selected_labels(self) -> list[int]:
        rows = sorted({i.row() for i in self.table.selectedIndexes()})
        return [int(self.table.item(r, 0).text()) for r in rows]

    def merge_selected(self) -> None:
        labels = self.selected_labels()
        if self._edit(lambda: self.controller.merge(labels)):
            rest = ", ".join(str(v) for v in sorted(labels)[1:])
            self.notify(f"merged label{'s' * (len(labels) > 2)} {rest} into label {min(labels)}; Undo reverts it")

    def selected_to_background(self) -> None:
        labels = self.selected_labels()
        if not labels:
            self.notify("select a label in the table first", error=True)
            return
        if self._edit(lambda: [self.controller.to_background(label) for label in labels]):
            self.notify(f"label{'s' * (len(labels) > 1)} {', '.join(map(str, labels))} sent to the background (0); "
                        "Undo reverts it")

    def refine_selected(self):
        """Open (or reuse) the Click refinement dock widget on the chosen label map, its image,
        the first selected label and the image under the slider. Returns that widget, or None
        (with a message) when no protocol is chosen, no label is selected or the image is gone."""
        try:
            layer = self.controller.working()
        except ValueError as exc:
            self.notify(str(exc), error=True)
            return None
        labels = self.selected_labels()
        if not labels:
            self.notify("select a label in the table first", error=True)
            return None
        image = self.controller.source_image(layer)
        if image is None:
            self.notify(f"the image '{tag(layer).get('source')}' of '{layer.name}' is no longer in the viewer", error=True)
            return None
        widget = self._refine_widget()
        if not widget.set_target(layer, image, labels[0], self.controller.current_slice(layer),
                                 runner_up=lambda: self.controller.runner_up(layer)):
            self.notify(widget.last_message, error=True)
        return widget

    def _refine_widget(self):
        """The viewer's docked RefineWidget (shown and raised), docked first if there is none."""
        from .refine_widget import RefineWidget

        window = self.viewer.window
        widget = next((w for w in window.dock_widgets.values() if isinstance(w, RefineWidget)), None)
        if widget is None:
            try:  # through the manifest: the same dock as Plugins > ... > Click refinement
                _, widget = window.add_plugin_dock_widget(PLUGIN_NAME, REFINE_WIDGET_NAME)
            except (LookupError, TypeError, ValueError):  # plugin not registered with npe2
                widget = None
            if not isinstance(widget, RefineWidget):
                widget = RefineWidget(self.viewer)
                window.add_dock_widget(widget, name=REFINE_WIDGET_NAME)
        dock = widget.parent()
        if dock is not None:
            dock.show()
            dock.raise_()
        return widget

    def undo(self) -> None:
        done = self.controller.undo()
        self.notify(f"undid {done}" if done else "nothing to undo")
        self.refresh_table()

    def _edit(self, action) -> bool:
        try:
            action()
            ok = True
        except ValueError as exc:
            self.notify(str(exc), error=True)
            ok = False
        self.refresh_table()
        return ok

    # ----------------------------------------------------------------- export
    def _export_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export chosen label map (name without extension)", "", "All files (*)")
        if path:
            self.export_to(path)

    def export_to(self, stem: str, formats=None) -> dict | None:
        """Export the chosen layer; asks before overwriting. Returns the written paths or None."""
        formats = formats or [fmt for fmt, check in self.format_checks.items() if check.isChecked()]
        try:
            try:
                written = self.controller.export(stem, formats=formats)
            except FileExistsError:
                if not self.confirm(_overwrite_question(stem, formats, self.controller.working())):
                    self.notify("export cancelled; no file was changed")
                    return None
                written = self.controller.export(stem, formats=formats, overwrite=True)
        except (ValueError, OSError) as exc:
            self.notify(f"export failed: {exc}", error=True)
            return None
        n = sum(len(v) for v in written.values())
        self.notify(f"wrote {n} files next to {written['names'][0].parent}")
        return written

    def save_protocol(self, path: str | None = None):
        """Save the chosen label map's protocol (else the protocol shown) as JSON, through the
        study controller's :meth:`~.study.StudyController.save_protocol` (``Protocol.save``);
        asks before replacing a file. Returns the saved Protocol, or None (with a message)."""
        from .study import StudyController

        try:
            layer = self.controller.working()
        except ValueError:
            shown = self.controller.protocols()
            if not shown:
                self.notify("no protocol yet: run Pancakes on an image and choose a protocol first", error=True)
                return None
            layer = shown[self.controller.current % len(shown)]
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Save protocol", "", "Protocol (*.json)")
            if not path:
                return None
        overwrite = Path(path).exists()
        if overwrite and not self.confirm(f"{path} exists. Replace it?"):
            self.notify("protocol not saved; no file was changed")
            return None
        try:
            protocol = StudyController(self.viewer, model=self.controller.model).save_protocol(layer, path, overwrite)
        except (ValueError, OSError) as exc:
            self.notify(f"could not save the protocol: {exc}", error=True)
            return None
        self.notify(f"saved the protocol of '{layer.name}' to {path}: apply it with the Study panel or "
                    "napari-pancakes apply")
        return protocol

    def closeEvent(self, event) -> None:
        self.cancel_run()
        _release(self.viewer, self._connections)
        super().closeEvent(event)


# --------------------------------------------------------------------- small Qt helpers
def _release(viewer, connections) -> None:
    """Unbind our shortcut letters and disconnect our viewer callbacks (idempotent)."""
    for key in SHORTCUTS:
        try:
            viewer.bind_key(key, None)
        except (KeyError, ValueError, TypeError):
            pass
    for emitter, callback in connections:
        try:
            emitter.disconnect(callback)
        except (KeyError, ValueError, TypeError, RuntimeError):
            pass


def _is_input_image(layer) -> bool:
    """An Image layer the explorer can segment (not one of ours, not Points/Labels/...)."""
    from napari.layers import Image

    return isinstance(layer, Image) and not tag(layer)


def _section(title: str, content: QWidget) -> QWidget:
    """A collapsible section (expanded), so a small screen can fold what it does not need."""
    from superqt import QCollapsible

    section = QCollapsible(title)
    section.setDuration(0)
    section.addWidget(content)
    section.expand(animate=False)
    return section


def _overwrite_question(stem, formats, layer) -> str:
    """What replacing would touch: the new export's files that exist, and the earlier export's
    label files (replacing removes them, so none stays mixed with the new ones)."""
    n_images = layer.data.shape[0] if layer.ndim == 3 else 1
    paths = export_paths(stem, tuple(formats), n_images)
    new = [p for group in paths.values() for p in group if p.exists()]
    old = [p for p in manifest_files(paths["names"][0]) if p.exists() and p.name not in {q.name for q in new}]
    listed = ", ".join(p.name for p in new[:4]) + (f" and {len(new) - 4} more" if len(new) > 4 else "")
    gone = f"; the earlier export's {', '.join(p.name for p in old[:3])}{' ...' if len(old) > 3 else ''} " \
           "will be removed" if old else ""
    return f"{len(new)} of the export files already exist ({listed}){gone}. Replace them?"


def _format_area(area: float) -> str:
    """Areas for people: thousands separators, three significant digits for small values."""
    area = float(area)
    if area >= 100:
        return f"{area:,.0f}"
    return f"{area:.3g}" if area else "0"


def _add_row_to_selection(table: QTableWidget, row: int) -> None:
    from qtpy.QtCore import QItemSelectionModel

    index = table.model().index(row, 0)
    table.selectionModel().select(index, QItemSelectionModel.Select | QItemSelectionModel.Rows)


def _spin(lo: int, hi: int, value: int, tip: str) -> QSpinBox:
    spin = QSpinBox()
    spin.setRange(lo, hi)
    spin.setValue(value)
    spin.setToolTip(tip)
    return spin


def _item(text: str, editable: bool = False, color=None) -> QTableWidgetItem:
    item = QTableWidgetItem(text)
    flags = Qt.ItemIsSelectable | Qt.ItemIsEnabled | (Qt.ItemIsEditable if editable else Qt.NoItemFlags)
    item.setFlags(flags)
    if color is not None:  # an icon, not a background: it stays visible when the row is selected
        swatch = QPixmap(14, 14)
        swatch.fill(QColor.fromRgbF(*[float(c) for c in color[:3]]))
        item.setIcon(QIcon(swatch))
    return item


def _pixmap(rgba: np.ndarray) -> QPixmap:
    rgba = np.ascontiguousarray(rgba, dtype=np.uint8)
    h, w, _ = rgba.shape
    image = QImage(rgba.data, w, h, 4 * w, QImage.Format_RGBA8888)
    return QPixmap.fromImage(image.copy())


def _area_unit(layer) -> str:
    """The area unit of a layer, short: "µm²", "mm²" ("px²" for napari's default pixel units)."""
    units = getattr(layer, "units", None) if layer is not None else None
    if units is None:
        return "px²"
    unit = units[-1]
    try:
        short = format(unit, "~")  # pint: micrometer -> µm
    except (TypeError, ValueError):
        short = str(unit)
    short = short or str(unit)
    return "px²" if short in ("pixel", "px") else f"{short}²"
