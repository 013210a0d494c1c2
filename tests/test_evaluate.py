"""The evaluation harness: its content checks and its scoring on a tiny synthetic run."""
import numpy as np
import pytest

from napari_pancakes.evaluate import (constant_image_labels, format_markdown, matched_agreement,
                                      shifted_crop_agreement, summarise)


def test_matched_agreement_ignores_label_names():
    a = np.array([[0, 0, 1, 1], [2, 2, 1, 1]])
    assert matched_agreement(a, (a + 1) % 3) == 1.0  # same partition, other ids
    b = a.copy()
    b[0, 0] = 1
    assert matched_agreement(a, b) == pytest.approx(7 / 8)


def test_shifted_crop_check_separates_content_from_position():
    rng = np.random.default_rng(0)
    img = (rng.random((1, 128, 128)) > 0.5).astype(np.float32)

    def by_content(x):  # labels = intensity, follows the image
        return (x > 0.5).astype(np.uint8)[None]

    def by_position(x):  # labels = left/right half of the crop, ignores the image
        lab = np.zeros(x.shape, np.uint8)
        lab[..., x.shape[-1] // 2:] = 1
        return lab[None]

    assert shifted_crop_agreement(by_content, img) == 1.0
    assert shifted_crop_agreement(by_position, img) < 0.8
    assert constant_image_labels(by_position) == 2 and constant_image_labels(by_content) == 1


def test_summary_means_per_label_then_source():
    items = [dict(source="a", group="leave-out", label=1, s=3), dict(source="a", group="leave-out", label=1, s=3),
             dict(source="a", group="leave-out", label=2, s=3)]
    scores = {"pancakes": [(0.2, 0.1, 1.0), (0.4, 0.3, 3.0), (0.9, 0.8, float("inf"))]}
    (row,) = summarise(items, scores)
    assert row["pancakes"]["dice"] == pytest.approx(100 * (0.3 + 0.9) / 2)
    assert row["pancakes"]["asd"] == pytest.approx(2.0)  # the infinite label is left out of the median
    result = {"m": 8, "k": 20, "weights": "w", "methods": ["pancakes"], "rows": [row],
              "means": {"leave-out": {3: {"pancakes": row["pancakes"]["dice"]}}}}
    assert "| leave-out | 3 | 60.0 |" in format_markdown(result)


def test_harness_runs_on_synthetic_sets_without_data(tmp_path, monkeypatch):
    from napari_pancakes.evaluate import evaluate

    monkeypatch.delenv("NAPARI_PANCAKES_DATA", raising=False)
    result = evaluate(out_dir=tmp_path, methods=("pancakes", "kmeans"), n_sets=1, sizes=(1, 3), cache_dir=None,
                      threads=1, mni=False)
    assert {r["source"] for r in result["rows"]} == {"synthetic"}
    assert (tmp_path / "results.md").is_file() and (tmp_path / "results.json").is_file()
    assert result["checks"]["kmeans"]["constant_image_labels"] == 1
    for r in result["rows"]:
        assert 0 <= r["pancakes"]["dice"] <= 100 and 0 <= r["kmeans"]["dice"] <= 100


def test_sets_of_held_out_training_and_apart_sources_are_grouped_apart():
    from napari_pancakes.evaluate import evaluation_sets
    from napari_pancakes.training.datasets import RealDataset

    rng = np.random.default_rng(0)
    labels = np.zeros((20, 32, 32), np.uint8)
    labels[:, 8:24, 8:24] = 1
    real = {n: RealDataset(n, rng.random((20, 32, 32), dtype=np.float32), labels.copy()) for n in "abc"}
    items = evaluation_sets(real, 2, sizes=(1,), holdout=("a",), synthetic=False, apart=("b",))
    groups = {it["source"]: it["group"] for it in items}
    assert groups == {"a": "leave-out", "b": "training, apart", "c": "training"}
    for it in items:
        if it["source"] != "a":  # training sources lend only their validation images (every 10th subject)
            assert any(np.array_equal(it["images"][0], v) for v in real[it["source"]].images[[0, 10]])
