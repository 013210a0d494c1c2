"""Regenerate the documentation screenshots of the real napari widgets from a user's journey.

    xvfb-run -a -s "-screen 0 1600x1000x24" python docs/make_screenshots.py [--weights PATH] [--out docs/img]

Opens a 1366 x 768 napari window, docks the protocol explorer, opens the bundled nuclei
sample through the plugin and walks :func:`journey` (the same steps ``tests/test_explorer.py``
checks end to end) with the paper defaults (M=8, K=20), writing into ``--out``:

- ``explorer-protocols.png``: the gallery after the run, one protocol shown alone;
- ``explorer-grid.png``: grid mode, every protocol in its own tile, named;
- ``explorer-chosen.png``: a protocol chosen, the nuclei label renamed "nucleus" in the table;
- ``refine.png``: *Refine label...* on that label, a session open, two clicks and the preview;
- ``explorer-accepted.png``: after Accept, the label table with the refined areas.

Nothing depends on hard-coded pixel positions: the protocol, the label, the image of the set
and the two clicks are all derived from the image and the label maps (see ``pick_*`` below).
Without ``--weights`` the bundled weights are used; when they do not exist yet, a
random-init model is used with a warning (the widgets look the same, the protocols do not).
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

WINDOW_SIZE = (1366, 768)  # width, height of the napari window: a small laptop screen
NEW_NAME = "nucleus"


# --------------------------------------------------------------------- model
def make_model(weights: str | None):
    """The Pancakes model: ``weights`` if given, else the bundled weights, else random init."""
    import torch

    from napari_pancakes.io_weights import DEFAULT_WEIGHTS, load_model
    from napari_pancakes.model import Pancakes

    if weights is not None:
        if not Path(weights).is_file():
            sys.exit(f"error: weights file {weights} does not exist")
        return load_model(weights, device="cpu"), str(weights)
    if Path(DEFAULT_WEIGHTS).is_file():
        return load_model(None, device="cpu"), str(DEFAULT_WEIGHTS)
    warnings.warn(f"bundled weights {DEFAULT_WEIGHTS} not found: using a RANDOM-INIT model; "
                  "the protocols in the screenshots are meaningless (rerun once the weights exist)",
                  stacklevel=2)
    torch.manual_seed(0)
    return Pancakes().eval(), "random init"


# --------------------------------------------------------------------- Qt helpers
def wait_until(condition, timeout: float, what: str) -> None:
    """Process Qt events until ``condition()`` is true; exit with an error after ``timeout`` s."""
    from qtpy.QtCore import QEventLoop
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    t0 = time.monotonic()
    while not condition():
        if time.monotonic() - t0 > timeout:
            sys.exit(f"error: timed out after {timeout:.0f} s waiting for {what}")
        app.processEvents(QEventLoop.AllEvents, 50)
        time.sleep(0.02)


def settle(seconds: float = 1.0) -> None:
    """Let napari draw (layer adds, canvas refresh) before a screenshot."""
    t_end = time.monotonic() + seconds
    wait_until(lambda: time.monotonic() >= t_end, seconds + 60, "the viewer to draw")


def shoot(viewer, path: Path) -> None:
    settle(1.0)
    # the whole window, dock widgets included; no flash (its colourise effect greys the next shot)
    viewer.window.screenshot(str(path), canvas_only=False, flash=False)
    print(f"wrote {path}")


def dock_of(widget):
    """The QDockWidget holding ``widget`` (napari may wrap it), or None."""
    from qtpy.QtWidgets import QDockWidget

    while widget is not None and not isinstance(widget, QDockWidget):
        widget = widget.parent()
    return widget


def clear_notifications(viewer) -> None:
    """Close the toast notifications so that they do not cover the canvas in the screenshots."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification
    from qtpy.QtWidgets import QApplication

    for widget in QApplication.topLevelWidgets() + viewer.window._qt_window.findChildren(NapariQtNotification):
        if isinstance(widget, NapariQtNotification):
            widget.close()


# --------------------------------------------------------------------- choices from the data
def bright_mask(image: np.ndarray) -> np.ndarray:
    """The bright (nuclei) pixels of every image: above the image's Otsu threshold."""
    from skimage.filters import threshold_otsu

    image = np.asarray(image, dtype=np.float32)
    return np.stack([plane > threshold_otsu(plane) for plane in image])


def label_scores(labels: np.ndarray, bright: np.ndarray) -> dict[int, float]:
    """IoU of every label (id >= 1) with the bright pixels, over the whole set."""
    scores = {}
    for label in np.unique(labels):
        if label == 0:
            continue
        mask = labels == label
        scores[int(label)] = float((mask & bright).sum() / (mask | bright).sum())
    return scores


def pick_protocol(protocol_layers, bright) -> tuple[int, int, float]:
    """(protocol index, label id, IoU): the protocol whose best label matches the nuclei best."""
    best = (0, 1, -1.0)
    for index, layer in enumerate(protocol_layers):
        scores = label_scores(np.asarray(layer.data), bright)
        label = max(scores, key=scores.get)
        if scores[label] > best[2]:
            best = (index, label, scores[label])
    return best


def deepest_point(mask: np.ndarray, min_depth: float = 3.0) -> tuple[int, int] | None:
    """(y, x) of the pixel of ``mask`` farthest from its boundary, or None when the mask has no
    pixel at least ``min_depth`` pixels inside it (empty, or only specks and slivers)."""
    from scipy.ndimage import distance_transform_edt

    if not mask.any():
        return None
    dist = distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    if dist.max() < min_depth:
        return None
    y, x = np.unravel_index(int(np.argmax(dist)), mask.shape)
    return int(y), int(x)


def pick_clicks(label_mask: np.ndarray, bright: np.ndarray) -> list[tuple[int, int, bool]]:
    """Two clicks a user would make: positive in the thickest miss (bright, not in the label),
    negative in the thickest false alarm (in the label, not bright). Falls back to a nucleus
    the label covers (positive) and the dark background (negative) when there is no such error."""
    positive = deepest_point(bright & ~label_mask) or deepest_point(bright & label_mask) or deepest_point(bright, 0)
    negative = deepest_point(label_mask & ~bright) or deepest_point(~bright, 0)
    clicks = []
    if positive is not None:
        clicks.append((*positive, True))
    if negative is not None:
        clicks.append((*negative, False))
    return clicks


# --------------------------------------------------------------------- the journey
def row_of(explorer, label: int) -> int | None:
    """Row of ``label`` in the explorer's label table (None when it is not listed)."""
    for r in range(explorer.table.rowCount()):
        if int(explorer.table.item(r, 0).text()) == label:
            return r
    return None


def journey(viewer, explorer, export_stem: Path, m: int = 8, k: int = 20, timeout: float = 900.0):
    """A first-time user's session, driven through the real widgets; a generator that yields
    ``(step, info)`` after each step so that a test can check what the user would check and
    this script can take the screenshots. Steps: sample, run, browse, grid, chosen, renamed,
    merged, undone, refining, accepted, exported, reopened, rerun."""
    from napari_pancakes.napari.refine_widget import RefineWidget

    viewer.open_sample("napari-pancakes", "nuclei")  # after docking: the image box must follow
    image = viewer.layers["nuclei"]
    bright = bright_mask(image.data)
    s = int(np.argmax(bright.reshape(len(bright), -1).sum(1)))  # the image with the most nuclei
    viewer.dims.set_current_step(0, s)
    viewer.reset_view()
    yield "sample", {"image": image, "slice": s}

    explorer.m_spin.setValue(m)
    explorer.k_spin.setValue(k)
    explorer.run_button.click()
    if not explorer.busy:
        raise RuntimeError(f"the run did not start: {explorer.last_message}")
    t0 = time.monotonic()
    wait_until(lambda: not explorer.busy, timeout, "the run to finish")
    protocols = explorer.controller.protocols(image.name)
    yield "run", {"protocols": protocols, "seconds": time.monotonic() - t0}

    index, label, iou = pick_protocol(protocols, bright)
    explorer.gallery_buttons[index].click()
    viewer.reset_view()
    yield "browse", {"index": index, "label": label, "iou": iou}

    explorer.grid_check.setChecked(True)
    yield "grid", {}
    explorer.grid_check.setChecked(False)

    explorer.show_protocol(index)
    explorer.choose_button.click()
    chosen = explorer.controller.working()
    yield "chosen", {"chosen": chosen, "label": label}

    explorer.table.item(row_of(explorer, label), 2).setText(NEW_NAME)  # as a double-click edit would
    explorer.table.selectRow(row_of(explorer, label))
    explorer.table.scrollToItem(explorer.table.item(row_of(explorer, label), 0))
    chosen.selected_label = label
    yield "renamed", {"chosen": chosen, "label": label}

    others = [int(explorer.table.item(r, 0).text()) for r in range(explorer.table.rowCount())]
    pair = sorted([label, next(v for v in others if v != label)])
    explorer.table.clearSelection()
    for v in pair:
        from qtpy.QtCore import QItemSelectionModel

        index_ = explorer.table.model().index(row_of(explorer, v), 0)
        explorer.table.selectionModel().select(index_, QItemSelectionModel.Select | QItemSelectionModel.Rows)
    before = np.array(chosen.data)
    explorer.merge_button.click()
    yield "merged", {"chosen": chosen, "pair": pair, "before": before}

    explorer.undo_button.click()
    yield "undone", {"chosen": chosen, "before": before}

    explorer.table.clearSelection()
    explorer.table.selectRow(row_of(explorer, label))
    explorer.refine_button.click()
    refine = next((w for w in viewer.window.dock_widgets.values() if isinstance(w, RefineWidget)), None)
    if refine is None:
        raise RuntimeError(f"'Refine label...' docked no RefineWidget: {explorer.last_message}")
    refine.buttons["Refine"].click()
    if refine.session is None:
        raise RuntimeError(f"the refinement did not start: {refine.last_message}")
    _, labels_layer, s_refine, _ = refine._target
    label_mask = np.asarray(labels_layer.data[s_refine]) == label
    clicks = pick_clicks(label_mask, bright[s_refine])
    for y, x, positive in clicks:
        if not refine.click_world(labels_layer.data_to_world((s_refine, y, x)), positive=positive):
            raise RuntimeError(f"click at {(y, x)} refused: {refine.last_message}")
    wait_until(lambda: refine.worker is None and not refine._pending and len(refine.session.clicks) == len(clicks),
               120, "the refinement clicks")
    yield "refining", {"refine": refine, "slice": s_refine, "clicks": clicks}

    if not refine.accept():
        raise RuntimeError(f"accept failed: {refine.last_message}")
    wait_until(lambda: not explorer._table_pending, 10, "the label table")
    yield "accepted", {"chosen": chosen, "label": label, "slice": s_refine}

    written = explorer.export_to(str(export_stem), formats=["tiff"])
    yield "exported", {"written": written, "chosen": chosen}

    viewer.open(str(written["names"][0]), plugin="napari-pancakes")
    yield "reopened", {"layer": viewer.layers[-1], "chosen": chosen}

    viewer.layers.selection.active = image
    explorer.seed_spin.setValue(1)
    explorer.run_button.click()
    wait_until(lambda: not explorer.busy, timeout, "the re-run to finish")
    yield "rerun", {"chosen": chosen, "image": image}


# --------------------------------------------------------------------- main
SHOTS = {"browse": "explorer-protocols.png", "grid": "explorer-grid.png", "renamed": "explorer-chosen.png",
         "refining": "refine.png", "accepted": "explorer-accepted.png"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default=None, help="Pancakes .safetensors weights (default: bundled, "
                                                        "or a random-init model when they do not exist)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "img"), help="output folder")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for the run")
    parser.add_argument("--only", default=None, help="comma-separated file names of SHOTS to write (default: all)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    wanted = set(args.only.split(",")) if args.only else set(SHOTS.values())

    import tempfile

    import napari
    import torch

    from napari_pancakes.napari.explorer import ExplorerWidget

    torch.set_num_threads(1)  # shared machines: one core is enough for six 256 x 256 images
    model, source = make_model(args.weights)
    print(f"model: {source}")

    viewer = napari.Viewer(title="napari-pancakes", show=True)
    window = viewer.window._qt_window
    window.resize(*WINDOW_SIZE)
    _, explorer = viewer.window.add_plugin_dock_widget("napari-pancakes", "Protocol explorer")
    if not isinstance(explorer, ExplorerWidget):
        sys.exit(f"error: the docked widget is a {type(explorer).__name__}, not an ExplorerWidget")
    explorer.controller._model = model  # the controller loads the bundled weights only when it has none
    explorer.confirm = lambda message: True  # never block on a dialog

    with tempfile.TemporaryDirectory() as tmp:
        for step, info in journey(viewer, explorer, Path(tmp) / "nuclei", timeout=args.timeout):
            print(f"{step}: {explorer.last_message}")
            if step == "refining":  # the refinement panel tabbed over the explorer (one dock column)
                explorer_dock, refine_dock = dock_of(explorer), dock_of(info["refine"])
                if explorer_dock is not None and refine_dock is not None and explorer_dock is not refine_dock:
                    window.tabifyDockWidget(explorer_dock, refine_dock)
                    refine_dock.show()
                    refine_dock.raise_()
            if step == "chosen":  # a small screen: fold the Run section to see the label table
                explorer.sections["Run"].collapse(animate=False)
            if step == "accepted":
                explorer_dock = dock_of(explorer)
                if explorer_dock is not None:
                    explorer_dock.show()
                    explorer_dock.raise_()
            name = SHOTS.get(step)
            if name in wanted:
                window.resize(*WINDOW_SIZE)
                clear_notifications(viewer)
                shoot(viewer, out / name)
            if step == "exported":
                break
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
