"""The refine dock widget on a real napari viewer: start, click (pos/neg), undo/redo, accept, cancel, scale."""
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import sys

import numpy as np
import pytest

from napari_pancakes.napari.refine_widget import POINTS_NAME, PREVIEW_NAME, RefineWidget

WAIT_MS = 30_000


@pytest.fixture(scope="module")
def refiner():
    from napari_pancakes.refine import load_refiner

    return load_refiner(device="cpu")


def stack(s=3, h=64, w=72):
    """(S, H, W) images with a bright disk; labels: label 2 = left half of the disk, label 1 = a corner."""
    yy, xx = np.mgrid[0:h, 0:w]
    disk = (yy - 32) ** 2 + (xx - 36) ** 2 < 16**2
    rng = np.random.default_rng(0)
    imgs = np.stack([0.2 + 0.6 * disk + rng.normal(0, 0.03, (h, w)) for _ in range(s)]).astype(np.float32)
    labels = np.zeros((s, h, w), np.uint8)
    labels[:, disk & (xx < 36)] = 2
    labels[:, :8, :8] = 1
    return imgs, labels, disk


NO_DISPLAY = sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


@pytest.fixture(params=["headless", "napari"])
def make_viewer(request, qtbot):
    """A headless ViewerModel (always) and a real napari viewer (needs OpenGL: run under xvfb-run)."""
    if request.param == "headless":
        from napari.components import ViewerModel

        return ViewerModel
    if NO_DISPLAY:
        pytest.skip("no display for OpenGL: run under xvfb-run for the real-viewer variant")
    return request.getfixturevalue("make_napari_viewer")


@pytest.fixture
def setup(make_viewer, refiner, qtbot):
    viewer = make_viewer()
    imgs, labels, disk = stack()
    scale, translate = (1.0, 2.0, 0.5), (0.0, 10.0, -4.0)
    viewer.add_image(imgs, name="img", scale=scale, translate=translate)
    lab = viewer.add_labels(labels.copy(), name="protocol", scale=scale, translate=translate)
    lab.selected_label = 2
    w = RefineWidget(viewer, refiner=refiner)
    qtbot.addWidget(w) if not hasattr(viewer, "window") else viewer.window.add_dock_widget(w)
    viewer.dims.set_point(0, 1.0)  # show image 1
    return viewer, w, lab, labels, disk


def _world(lab, s, y, x):
    return lab.data_to_world((s, y, x))


def _wait(qtbot, w):
    qtbot.waitUntil(lambda: w.worker is None, timeout=WAIT_MS)


def test_defaults_follow_layers_and_slice(setup):
    viewer, w, lab, _, _ = setup
    assert w.labels_combo.currentText() == "protocol" and w.image_combo.currentText() == "img"
    assert w.label_spin.value() == 2 and w.slice_spin.value() == 1


def test_click_accept_writes_only_this_label_on_this_slice(setup, qtbot):
    viewer, w, lab, labels0, disk = setup
    assert w.start(), w.last_message
    assert PREVIEW_NAME in viewer.layers and POINTS_NAME in viewer.layers
    preview = viewer.layers[PREVIEW_NAME]
    assert np.array_equal(preview.data[1] > 0, labels0[1] == 2)  # starts from the chosen label
    before = preview.data[1].copy()
    assert w.click_world(_world(lab, 1, 32, 44), positive=True), w.last_message  # in the missed right half
    _wait(qtbot, w)
    grown = preview.data[1] > 0
    assert grown[32, 44] and grown.sum() > (before > 0).sum()
    assert viewer.layers[POINTS_NAME].data.shape == (1, 3)
    # undo restores exactly, redo comes back
    w.undo()
    assert np.array_equal(preview.data[1], before)
    w.redo()
    assert np.array_equal(preview.data[1] > 0, grown)
    assert w.accept(), w.last_message
    assert PREVIEW_NAME not in viewer.layers and POINTS_NAME not in viewer.layers
    out = lab.data
    assert np.array_equal(out[1] == 2, grown)  # inside the mask -> this label
    lost = (labels0[1] == 2) & ~grown
    assert not (out[1][lost] == 0).any() or not lost.any()  # lost pixels go to another label, not to 0
    assert np.array_equal(out[0], labels0[0]) and np.array_equal(out[2], labels0[2])  # other images untouched
    assert np.array_equal(out[1] == 1, (labels0[1] == 1) & ~grown)  # other label only loses what the mask took


def test_negative_toggle_and_cancel_restores(setup, qtbot):
    viewer, w, lab, labels0, disk = setup
    assert w.start()
    w._toggle_negative()  # what the 'x' key does ('n' is the explorer's next protocol)
    assert w.negative_box.isChecked()
    assert w.click_world(_world(lab, 1, 32, 30))  # inside the label: a negative click removes it there
    _wait(qtbot, w)
    preview = viewer.layers[PREVIEW_NAME]
    assert preview.data[1, 32, 30] == 0
    assert viewer.layers[POINTS_NAME].data.shape == (1, 3)
    assert not w.click_world(_world(lab, 0, 32, 30)), "a click on another slice is refused"
    assert not w.click_world(_world(lab, 1, 500, 30)), "a click outside the image is refused"
    assert w.cancel()
    assert PREVIEW_NAME not in viewer.layers and np.array_equal(lab.data, labels0)


def test_misaligned_layers_refused(make_viewer, refiner, qtbot):
    viewer = make_viewer()
    viewer.add_image(np.zeros((2, 30, 30), np.float32), name="img")
    viewer.add_labels(np.zeros((2, 20, 30), np.uint8), name="lab")
    w = RefineWidget(viewer, refiner=refiner)
    qtbot.addWidget(w)
    assert not w.start() and "not aligned" in w.last_message
    assert PREVIEW_NAME not in viewer.layers


class _FakeMouse:
    def __init__(self, position, modifiers=()):
        self.position, self.modifiers, self.type = position, modifiers, "mouse_press"


def _click(w, world, modifiers=(), drag=None):
    """Drive the points layer's mouse callback like a canvas press(-move)-release."""
    ev = _FakeMouse(tuple(world), modifiers)
    gen = w._on_mouse(w.points, ev)
    next(gen)
    if drag is not None:
        ev.type, ev.position = "mouse_move", tuple(np.add(world, drag))
        next(gen)
    ev.type = "mouse_release"
    with pytest.raises(StopIteration):
        next(gen)


def test_canvas_clicks_modifier_negative_and_drag_pans(setup, qtbot):
    viewer, w, lab, labels0, disk = setup
    assert w.start()
    _click(w, _world(lab, 1, 32, 44))  # plain left click: positive
    _wait(qtbot, w)
    _click(w, _world(lab, 1, 5, 60), modifiers=("Control",))  # Ctrl-click: negative
    _wait(qtbot, w)
    assert [c[2] for c in w.session.clicks] == [True, False]
    _click(w, _world(lab, 1, 20, 20), drag=(0, 15, 15))  # a drag is a pan, not a click
    _wait(qtbot, w)
    assert len(w.session.clicks) == 2
    w.cancel()


def test_slow_model_runs_in_worker_and_queues_clicks(setup, qtbot, monkeypatch):
    import napari_pancakes.napari.refine_widget as rw

    viewer, w, lab, labels0, disk = setup
    monkeypatch.setattr(rw, "THREAD_ABOVE_S", 0.0)  # pretend the model is slow
    assert w.start() and w.use_thread
    w.click_world(_world(lab, 1, 32, 44), positive=True)
    w.click_world(_world(lab, 1, 5, 60), positive=False)  # queued while the first runs
    _wait(qtbot, w)
    qtbot.waitUntil(lambda: w.worker is None and not w._pending and len(w.session.clicks) == 2, timeout=WAIT_MS)
    assert viewer.layers[POINTS_NAME].data.shape == (2, 3)
    assert w.accept()


@pytest.mark.parametrize("case", ["large image", "classical"])
def test_large_images_and_the_walker_go_to_the_worker_without_a_timing_prompt(setup, qtbot, monkeypatch, case):
    """The timing prompt runs in the viewer's thread, so it is skipped where a prompt is known to
    be slow (seconds on a large image, or the classical walker): those go to the worker at once."""
    import napari_pancakes.napari.refine_widget as rw
    from napari_pancakes.refine.session import RefineSession

    viewer, w, lab, labels0, disk = setup
    if case == "large image":
        monkeypatch.setattr(rw, "PROBE_MAX_PIXELS", 64 * 64 - 1)  # the 64 x 72 slices count as large
    else:
        w.method_combo.setCurrentText("classical")
    prompts = []
    add = RefineSession.add_clicks
    monkeypatch.setattr(RefineSession, "add_clicks", lambda self, *a, **k: prompts.append(1) or add(self, *a, **k))
    assert w.start(), w.last_message
    assert w.use_thread and w.call_seconds is None and not prompts
    w.click_world(_world(lab, 1, 32, 44), positive=True)
    _wait(qtbot, w)
    qtbot.waitUntil(lambda: w.worker is None and len(w.session.clicks) == 1, timeout=WAIT_MS)
    w.cancel()


def test_set_target_preselects_layers_label_and_slice(setup):
    viewer, w, lab, labels0, disk = setup
    other = viewer.add_labels(labels0.copy(), name="other", scale=lab.scale, translate=lab.translate)
    viewer.add_image(np.zeros((3, 64, 72), np.float32), name="img2", scale=lab.scale, translate=lab.translate)
    assert w.set_target(other, viewer.layers["img"], 1, 2), w.last_message
    assert (w.labels_combo.currentText(), w.image_combo.currentText()) == ("other", "img")
    assert (w.label_spin.value(), w.slice_spin.value()) == (1, 2)
    assert viewer.dims.current_step[0] == 2  # the slider shows the image to click on
    assert not w.set_target(other, other, 1, 0) and "not an Image layer" in w.last_message
    assert not w.set_target(other, viewer.layers["img"], 0, 0) and "background" in w.last_message
    assert w.start(), w.last_message
    assert w._target[1].name == "other" and w._target[2] == 2 and w._target[3] == 1
    assert not w.set_target(lab, viewer.layers["img"], 2, 1) and "already open" in w.last_message
    w.cancel()


def test_accept_sends_lost_pixels_to_the_runner_up_label(setup, qtbot):
    viewer, w, lab, labels0, disk = setup
    second = np.full(labels0.shape, 7, np.uint8)
    assert w.set_target(lab, viewer.layers["img"], 2, 1, runner_up=lambda: second), w.last_message
    assert w.start(), w.last_message
    w.click_world(_world(lab, 1, 32, 30), positive=False)  # removes part of label 2
    _wait(qtbot, w)
    mask = viewer.layers[PREVIEW_NAME].data[1] > 0
    lost = (labels0[1] == 2) & ~mask
    assert lost.any()
    assert w.accept(), w.last_message
    assert (lab.data[1][lost] == 7).all()  # the protocol's next-most-probable label, not 0


def test_accept_without_runner_up_uses_nearest_other_label(setup, qtbot):
    viewer, w, lab, labels0, disk = setup
    full = labels0.copy()
    full[full == 0] = 3  # a protocol covers every pixel
    lab.data = full
    assert w.start(), w.last_message
    w.click_world(_world(lab, 1, 32, 30), positive=False)
    _wait(qtbot, w)
    assert w.accept(), w.last_message
    assert not (lab.data[1] == 0).any(), "no black rims"


def test_negative_key_is_not_the_explorers_next_and_dock_fits_small_screens(setup):
    viewer, w, lab, labels0, disk = setup

    def sentinel(viewer):
        return None

    viewer.bind_key("n", sentinel, overwrite=True)
    assert w.start(), w.last_message
    assert viewer.bind_key("n", sentinel, overwrite=True) is sentinel, "the refine dock must not take 'n'"
    w._toggle_negative()
    assert w.negative_box.isChecked()
    assert w.minimumSizeHint().height() < 768 - 200  # 1366x768 minus the viewer's chrome
    assert not w.scroll.widget().isAncestorOf(w.buttons["Accept"])  # never scrolled away
    assert not w.scroll.widget().isAncestorOf(w.buttons["Cancel"])
    w.cancel()
    viewer.bind_key("n", None, overwrite=True)


def test_box_and_scribble_from_shapes(setup, qtbot):
    viewer, w, lab, labels0, disk = setup
    assert w.start(), w.last_message
    rect = np.array([[1, 14, 18], [1, 14, 54], [1, 50, 54], [1, 50, 18]], float)
    assert w.add_shape_world(rect, "rectangle"), w.last_message
    _wait(qtbot, w)
    assert w.session.box == (14.0, 18.0, 50.0, 54.0)
    assert w.add_shape_world(np.array([[1, 30, 30], [1, 34, 44]], float), "path", positive=True)
    _wait(qtbot, w)
    assert len(w.session.scribbles) == 1
    assert not w.add_shape_world(np.array([[0, 30, 30], [0, 34, 44]], float), "path"), "other slice refused"
    # drawing on the Shapes layer goes through the same path
    w.mode_combo.setCurrentText("scribble")
    assert viewer.layers.selection.active.name == "refine prompts"
    viewer.layers["refine prompts"].add_paths([np.array([[1, 25, 25], [1, 38, 40]], float)])
    _wait(qtbot, w)
    assert len(w.session.scribbles) == 2
    w.cancel()


def test_start_from_nothing_ignores_the_label_and_accept_replaces_it(setup, qtbot):
    viewer, w, lab, labels0, disk = setup
    w.start_combo.setCurrentText("nothing")
    assert w.start(), w.last_message
    preview = viewer.layers[PREVIEW_NAME]
    assert not preview.data[1].any(), "from nothing: the label's mask is not the start"
    assert not w.session.can_undo
    assert w.click_world(_world(lab, 1, 32, 44), positive=True), w.last_message  # inside the disk
    _wait(qtbot, w)
    mask = preview.data[1] > 0
    assert mask[32, 44]
    assert w.accept(), w.last_message
    out = lab.data
    assert np.array_equal(out[1] == 2, mask)  # the label is now the new mask on this slice
    assert np.array_equal(out[0], labels0[0]) and np.array_equal(out[2], labels0[2])
    w.start_combo.setCurrentText("the label")
    assert w.start(), w.last_message
    assert np.array_equal(viewer.layers[PREVIEW_NAME].data[1] > 0, out[1] == 2)  # back to starting from the label
    assert w.cancel()
