"""Population analysis: measurements, outcome tables, association tests with BH, plot, CLI."""
import csv

import imageio.v3 as iio
import numpy as np
import pytest
from scipy import stats

from napari_pancakes import analysis
from napari_pancakes.cli import main


def planted(n=12, seed=0):
    """Label maps (1 protocol, K=4) where label 1's size is set by the outcome, label 2's is random."""
    rng = np.random.default_rng(seed)
    outcome = rng.uniform(0, 1, n)
    labels = np.zeros((1, n, 40, 40), np.int64)  # label 0 everywhere else
    images = rng.random((n, 40, 40)).astype(np.float32)
    for i, o in enumerate(outcome):
        side = 4 + int(round(16 * o))
        labels[0, i, :side, :side] = 1
        r = int(rng.integers(3, 15))
        labels[0, i, 25:25 + r, 25:25 + r // 2 + 1] = 2
        labels[0, i, 39, :3] = 3
        images[i][labels[0, i] == 2] += 5.0
    return labels, images, outcome


def test_measure_labels_area_and_intensity():
    labels, images, _ = planted()
    m = analysis.measure_labels(labels, images, scale=(1, 0.5, 0.25), image_names=[f"im{i}" for i in range(12)])
    assert m.pixel_area == 0.125
    assert m.pixels.shape == (1, 4, 12)
    np.testing.assert_array_equal(m.pixels[0, 1], (labels[0] == 1).sum((1, 2)))
    np.testing.assert_allclose(m.area[0, 2, 3], (labels[0, 3] == 2).sum() * 0.125)
    np.testing.assert_allclose(m.intensity[0, 2, 3], images[3][labels[0, 3] == 2].mean(), rtol=1e-6)
    rows = m.rows()
    assert {"image", "protocol", "label", "pixels", "area", "mean_intensity"} <= set(rows[0])
    assert rows[0]["image"] == "im0" and rows[0]["label"] == 1  # ids are model labels + 1


def test_numeric_outcome_planted_label_ranks_first_with_bh():
    labels, images, outcome = planted()
    m = analysis.measure_labels(labels, images)
    ranking = analysis.rank_labels(m, list(outcome), outcome="score")
    top = ranking.rows[0]
    assert ranking.kind == "numeric" and top["label"] == 2 and top["test"] == "spearman"  # model label 1 -> id 2
    assert top["effect"] > 0.95
    ps = np.array([r["p"] for r in ranking.rows])
    np.testing.assert_allclose([r["q"] for r in ranking.rows], stats.false_discovery_control(ps, method="bh"))
    rho = stats.spearmanr(m.area[0, 1], outcome).statistic
    assert top["statistic"] == pytest.approx(rho)
    # intensity: label 2 (id 3) is bright but not related to the outcome
    by_intensity = analysis.rank_labels(m, list(outcome), measure="intensity")
    assert all(r["measure"] == "intensity" for r in by_intensity.rows)


def test_group_outcomes_missing_values_and_errors():
    labels, images, outcome = planted(n=16)
    m = analysis.measure_labels(labels, images)
    two = ["high" if o > 0.5 else "low" for o in outcome]
    two[0] = None  # a missing value is left out, not an error
    ranking = analysis.rank_labels(m, two)
    assert ranking.kind == "groups" and ranking.rows[0]["test"] == "mann-whitney" and ranking.rows[0]["label"] == 2
    assert ranking.dropped == 1 and ranking.rows[0]["n"] == 15
    three = [str(int(o * 3)) for o in outcome]
    if min(three.count(g) for g in set(three)) >= 2:
        r3 = analysis.rank_labels(m, three, kind="groups")
        assert r3.rows[0]["test"] == "kruskal-wallis" and r3.groups == sorted(set(three))
    with pytest.raises(ValueError, match="single group"):
        analysis.rank_labels(m, ["a"] * 16)
    with pytest.raises(ValueError, match="same value"):
        analysis.rank_labels(m, ["2.0"] * 16, kind="numeric")
    with pytest.raises(ValueError, match="at least 3"):
        analysis.rank_labels(m, [None] * 14 + ["1", "2"])
    with pytest.raises(ValueError, match="non-numeric"):
        analysis.rank_labels(m, ["x"] + ["1"] * 15, kind="numeric")


def test_outcome_table_matching(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("Image;age;group\na.png;3;x\nb;NA;y\nc.tif;5;x\n")
    table = analysis.read_outcomes(path)
    assert table.id_column == "Image" and table.outcomes() == ["age", "group"]
    assert analysis.match_outcome(table, "age", ["a", "b", "c", "d"]) == ["3", None, "5", None]
    by_index = tmp_path / "i.csv"
    by_index.write_text("index,age\n0,1\n2,7\n")
    assert analysis.match_outcome(analysis.read_outcomes(by_index), "age", ["p", "q", "r"]) == ["1", None, "7"]
    with pytest.raises(ValueError, match="no row of .* matches an image"):
        analysis.match_outcome(table, "age", ["zz", "yy"])
    with pytest.raises(ValueError, match="no column 'weight'"):
        analysis.match_outcome(table, "weight", ["a"])
    (tmp_path / "one.csv").write_text("image\na\n")
    with pytest.raises(ValueError, match="at least one outcome column"):
        analysis.read_outcomes(tmp_path / "one.csv")


def disc_set(n=16, seed=0, size=128):
    """Images with a bright disc whose radius follows the outcome, a grey square of random size."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    outcome = rng.uniform(0, 1, n)
    images, discs = [], []
    for o in outcome:
        im = 0.1 + 0.02 * rng.standard_normal((size, size))
        s = int(rng.integers(10, 45))
        im[75:75 + s, 75:75 + s] = 0.5
        disc = (yy - 40) ** 2 + (xx - 40) ** 2 < (8 + 22 * o) ** 2
        im[disc] = 1.0
        images.append(im.astype(np.float32))
        discs.append(disc)
    return np.stack(images), outcome, np.stack(discs)


def test_structure_tracking_the_outcome_ranks_first_with_the_model():
    from napari_pancakes import load_model, segment_set

    model = load_model(device="cpu")
    images, outcome, discs = disc_set()
    table = analysis.OutcomeTable(["image", "size"], [{"image": str(i), "size": f"{o:.4f}"} for i, o in enumerate(outcome)],
                                  "image")
    measurements, ranking = analysis.analyze(images, table, "size", m=4, k=5, model=model)
    top = ranking.rows[0]
    assert top["q"] < 0.01 and abs(top["effect"]) > 0.5  # the disc or its complement (equally strong)
    growing = next(r for r in ranking.rows if r["effect"] > 0)  # the first label whose area rises with size
    assert growing["q"] < 0.01 and growing["effect"] > 0.5 and ranking.rows.index(growing) < 3
    labels = segment_set(images, 4, 5, model=model)
    pred = labels[growing["protocol"] - 1] == growing["label"] - 1
    dice = 2 * (pred & discs).sum() / (pred.sum() + discs.sum())
    assert dice > 0.6, (growing, dice)  # it is the disc, not a region beside it
    fig = analysis.plot_association(measurements, ranking)
    assert fig.axes[0].get_xlabel() == "size"


def test_cli_analyze(tmp_path, capsys):
    images, outcome, _ = disc_set(n=8, size=64)
    folder = tmp_path / "in"
    folder.mkdir()
    for i, im in enumerate(images):
        iio.imwrite(folder / f"case{i}.png", (im * 200).astype(np.uint8))
    table = tmp_path / "outcomes.csv"
    with open(table, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "size", "arm"])
        for i, o in enumerate(outcome):
            w.writerow([f"case{i}.png", f"{o:.3f}", "A" if i % 2 else "B"])
    out = tmp_path / "out"
    args = ["analyze", str(folder), "--table", str(table), "--outcome", "size", "--m", "2", "--k", "4",
            "--pixel-size", "0.5", "0.5", "--out", str(out)]
    assert main(args) == 0
    assert "tested" in capsys.readouterr().out
    rows = list(csv.DictReader(open(out / "ranking.csv")))
    assert rows and rows[0]["rank"] == "1" and set(analysis.RANK_FIELDS) == set(rows[0])
    meas = list(csv.DictReader(open(out / "measurements.csv")))
    assert float(meas[0]["area"]) == pytest.approx(int(meas[0]["pixels"]) * 0.25)
    assert iio.imread(out / "plot.png").ndim == 3
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err
    assert main(args[:4] + ["--outcome", "arm", "--overwrite"] + args[6:]) == 0
    bad = tmp_path / "bad.csv"
    bad.write_text("image,size\nnope,1\nnada,2\n")
    assert main(["analyze", str(folder), "--table", str(bad), "--outcome", "size", "--out", str(tmp_path / "o2")]) == 2
    assert "matches an image" in capsys.readouterr().err and not (tmp_path / "o2").exists()


def test_spearman_p_values_for_small_sets():
    # a perfect rank agreement of 5 images: 2 of the 120 orderings are as extreme (p = 1/60),
    # not the ~1e-24 of the t approximation
    rho, p = analysis.spearman([1, 2, 3, 4, 5], [2, 4, 6, 8, 11])
    assert rho == pytest.approx(1.0) and p == pytest.approx(1 / 60)
    x = np.random.default_rng(0).random(12)
    y = x + np.random.default_rng(1).random(12)
    rho, p = analysis.spearman(x, y)  # permutation p close to scipy's for moderate n
    assert abs(p - stats.spearmanr(x, y).pvalue) < 0.05
    big = np.random.default_rng(2).random(40)
    assert analysis.spearman(big, big[::-1])[1] == pytest.approx(stats.spearmanr(big, big[::-1]).pvalue)
