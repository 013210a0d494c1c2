import json

import imageio.v3 as iio
import nibabel as nib
import numpy as np
import pytest
import tifffile
import torch

from napari_pancakes.cli import main
from napari_pancakes.io_weights import save_weights
from napari_pancakes.model import Pancakes


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "in"
    d.mkdir()
    iio.imwrite(d / "a.png", (rng.random((60, 80)) * 255).astype(np.uint8))
    iio.imwrite(d / "b.png", (rng.random((50, 50, 3)) * 255).astype(np.uint8))
    tifffile.imwrite(d / "c.tif", (rng.random((2, 40, 30)) * 1000).astype(np.uint16))
    nib.save(nib.Nifti1Image(rng.random((20, 24, 3)).astype(np.float32), np.diag([2, 2, 3, 1])), d / "d.nii.gz")
    (d / "notes.txt").write_text("ignored")
    torch.manual_seed(0)
    save_weights(Pancakes(), tmp_path / "w.safetensors")
    return d


def test_cli_round_trip(folder, tmp_path, capsys):
    out = tmp_path / "out"
    args = [str(folder), "--m", "3", "--k", "5", "--out", str(out), "--weights", str(tmp_path / "w.safetensors")]
    assert main(["segment", *args]) == 0
    assert iio.imread(out / "protocol_01" / "a_labels.png").shape == (60, 80)
    assert iio.imread(out / "protocol_03" / "b_labels.png").shape == (50, 50)
    assert tifffile.imread(out / "protocol_02" / "c_labels.tif").shape == (2, 40, 30)
    vol = nib.load(out / "protocol_01" / "d_labels.nii.gz")
    assert vol.shape == (20, 24, 3) and np.allclose(vol.affine, np.diag([2, 2, 3, 1]))
    assert np.asarray(vol.dataobj).max() < 5
    preview = iio.imread(out / "preview.png")
    assert preview.ndim == 3 and preview.shape[2] == 3
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images_in_set"] == 1 + 1 + 2 + 3
    # second run refuses to overwrite and leaves the outputs untouched
    before = (out / "protocol_01" / "a_labels.png").read_bytes()
    assert main(["segment", *args]) == 2
    assert "exists" in capsys.readouterr().err
    assert (out / "protocol_01" / "a_labels.png").read_bytes() == before
    assert main(["segment", *args, "--overwrite"]) == 0
    names = json.loads((out / "protocol_02" / "labels.json").read_text())
    assert names["files"]["labels"] == ["a_labels.png", "b_labels.png", "c_labels.tif", "d_labels.nii.gz"]
    assert [e["name"] for e in names["labels"]] == [f"label {i}" for i in range(5)]
    assert all(e["color"].startswith("#") for e in names["labels"])


def test_cli_overwrite_replaces_the_previous_result_whole(folder, tmp_path):
    out = tmp_path / "out"
    weights = ["--weights", str(tmp_path / "w.safetensors")]
    assert main(["segment", str(folder), "--m", "4", "--k", "5", "--out", str(out), *weights]) == 0
    (out / "notes.txt").write_text("mine")  # not ours: stays
    assert sorted(p.name for p in out.glob("protocol_*")) == [f"protocol_0{i}" for i in range(1, 5)]
    assert main(["segment", str(folder / "a.png"), "--m", "2", "--k", "5", "--out", str(out), "--overwrite",
                 *weights]) == 0
    assert sorted(p.name for p in out.glob("protocol_*")) == ["protocol_01", "protocol_02"]
    assert sorted(p.name for p in (out / "protocol_01").iterdir()) == ["a_labels.png", "labels.json"]
    assert (out / "notes.txt").read_text() == "mine"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["m"] == 2 and len(summary["label_files"]) == 2


def test_cli_bad_inputs(tmp_path, capsys):
    assert main(["segment", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["segment", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert main(["segment", str(tmp_path / "empty"), "--m", "99", "--out", str(tmp_path / "o")]) == 2
    assert "must be in" in capsys.readouterr().err


def test_cli_sample_with_bundled_weights(tmp_path):
    import tifffile

    out = tmp_path / "demo"
    assert main(["segment", "--sample", "--m", "2", "--k", "4", "--out", str(out)]) == 0
    labels = tifffile.imread(next((out / "protocol_01").glob("*.tif")))
    assert labels.ndim == 3 and labels.max() < 4
    assert (out / "preview.png").exists()


def test_cli_checks_outputs_before_running(folder, tmp_path, capsys, monkeypatch):
    import napari_pancakes.io_weights as io_weights

    monkeypatch.setattr(io_weights, "load_model", lambda *a, **k: pytest.fail("the model ran before the checks"))
    weights = ["--weights", str(tmp_path / "w.safetensors")]
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["segment", str(folder), "--out", str(afile), *weights]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert main(["segment", str(folder), "--out", str(afile / "sub"), *weights]) == 2
    assert "afile is a file" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    iio.imwrite(other / "a.png", np.zeros((20, 20), np.uint8))
    assert main(["segment", str(folder / "a.png"), str(other / "a.png"), "--out", str(tmp_path / "o"), *weights]) == 2
    err = capsys.readouterr().err
    assert str(folder / "a.png") in err and str(other / "a.png") in err
    (other / "bad.png").write_bytes(b"not a png at all")
    assert main(["segment", str(other / "bad.png"), "--out", str(tmp_path / "o"), *weights]) == 2
    err = capsys.readouterr().err
    assert "bad.png is not a valid PNG image" in err and "pip install" not in err
    assert not (tmp_path / "o").exists()


def test_cli_help_message_and_summary_order(folder, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    said = capsys.readouterr().out
    assert "``" not in said
    for command in ("segment", "apply", "analyze", "evaluate"):  # every subcommand, with its one-line help
        assert f"    {command} " in said, command
    flat = " ".join(said.split())
    assert "label new images with a saved protocol" in flat and "association with an outcome" in flat
    out = tmp_path / "one"
    single = tmp_path / "single"
    single.mkdir()
    iio.imwrite(single / "a.png", iio.imread(folder / "a.png"))
    assert main(["segment", str(single), "--m", "4", "--k", "5", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "segmented 1 image into 4 protocols" in said
    summary = json.loads((out / "summary.json").read_text())
    protocols = summary["protocols"]
    assert [p["protocol"] for p in protocols] == [1, 2, 3, 4]
    assert sorted(p["model_protocol"] for p in protocols) == [1, 2, 3, 4]
    key = [(p["single_label"], -p["effective_labels"]) for p in protocols]
    assert key == sorted(key)
    for p in protocols:  # the files hold what the summary says
        labels = iio.imread(out / f"protocol_{p['protocol']:02d}" / "a_labels.png")
        assert len(np.unique(labels)) >= p["labels_in_use"]
    preview = iio.imread(out / "preview.png")
    assert preview.shape[0] > 5 * 130 and preview.shape[1] > 130 + 100  # 1 + 4 rows, a title column
