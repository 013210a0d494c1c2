"""The dock widget on a real napari viewer: run in a worker, browse, choose, rename, export, cancel, bad input."""
import os
import sys

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_pancakes.napari.controller import tag
from napari_pancakes.napari.sample_data import synthetic_blobs

WAIT_MS = 60_000

# napari's canvas needs OpenGL; on Linux that needs an X server (CI: xvfb-run / pytest-xvfb).
pytestmark = pytest.mark.skipif(
    sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")),
    reason="no display for OpenGL: run under xvfb-run",
)


@pytest.fixture(scope="module")
def model():
    from napari_pancakes.io_weights import DEFAULT_WEIGHTS, load_model
    from napari_pancakes.model import Pancakes

    return load_model(device="cpu") if DEFAULT_WEIGHTS.is_file() else Pancakes().eval()


@pytest.fixture
def widget(make_napari_viewer, model):
    from napari_pancakes.napari.explorer import ExplorerWidget

    viewer = make_napari_viewer()
    w = ExplorerWidget(viewer, model=model)
    viewer.window.add_dock_widget(w)
    w.confirm = lambda message: True  # no modal dialogs in tests
    return w


def _run(qtbot, w, m=2, k=3):
    assert w.start_run(), w.last_message
    qtbot.waitUntil(lambda: not w.busy, timeout=WAIT_MS)


def _protocols(viewer):
    return [ly for ly in viewer.layers if tag(ly).get("role") == "protocol"]


def test_manifest_opens_widget_and_sample(make_napari_viewer):
    viewer = make_napari_viewer()
    dock, widget = viewer.window.add_plugin_dock_widget("napari-pancakes", "Protocol explorer")
    assert type(widget).__name__ == "ExplorerWidget"
    viewer.open_sample("napari-pancakes", "nuclei")
    assert viewer.layers[-1].data.shape == (6, 256, 256)
    assert widget.layer_combo.currentText() == "nuclei"
    from napari_pancakes.model import K_RANGE, M_RANGE

    assert (widget.m_spin.value(), widget.k_spin.value()) == (8, 20)
    assert (widget.m_spin.minimum(), widget.m_spin.maximum()) == M_RANGE
    assert (widget.k_spin.minimum(), widget.k_spin.maximum()) == K_RANGE


def test_run_browse_choose_rename_export(qtbot, widget, tmp_path):
    w, viewer = widget, widget.viewer
    viewer.open_sample("napari-pancakes", "nuclei")
    w.m_spin.setValue(2)
    w.k_spin.setValue(3)
    _run(qtbot, w)
    layers = _protocols(viewer)
    assert [ly.name for ly in layers] == ["nuclei protocol 1 (K=3)", "nuclei protocol 2 (K=3)"]
    assert all(ly.data.shape == (6, 256, 256) for ly in layers)
    assert w.progress.value() == 6 and len(w.gallery_buttons) == 2

    w.gallery_buttons[1].click()
    assert [ly.visible for ly in layers] == [False, True]
    w.step(1)  # wraps around
    assert [ly.visible for ly in layers] == [True, False]
    canvas = viewer.window._qt_viewer.canvas.native
    qtbot.keyClick(canvas, Qt.Key_N)  # shortcut: next protocol
    assert [ly.visible for ly in layers] == [False, True]
    qtbot.keyClick(canvas, Qt.Key_H)  # shortcut: previous protocol
    assert [ly.visible for ly in layers] == [True, False]

    w.choose()
    chosen = viewer.layers["nuclei chosen"]
    assert w.table.rowCount() >= 1
    label = int(w.table.item(0, 0).text())
    w.table.item(0, 2).setText("nucleus")  # edit the name cell as a user would
    feats = chosen.features
    assert feats.loc[feats["index"] == label, "name"].item() == "nucleus"

    written = w.export_to(str(tmp_path / "chosen"), formats=["tiff"])
    assert written is not None
    viewer.open(str(written["names"][0]), plugin="napari-pancakes")
    back = viewer.layers[-1]
    np.testing.assert_array_equal(back.data, chosen.data)
    assert "nucleus" in list(back.features["name"])

    # napari's own File > Save with this plugin's writer keeps the names too
    viewer.layers.selection = {chosen}
    saved = viewer.layers.save(str(tmp_path / "saved.tif"), selected=True, plugin="napari-pancakes")
    assert str(tmp_path / "saved.labels.json") in saved

    # overwriting asks, in words for people (not the API's "pass overwrite=True"); declining writes nothing
    asked = []
    w.confirm = lambda message: asked.append(message) or False
    assert w.export_to(str(tmp_path / "chosen"), formats=["tiff"]) is None
    assert "chosen.tif" in asked[0] and "Replace them?" in asked[0] and "overwrite=" not in asked[0]
    # replacing a TIFF export by a PNG one says the old TIFF goes, and removes it
    w.confirm = lambda message: asked.append(message) or True
    assert w.export_to(str(tmp_path / "chosen"), formats=["png"]) is not None
    assert "chosen.tif will be removed" in asked[-1]
    assert not (tmp_path / "chosen.tif").exists() and (tmp_path / "chosen_005.png").exists()


def test_save_protocol_button_writes_the_chosen_protocol(qtbot, widget, tmp_path):
    from napari_pancakes.protocol import Protocol

    w = widget
    assert w.save_protocol(str(tmp_path / "none.json")) is None and "no protocol yet" in w.last_message
    w.viewer.add_image(synthetic_blobs(n_images=2, size=48), name="blobs")
    w.m_spin.setValue(2)
    w.k_spin.setValue(3)
    _run(qtbot, w)
    w.show_protocol(1)
    w.choose()
    w.controller.rename(1, "cell")
    saved = w.save_protocol(str(tmp_path / "p.json"))
    assert saved is not None and "saved the protocol" in w.last_message
    back = Protocol.load(tmp_path / "p.json", model=w.controller.model)
    info = tag(w.controller.working())
    assert (back.m, back.k, back.index) == (2, 3, info["model_protocol"] - 1) and back.names[1] == "cell"
    w.confirm = lambda message: False  # an existing file is replaced only when the user says so
    before = (tmp_path / "p.json").read_text()
    w.controller.rename(1, "nucleus")
    assert w.save_protocol(str(tmp_path / "p.json")) is None
    assert (tmp_path / "p.json").read_text() == before
    assert w.save_protocol_button.isEnabled()


def test_run_twice_replaces(qtbot, widget):
    w, viewer = widget, widget.viewer
    viewer.add_image(synthetic_blobs(n_images=2, size=48), name="blobs")
    w.m_spin.setValue(2)
    w.k_spin.setValue(3)
    _run(qtbot, w)
    _run(qtbot, w)
    assert len(_protocols(viewer)) == 2 and len(viewer.layers) == 3


@pytest.mark.parametrize(
    "add, message",
    [
        (lambda v: None, "no image layer"),
        (lambda v: v.add_labels(np.zeros((16, 16), np.uint8), name="lab"), "no image layer"),  # not listed
        (lambda v: v.add_points(np.zeros((3, 2)), name="pts"), "no image layer"),
        (lambda v: v.add_image(np.zeros((2, 2, 16, 16)), name="4d"), "spatial dimensions"),
    ],
)
def test_bad_layer_choices_give_a_message(widget, add, message):
    w, viewer = widget, widget.viewer
    add(viewer)
    n_layers = len(viewer.layers)
    assert w.start_run() is False
    assert message in w.last_message and not w.busy
    assert len(viewer.layers) == n_layers
    items = [w.layer_combo.itemText(i) for i in range(w.layer_combo.count())]
    assert "lab" not in items and "pts" not in items


def test_image_box_follows_new_and_selected_images(widget):
    w, viewer = widget, widget.viewer
    first = viewer.add_image(np.zeros((2, 16, 16)), name="first")
    assert w.layer_combo.currentText() == "first"
    viewer.add_image(np.ones((2, 16, 16)), name="second")
    assert w.layer_combo.currentText() == "second"  # a newly opened image is the one to run on
    viewer.add_points(np.zeros((3, 3)), name="pts")
    assert w.layer_combo.currentText() == "second"
    viewer.layers.selection.active = first
    assert w.layer_combo.currentText() == "first"  # and so is the one selected in the layer list
    assert [w.layer_combo.itemText(i) for i in range(w.layer_combo.count())] == ["first", "second"]


def test_failed_run_shows_error_and_changes_nothing(qtbot, widget):
    w, viewer = widget, widget.viewer

    def broken_loader():
        raise FileNotFoundError("weights file not found: nowhere.safetensors")

    w.controller._model = None
    w.controller._model_loader = broken_loader
    viewer.add_image(synthetic_blobs(n_images=2, size=32), name="blobs")
    _run(qtbot, w)
    assert "weights file not found" in w.last_message and len(viewer.layers) == 1


def test_closing_the_widget_releases_keys_and_events(widget):
    w, viewer = widget, widget.viewer
    w.close()
    viewer.add_image(np.zeros((8, 8)), name="after close")  # no callback into the closed widget
    assert not any(str(k).lower() in ("n", "h", "u") for k in viewer.keymap)


def test_deleting_a_protocol_layer_updates_the_gallery(qtbot, widget):
    w, viewer = widget, widget.viewer
    viewer.add_image(synthetic_blobs(n_images=2, size=32), name="blobs")
    w.m_spin.setValue(3)
    w.k_spin.setValue(2)
    _run(qtbot, w)
    assert len(w.gallery_buttons) == 3
    viewer.layers.remove(_protocols(viewer)[1])
    assert len(w.gallery_buttons) == 2


def _refine_widgets(viewer):
    from napari_pancakes.napari.refine_widget import RefineWidget

    return [(name, wd) for name, wd in viewer.window.dock_widgets.items() if isinstance(wd, RefineWidget)]


def test_refine_label_opens_the_click_refinement_widget(qtbot, widget):
    w, viewer = widget, widget.viewer
    image = viewer.add_image(synthetic_blobs(n_images=3, size=48), name="blobs")
    w.m_spin.setValue(2)
    w.k_spin.setValue(3)
    _run(qtbot, w)
    w.choose()
    chosen = viewer.layers["blobs chosen"]
    viewer.dims.set_current_step(0, 2)  # the image under the slider is the one to refine
    row = w.table.rowCount() - 1
    label = int(w.table.item(row, 0).text())
    w.table.selectRow(row)
    assert w.selected_labels() == [label]
    w.refine_button.click()
    docked = _refine_widgets(viewer)
    name, refine = docked[0]
    assert len(docked) == 1 and "Click refinement" in name and "napari-pancakes" in name  # docked from the manifest
    assert refine.parent().isVisibleTo(viewer.window._qt_window)
    assert (refine.labels_combo.currentText(), refine.image_combo.currentText()) == (chosen.name, image.name)
    assert (refine.label_spin.value(), refine.slice_spin.value()) == (label, 2)
    assert "press Refine" in refine.last_message and refine.session is None

    # pressing it again reuses the docked widget with the new choice
    viewer.dims.set_current_step(0, 0)
    w.table.selectRow(0)
    first = int(w.table.item(0, 0).text())
    assert w.refine_selected() is refine and len(_refine_widgets(viewer)) == 1
    assert (refine.label_spin.value(), refine.slice_spin.value()) == (first, 0)


def test_refine_label_without_choice_or_selection_gives_a_message(qtbot, widget):
    w, viewer = widget, widget.viewer
    w.refine_button.click()  # nothing chosen yet
    assert "no chosen label map" in w.last_message and not _refine_widgets(viewer)
    viewer.add_image(synthetic_blobs(n_images=2, size=32), name="blobs")
    w.m_spin.setValue(2)
    w.k_spin.setValue(2)
    _run(qtbot, w)
    w.choose()
    w.table.clearSelection()
    w.refine_button.click()
    assert "select a label" in w.last_message and not _refine_widgets(viewer)


def _journey_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "docs" / "make_screenshots.py"
    spec = importlib.util.spec_from_file_location("make_screenshots", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_first_time_user_journey_end_to_end(make_napari_viewer, model, tmp_path):
    """sample -> run -> browse -> grid -> choose -> rename -> merge -> undo -> refine with clicks
    -> accept -> table -> export -> reopen -> re-run, through the real widgets (the journey the
    documentation screenshots are taken from), checking what a user would look at."""
    import csv

    from napari_pancakes.napari.explorer import ExplorerWidget

    viewer = make_napari_viewer()
    _, w = viewer.window.add_plugin_dock_widget("napari-pancakes", "Protocol explorer")
    assert isinstance(w, ExplorerWidget)
    w.controller._model = model
    w.confirm = lambda message: True
    states = {}
    for step, info in _journey_module().journey(viewer, w, tmp_path / "nuclei", m=8, k=20, timeout=WAIT_MS / 1000):
        states[step] = info
        protocols = _protocols(viewer)
        if step == "sample":
            image = info["image"]
            assert w.layer_combo.currentText() == "nuclei"  # the image box followed the new image
            low, high = image.contrast_limits
            assert image.data.min() <= low < high <= image.data.max()  # not a dark 0..255 window
        elif step == "run":
            assert len(protocols) == 8 and w.progress.value() == w.progress.maximum() == 6
            assert [ly.visible for ly in protocols] == [True] + [False] * 7
            assert viewer.layers.selection.active is protocols[0]
            first = tag(protocols[0])
            assert first["protocol"] == 1 and not first["single_label"] and len(np.unique(protocols[0].data)) > 1
            key = [(tag(ly)["single_label"], -tag(ly)["effective_labels"]) for ly in protocols]
            assert key == sorted(key)  # the most informative first; one-label protocols last
            assert [b.text().split("\n")[0] for b in w.gallery_buttons] == [str(i) for i in range(1, 9)]
            assert w.gallery_buttons[0].isChecked() and " s" in w.last_message and "protocols of 'nuclei'" in w.last_message
        elif step == "browse":
            i = info["index"]
            assert [ly.visible for ly in protocols] == [j == i for j in range(8)]
            assert [b.isChecked() for b in w.gallery_buttons] == [j == i for j in range(8)]
        elif step == "grid":
            assert viewer.grid.enabled and all(ly.visible and ly.name_overlay.visible for ly in protocols)
        elif step == "chosen":
            chosen = info["chosen"]
            order = list(viewer.layers)
            assert chosen.name == "nuclei chosen" and all(order.index(chosen) > order.index(ly) for ly in protocols)
            listed = {int(w.table.item(r, 0).text()) for r in range(w.table.rowCount())}
            assert listed == set(np.unique(chosen.data).tolist()) - {0}  # absent labels hidden
            headers = [w.table.horizontalHeaderItem(c).text() for c in range(6)]
            assert headers[3:5] == ["images", "pixels"]
        elif step == "renamed":
            r = _journey_module().row_of(w, info["label"])
            assert w.table.item(r, 2).text() == "nucleus"
            feats = info["chosen"].features
            assert feats.loc[feats["index"] == info["label"], "name"].item() == "nucleus"
        elif step == "merged":
            low, high = info["pair"]
            assert not np.any(info["chosen"].data == high) and np.any(info["chosen"].data == low)
            assert "merged" in w.last_message and _journey_module().row_of(w, high) is None
        elif step == "undone":
            np.testing.assert_array_equal(info["chosen"].data, info["before"])
            assert "undid merge" in w.last_message
        elif step == "refining":
            assert info["refine"].session is not None and len(info["clicks"]) >= 1
        elif step == "accepted":
            chosen, label, s = info["chosen"], info["label"], info["slice"]
            assert w.controller.current_slice(chosen) == s
            r = _journey_module().row_of(w, label)
            shown = int(w.table.item(r, 4).text().replace(",", ""))
            assert shown == int((chosen.data[s] == label).sum())  # the table is true after Accept
        elif step == "exported":
            chosen = info["chosen"]
            rows = list(csv.DictReader(open(info["written"]["areas"][0])))
            s, label = states["accepted"]["slice"], states["accepted"]["label"]
            row = next(r for r in rows if int(r["image"]) == s and int(r["label"]) == label)
            assert int(row["pixels"]) == int((chosen.data[s] == label).sum()) and row["name"] == "nucleus"
        elif step == "reopened":
            np.testing.assert_array_equal(info["layer"].data, info["chosen"].data)
            assert "nucleus" in list(info["layer"].features["name"])
        elif step == "rerun":
            chosen = info["chosen"]
            order = list(viewer.layers)
            assert chosen in viewer.layers and all(order.index(chosen) > order.index(ly) for ly in protocols)
            np.testing.assert_array_equal(chosen.data, states["reopened"]["layer"].data)  # untouched by the re-run
            assert viewer.layers.selection.active is protocols[0] and "re-labelled" in w.last_message
    assert list(states) == ["sample", "run", "browse", "grid", "chosen", "renamed", "merged", "undone",
                            "refining", "accepted", "exported", "reopened", "rerun"]


@pytest.mark.parametrize("n, size, m, k, phase", [(5, 64, 2, 3, None), (3, 256, 32, 64, "labelling")])
def test_cancel_is_quick_and_leaves_viewer_unchanged(qtbot, widget, n, size, m, k, phase):
    """Cancel right away, or in the labelling of the largest grid (M=32, K=64): within 0.5 s."""
    import time

    w, viewer = widget, widget.viewer
    viewer.add_image(synthetic_blobs(n_images=n, size=size), name="blobs")
    w.m_spin.setValue(m)
    w.k_spin.setValue(k)
    assert w.start_run()
    if phase:
        qtbot.waitUntil(lambda: phase in w.progress.format(), timeout=WAIT_MS)  # the long part
    t0 = time.perf_counter()
    w.cancel_run()
    qtbot.waitUntil(lambda: not w.busy, timeout=WAIT_MS)
    assert time.perf_counter() - t0 < 0.5
    assert len(viewer.layers) == 1 and "cancel" in w.last_message


def test_table_follows_pixel_changes_and_hides_absent_labels(qtbot, widget):
    w, viewer = widget, widget.viewer
    viewer.add_image(synthetic_blobs(n_images=2, size=48), name="blobs", scale=(1, 0.5, 0.5), units=("um", "um", "um"))
    w.m_spin.setValue(2)
    w.k_spin.setValue(6)
    _run(qtbot, w)
    w.choose()
    chosen = viewer.layers["blobs chosen"]
    present = set(np.unique(chosen.data).tolist())
    assert {int(w.table.item(r, 0).text()) for r in range(w.table.rowCount())} == present
    w.absent_check.setChecked(True)
    assert w.table.rowCount() == 6  # every label of the protocol, present or not
    w.absent_check.setChecked(False)
    assert "µm²" in w.table.horizontalHeaderItem(5).text() and not w.table.isColumnHidden(5)
    # an in-place change + refresh, as the refinement's Accept does
    label = int(w.table.item(0, 0).text())
    s = w.controller.current_slice(chosen)
    chosen.data[s, :20, :20] = label
    chosen.refresh()
    qtbot.waitUntil(lambda: not w._table_pending, timeout=5000)
    r = next(r for r in range(w.table.rowCount()) if int(w.table.item(r, 0).text()) == label)
    assert int(w.table.item(r, 4).text().replace(",", "")) == int((chosen.data[s] == label).sum())


def test_feedback_for_silent_actions(widget, tmp_path):
    w = widget
    w.step(1)
    assert "no protocols to step through" in w.last_message
    w.merge_selected()
    assert "no chosen label map" in w.last_message
