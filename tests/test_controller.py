"""The Qt-free controller does everything the widget does, on a headless ViewerModel."""
import subprocess
import sys

import numpy as np
import pytest
from napari.components import ViewerModel

from napari_pancakes.napari.controller import ProtocolController, is_edited, tag
from napari_pancakes.napari.sample_data import synthetic_blobs


@pytest.fixture(scope="module")
def model():
    from napari_pancakes.io_weights import DEFAULT_WEIGHTS, load_model
    from napari_pancakes.model import Pancakes

    return load_model(device="cpu") if DEFAULT_WEIGHTS.is_file() else Pancakes().eval()


@pytest.fixture
def setup(model):
    viewer = ViewerModel()
    image = viewer.add_image(synthetic_blobs(n_images=3, size=64), name="blobs", scale=(1, 0.5, 0.25))
    return viewer, image, ProtocolController(viewer, model=model)


def test_controller_and_export_import_no_qt():
    code = (
        "import sys, napari_pancakes.napari.controller, napari_pancakes.export, napari_pancakes.napari.sample_data;"
        "bad = [m for m in sys.modules if m.startswith(('PyQt5', 'PySide', 'qtpy'))]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_run_adds_aligned_protocol_layers(setup):
    viewer, image, ctl = setup
    layers = ctl.run(image, m=2, k=3)
    assert [ly.name for ly in layers] == ["blobs protocol 1 (K=3)", "blobs protocol 2 (K=3)"]
    for ly in layers:
        assert ly.data.shape == (3, 64, 64)
        assert ly.data.min() >= 1 and ly.data.max() <= 3  # model labels + 1: 0 stays background
        assert tuple(ly.scale) == (1, 0.5, 0.25)
        assert tag(ly)["role"] == "protocol" and tag(ly)["source"] == "blobs"
    assert [ly.visible for ly in layers] == [True, False]  # first protocol shown alone
    assert len(ctl.thumbnails(32)) == 2


def test_rerun_replaces_and_asks_when_edited(setup):
    viewer, image, ctl = setup
    first = ctl.run(image, m=2, k=3)
    before = [np.array(ly.data) for ly in first]
    again = ctl.run(image, m=2, k=4, seed=3)
    assert len(viewer.layers) == 3 and ctl.protocols() == again
    assert [ly.name for ly in again] == ["blobs protocol 1 (K=4)", "blobs protocol 2 (K=4)"]
    assert all(tag(ly)["k"] == 4 and tag(ly)["seed"] == 3 and not is_edited(ly) for ly in again)
    assert any(not np.array_equal(b, ly.data) for b, ly in zip(before, again))  # new pixels in the layers
    assert len(ctl.run(image, m=3, k=3)) == 3 and len(viewer.layers) == 4
    assert len(ctl.run(image, m=1, k=3)) == 1 and len(viewer.layers) == 2  # left-over layers removed
    ctl.run(image, m=2, k=3)
    painted = ctl.protocols()[0]
    painted.data[0, :4, :4] = 2 if painted.data[0, 0, 0] != 2 else 3
    assert is_edited(painted)
    asked = []
    assert ctl.run(image, m=2, k=3, confirm=lambda msg: asked.append(msg) or False) == []
    assert asked and painted in viewer.layers and is_edited(painted)  # declined: the edited layers stay
    assert len(ctl.run(image, m=2, k=3, confirm=True)) == 2 and not is_edited(ctl.protocols()[0])


def test_choose_rename_merge_background_undo(setup):
    viewer, image, ctl = setup
    ctl.run(image, m=2, k=3)
    ctl.step(1)
    chosen = ctl.choose()
    assert chosen.name == "blobs chosen" and tag(chosen)["protocol"] == 2
    chosen.data[:] = 1
    chosen.data[:, :10] = 2
    chosen.data[:, 10:20] = 3
    ctl.rename(2, "nucleus")
    feats = chosen.features
    assert feats.loc[feats["index"] == 2, "name"].item() == "nucleus"
    assert ctl.merge([2, 3]) == 2
    assert set(np.unique(chosen.data)) == {1, 2} and 3 not in ctl.names()
    ctl.to_background(1)
    assert set(np.unique(chosen.data)) == {0, 2}
    assert ctl.undo() == "background" and set(np.unique(chosen.data)) == {1, 2}
    assert ctl.undo() == "merge" and set(np.unique(chosen.data)) == {1, 2, 3}
    assert ctl.undo() == "rename" and ctl.names()[2] == "label 2"
    assert ctl.undo() is None


def test_measure_uses_scale(setup):
    viewer, image, ctl = setup
    ctl.run(image, m=1, k=2)
    chosen = ctl.choose()
    chosen.data[:] = 1
    chosen.data[0, :8, :8] = 2
    rows = {(r["image"], r["label"]): r for r in ctl.measure()}
    assert rows[(0, 2)]["pixels"] == 64 and rows[(0, 2)]["area"] == pytest.approx(64 * 0.5 * 0.25)
    table = {r["label"]: r for r in ctl.label_table()}
    assert table[2]["present_in"] == 1 and table[1]["present_in"] == 3


def test_export_round_trip(setup, tmp_path):
    viewer, image, ctl = setup
    ctl.run(image, m=1, k=2)
    chosen = ctl.choose()
    ctl.rename(1, "cell")
    paths = ctl.export(tmp_path / "out", formats=("tiff", "png"))
    with pytest.raises(FileExistsError):
        ctl.export(tmp_path / "out")
    from napari_pancakes.napari._io import get_reader

    [(data, attrs, kind)] = get_reader(str(paths["names"][0]))(str(paths["names"][0]))
    assert kind == "labels"
    np.testing.assert_array_equal(data, chosen.data)
    assert "cell" in list(attrs["features"]["name"]) and attrs["scale"] == [1, 0.5, 0.25]


def test_nifti_image_exports_labels_with_its_affine(model, tmp_path):
    import nibabel as nib

    from napari_pancakes.napari._io import get_reader

    rng = np.random.default_rng(0)
    affine = np.array([[0, 0, 2.0, 10], [0, 0.5, 0, -5], [0.75, 0, 0, 3], [0, 0, 0, 1]])
    vol = rng.random((24, 20, 3)).astype(np.float32)  # (i, j, k): three slices along the last axis
    nib.save(nib.Nifti1Image(vol, affine), tmp_path / "scan.nii.gz")
    [(data, attrs, kind)] = get_reader(str(tmp_path / "scan.nii.gz"))(str(tmp_path / "scan.nii.gz"))
    assert kind == "image" and data.shape == (3, 24, 20) and attrs["scale"] == [2.0, 0.75, 0.5]
    viewer = ViewerModel()
    image = viewer.add_image(data, **attrs)
    ctl = ProtocolController(viewer, model=model)
    ctl.run(image, m=1, k=3)
    chosen = ctl.choose()
    paths = ctl.export(tmp_path / "labels", formats=("nifti",))
    out = nib.load(paths["nifti"][0])
    np.testing.assert_allclose(out.affine, affine)  # on the scan's grid, voxel for voxel
    np.testing.assert_array_equal(np.moveaxis(np.asarray(out.dataobj), -1, 0), chosen.data)
    # File > Save (the npe2 writer) writes the same file from the layer's attributes
    from napari_pancakes.napari._io import write_labels

    write_labels(str(tmp_path / "saved.nii.gz"), chosen.data, chosen._get_state())
    np.testing.assert_allclose(nib.load(tmp_path / "saved.nii.gz").affine, affine)
    # an image that did not come from NIfTI gets the voxel size from its scale
    plain = viewer.add_image(data, name="plain", scale=(3, 1, 0.5))
    ctl.run(plain, m=1, k=3)
    paths = ctl.export(tmp_path / "plain", layer=ctl.protocols("plain")[0], formats=("nifti",))
    np.testing.assert_allclose(nib.load(paths["nifti"][0]).affine, np.diag([1, 0.5, 3, 1]))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda v: None, "no image layer"),
        (lambda v: v.add_labels(np.zeros((8, 8), np.uint8)), "Labels layer"),
        (lambda v: __import__("napari.utils._proxies", fromlist=["PublicOnlyProxy"]).PublicOnlyProxy(
            v.add_points(np.zeros((2, 2)), name="pts")), "'pts' is a Points layer"),  # a plugin's proxied layer
        (lambda v: v.add_image(np.zeros((2, 3, 8, 8))), "spatial dimensions"),
    ],
)
def test_bad_layers_are_refused_with_a_message(model, make, message):
    viewer = ViewerModel()
    ctl = ProtocolController(viewer, model=model)
    with pytest.raises(ValueError, match=message):
        ctl.prepare(make(viewer), 2, 3)
    with pytest.raises(ValueError, match="k"):
        ctl.prepare(viewer.add_image(np.zeros((8, 8))), 2, 99)


def test_rgb_and_2d_images(model):
    viewer = ViewerModel()
    ctl = ProtocolController(viewer, model=model)
    rgb = viewer.add_image(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8), name="rgb",
                           scale=(2, 3), rgb=True)
    [layer] = ctl.run(rgb, m=1, k=2)
    assert layer.data.shape == (40, 50) and tuple(layer.scale) == (2, 3)


def test_sample_data_is_deterministic():
    from napari_pancakes.napari.sample_data import make_blobs_sample, make_nuclei_sample

    a = synthetic_blobs()
    np.testing.assert_array_equal(a, synthetic_blobs())
    assert a.shape == (5, 192, 192)
    [(nuclei, meta, kind)] = make_nuclei_sample()
    assert nuclei.shape == (6, 256, 256) and kind == "image"
    assert make_blobs_sample()[0][0].shape == (5, 192, 192)


def test_rgb_stack_and_volume_are_sets_of_slices(model):
    viewer = ViewerModel()
    ctl = ProtocolController(viewer, model=model)
    colours = np.random.default_rng(0).integers(0, 255, (2, 30, 40, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="rgb=True"):  # napari did not guess RGB: say how to fix it
        ctl.prepare(viewer.add_image(colours, rgb=False, name="channels"), 1, 2)
    rgb = viewer.add_image(colours, name="rgbs", rgb=True)
    [layer] = ctl.run(rgb, m=1, k=2)
    assert rgb.rgb and layer.data.shape == (2, 30, 40)
    volume = viewer.add_image(np.random.default_rng(1).random((4, 24, 24)), name="vol", scale=(2.0, 0.5, 0.5))
    [layer] = ctl.run(volume, m=1, k=2)
    assert layer.data.shape == (4, 24, 24) and tuple(layer.scale) == (2.0, 0.5, 0.5)


def test_source_image_of_the_chosen_layer(setup):
    viewer, image, ctl = setup
    with pytest.raises(ValueError, match="no chosen label map"):
        ctl.source_image()
    ctl.run(image, m=2, k=3)
    chosen = ctl.choose()
    assert ctl.source_image() is image and ctl.source_image(ctl.protocols()[1]) is image
    image.name = "renamed"
    assert ctl.source_image(chosen) is None  # the source is tracked by name


def test_protocols_are_ranked_most_informative_first(model):
    from napari_pancakes.napari.sample_data import nuclei_stack

    viewer = ViewerModel()
    image = viewer.add_image(nuclei_stack()[:3], name="nuclei")
    ctl = ProtocolController(viewer, model=model)
    layers = ctl.run(image, m=6, k=5)
    info = [tag(ly) for ly in layers]
    assert [i["protocol"] for i in info] == [1, 2, 3, 4, 5, 6]
    assert sorted(i["model_protocol"] for i in info) == [1, 2, 3, 4, 5, 6]
    key = [(i["single_label"], -i["effective_labels"]) for i in info]
    assert key == sorted(key)  # single-label protocols last, then fewer effective labels later
    for ly, i in zip(layers, info):  # the stats describe the layer's own pixels
        assert i["labels_in_use"] <= len(np.unique(ly.data)) and i["single_label"] == (i["labels_in_use"] == 1)
    assert not info[0]["single_label"] and layers[0].visible and viewer.layers.selection.active is layers[0]


def test_changing_m_k_seed_reuses_the_encoding(setup, monkeypatch):
    viewer, image, ctl = setup
    ctl.run(image, m=2, k=3)
    calls = []
    original = ctl.model.phi
    monkeypatch.setattr(ctl.model, "phi", lambda x: calls.append(len(x)) or original(x))
    assert len(ctl.run(image, m=4, k=5, seed=2)) == 4 and calls == []
    image.data = image.data[:2] + 1.0  # new pixels: encoded again
    assert len(ctl.run(image, m=2, k=3)) == 2 and sum(calls) == 2


def test_new_protocols_stay_below_the_chosen_layer_and_runner_up(setup):
    viewer, image, ctl = setup
    ctl.run(image, m=2, k=4)
    chosen = ctl.choose()
    ctl.run(image, m=3, k=4, seed=1)
    names = [ly.name for ly in viewer.layers]
    assert names[-1] == "blobs chosen" and len(ctl.protocols()) == 3
    ctl.run(image, m=2, k=4)  # the chosen layer's protocol (m=2, seed 0) is the cached grid again
    second = ctl.runner_up(chosen)
    assert second.shape == chosen.data.shape and second.min() >= 1 and second.max() <= 4
    assert not np.any(second == chosen.data)


def test_a_blank_image_shows_no_structure(model):
    viewer = ViewerModel()
    blank = viewer.add_image(np.full((2, 70, 90), 3.0, np.float32), name="blank")
    ctl = ProtocolController(viewer, model=model)
    layers = ctl.run(blank, m=4, k=8)
    assert all(len(np.unique(ly.data)) == 1 and tag(ly)["single_label"] for ly in layers)
    assert all(len(np.unique(t[..., :3].reshape(-1, 3), axis=0)) == 1 for t in ctl.thumbnails(32))
