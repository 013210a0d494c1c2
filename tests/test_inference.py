import numpy as np
import pytest
import torch

import napari_pancakes
from napari_pancakes import segment_set
from napari_pancakes.inference import (
    PancakesPredictor, interpolation_matrix, label_counts, protocol_order, protocol_stats,
)
from napari_pancakes.model import Pancakes


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Pancakes().eval()


@pytest.fixture(scope="module")
def trained():
    """The bundled weights: the random-init model labels everything alike, which hides bugs."""
    return napari_pancakes.load_model(device="cpu")


def blobs(s=3, h=128, w=128, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    out = np.zeros((s, h, w), np.float32)
    for i in range(s):
        cy, cx = rng.uniform(0.3, 0.7, 2) * (h, w)
        out[i] = ((yy - cy) ** 2 + (xx - cx) ** 2 < (0.2 * min(h, w)) ** 2) * 1.0 + 0.05 * rng.standard_normal((h, w))
    return out


def test_set_shape_and_range(model):
    out = segment_set(blobs(), m=8, k=20, model=model)
    assert out.shape == (8, 3, 128, 128)
    assert np.issubdtype(out.dtype, np.integer)
    assert out.min() >= 0 and out.max() <= 19


def test_single_image_list_and_rgb(model):
    img = blobs(1)[0]
    assert segment_set(img, 2, 3, model=model).shape == (2, 1, 128, 128)
    rgb = np.stack([img, img, img], -1)
    assert np.array_equal(segment_set(rgb, 2, 3, model=model), segment_set(img, 2, 3, model=model))
    mixed = segment_set([blobs(1, 60, 90)[0], blobs(1, 200, 150)[0]], 2, 4, model=model)
    assert isinstance(mixed, list) and mixed[0].shape == (2, 60, 90) and mixed[1].shape == (2, 200, 150)


def test_output_aligned_with_input_size(model):
    small = blobs(2, 100, 300)
    labels, probs = segment_set(small, 3, 5, model=model, return_probs=True)
    assert labels.shape == (3, 2, 100, 300)
    assert probs.shape == (3, 2, 5, 100, 300)
    assert np.allclose(probs.sum(2), 1, atol=1e-4)
    assert np.array_equal(probs.argmax(2), labels)


def test_phi_computed_once_per_image(model, monkeypatch):
    seen = []
    original = model.f.forward
    monkeypatch.setattr(model.f, "forward", lambda x: seen.append(x.shape[0]) or original(x))
    segment_set(blobs(3), m=8, k=20, model=model)
    assert sum(seen) == 3


def test_deterministic_per_seed(trained):
    model, x = trained, blobs()
    a = segment_set(x, 4, 6, model=model, seed=0)
    assert np.array_equal(a, segment_set(x, 4, 6, model=model, seed=0))
    b = segment_set(x, 4, 6, model=model, seed=5)
    assert np.array_equal(b, segment_set(x, 4, 6, model=model, seed=5))
    assert not np.array_equal(a, b)  # the seed is used: another draw of protocols
    assert not np.array_equal(b, segment_set(x, 4, 6, model=model, seed=6))


def test_predictor_answers_any_mk_seed_from_its_cache(model, monkeypatch):
    x = blobs(3, 100, 140)
    predictor = PancakesPredictor(model).set_images(x)
    assert predictor._features.dtype == torch.float16 and predictor.n_images == 3
    assert predictor.cache_bytes <= 3 * 32 * 128 * 128 * 2 + 3 * 100 * 140 * 4 + 3 * 32 * 4 * 100
    calls = []
    for name in ("phi", "features"):
        original = getattr(model, name)
        monkeypatch.setattr(model, name, lambda *a, _o=original, _n=name: calls.append(_n) or _o(*a))
    for m, k, seed in [(2, 3, 0), (5, 7, 0), (5, 7, 3)]:
        labels, probs = predictor.protocols(m, k, seed=seed, return_probs=True)
        assert labels.shape == (m, 3, 100, 140) and labels.max() < k
        assert np.array_equal(probs.argmax(2), labels)
    assert calls == []  # neither the U-Net nor the image branch ran again
    monkeypatch.undo()
    direct = segment_set(x, 5, 7, model=model, seed=3)
    assert (direct == predictor.protocols(5, 7, seed=3)).mean() > 0.999  # float16 cache: ties may flip


def test_predictor_steps_yield_often_and_runner_up_differs(model):
    predictor = PancakesPredictor(model).set_images(blobs(2, 300, 300))
    steps = list(predictor.iter_steps(32, 64))
    assert sum(s is None for s in steps) >= 2 * 300 // max(1, (1 << 24) // (32 * 64 * 300))  # one per band
    assert [s[0] for s in steps if s is not None] == [0, 1]
    labels = predictor.protocols(4, 6, seed=2)
    second = predictor.runner_up(1, 4, 6, seed=2)
    assert len(second) == 2 and second[0].shape == (300, 300)
    assert not np.any(second[0] == labels[1, 0]) and second[0].max() < 6
    with pytest.raises(RuntimeError, match="set_images"):
        PancakesPredictor(model).protocols(2, 3)


def test_uniform_image_and_regions_get_one_label(trained):
    model = trained
    const = segment_set(np.full((2, 90, 110), 7.0), 4, 8, model=model)
    assert all(len(np.unique(const[p])) == 1 for p in range(4))
    textured = blobs(1, 96, 96)[0]
    padded = np.pad(textured, ((0, 0), (0, 120)))  # a constant band to the right of the content
    labels, probs = segment_set(padded, 6, 12, model=model, seed=1, return_probs=True)
    band = labels[:, 0, :, 100:]  # well inside the band (the edge pixels next to content vary)
    assert all(len(np.unique(band[p])) == 1 for p in range(6))
    assert np.array_equal(probs.argmax(2), labels)
    assert max(len(np.unique(labels[p, 0, :, :90])) for p in range(6)) > 1  # the content keeps its labels


def test_protocol_stats_and_order():
    counts = np.array([[100, 0, 0], [50, 50, 0], [98, 1, 1], [34, 33, 33]])
    stats = protocol_stats(counts)
    assert [s["labels_in_use"] for s in stats] == [1, 2, 3, 3]
    assert stats[0]["single_label"] and not stats[2]["single_label"]
    assert stats[3]["effective_labels"] == pytest.approx(3, abs=0.01)
    assert protocol_order(stats) == [3, 1, 2, 0]
    labels = np.array([[[0, 0], [1, 1]], [[2, 2], [2, 2]]])
    assert label_counts(labels, 3).tolist() == [[2, 2, 0], [0, 0, 4]]


def test_constant_image_works(model):
    out = segment_set(np.full((2, 64, 64), 7.0), 2, 3, model=model)
    assert out.shape == (2, 2, 64, 64)


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((0, 32, 32)), "empty"),
        ([], "empty"),
        (np.zeros(10), "1D"),
        (np.zeros((2, 2, 8, 8, 8)), "5D"),
        (np.array([[np.nan, 1], [1, 1]], dtype=float), "NaN"),
        (np.array([[np.inf, 1], [1, 1]], dtype=float), "NaN or infinite"),
        (np.array([["a", "b"], ["c", "d"]]), "dtype"),
        (np.zeros((2, 1, 32)), "at least 2 pixels"),
    ],
)
def test_invalid_images_raise(model, bad, match):
    with pytest.raises(ValueError, match=match):
        segment_set(bad, 2, 3, model=model)


@pytest.mark.parametrize("m,k", [(0, 5), (33, 5), (4, 1), (4, 65), (2.5, 5), ("8", 20), (True, 5)])
def test_out_of_range_mk_raise(model, m, k):
    with pytest.raises(ValueError, match="must be"):
        segment_set(blobs(1), m, k, model=model)


def test_extremes_of_mk_work(model):
    out = segment_set(blobs(1, 32, 32), 32, 64, model=model)
    assert out.shape == (32, 1, 32, 32) and out.max() < 64
    assert segment_set(blobs(1, 32, 32), 1, 2, model=model).shape == (1, 1, 32, 32)


def test_interpolation_matrix_rows_sum_to_one_and_match_torch():
    for n_out, n_in in [(300, 128), (64, 128), (128, 128), (7, 128)]:
        w = interpolation_matrix(n_out, n_in)
        assert np.allclose(w.sum(1), 1)
    x = torch.rand(1, 1, 16, 16)
    ref = torch.nn.functional.interpolate(x, size=(40, 40), mode="bilinear", align_corners=False)[0, 0]
    ry = torch.from_numpy(interpolation_matrix(40, 16))
    assert torch.allclose(ry @ x[0, 0] @ ry.T, ref, atol=1e-5)


def test_core_does_not_import_qt():
    import subprocess
    import sys

    code = (
        "import sys, numpy as np, napari_pancakes\n"
        "from napari_pancakes import segment_set, metrics, baselines, io, cli, evaluate\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'qtpy', 'napari')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bundled_weights_load_offline_and_segment():
    model = napari_pancakes.load_model(device="cpu")
    out = segment_set(blobs(), 8, 20, model=model)
    assert out.shape == (8, 3, 128, 128)
    assert model.metadata.get("config")


def test_missing_and_corrupt_weights_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        napari_pancakes.load_model(tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"this is not a safetensors file")
    with pytest.raises(ValueError, match="not a valid safetensors"):
        napari_pancakes.load_model(bad)


def test_boundary_shortcut_gives_the_labels_of_the_full_logits(trained):
    """Labels are computed at the working resolution and the full logits only where the source
    pixels disagree; they must equal the argmax of every full-resolution logit."""
    rng = np.random.default_rng(0)
    for x in (blobs(2, 300, 77), rng.random((1, 60, 90)), blobs(1, 129, 400)):  # up- and down-sampling
        predictor = PancakesPredictor(trained, uniform_regions=False).set_images(x)
        for m, k, seed in ((8, 20, 0), (3, 64, 2)):
            fast = predictor.protocols(m, k, seed)
            full = predictor.protocols(m, k, seed, return_probs=True)[1].argmax(2)
            assert np.array_equal(fast, full)


def test_flat_3x3_is_the_max_equals_min_filter():
    """Uniform-region detection finds pixels whose 3 x 3 neighbourhood is one value; the shifted
    comparisons must give exactly what the max/min filters (edges repeated) give, on plateaus,
    noise and images of 1-2 pixels a side."""
    from scipy import ndimage

    from napari_pancakes.inference import flat_3x3

    rng = np.random.default_rng(0)
    for shape in [(1, 1), (1, 5), (2, 2), (7, 9), (40, 33)]:
        for levels in (1, 2, 3):
            a = rng.integers(0, levels, shape).astype(np.float32)
            a[: shape[0] // 2] = 1
            expected = ndimage.maximum_filter(a, 3, mode="nearest") == ndimage.minimum_filter(a, 3, mode="nearest")
            assert np.array_equal(flat_3x3(a), expected), (shape, levels)
