import numpy as np
import pytest

from napari_pancakes.baselines import kmeans_set, slic_per_image
from napari_pancakes.metrics import pair_scores, set_dice, set_iou, set_surface_distance, surface_distance


def test_set_dice_perfect_and_best_pair():
    truth = np.zeros((2, 8, 8), bool)
    truth[:, 2:6, 2:6] = True
    labels = np.zeros((2, 2, 8, 8), int)  # M=2, S=2
    labels[1][truth] = 3
    score, pair = set_dice(labels, truth, k=4, return_pair=True)
    assert score == pytest.approx(1.0) and pair == (1, 3)
    assert set_iou(labels, truth, k=4) == pytest.approx(1.0)


def test_set_mean_penalises_inconsistent_labels():
    """Right structure under different label ids in two images: Set Dice 0.5, not 1."""
    truth = np.zeros((2, 4, 4), bool)
    truth[:, :2] = True
    labels = np.zeros((1, 2, 4, 4), int)
    labels[0, 0][truth[0]] = 1
    labels[0, 1][truth[1]] = 2
    assert set_dice(labels, truth, k=3) == pytest.approx(0.5)
    # per-image it is perfect
    assert set_dice(labels[:, :1], truth[:1], k=3) == pytest.approx(1.0)


def test_dice_and_iou_values_by_hand():
    truth = np.zeros((1, 1, 4), bool)
    truth[0, 0, :2] = True  # 2 pixels
    labels = np.zeros((1, 1, 1, 4), int)
    labels[0, 0, 0, 1:4] = 1  # 3 pixels, 1 overlapping
    scores = pair_scores(labels, truth, k=2)
    assert scores[0, 1] == pytest.approx(2 * 1 / 5)
    assert pair_scores(labels, truth, k=2, metric="iou")[0, 1] == pytest.approx(1 / 4)
    assert scores[0, 0] == pytest.approx(2 * 1 / 3)


def test_surface_distance_values():
    a = np.zeros((10, 10), bool)
    a[2:5, 2:5] = True
    assert surface_distance(a, a) == 0.0
    b = np.roll(a, 3, axis=1)
    assert surface_distance(a, b) == pytest.approx(3 * 6 / 8, rel=0.5)
    assert surface_distance(a, np.zeros_like(a)) == float("inf")
    assert surface_distance(a, b, spacing=(2, 2)) == pytest.approx(2 * surface_distance(a, b))


def test_set_surface_distance_picks_best():
    truth = np.zeros((2, 10, 10), bool)
    truth[:, 3:7, 3:7] = True
    labels = np.zeros((2, 2, 10, 10), int)
    labels[0][:, 3:7, 3:7] = 1
    labels[1][:, 0:4, 0:4] = 1
    d, pair = set_surface_distance(labels, truth, k=2, return_pair=True)
    assert d == 0.0 and pair == (0, 1)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        set_dice(np.zeros((1, 2, 4, 4), int), np.zeros((3, 4, 4), bool))


def test_kmeans_is_consistent_across_the_set():
    rng = np.random.default_rng(0)
    imgs = rng.uniform(0, 0.2, (3, 32, 32)).astype(np.float32)
    truth = np.zeros((3, 32, 32), bool)
    for i, off in enumerate([2, 10, 16]):
        truth[i, off : off + 10, 5:20] = True
    imgs[truth] += 0.7
    out = kmeans_set(imgs, 4, 6)
    assert out.shape == (4, 3, 32, 32)
    assert set_dice(out, truth, k=6) > 0.95


def test_slic_shape_and_range():
    rng = np.random.default_rng(1)
    out = slic_per_image(rng.random((2, 40, 50)), 3, 5)
    assert out.shape == (3, 2, 40, 50) and out.max() <= 4
