"""Export writes label maps that read back identically and never overwrites silently."""
import csv
import json

import numpy as np
import pytest

from napari_pancakes.export import export_label_map, label_areas, read_label_map


def _labels():
    lab = np.zeros((3, 10, 12), np.uint8)
    lab[0, :5] = 1
    lab[1, :, :6] = 2
    lab[2] = 3
    return lab


def test_areas_use_scale():
    rows = label_areas(_labels(), scale=(1, 0.5, 2.0), names={1: "top"})
    first = rows[0]
    assert first == {"image": 0, "label": 1, "name": "top", "pixels": 60, "area": 60.0}
    assert {(r["image"], r["label"]) for r in rows} == {(0, 1), (1, 2), (2, 3)}


@pytest.mark.parametrize("fmt", ["tiff", "png", "nifti"])
def test_round_trip(tmp_path, fmt):
    lab = _labels()
    paths = export_label_map(tmp_path / "chosen", lab, names={1: "a", 2: "b"}, colors={1: (1, 0, 0)},
                             scale=(2, 0.5, 0.5), formats=(fmt,))
    back, meta = read_label_map(paths["names"][0])
    np.testing.assert_array_equal(back, lab)
    assert meta["names"][1] == "a" and meta["names"][0] == "background"
    assert meta["colors"][1] == "#ff0000"
    with open(paths["areas"][0]) as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0]["name"] == "a" and float(rows[0]["area"]) == pytest.approx(60 * 0.25)


def test_png_and_nifti_readable_by_standard_readers(tmp_path):
    import imageio.v3 as iio
    import nibabel as nib

    lab = _labels()
    paths = export_label_map(tmp_path / "x", lab, formats=("png", "nifti"), scale=(3, 1, 1))
    assert len(paths["png"]) == 3
    np.testing.assert_array_equal(iio.imread(paths["png"][1]), lab[1])
    vol = nib.load(paths["nifti"][0])
    assert vol.shape == (10, 12, 3) and vol.header.get_zooms()[2] == 3  # the images along the last axis


def test_never_overwrites_silently(tmp_path):
    lab = _labels()
    export_label_map(tmp_path / "x", lab)
    before = (tmp_path / "x.labels.json").read_text()
    with pytest.raises(FileExistsError, match="overwrite"):
        export_label_map(tmp_path / "x", lab * 0, names={1: "changed"})
    assert (tmp_path / "x.labels.json").read_text() == before  # nothing was touched
    export_label_map(tmp_path / "x", lab * 0, names={1: "changed"}, overwrite=True)
    assert json.loads((tmp_path / "x.labels.json").read_text())["labels"][-1]["name"] == "changed"


def test_overwrite_replaces_an_export_whole(tmp_path):
    export_label_map(tmp_path / "x", _labels(), formats=("png", "nifti"))
    (tmp_path / "other.png").write_bytes(b"someone else's")
    export_label_map(tmp_path / "x", _labels()[:2], formats=("png",), overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "other.png", "x.areas.csv", "x.labels.json", "x_000.png", "x_001.png"]  # no x_002.png, no x.nii.gz
    back, _ = read_label_map(tmp_path / "x.labels.json")
    np.testing.assert_array_equal(back, _labels()[:2])


def test_clear_previous_reads_old_segment_summaries_and_stays_in_its_folder(tmp_path):
    from napari_pancakes.export import clear_previous

    out = tmp_path / "out"
    (out / "protocol_01").mkdir(parents=True)
    (out / "protocol_01" / "a_labels.png").write_bytes(b"x")
    (tmp_path / "outside.png").write_bytes(b"x")
    (out / "summary.json").write_text(json.dumps({"label_files": ["somewhere/out/protocol_01/a_labels.png"]}))
    assert [p.name for p in clear_previous(out / "summary.json")] == ["a_labels.png"]
    assert not (out / "protocol_01").exists()  # left empty: removed
    (out / "x.labels.json").write_text(json.dumps({"files": {"tiff": ["../outside.png"]}}))
    assert clear_previous(out / "x.labels.json") == [] and (tmp_path / "outside.png").exists()


def test_one_writer_one_dtype_rule(tmp_path):
    import nibabel as nib
    import tifffile

    from napari_pancakes.export import write_label_file

    big = np.zeros((2, 4, 4), np.int64)
    big[0, 0, 0] = 300
    assert tifffile.imread(write_label_file(tmp_path / "a.tif", big)).dtype == np.uint16
    assert tifffile.imread(write_label_file(tmp_path / "b.tif", big // 300)).dtype == np.uint8
    affine = np.diag([0.5, 0.7, 2.0, 1.0])
    vol = nib.load(write_label_file(tmp_path / "c.nii.gz", big, affine=affine))
    assert vol.shape == (4, 4, 2) and np.allclose(vol.affine, affine) and vol.get_data_dtype() == np.uint16
    with pytest.raises(ValueError, match="non-negative"):
        write_label_file(tmp_path / "d.png", -np.ones((4, 4), np.int8))
    with pytest.raises(ValueError, match="suffix"):
        write_label_file(tmp_path / "e.jpg", np.zeros((4, 4), np.uint8))


def test_bad_input_is_refused(tmp_path):
    with pytest.raises(ValueError, match="label map"):
        export_label_map(tmp_path / "x", np.zeros((2, 2, 2, 2), np.uint8))
    with pytest.raises(ValueError, match="format"):
        export_label_map(tmp_path / "x", _labels(), formats=("jpeg",))


def test_npe2_writer_writes_names_from_features(tmp_path):
    from napari_pancakes.napari._io import get_reader, write_labels

    lab = _labels()
    written = write_labels(str(tmp_path / "saved.tif"), lab,
                           {"features": {"index": [0, 1], "name": ["background", "cell"]}, "scale": (1, 2, 2)})
    assert str(tmp_path / "saved.tif") in written
    [(data, attrs, kind)] = get_reader(str(tmp_path / "saved.labels.json"))(str(tmp_path / "saved.labels.json"))
    np.testing.assert_array_equal(data, lab)
    assert attrs["features"]["name"][1] == "cell" and attrs["scale"] == [1, 2, 2]
    assert get_reader(str(tmp_path / "saved.tif")) is None  # plain TIFFs are left to napari
