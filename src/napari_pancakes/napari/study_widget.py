"""The study dock: save a protocol, apply it to another layer, propagate a correction, population analysis.

A thin Qt view on :class:`.study.StudyController`. Errors end as a message in the dock and a
napari notification, never as a traceback; nothing is overwritten without a confirmation.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHeaderView,
    QLabel,
    QMessageBox,
    QProgressBar,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..protocol import iter_apply
from ._qt import Failure, add_row, push_button, refill_combo
from .study import StudyController, image_layers, protocol_layers


@thread_worker
def _apply_in_thread(protocol, data, model):
    """Label the images in batches; yields (done, total); returns the (S, H, W) or (H, W) labels."""
    try:
        images = [data] if data.ndim == 2 else list(data)
        labels = []
        for i, lab in iter_apply(protocol, images, model=model):
            labels.append(lab)
            yield i + 1, len(images)
    except Exception as exc:  # reported by _apply_done
        return Failure(exc)
    return labels[0] if data.ndim == 2 else np.stack(labels)


@thread_worker
def _propagate_in_thread(controller, job):
    """The network part of a propagation, off the GUI thread; errors are returned, not raised."""
    try:
        return controller.compute_propagate(job)
    except Exception as exc:  # reported by _propagate_done
        return Failure(exc)


def _is_lazy(data) -> bool:
    return type(data).__module__.startswith("dask")


TABLE_COLUMNS = ["#", "prot.", "label", "effect", "q"]


class StudyWidget(QWidget):
    """Dock widget: from a chosen protocol to a study.

    Arguments:
        napari_viewer: the viewer (npe2 passes it).
        model: inject a model (tests); None loads the bundled weights when first needed.
    """

    def __init__(self, napari_viewer, model=None):
        super().__init__()
        self.viewer = napari_viewer
        self.controller = StudyController(napari_viewer, model=model)
        self.protocol = None  # the loaded protocol (Apply uses it, else the selected layer's)
        self.table_path: str | None = None
        self.last_message = ""
        self.worker = None
        self.confirm = self._ask  # replaced by tests
        self.ask_path = self._ask_path  # replaced by tests: (title, filter, save) -> path or ""

        layout = QVBoxLayout(self)
        layout.addWidget(self._build_protocol_panel())
        layout.addWidget(self._build_correct_panel())
        layout.addWidget(self._build_analysis_panel())
        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        layout.addStretch(1)
        layers = self.viewer.layers
        for event in (layers.events.inserted, layers.events.removed, layers.events.reordered):
            event.connect(self.refresh_layers)
        self.refresh_layers()

    # ----------------------------------------------------------------- panels
    def _build_protocol_panel(self) -> QGroupBox:
        box = QGroupBox("Protocol")
        form = QFormLayout(box)
        self.source_combo = QComboBox()
        self.source_combo.setToolTip("A protocol, '... chosen' or applied label layer")
        form.addRow("labels", self.source_combo)
        self.save_button = push_button("Save protocol...", self.save_protocol,
                                       "Write M, K, the protocol, the seed, the weights' hash, names, colours and merges as JSON")
        self.load_button = push_button("Load protocol...", self.load_protocol)
        add_row(form, self.save_button, self.load_button)
        self.protocol_label = QLabel("protocol: the selected labels layer's")
        form.addRow(self.protocol_label)
        self.target_combo = QComboBox()
        self.target_combo.setToolTip("The image layer to label with the protocol (a 2D image, a stack, a volume, lazy data)")
        form.addRow("apply to", self.target_combo)
        self.apply_button = push_button("Apply to layer", self.apply)
        self.cancel_button = push_button("Cancel", self.cancel_apply)
        self.cancel_button.setEnabled(False)
        add_row(form, self.apply_button, self.cancel_button)
        self.progress = QProgressBar()
        self.progress.setFormat("%v / %m images")
        form.addRow(self.progress)
        return box

    def _build_correct_panel(self) -> QGroupBox:
        box = QGroupBox("Correct once, fix everywhere")
        layout = QVBoxLayout(box)
        box.setToolTip("Paint or refine the selected label on one image, then propagate: the label's direction "
                       "is learnt from that image and every image is re-labelled.")
        self.propagate_button = push_button("Propagate to all images", self.propagate)
        self.undo_button = push_button("Undo propagation", self.undo)
        add_row(layout, self.propagate_button, self.undo_button)
        return box

    def _build_analysis_panel(self) -> QGroupBox:
        box = QGroupBox("Population analysis")
        layout = QVBoxLayout(box)
        form = QFormLayout()
        self.image_combo = QComboBox()
        self.image_combo.setToolTip("The image set whose explorer protocols are measured (one row per image in the table)")
        form.addRow("image set", self.image_combo)
        self.table_button = push_button("Outcome table...", self.open_table)
        self.table_name = QLabel("none")
        add_row(form, self.table_button, self.table_name, stretch={1: 1})
        self.outcome_combo = QComboBox()
        form.addRow("outcome", self.outcome_combo)
        self.measure_combo = QComboBox()
        self.measure_combo.addItems(["area", "intensity"])
        form.addRow("measure", self.measure_combo)
        layout.addLayout(form)
        self.analyze_button = push_button("Rank labels", self.analyze)
        layout.addWidget(self.analyze_button)
        self.table = QTableWidget(0, len(TABLE_COLUMNS))
        self.table.setHorizontalHeaderLabels(TABLE_COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.Stretch)
        self.table.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.table.horizontalHeaderItem(3).setToolTip("Spearman's rho; rank-biserial (2 groups); epsilon² (3+ groups)")
        self.table.horizontalHeaderItem(4).setToolTip("Benjamini-Hochberg corrected p over all labels tested")
        self.table.setMinimumHeight(120)
        self.table.itemSelectionChanged.connect(self._on_row_selected)
        layout.addWidget(self.table)
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(4.2, 3.0), dpi=72)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(230)
        layout.addWidget(self.canvas)
        self.export_table_button = push_button("Export table...", self.export_table)
        self.export_plot_button = push_button("Export plot...", self.export_plot)
        add_row(layout, self.export_table_button, self.export_plot_button)
        return box

    # ----------------------------------------------------------------- layer choices
    def refresh_layers(self, event=None):
        for combo, layers in ((self.source_combo, protocol_layers(self.viewer)),
                              (self.target_combo, image_layers(self.viewer)),
                              (self.image_combo, image_layers(self.viewer))):
            refill_combo(combo, [ly.name for ly in layers])

    def _layer(self, combo, what: str):
        name = combo.currentText()
        if not name or name not in self.viewer.layers:
            raise ValueError(f"choose {what} first")
        return self.viewer.layers[name]

    # ----------------------------------------------------------------- actions
    def save_protocol(self, path: str | None = None) -> bool:
        try:
            layer = self._layer(self.source_combo, "a protocol or chosen labels layer")
            path = path or self.ask_path("Save protocol", "Protocol (*.json)", True)
            if not path:
                return False
            overwrite = Path(path).exists() and self.confirm(f"{path} exists. Replace it?")
            protocol = self.controller.save_protocol(layer, path, overwrite=overwrite)
        except Exception as exc:  # shown to the user, never a traceback
            return self._say(str(exc), False)
        return self._say(f"saved '{layer.name}' (model protocol {protocol.index + 1} of M={protocol.m}, K={protocol.k}) "
                         f"to {path}", True)

    def load_protocol(self, path: str | None = None) -> bool:
        try:
            path = path or self.ask_path("Load protocol", "Protocol (*.json)", False)
            if not path:
                return False
            self.protocol = self.controller.load_protocol(path)
        except Exception as exc:
            return self._say(str(exc), False)
        self.protocol_label.setText(f"protocol: {Path(path).name} (protocol {self.protocol.index + 1}, "
                                    f"M={self.protocol.m}, K={self.protocol.k})")
        return self._say(f"loaded {path}", True)

    @property
    def busy(self) -> bool:
        return self.worker is not None

    def apply(self) -> bool:
        """Apply the protocol to the chosen image layer: lazy layers at once (chunks are labelled
        when shown), others in a background worker with progress; Cancel stops between batches."""
        if self.busy:
            return self._say("an apply is running; wait or cancel it", False)
        try:
            image = self._layer(self.target_combo, "an image layer to apply to")
            protocol = self.protocol
            if protocol is None:
                protocol = self.controller.protocol_from_layer(self._layer(self.source_combo, "a protocol layer"))
            data = self.controller.prepare_apply(protocol, image)
            if _is_lazy(data):
                layer = self.controller.finish_apply(protocol, image, self.controller.apply_lazy(protocol, data))
                return self._say(f"applied protocol {protocol.index + 1} to '{image.name}' (lazy): layer '{layer.name}'",
                                 True)
        except Exception as exc:
            return self._say(str(exc), False)
        self.progress.setValue(0)
        self.worker = _apply_in_thread(protocol, data, self.controller.model)
        self.worker.yielded.connect(self._on_progress)
        self.worker.returned.connect(lambda result: self._apply_done(protocol, image, result))
        self.worker.finished.connect(self._worker_finished)
        self.apply_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.worker.start()
        return self._say(f"applying protocol {protocol.index + 1} to '{image.name}'...", True)

    def cancel_apply(self) -> bool:
        if self.worker is None:
            return False
        self.worker.quit()
        return self._say("apply cancelled; nothing was added", True)

    def _on_progress(self, value):
        done, total = value
        self.progress.setMaximum(total)
        self.progress.setValue(done)

    def _apply_done(self, protocol, image, result):
        if isinstance(result, Failure):
            self._say(str(result.exc), False)
            return
        if result is None:  # cancelled
            return
        try:
            layer = self.controller.finish_apply(protocol, image, result)
        except Exception as exc:
            self._say(str(exc), False)
            return
        self._say(f"applied protocol {protocol.index + 1} to '{image.name}': layer '{layer.name}'", True)

    def _worker_finished(self):
        self.worker = None
        self.apply_button.setEnabled(True)
        self.cancel_button.setEnabled(False)

    def propagate(self) -> bool:
        """Propagate the selected label's correction in a background worker (the viewer keeps
        drawing); the layer changes when it is done. True when it started."""
        if self.busy:
            return self._say("a job is running; wait for it to finish", False)
        try:
            layer = self.viewer.layers.selection.active
            if layer is None or layer not in protocol_layers(self.viewer):
                layer = self._layer(self.source_combo, "a labels layer")
            job = self.controller.prepare_propagate(layer)
        except Exception as exc:
            return self._say(str(exc), False)
        self.worker = _propagate_in_thread(self.controller, job)
        self.worker.returned.connect(self._propagate_done)
        self.worker.finished.connect(self._propagate_finished)
        for button in (self.propagate_button, self.undo_button, self.apply_button):
            button.setEnabled(False)
        self.worker.start()
        return self._say(f"propagating label {job['label']} of '{layer.name}' to every image...", True)

    def _propagate_done(self, job):
        if isinstance(job, Failure):
            self._say(str(job.exc), False)
            return
        try:
            record = self.controller.finish_propagate(job)
        except Exception as exc:  # e.g. the layer was removed while the worker ran
            self._say(str(exc), False)
            return
        self._say(record.summary() + " (Undo propagation restores it)", True)

    def _propagate_finished(self):
        self.worker = None
        for button in (self.propagate_button, self.undo_button, self.apply_button):
            button.setEnabled(True)

    def undo(self) -> bool:
        record = self.controller.undo()
        if record is None:
            return self._say("nothing to undo", False)
        return self._say(f"undid the propagation of label {record.label}", True)

    def open_table(self, path: str | None = None) -> bool:
        from ..analysis import read_outcomes

        try:
            path = path or self.ask_path("Outcome table", "CSV (*.csv *.tsv *.txt)", False)
            if not path:
                return False
            table = read_outcomes(path)
        except Exception as exc:
            return self._say(str(exc), False)
        self.table_path = str(path)
        self.table_name.setText(Path(path).name)
        self.outcome_combo.clear()
        self.outcome_combo.addItems(table.outcomes())
        return self._say(f"{len(table.rows)} rows; image column '{table.id_column}'", True)

    def analyze(self) -> bool:
        try:
            if self.table_path is None:
                raise ValueError("open an outcome table first (one row per image, an image name or index column)")
            image = self._layer(self.image_combo, "the image set")
            ranking = self.controller.analyze(image, self.table_path, self.outcome_combo.currentText(),
                                              measure=self.measure_combo.currentText())
        except Exception as exc:
            return self._say(str(exc), False)
        self._fill_table(ranking)
        if ranking.rows:
            self.table.selectRow(0)
        dropped = f", {ranking.dropped} image(s) without a value left out" if ranking.dropped else ""
        return self._say(f"{len(ranking.rows)} labels tested on {ranking.n_images - ranking.dropped} images{dropped}", True)

    def _fill_table(self, ranking):
        self.table.setRowCount(len(ranking.rows))
        for i, r in enumerate(ranking.rows):
            values = [r["rank"], r["protocol"], r["label"], f"{r['effect']:+.2f}", f"{r['q']:.2g}"]
            for j, v in enumerate(values):
                item = QTableWidgetItem(str(v))
                item.setToolTip(f"{r['name']}: {r['test']}, statistic {r['statistic']:.3g}, p = {r['p']:.3g}, "
                                f"n = {r['n']}, present in {r['present_in']} images")
                self.table.setItem(i, j, item)

    def _on_row_selected(self):
        rows = {i.row() for i in self.table.selectedIndexes()}
        if not rows or self.controller.ranking is None:
            return
        row = min(rows)
        self.controller.show_row(row)
        from ..analysis import plot_association

        plot_association(self.controller.measurements, self.controller.ranking, row, figure=self.figure)
        self.canvas.draw_idle()

    def export_table(self, path: str | None = None) -> bool:
        return self._export_ranking("Export table", "CSV (*.csv)", path,
                                    lambda p, overwrite: self.controller.ranking.to_csv(p, overwrite=overwrite))

    def export_plot(self, path: str | None = None) -> bool:
        from ..analysis import save_plot

        return self._export_ranking("Export plot", "PNG (*.png)", path,
                                    lambda p, overwrite: save_plot(self.figure, p, overwrite=overwrite))

    def _export_ranking(self, title: str, file_filter: str, path: str | None, write) -> bool:
        """Ask for a path (unless given), confirm a replacement, ``write(path, overwrite)``."""
        try:
            if self.controller.ranking is None:
                raise ValueError("rank the labels first")
            path = path or self.ask_path(title, file_filter, True)
            if not path:
                return False
            write(path, Path(path).exists() and self.confirm(f"{path} exists. Replace it?"))
        except Exception as exc:
            return self._say(str(exc), False)
        return self._say(f"wrote {path}", True)

    # ----------------------------------------------------------------- helpers
    def _say(self, message: str, ok: bool) -> bool:
        self.last_message = message
        self.status.setText(message)
        (show_info if ok else show_error)(message)
        return ok

    def _ask(self, message: str) -> bool:
        return QMessageBox.question(self, "napari-pancakes", message) == QMessageBox.Yes

    def _ask_path(self, title: str, filter: str, save: bool) -> str:
        dialog = QFileDialog.getSaveFileName if save else QFileDialog.getOpenFileName
        path, _ = dialog(self, title, "", filter)
        return path
