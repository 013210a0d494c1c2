"""The study dock on a Qt-free ViewerModel: save / load / apply a protocol, propagate and undo,
population analysis with table, plot, row click and exports, and the messages for bad input."""
import numpy as np
import pytest

from napari_pancakes.napari.controller import ProtocolController, tag
from napari_pancakes.napari.sample_data import synthetic_blobs
from napari_pancakes.protocol import Protocol, apply_protocol


@pytest.fixture(scope="module")
def model():
    from napari_pancakes import load_model

    return load_model(device="cpu")


@pytest.fixture
def setup(qtbot, model):
    from napari.components import ViewerModel

    from napari_pancakes.napari.study_widget import StudyWidget

    viewer = ViewerModel()
    image = viewer.add_image(synthetic_blobs(4, 64, seed=0), name="blobs", scale=(1, 0.5, 0.5))
    explorer = ProtocolController(viewer, model=model)
    explorer.run(image, m=3, k=8)
    richest = max(explorer.protocols(), key=lambda ly: len(np.unique(ly.data)))  # the one using most labels
    chosen = explorer.choose(richest)
    w = StudyWidget(viewer, model=model)
    qtbot.addWidget(w)
    w.confirm = lambda message: False  # never replace files in tests unless a test says so
    return viewer, explorer, chosen, w


def test_save_load_keeps_names_merges_background(setup, tmp_path):
    viewer, explorer, chosen, w = setup
    present = [int(i) for i in np.unique(chosen.data) if i > 0]
    assert len(present) >= 3, present
    a, b, c = present[:3]
    explorer.rename(a, "cells", layer=chosen)
    explorer.merge([a, b], layer=chosen)
    explorer.to_background(c, layer=chosen)
    w.source_combo.setCurrentText(chosen.name)
    path = tmp_path / "p.json"
    assert w.save_protocol(str(path)), w.last_message
    p = Protocol.load(path)
    assert (p.m, p.k, p.index) == (3, 8, tag(chosen).get("model_protocol", tag(chosen)["protocol"]) - 1)
    assert p.merges == {b: a} and c in p.background and p.names[a] == "cells"
    assert not w.save_protocol(str(path)) and "exists" in w.last_message  # refused: confirm says no
    assert w.load_protocol(str(path)) and f"protocol {p.index + 1}" in w.protocol_label.text()
    # applying to the same image gives what the chosen layer shows
    np.testing.assert_array_equal(apply_protocol(p, viewer.layers["blobs"].data, model=w.controller.model),
                                  chosen.data)


def test_apply_to_other_layer_and_lazy_layer(setup, qtbot):
    viewer, explorer, chosen, w = setup
    other = viewer.add_image(synthetic_blobs(3, 48, seed=3), name="other", scale=(1, 2, 2))
    w.source_combo.setCurrentText(chosen.name)
    w.target_combo.setCurrentText("other")
    assert w.apply(), w.last_message
    qtbot.waitUntil(lambda: not w.busy, timeout=60_000)  # labelled in a worker thread
    assert "applied protocol" in w.last_message, w.last_message
    applied = viewer.layers[-1]
    assert tag(applied)["role"] == "applied" and tuple(applied.scale) == (1, 2, 2)
    protocol = w.controller.protocol_from_layer(chosen)
    np.testing.assert_array_equal(applied.data, apply_protocol(protocol, other.data, model=w.controller.model))
    assert applied.features["name"][list(applied.features["index"]).index(1)] == "label 1"
    da = pytest.importorskip("dask.array")
    viewer.add_image(da.from_array(other.data, chunks=(1, 48, 48)), name="lazy")
    w.target_combo.setCurrentText("lazy")
    assert w.apply(), w.last_message
    lazy = viewer.layers[-1]
    assert isinstance(lazy.data, da.Array)
    np.testing.assert_array_equal(np.asarray(lazy.data), applied.data)


def test_propagate_and_undo(setup, qtbot):
    viewer, explorer, chosen, w = setup
    before = chosen.data.copy()
    label = int(np.bincount(before[0].ravel()).argmax())
    data = chosen.data
    data[0, 10:30, 10:30] = label  # the user paints the label on image 1
    chosen.data = data
    painted = chosen.data.copy()
    chosen.selected_label = label
    viewer.layers.selection.active = chosen
    viewer.dims.set_point(0, 0)
    assert w.propagate(), w.last_message
    assert w.busy and not w.propagate_button.isEnabled()  # in a worker: the call returns at once
    np.testing.assert_array_equal(chosen.data, painted)  # the layer changes when the worker is done
    qtbot.waitUntil(lambda: not w.busy, timeout=60_000)
    assert "images changed" in w.last_message and w.propagate_button.isEnabled()
    changed = viewer.layers[f"{chosen.name} changed"]  # what changed is shown
    np.testing.assert_array_equal(changed.data.astype(bool), chosen.data != painted)
    np.testing.assert_array_equal(chosen.data[0], painted[0])  # the corrected image stays as drawn
    assert tag(chosen)["role"] == "chosen" and tag(chosen)["study_protocol"]["learned"]
    assert explorer.working() is chosen  # the explorer still edits the same layer
    assert w.controller.protocol_from_layer(chosen).learned  # Save protocol keeps what was learnt
    assert w.undo()
    np.testing.assert_array_equal(chosen.data, painted)
    assert f"{chosen.name} changed" not in viewer.layers
    assert not w.undo() and "nothing to undo" in w.last_message


def test_applied_layer_of_a_nifti_image_saves_with_its_affine(setup, tmp_path):
    import nibabel as nib

    from napari_pancakes.napari._io import write_labels

    viewer, explorer, chosen, w = setup
    affine = [[0.0, 0, 2, 1], [0, 0.5, 0, 2], [0.5, 0, 0, 3], [0, 0, 0, 1]]
    scan = viewer.add_image(synthetic_blobs(3, 48, seed=1), name="scan", metadata={"nifti_affine": affine})
    layer = w.controller.apply(w.controller.protocol_from_layer(chosen), scan)
    write_labels(str(tmp_path / "scan_labels.nii.gz"), layer.data, layer._get_state())
    np.testing.assert_allclose(nib.load(tmp_path / "scan_labels.nii.gz").affine, affine)


def test_propagation_works_whatever_grad_mode_the_thread_holds(setup):
    import torch

    viewer, explorer, chosen, w = setup
    label = int(np.bincount(chosen.data[0].ravel()).argmax())
    with torch.inference_mode():  # what a cancelled explorer run can leave on a pooled worker thread
        record = w.controller.propagate(chosen, label=label, slice_index=0)
    assert record.label == label and tag(chosen)["study_protocol"]["learned"]


def test_population_analysis_table_plot_exports(setup, tmp_path):
    viewer, explorer, chosen, w = setup
    table = tmp_path / "outcomes.csv"
    areas = [(chosen.data[i] == np.bincount(chosen.data.ravel()).argmax()).sum() for i in range(4)]
    table.write_text("index,score,group\n" + "".join(f"{i},{a + 0.5 * i},{'ab'[i % 2]}\n" for i, a in enumerate(areas)))
    assert w.open_table(str(table)), w.last_message
    assert [w.outcome_combo.itemText(i) for i in range(w.outcome_combo.count())] == ["score", "group"]
    w.image_combo.setCurrentText("blobs")
    w.outcome_combo.setCurrentText("score")
    assert w.analyze(), w.last_message
    assert w.table.rowCount() == len(w.controller.ranking.rows) > 0
    top = w.controller.ranking.rows[0]
    assert abs(top["effect"]) == pytest.approx(1.0)
    shown = [ly for ly in viewer.layers if tag(ly).get("role") == "protocol" and ly.visible]
    assert len(shown) == 1 and tag(shown[0])["protocol"] == top["protocol"] and shown[0].selected_label == top["label"]
    assert w.figure.axes and w.figure.axes[0].get_xlabel() == "score"
    assert w.export_table(str(tmp_path / "rank.csv")) and (tmp_path / "rank.csv").read_text().startswith("rank,")
    assert w.export_plot(str(tmp_path / "plot.png")) and (tmp_path / "plot.png").stat().st_size > 1000
    assert not w.export_plot(str(tmp_path / "plot.png")) and "--overwrite" in w.last_message
    w.outcome_combo.setCurrentText("group")
    assert w.analyze(), w.last_message
    assert w.controller.ranking.rows[0]["test"] == "mann-whitney"
    bad = tmp_path / "bad.csv"
    bad.write_text("image,score\nx,1\ny,2\n")
    assert w.open_table(str(bad))
    assert not w.analyze() and "matches an image" in w.last_message


def test_bad_protocol_files(setup, tmp_path):
    import torch

    from napari_pancakes.model import Pancakes

    viewer, explorer, chosen, w = setup

    torch.manual_seed(0)
    foreign = Protocol.from_model(Pancakes(), 3, 4, 0)
    foreign.save(tmp_path / "foreign.json")
    assert not w.load_protocol(str(tmp_path / "foreign.json")) and "other model weights" in w.last_message
    (tmp_path / "bad.json").write_text("[1, 2")
    assert not w.load_protocol(str(tmp_path / "bad.json")) and "not valid JSON" in w.last_message


def test_apply_cancel_adds_nothing(setup, qtbot):
    viewer, explorer, chosen, w = setup
    viewer.add_image(synthetic_blobs(40, 64, seed=5), name="many")
    w.source_combo.setCurrentText(chosen.name)
    w.target_combo.setCurrentText("many")
    n_layers = len(viewer.layers)
    assert w.apply() and w.busy and w.cancel_button.isEnabled()
    assert not w.apply() and "running" in w.last_message  # one at a time
    assert w.cancel_apply()
    qtbot.waitUntil(lambda: not w.busy, timeout=60_000)
    assert len(viewer.layers) == n_layers and w.apply_button.isEnabled()
