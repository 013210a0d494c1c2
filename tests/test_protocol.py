"""Protocol files, applying a protocol (arrays, streams, Dask, files, a LocalCluster), propagation."""
import json

import imageio.v3 as iio
import nibabel as nib
import numpy as np
import pytest
import tifffile
import torch

from napari_pancakes import protocol as proto
from napari_pancakes.cli import main
from napari_pancakes.inference import segment_set
from napari_pancakes.io_weights import load_model, save_weights
from napari_pancakes.model import Pancakes
from napari_pancakes.protocol import Protocol, ProtocolSet, WeightsMismatch, apply_protocol, apply_to_files, iter_apply


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A small random-init model saved to a file, so cluster workers can load it too."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "w.safetensors"
    save_weights(Pancakes(), path)
    return path


@pytest.fixture(scope="module")
def model(weights):
    return load_model(weights, device="cpu")


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :80]
    out = []
    for i in range(5):
        im = 0.2 * rng.random((64, 80)) + ((yy - 30) ** 2 + (xx - 40 + 3 * i) ** 2 < (10 + 2 * i) ** 2)
        out.append(im.astype(np.float32))
    return np.stack(out)


def make_protocol(model, weights, **kw):
    return Protocol.from_model(model, 4, 6, 2, seed=5, weights=str(weights), **kw)


def test_apply_reproduces_segment_set(model, weights, images):
    p = make_protocol(model, weights)
    expected = segment_set(images, 4, 6, model=model, seed=5)[2] + 1
    out = apply_protocol(p, images, model=model)
    assert out.shape == images.shape
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(apply_protocol(p, images[0], model=model), expected[0])  # one 2D image
    mixed = apply_protocol(p, [images[0], images[1][:40, :50]], model=model)  # different sizes: a list
    assert [m.shape for m in mixed] == [(64, 80), (40, 50)]


def test_save_load_round_trip_and_refusals(model, weights, tmp_path):
    p = make_protocol(model, weights, colors={1: "#ff0000"}, merges={3: 2}, background=[6])
    p.names[2] = "nucleus"
    path = p.save(tmp_path / "p.json")
    q = Protocol.load(path, model=model)
    assert q == p
    with pytest.raises(FileExistsError, match="exists"):
        p.save(path)
    other = Pancakes()  # different random weights
    with pytest.raises(WeightsMismatch, match="other model weights"):
        Protocol.load(path, model=other)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        Protocol.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="not a napari-pancakes protocol"):
        Protocol.load(tmp_path / "other.json")
    d = p.to_dict()
    d["index"] = 9
    (tmp_path / "range.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match="protocol index"):
        Protocol.load(tmp_path / "range.json")


def test_merges_and_background_change_ids_and_names(model, weights, images):
    plain = apply_protocol(make_protocol(model, weights), images, model=model)
    p = make_protocol(model, weights, merges={3: 2}, background=[6])
    p.names[2] = "merged"
    out = apply_protocol(p, images, model=model)
    expected = plain.copy()
    expected[expected == 3] = 2
    expected[expected == 6] = 0
    np.testing.assert_array_equal(out, expected)
    assert p.label_names()[2] == "merged" and 3 not in p.label_names() and 6 not in p.label_names()


def test_iter_apply_streams_in_batches(model, weights, images):
    pulled = []

    def stream():
        for i in range(20):
            pulled.append(i)
            yield images[i % len(images)]

    it = iter_apply(make_protocol(model, weights), stream(), model=model, batch=4)
    first = next(it)
    assert first[0] == 0 and len(pulled) == 4  # only one batch was read to give the first result
    rest = list(it)
    assert len(rest) == 19 and len(pulled) == 20


def test_dask_array_is_lazy_and_chunked(model, weights, images):
    da = pytest.importorskip("dask.array")
    p = make_protocol(model, weights)
    lazy = apply_protocol(p, da.from_array(images, chunks=(2, 32, 40)), model=model)
    assert isinstance(lazy, da.Array) and lazy.chunks[0] == (2, 2, 1) and lazy.chunks[1] == (64,)
    np.testing.assert_array_equal(lazy.compute(), apply_protocol(p, images, model=model))


def test_lazy_folder_is_read_chunk_by_chunk(model, weights, images, tmp_path):
    pytest.importorskip("dask.array")
    from napari_pancakes.protocol import lazy_folder

    p = make_protocol(model, weights)
    for i, im in enumerate(images):
        tifffile.imwrite(tmp_path / f"im{i}.tif", im)
    lazy = lazy_folder(tmp_path)
    assert lazy.shape == images.shape and lazy.numblocks[0] == 5
    np.testing.assert_array_equal(apply_protocol(p, lazy, model=model).compute(), apply_protocol(p, images, model=model))
    tifffile.imwrite(tmp_path / "odd.tif", images[0][:10])
    with pytest.raises(ValueError, match="one size"):
        lazy_folder(tmp_path).compute()


def test_local_cluster(model, weights, images, tmp_path):
    distributed = pytest.importorskip("distributed")
    da = pytest.importorskip("dask.array")
    p = make_protocol(model, weights)
    expected = apply_protocol(p, images, model=model)
    folder = tmp_path / "in"
    folder.mkdir()
    for i, im in enumerate(images):
        tifffile.imwrite(folder / f"im{i}.tif", im)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        out = apply_protocol(p, da.from_array(images, chunks=(2, 64, 80)), scheduler=cluster.scheduler_address)
        np.testing.assert_array_equal(out, expected)
        seen = []
        written = apply_to_files(p, [folder], tmp_path / "out", scheduler=cluster.scheduler_address,
                                 progress=lambda done, total: seen.append((done, total)))
    assert [w.name for w in written] == [f"im{i}_labels.tif" for i in range(5)] and seen[-1] == (5, 5)
    for i, w in enumerate(written):
        np.testing.assert_array_equal(tifffile.imread(w), expected[i])


def test_unreachable_scheduler(model, weights, images, monkeypatch, tmp_path):
    da = pytest.importorskip("dask.array")
    pytest.importorskip("distributed")
    monkeypatch.setattr(proto, "CONNECT_TIMEOUT", 1.0)
    with pytest.raises(ValueError, match="could not reach the dask scheduler at tcp://127.0.0.1:9"):
        apply_protocol(make_protocol(model, weights), da.from_array(images), scheduler="tcp://127.0.0.1:9")
    folder = tmp_path / "in"
    folder.mkdir()
    tifffile.imwrite(folder / "a.tif", images[0])
    with pytest.raises(ValueError, match="could not reach"):
        apply_to_files(make_protocol(model, weights), [folder], tmp_path / "out", scheduler="tcp://127.0.0.1:9")
    assert not (tmp_path / "out").exists()  # nothing written
    with pytest.raises(ValueError, match="should look like"):
        apply_protocol(make_protocol(model, weights), da.from_array(images), scheduler="localhost")


def test_apply_to_files_formats_names_and_overwrite(model, weights, images, tmp_path):
    p = make_protocol(model, weights)
    p.names[1] = "first"
    folder = tmp_path / "in"
    folder.mkdir()
    iio.imwrite(folder / "a.png", (images[0] * 100).astype(np.uint8))
    affine = np.diag([0.5, 0.7, 2.0, 1.0])
    vol = np.moveaxis(images[:3], 0, -1)  # (H, W, Z): slices along the last axis
    nib.save(nib.Nifti1Image(vol, affine), folder / "v.nii.gz")
    out = tmp_path / "out"
    written = apply_to_files(p, [folder], out, model=model)
    assert [w.name for w in written] == ["a_labels.png", "v_labels.nii.gz"]
    labels_vol = nib.load(out / "v_labels.nii.gz")
    np.testing.assert_allclose(labels_vol.affine, affine)
    np.testing.assert_array_equal(np.moveaxis(np.asarray(labels_vol.dataobj), -1, 0), apply_protocol(p, images[:3], model=model))
    meta = json.loads((out / "labels.json").read_text())
    assert {e["id"]: e["name"] for e in meta["labels"]}[1] == "first"
    assert meta["protocol"]["index"] == 2 and meta["files"]["labels"] == ["a_labels.png", "v_labels.nii.gz"]
    before = (out / "a_labels.png").read_bytes()
    with pytest.raises(FileExistsError, match="--overwrite"):
        apply_to_files(p, [folder], out, model=model)
    assert (out / "a_labels.png").read_bytes() == before
    apply_to_files(p, [folder], out, model=model, overwrite=True)
    # --overwrite with fewer inputs: the new result replaces the old one whole
    (out / "mine.txt").write_text("not a result file")
    apply_to_files(p, [folder / "a.png"], out, model=model, overwrite=True)
    assert sorted(f.name for f in out.iterdir()) == ["a_labels.png", "labels.json", "mine.txt"]


def test_cli_apply(model, weights, images, tmp_path, capsys):
    p = make_protocol(model, weights)
    pfile = p.save(tmp_path / "p.json")
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        tifffile.imwrite(folder / f"s{i}.tif", images[i])
    out = tmp_path / "out"
    assert main(["apply", str(pfile), str(folder), "--out", str(out), "--weights", str(weights), "--device", "cpu"]) == 0
    assert "labelled 3 file(s)" in capsys.readouterr().out
    np.testing.assert_array_equal(tifffile.imread(out / "s1_labels.tif"), apply_protocol(p, images[1], model=model))
    # again without --overwrite: refused, rc 2, message
    assert main(["apply", str(pfile), str(folder), "--out", str(out), "--weights", str(weights)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    # the bundled weights are not the ones the protocol was made with
    assert main(["apply", str(pfile), str(folder), "--out", str(tmp_path / "o2")]) == 2
    assert "other model weights" in capsys.readouterr().err
    (tmp_path / "broken.json").write_text('{"format": "napari-pancakes-protocol/1", "m": 4')
    assert main(["apply", str(tmp_path / "broken.json"), str(folder), "--out", str(tmp_path / "o3")]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()


def test_propagation_learns_from_one_image_and_undoes(model, weights, images):
    p = make_protocol(model, weights)
    ps = ProtocolSet(p, images, model=model)
    before = [lab.copy() for lab in ps.labels]
    label = int(np.bincount(before[0].ravel()).argmax())  # some label of the protocol
    yy, xx = np.mgrid[:64, :80]
    truth = [((yy - 30) ** 2 + (xx - 40 + 3 * i) ** 2 < (10 + 2 * i) ** 2) for i in range(5)]

    def dice(a, b):
        return 2 * (a & b).sum() / (a.sum() + b.sum())

    record = ps.propagate(0, truth[0], label)
    assert record.label == label and len(record.changed) == 5 and any(c > 0 for c in record.changed)
    assert 0 in ps.protocol.learned or (label - 1) in ps.protocol.learned
    gain = [dice(ps.labels[i] == label, truth[i]) - dice(before[i] == label, truth[i]) for i in range(1, 5)]
    assert np.mean(gain) > 0, gain
    # the learnt label travels with the protocol: applying it gives the propagated labels
    np.testing.assert_array_equal(apply_protocol(ps.protocol, images, model=model), np.stack(ps.labels))
    assert ps.undo() is record
    for a, b in zip(ps.labels, before):
        np.testing.assert_array_equal(a, b)
    assert ps.undo() is None
    with pytest.raises(ValueError, match="background"):
        ps.propagate(0, truth[0], 0)
    with pytest.raises(ValueError, match="empty"):
        ps.propagate(0, np.zeros_like(truth[0]), label)
