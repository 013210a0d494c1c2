"""Training components: synthetic sets, the set loss, a resumable 3-step run, real-data loading."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_pancakes.io_weights import load_checkpoint
from napari_pancakes.training.augment import augment_set
from napari_pancakes.training.datasets import RealDataset, derive_target, load_real_datasets, split_validation, subjects_from_notes
from napari_pancakes.training.loss import best_pair_loss, pair_losses, set_loss
from napari_pancakes.training.synthetic import synthetic_set
from napari_pancakes.training.train import TrainConfig, train

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_synthetic_set_shapes_and_determinism():
    images, labels = synthetic_set(np.random.default_rng(3), 4)
    assert images.shape == labels.shape == (4, 128, 128)
    assert images.dtype == np.float32 and np.issubdtype(labels.dtype, np.integer)
    assert images.min() >= 0 and images.max() <= 1
    again, again_labels = synthetic_set(np.random.default_rng(3), 4)
    np.testing.assert_array_equal(images, again)
    np.testing.assert_array_equal(labels, again_labels)


def test_synthetic_members_differ_but_share_labels():
    rng = np.random.default_rng(5)
    closer = 0
    for _ in range(6):
        images, labels = synthetic_set(rng, 3)
        _, other = synthetic_set(rng, 1)
        assert not np.array_equal(images[0], images[1])
        assert not np.array_equal(labels[0], labels[1])  # independent deformations
        ids = [set(np.unique(lab).tolist()) for lab in labels]
        shared = set.intersection(*ids)
        assert len(shared) >= 0.5 * max(len(i) for i in ids)
        # same template: members agree pixel-wise more than members of different sets do
        closer += (labels[0] == labels[1]).mean() > (labels[0] == other[0]).mean()
    assert closer >= 5


def test_augment_keeps_shapes_and_range():
    rng = np.random.default_rng(0)
    images, labels = synthetic_set(rng, 3)
    aug, aug_labels = augment_set(rng, images, labels)
    assert aug.shape == images.shape and aug_labels.shape == labels.shape
    assert aug.min() >= 0 and aug.max() <= 1
    assert set(np.unique(aug_labels)) <= set(np.unique(labels)) | {0}


def _one_hot_logits(maps, k, scale=50.0):
    """Logits (S, M, K, H, W) that put label ``maps[m][s]`` everywhere with high confidence."""
    maps = torch.as_tensor(np.asarray(maps)).permute(1, 0, 2, 3)  # (S, M, H, W)
    return torch.nn.functional.one_hot(maps, k).permute(0, 1, 4, 2, 3).float() * scale


def test_loss_perfect_prediction_is_zero_and_min_picks_best_pair():
    target = np.zeros((2, 16, 16), bool)
    target[:, 4:12, 4:12] = True
    good = target.astype(int) * 2  # label 2 = target, label 0 elsewhere
    bad = np.zeros_like(good)  # everything label 0
    logits = _one_hot_logits([bad, good], k=3)  # protocol 1 is right
    t = torch.from_numpy(target).float()
    d = pair_losses(logits, t)
    assert d.shape == (2, 3)
    assert float(d[1, 2]) < 1e-3
    assert float(set_loss(logits, t)) == pytest.approx(float(d[1, 2]))
    assert float(d[0, 0]) > 0.5 and float(d[1, 1]) > 0.98


def test_loss_averages_over_the_set():
    target = np.zeros((2, 16, 16), bool)
    target[:, :8] = True
    pred = np.zeros((1, 2, 16, 16), int)
    pred[0, 0, :8] = 1  # right in image 0, label 1 absent in image 1
    d = pair_losses(_one_hot_logits(pred, k=2), torch.from_numpy(target).float())
    dice1_img1 = 1 - 1 / (128 + 1)  # empty prediction vs 128-pixel target, EPS = 1
    assert float(d[0, 1]) == pytest.approx((0 + dice1_img1) / 2, abs=1e-3)


def test_fast_loss_matches_reference_gradient():
    torch.manual_seed(0)
    feats = torch.nn.functional.normalize(torch.randn(3, 8, 16, 16), dim=1).requires_grad_()
    w = torch.randn(4, 6, 8, requires_grad=True)
    b = torch.randn(4, 6, requires_grad=True)
    target = (torch.rand(3, 16, 16) > 0.6).float()
    logits_fn = lambda f, ww, bb: torch.einsum("ndhw,mkd->nmkhw", f, ww) + bb[None, :, :, None, None]
    fast, _ = best_pair_loss(feats, w, b, target, logits_fn)
    ref = set_loss(logits_fn(feats, w, b), target)
    assert float(fast.detach()) == pytest.approx(float(ref.detach()), abs=1e-6)
    g_fast = torch.autograd.grad(fast, [feats, w])
    g_ref = torch.autograd.grad(ref, [feats, w])
    for a, r in zip(g_fast, g_ref):
        torch.testing.assert_close(a, r, atol=1e-6, rtol=1e-4)


def test_training_smoke_writes_and_resumes_checkpoint(tmp_path):
    cfg = dict(out=str(tmp_path / "run"), batch_sets=1, s_range=(2, 2), m_range=(2, 3), k_range=(3, 4),
               val_sets=1, data_root=str(tmp_path / "no-data"), mni=False, features=8, threads=1,
               cache_dir=str(tmp_path / "cache"), log_every=1, warmup=1)
    train(TrainConfig(steps=2, **cfg))
    ckpt = tmp_path / "run" / "last.safetensors"
    assert ckpt.is_file() and (tmp_path / "run" / "best.safetensors").is_file()
    assert json.loads((tmp_path / "run" / "last.safetensors.json").read_text())["step"] == 2
    _, opt_state, rng, _ = load_checkpoint(ckpt)
    assert opt_state["state"] and "torch0" in rng  # optimiser moments and RNG travel with the model
    train(TrainConfig(steps=3, resume=True, **cfg))
    state = json.loads((tmp_path / "run" / "last.safetensors.json").read_text())
    assert state["step"] == 3 and state["config"]["features"] == 8
    assert (tmp_path / "run" / "metrics.csv").read_text().count("\n") >= 3
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "step 3 loss" in log and "resumed from" in log  # what the training-curve plot reads


def test_training_starts_from_given_weights(tmp_path):
    """--init continues from released weights: the first checkpoint starts from them, not from He init."""
    cfg = dict(batch_sets=1, s_range=(2, 2), m_range=(2, 3), k_range=(3, 4), val_sets=1,
               data_root=str(tmp_path / "no-data"), mni=False, features=8, threads=1,
               cache_dir=str(tmp_path / "cache"), log_every=1, warmup=1)
    train(TrainConfig(out=str(tmp_path / "a"), steps=1, **cfg))
    start = tmp_path / "a" / "best.safetensors"
    train(TrainConfig(out=str(tmp_path / "b"), steps=1, init=str(start), lr=0.0, **cfg))
    from safetensors.torch import load_file

    a, b = load_file(str(start)), load_file(str(tmp_path / "b" / "best.safetensors"))
    assert a.keys() == b.keys()
    for key in a:  # lr 0: weights unchanged from the init file
        torch.testing.assert_close(a[key], b[key])


def test_real_datasets_load_when_present(tmp_path):
    if not (SHARED_DATA / "drive_vessels").is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    real = load_real_datasets(["drive_vessels"], root=SHARED_DATA, cache_dir=tmp_path, mni=False)
    ds = real["drive_vessels"]
    assert ds.images.shape == ds.labels.shape == (40, 128, 128)
    assert ds.images.dtype == np.float32 and 0 <= ds.images.min() and ds.images.max() <= 1
    rng = np.random.default_rng(0)
    target = derive_target(rng, ds.labels[ds.set_indices(rng, 3)].astype(np.int64))
    assert target is not None and target.shape == (3, 128, 128)
    assert (target.reshape(3, -1).sum(1) >= 16).all()


def test_validation_split_keeps_subjects_whole():
    subject = np.repeat(np.arange(25), 4)  # 25 patients, 4 correlated slices each
    ds = RealDataset("d", np.zeros((100, 8, 8), np.float32), np.zeros((100, 8, 8), np.uint8), subject=subject)
    train, val = split_validation({"d": ds})
    assert set(train["d"].subject).isdisjoint(val["d"].subject)
    assert sorted(set(val["d"].subject)) == [0, 10, 20]  # every 10th subject
    assert len(train["d"]) + len(val["d"]) == 100
    plain = RealDataset("p", np.zeros((30, 8, 8), np.float32), np.zeros((30, 8, 8), np.uint8))
    assert np.flatnonzero(plain.validation_mask()).tolist() == [0, 10, 20]  # no subjects: every 10th image


def test_subjects_come_from_the_source_notes(tmp_path):
    rows = ["| NNN | original |", "|---|---|"] + [f"| {i:03d} | pat{i // 3:04d}_1/flair.nii.gz, z={i} |" for i in range(6)]
    (tmp_path / "SOURCE.md").write_text("# notes\n\n" + "\n".join(rows) + "\n")
    assert subjects_from_notes(tmp_path, "brats2013_flair", 6).tolist() == [0, 0, 0, 1, 1, 1]
    assert subjects_from_notes(tmp_path, "brats2013_flair", 7) is None  # index and images disagree: no guess
    assert subjects_from_notes(tmp_path, "duke_oct_dme_fluid", 23).tolist() == [0] * 11 + [1] * 11 + [2]
    assert subjects_from_notes(tmp_path, "drive_vessels", 6) is None  # independent images


def test_missing_data_root_gives_no_real_datasets(tmp_path):
    assert load_real_datasets(root=tmp_path / "absent", mni=False) == {}


def test_feature_spread_is_one_when_collapsed_and_small_when_spread():
    import torch

    from napari_pancakes.training.loss import feature_spread

    same = torch.nn.functional.normalize(torch.ones(2, 8, 16, 16), dim=1)
    assert abs(float(feature_spread(same)) - 1.0) < 1e-6
    g = torch.Generator().manual_seed(0)
    spread = torch.nn.functional.normalize(torch.randn(2, 8, 16, 16, generator=g), dim=1)
    assert float(feature_spread(spread)) < 0.05


def test_partition_loss_matches_labels_and_picks_best_protocol():
    """Dense loss: each target label is matched to its own k; a protocol that reproduces the
    partition wins with a near-zero loss, and a collapsed protocol scores badly."""
    from napari_pancakes.training.loss import best_protocol_partition_loss

    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    labels[:, :, 4:] = 1
    labels[:, 6:, :2] = 2
    onehot = torch.nn.functional.one_hot(labels, 3).permute(0, 3, 1, 2).float()
    # features = one-hot of the partition (D = 3); protocol 0 collapses, protocol 1 maps label l -> k = 2 - l
    feats = onehot.clone().requires_grad_(True)
    w = torch.zeros(2, 4, 3)
    w[0, 0] = torch.tensor([1.0, 1.0, 1.0])
    for l in range(3):
        w[1, 2 - l, l] = 1.0
    w = (w * 30).requires_grad_(True)
    b = torch.zeros(2, 4)
    b[:, 3] = -100  # an unused label
    loss, m = best_protocol_partition_loss(feats, w, b, labels, lambda f, ww, bb: torch.einsum(
        "ndhw,mkd->nmkhw", f, ww) + bb[None, :, :, None, None])
    assert m == 1 and float(loss) < 0.05
    loss.backward()
    assert feats.grad is not None and w.grad[1].abs().sum() > 0 and w.grad[0].abs().sum() == 0


def test_derived_partitions_and_intensity_protocols():
    from napari_pancakes.training.datasets import derive_partition, intensity_partition

    rng = np.random.default_rng(0)
    labels = np.zeros((3, 32, 32), np.int64)
    labels[:, 8:20, 8:20] = 1
    labels[:, 22:30, 2:30] = 2
    parts = [derive_partition(rng, labels, max_labels=1) for _ in range(30)]
    parts = [p for p in parts if p is not None]  # None: a random merge left no structure; the sampler redraws
    assert len(parts) >= 15
    for part in parts:
        assert part.shape == labels.shape
        assert set(np.unique(part)) == {-1, 0}  # one structure (max_labels), the background left free
        assert np.all(part[labels == 0] == -1)
    part = derive_partition(np.random.default_rng(1), labels, groups=[np.array([0, 1, 2])], natural=1.0)
    assert np.array_equal(part, labels - 1)  # the annotation as is: both structures, background free
    images = np.tile(np.linspace(0, 1, 32, dtype=np.float32), (3, 32, 1))
    part = intensity_partition(rng, images, max_labels=4)
    assert 2 <= part.max() + 1 <= 4
    # levels follow intensity: the mean intensity rises with the label id
    means = [images[part == v].mean() for v in range(part.max() + 1)]
    assert np.all(np.diff(means) > 0)


def test_reflect_padding_gives_one_label_on_a_constant_image():
    """With reflect padding the network has no border to read position from: a constant image
    yields constant features, so every protocol uses one label (zero padding does not)."""
    from napari_pancakes.model import Pancakes, PancakesConfig
    from napari_pancakes.training.train import init_weights

    x = torch.full((1, 1, 64, 64), 0.3)
    used = {}
    for padding in ("zeros", "reflect"):
        torch.manual_seed(0)
        net = Pancakes(PancakesConfig(features=8, padding=padding))
        init_weights(net)
        with torch.no_grad():
            labels = net(x, 4, 10).argmax(2)
        used[padding] = max(len(torch.unique(labels[0, m])) for m in range(4))
    assert used["reflect"] == 1 and used["zeros"] > 1


def test_partition_loss_without_structures_is_zero_and_finite():
    """A target whose structures were all cropped away (all -1) gives no signal, not NaN."""
    from napari_pancakes.training.loss import best_protocol_partition_loss

    feats = torch.randn(2, 4, 8, 8, requires_grad=True)
    w, b = torch.randn(3, 5, 4), torch.zeros(3, 5)
    loss, _ = best_protocol_partition_loss(feats, w, b, torch.full((2, 8, 8), -1), lambda f, ww, bb: torch.einsum(
        "ndhw,mkd->nmkhw", f, ww) + bb[None, :, :, None, None])
    loss.backward()
    assert float(loss) == 0.0 and torch.isfinite(feats.grad).all()


def test_refiner_until_rolls_over_midnight():
    import datetime as dt

    from napari_pancakes.training.refiner import _deadline_seconds

    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=2)
    left = _deadline_seconds(f"{past.hour:02d}:{past.minute:02d}")
    assert 23 * 3600 < left <= 24 * 3600  # a time already past today is tomorrow's, not a negative budget
    soon = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=3)
    assert 0 < _deadline_seconds(f"{soon.hour:02d}:{soon.minute:02d}") <= 180


def test_superpixel_targets_follow_image_regions_and_feed_training():
    """Superpixel targets (ScribblePrompt's synthetic labels) are regions of the image itself:
    on a two-region image most targets keep to one side of the edge (a merge with a neighbouring
    region may cross it), and a crop's target comes from
    them when ``superpixel_prob`` is 1, so a label map with only background still trains."""
    import types

    import torch

    from napari_pancakes.refine.network import RefinerConfig, RefinerNet
    from napari_pancakes.training.refiner import Recipe, Source, make_example, superpixel_target, train_step

    rng = np.random.default_rng(0)
    img = np.zeros((64, 64), np.float32)
    img[:, 32:] = 1.0
    img += rng.normal(0, 0.02, img.shape).astype(np.float32)
    one_side = 0
    for _ in range(40):
        t = superpixel_target(np.clip(img, 0, 1), rng)
        assert t is not None and 12 <= t.sum() <= 0.6 * t.size
        one_side += not (t[:, :32].any() and t[:, 32:].any())
    assert one_side >= 30  # a box or blob placed at random would straddle the edge about half the time
    assert superpixel_target(np.zeros((4, 4), np.float32), rng) is None  # no region big enough

    images = np.stack([img] * 4).astype(np.float32)
    ds = types.SimpleNamespace(name="two_halves", images=np.clip(images, 0, 1),
                               labels=np.zeros((4, 64, 64), np.uint8), groups=[],
                               validation_mask=lambda: np.array([False, False, False, True]))
    src = Source(ds, 32)
    assert src.sample(rng, False, Recipe(superpixel_prob=0.0)) is None  # background only: no labelled target
    got = src.sample(rng, False, Recipe(superpixel_prob=1.0))
    assert got is not None and got[1].shape == (32, 32) and 0 < got[1].sum() < got[1].size
    torch.manual_seed(0)
    net = RefinerNet(RefinerConfig(resolution=32, features=(8, 8)))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    batch = [make_example([src], rng, 32, Recipe(synthetic_prob=0.0, superpixel_prob=1.0)) for _ in range(2)]
    assert np.isfinite(train_step(net, opt, batch, net.config, rng, steps=2))


def test_bundled_images_train_the_refiner_without_labels():
    """scikit-image's own images (no download) as an unlabelled source: every crop trains (no
    validation images, no labels to validate on), each example's target comes from the image, and
    ``bundled_prob`` sets the share of real crops taken from them."""
    import types
    from unittest import mock

    from napari_pancakes.training import datasets
    from napari_pancakes.training.datasets import BUNDLED_IMAGES, bundled_images
    from napari_pancakes.training.refiner import Recipe, Source, make_example

    ds = bundled_images(64)
    n = len(np.unique(ds.subject))  # all 15 with scikit-image 0.26; a later one may drop some
    assert ds.images.shape == (5 * n, 64, 64) and n >= len(BUNDLED_IMAGES) // 2 and not ds.labels.any()
    assert 0 <= ds.images.min() and ds.images.max() <= 1
    with mock.patch.object(datasets, "BUNDLED_IMAGES", ("coins", "no_such_image")):
        with pytest.warns(UserWarning, match="no_such_image"):
            assert len(datasets.bundled_images(32)) == 5  # one that cannot be read is left out, the rest train
    bundled = Source(ds, 32, unlabelled=True)
    assert len(bundled.train) == len(ds.images) and len(bundled.val) == 0
    rng = np.random.default_rng(0)
    examples = [make_example([bundled], rng, 32, Recipe(synthetic_prob=0.0)) for _ in range(10)]
    assert all(0 < e.target.sum() < e.target.size for e in examples)
    # beside a labelled source, the share of crops from the bundled images follows bundled_prob
    labelled_img = np.zeros((2, 64, 64), np.float32)
    labelled_img[:, 16:48, 16:48] = 1.0
    labelled = Source(types.SimpleNamespace(name="square", images=labelled_img, labels=labelled_img.astype(np.uint8),
                                            groups=[], validation_mask=lambda: np.array([False, False])), 32)
    for share in (0.0, 0.5):
        recipe = Recipe(synthetic_prob=0.0, bundled_prob=share)
        examples = [make_example([labelled, bundled], rng, 32, recipe) for _ in range(200)]
        # the square's crops are nearly all exactly 0 or 1; a normalised photograph's are not
        from_square = np.mean([np.isin(e.img, (0.0, 1.0)).mean() > 0.7 for e in examples])
        assert abs((1 - from_square) - share) < 0.12, (share, from_square)


def test_similar_region_targets_take_every_instance_alike():
    """A many-instance target (similar_regions_target) is several of the image's own blobs that look
    alike: on an image of bright discs and a dim disc, every target lies on the bright discs (never
    the background between them or the dim disc) and has at least three of them; an image with no
    blobs gives none."""
    from scipy import ndimage as ndi

    from napari_pancakes.training.refiner import similar_regions_target

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:128, 0:128]
    img = np.full((128, 128), 0.15, np.float32)
    bright = np.zeros((128, 128), bool)
    for y, x in [(20, 20), (20, 70), (60, 40), (100, 20), (100, 100), (60, 105)]:
        bright |= np.hypot(yy - y, xx - x) < 6
    img[bright] = 0.8
    img[np.hypot(yy - 60, xx - 75) < 6] = 0.45  # a dim disc: not like the others
    img += rng.normal(0, 0.01, img.shape).astype(np.float32)
    got = [similar_regions_target(np.clip(img, 0, 1), rng) for _ in range(30)]
    got = [t for t in got if t is not None]
    assert len(got) >= 10
    for t in got:
        assert not (t & ~ndi.binary_dilation(bright, iterations=2)).any()
        assert ndi.label(t)[1] >= 3
    assert similar_regions_target(np.full((64, 64), 0.5, np.float32), rng) is None


def test_small_targets_are_small_and_stand_out():
    """small_target gives a small target with an edge of its own: a labelled blob that differs from
    its surroundings (never a label fragment cut by the crop's edge or one that looks like its
    surroundings), or a shape painted into the crop with a contrast to what lies around it."""
    from scipy import ndimage as ndi

    from napari_pancakes.training.refiner import small_target

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:128, 0:128]
    img = np.full((128, 128), 0.3, np.float32)
    lab = np.zeros((128, 128), np.uint8)
    blob = np.hypot(yy - 40, xx - 60) < 4
    img[blob], lab[blob] = 0.9, 1
    lab[0:3, 100:110] = 1  # a fragment cut by the crop's edge
    lab[90:94, 30:34] = 2  # a labelled patch that looks like its surroundings
    n_label = 0
    for _ in range(40):
        got = small_target(img, lab, rng)
        assert got is not None
        out, t = got
        assert 6 <= t.sum() <= 0.015 * t.size
        assert not t[0:3, 100:110].any() and not t[90:94, 30:34].any()
        if out is img:
            n_label += 1
            assert np.array_equal(t, blob)
        else:
            ring = ndi.binary_dilation(t, iterations=2) & ~t
            assert abs(out[t].mean() - out[ring].mean()) > 0.1
    assert 5 <= n_label <= 35  # both kinds occur


def test_pancakes_start_poor_labels_on_request():
    """pancakes_start gives the best-matching candidate label (or one of the top 5); with
    ``poor_prob`` = 1 any label that overlaps the target (Dice >= 0.05), so poor starts occur."""
    from napari_pancakes.training.refiner import pancakes_start
    from napari_pancakes.training.simulate import dice

    target = np.zeros((32, 32), bool)
    target[8:24, 8:24] = True
    pan = np.zeros((2, 32, 32), np.uint8)
    pan[0][8:24, 8:24] = 1  # protocol 0, label 1: the target itself
    pan[1][:, :12] = 1  # protocol 1, label 1: a band that overlaps it a little
    pan[1][:, 12:] = 2  # label 2: the rest
    rng = np.random.default_rng(0)
    best = [dice(pancakes_start(pan, target, None), target)]
    poor = [pancakes_start(pan, target, rng, poor_prob=1.0) for _ in range(60)]
    assert best == [1.0]
    scores = [dice(p, target) for p in poor]
    assert min(scores) >= 0.05 and min(scores) < 0.5 and max(scores) == 1.0
    assert all(p is not None for p in poor)


def test_small_target_painted_shapes_follow_radii():
    """The painted shapes' semi-axes come from ``radii``: a smaller range gives smaller targets
    (the size floor of the click model is trained against with shapes of 1-5 grid pixels)."""
    from napari_pancakes.training.refiner import small_target

    img = np.full((128, 128), 0.4, np.float32)
    lab = np.zeros((128, 128), np.uint8)  # no labelled blob: every target is painted
    areas = {}
    for radii in ((1.0, 3.0), (6.0, 8.0)):
        rng = np.random.default_rng(1)
        got = [small_target(img, lab, rng, radii=radii) for _ in range(60)]
        areas[radii] = [int(t.sum()) for _, t in (g for g in got if g is not None)]
        assert areas[radii] and max(areas[radii]) <= np.pi * (radii[1] * 1.2 + 1) ** 2
    assert max(areas[(1.0, 3.0)]) < min(areas[(6.0, 8.0)])


def test_benchmarks_know_which_weights_saw_the_leave_out_group():
    from napari_pancakes.training.datasets import LEAVE_OUT, saw_leave_out

    assert saw_leave_out(list(LEAVE_OUT)) == []  # a leave-out run's file
    assert saw_leave_out("[]") == list(LEAVE_OUT)  # the all-data stage, as a safetensors header stores it
    assert saw_leave_out(None) == list(LEAVE_OUT)  # no record: assume it saw them
    assert saw_leave_out(json.dumps(list(LEAVE_OUT[1:]))) == [LEAVE_OUT[0]]


def test_pack_roundtrip_keeps_labels_split_and_images(tmp_path):
    """The transport pack (for a GPU machine) keeps label maps and the subject split exact, the
    stack/position/group arrays, and the images within JPEG error."""
    from napari_pancakes.training.datasets import read_pack, write_pack

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64]
    images = np.stack([np.clip((np.hypot(yy - 20 - i, xx - 30) < 12) * 0.7 + 0.1 + rng.normal(0, 0.02, (64, 64)), 0, 1)
                       for i in range(6)]).astype(np.float32)
    labels = (images > 0.4).astype(np.uint8)
    real = {"discs": RealDataset("discs", images, labels, groups=[np.array([0, 1])], subject=np.array([0, 0, 1, 1, 2, 2])),
            "slices": RealDataset("slices", images[:4], labels[:4] * 2, eval_group=np.array([0, 1, 1]),
                                  stack=np.array([0, 0, 1, 1]), position=np.array([3, 4, 3, 4]))}
    back = read_pack(write_pack(real, tmp_path / "p.npz"))
    assert list(back) == ["discs", "slices"]
    for name, ds in real.items():
        got = back[name]
        assert got.images.dtype == np.float32 and got.images.shape == ds.images.shape
        assert np.abs(got.images - ds.images).mean() < 0.02
        assert np.array_equal(got.labels, ds.labels)
        assert np.array_equal(got.validation_mask(), ds.validation_mask())
        assert len(got.groups) == len(ds.groups)
        for key in ("eval_group", "stack", "position", "subject"):
            a, b = getattr(ds, key), getattr(got, key)
            assert (a is None and b is None) or np.array_equal(a, b)
    assert list(read_pack(tmp_path / "p.npz", names=["slices"])) == ["slices"]
    assert "slices" not in read_pack(tmp_path / "p.npz", exclude=["slices"])


def test_example_pool_makes_and_corrects_examples_in_workers():
    """ExamplePool (a GPU run's simulated user in worker processes) returns full batches, and a
    round of feedback sets each prior to its logits and adds a correction, like the trainer does."""
    import types

    import torch

    from napari_pancakes.refine.network import RefinerConfig, RefinerNet
    from napari_pancakes.training.refiner import ExamplePool, Recipe, Source, encode_batch, train_step

    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:64, 0:64]
    images = np.stack([(np.hypot(yy - 32, xx - 20 - 4 * i) < 10) * 0.8 + 0.1 for i in range(4)]).astype(np.float32)
    ds = types.SimpleNamespace(name="discs", images=images, labels=(images > 0.5).astype(np.uint8), groups=[],
                               validation_mask=lambda: np.array([False, False, False, True]))
    config = RefinerConfig(resolution=32, features=(8, 8))
    pool = ExamplePool([Source(ds, 32)], workers=2, config=config, recipe=Recipe(superpixel_prob=0.0))
    try:
        batch, x = pool.batch(5, rng)
        assert len(batch) == 5 and all(e.target.shape == (32, 32) and e.target.any() for e in batch)
        assert x.shape == (5, config.in_channels, 32, 32)
        assert np.array_equal(x, encode_batch(batch, config))  # the worker's encoding is the trainer's
        logits = np.full((5, 32, 32), -3.0, np.float32)  # predicts nothing: the user must click inside
        clicks_before = [len(e.pos) + len(e.neg) + sum(m is not None for m in e.smaps) for e in batch]
        fed, x2 = pool.feed_back(batch, logits, config, rng)
        assert len(fed) == 5 and x2.shape == x.shape
        assert all(np.array_equal(e.prior, logits[0]) for e in fed)
        assert sum(len(e.pos) + len(e.neg) + sum(m is not None for m in e.smaps) for e in fed) > sum(clicks_before)
        torch.manual_seed(0)
        net = RefinerNet(config)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
        batch, x = pool.batch(4, rng)
        assert np.isfinite(train_step(net, opt, batch, config, rng, steps=2, pool=pool, x=x))
    finally:
        pool.close()


def test_refiner_validation_scores_a_corrupted_start_the_same_for_every_file():
    """The checkpoint score counts edits of a corrupted mask (so a file that cannot remove a
    false region with a negative click is not chosen); the corrupted masks are seeded by the
    pair, so two calls (two files) meet the same ones."""
    import torch

    from napari_pancakes.refine.network import RefinerConfig, RefinerNet
    from napari_pancakes.training.refiner import evaluate, synthetic_example

    rng = np.random.default_rng(3)
    pairs = [("synthetic", *synthetic_example(rng, 32), None) for _ in range(3)]
    torch.manual_seed(0)
    net = RefinerNet(RefinerConfig(resolution=32, features=(8, 8)))
    first, again = evaluate(net, net.config, pairs), evaluate(net, net.config, pairs)
    assert first == again
    assert len(first["corrupted"]) == 3 and first["pancakes"] == []
    parts = [np.mean(first["nothing"]), np.mean(first["box"]), np.mean(first["corrupted"])]
    assert abs(first["score"] - np.mean(parts)) < 1e-3
    each = evaluate(net, net.config, pairs, per_pair=True)["per_pair"]
    assert len(each) == 3 and abs(np.mean(each) - first["score"]) < 1e-3  # no Pancakes starts: equal weights


def test_refiner_paired_difference_sees_a_real_gain_and_not_noise():
    """--evaluate's comparison with the shipped file: a gain on every pair has an interval above
    0; a candidate that is the baseline plus symmetric noise has one around 0."""
    from napari_pancakes.training.refiner import paired_difference

    rng = np.random.default_rng(0)
    base = rng.uniform(0.4, 0.9, 100)
    better = paired_difference(list(base + 0.02 + rng.normal(0, 0.01, 100)), list(base))
    assert better["pairs"] == 100 and better["ci95"][0] > 0 and abs(better["mean_difference"] - 0.02) < 0.005
    noise = paired_difference(list(base + rng.normal(0, 0.05, 100)), list(base))
    assert noise["ci95"][0] < 0 < noise["ci95"][1]


def _disk_source(img, disk, r):
    """A refiner training Source of three copies of one image whose label 1 is ``disk`` (the
    third copy is validation), at working size ``r``."""
    import types

    from napari_pancakes.training.refiner import Source

    ds = types.SimpleNamespace(name="disk", images=np.stack([img] * 3).astype(np.float32),
                               labels=np.stack([disk.astype(np.uint8)] * 3), groups=[],
                               validation_mask=lambda: np.array([False, False, True]))
    return Source(ds, r)


def test_refiner_crops_can_be_inverted():
    """With invert_prob=1 a bright structure arrives dark (the polarity of an unseen modality may
    be either), and its target is unchanged."""
    from napari_pancakes.training.refiner import Recipe

    yy, xx = np.mgrid[0:64, 0:64]
    disk = np.hypot(yy - 32, xx - 32) < 20
    src = _disk_source(np.where(disk, 0.9, 0.1), disk, 32)
    for invert, brighter_inside in ((0.0, True), (1.0, False)):
        img, target, _ = src.sample(np.random.default_rng(0), False, Recipe(invert_prob=invert))
        assert target.any() and (~target).any()
        assert (img[target].mean() > img[~target].mean()) == brighter_inside


def test_zoom_out_shrinks_structures_and_keeps_them_on_their_labels():
    """zoom_out shows a crop at 40-80 % of the grid side, mirrored out to fill it: the disk is
    smaller, its mirrored copies are more instances of the same label, the image stays bright
    exactly where the label is, and Source.sample uses it only when the recipe asks."""
    from scipy import ndimage as ndi

    from napari_pancakes.training.refiner import Recipe, zoom_out

    def largest_part(target):
        parts, _ = ndi.label(target)
        return np.bincount(parts.ravel())[1:].max()

    yy, xx = np.mgrid[0:64, 0:64]
    disk = np.hypot(yy - 32, xx - 32) < 14
    img = np.where(disk, 0.9, 0.1).astype(np.float32)
    lab = disk.astype(np.uint8) * 3
    rng = np.random.default_rng(0)
    for _ in range(5):
        zi, zl = zoom_out(rng, img, lab)
        assert zi.shape == img.shape and zl.shape == lab.shape and set(np.unique(zl)) <= {0, 3}
        assert (zl == 3).any() and largest_part(zl == 3) < 0.8**2 * disk.sum() * 1.1
        assert zi[zl == 3].mean() > 0.7 and zi[ndi.binary_erosion(zl == 0, iterations=2)].max() < 0.3
    src = _disk_source(img, disk, 64)
    sizes = {p: [largest_part(src.sample(np.random.default_rng(k), False, Recipe(zoom_out_prob=p))[1])
                 for k in range(8)] for p in (0.0, 1.0)}
    assert np.median(sizes[1.0]) < 0.7 * np.median(sizes[0.0])


def test_modality_augment_keeps_the_structure_and_its_target_aligned():
    """modality_augment changes intensities but not where things are: over many draws, a bright
    bar stays brighter than its surround, its target moves with the image through the
    transposition and flips of Source.sample (a horizontal bar sometimes arrives vertical, never
    apart from its image), and values stay in [0, 1]."""
    import types

    from napari_pancakes.training.augment import modality_augment
    from napari_pancakes.training.refiner import Recipe, Source

    rng = np.random.default_rng(0)
    bar = np.zeros((64, 64), bool)
    bar[26:38, 4:60] = True
    image = np.where(bar, 0.8, 0.2).astype(np.float32)
    outs = [modality_augment(rng, image) for _ in range(40)]
    assert all(o.shape == image.shape and o.dtype == np.float32 and 0 <= o.min() and o.max() <= 1 for o in outs)
    assert all(o[bar].mean() > o[~bar].mean() for o in outs)
    assert np.mean([np.abs(o - image).mean() for o in outs]) > 0.02  # it does change the image
    ds = types.SimpleNamespace(name="bar", images=np.stack([image] * 3), labels=np.stack([bar.astype(np.uint8)] * 3),
                               groups=[], validation_mask=lambda: np.array([False, False, True]))
    src = Source(ds, 32)
    vertical = []
    for seed in range(30):
        img, target, _ = src.sample(np.random.default_rng(seed), False, Recipe(augment_prob=1.0))
        assert target.any() and (~target).any()
        assert img[target].mean() > img[~target].mean() + 0.1
        ys, xs = np.nonzero(target)
        vertical.append(np.ptp(ys) > np.ptp(xs))
    assert 0 < sum(vertical) < len(vertical)


def test_box_prob_sets_the_share_of_boxes_among_first_prompts():
    """Recipe.box_prob is the share of examples with no starting mask whose first prompt is a
    box: none at 0, all at 1, about that share between (the others start from clicks or a
    scribble); an example with a starting mask never gets a box."""
    from napari_pancakes.training.refiner import Recipe, make_example

    for box_prob in (0.0, 0.4, 1.0):
        rng = np.random.default_rng(1)
        examples = [make_example([], rng, 32, Recipe(box_prob=box_prob)) for _ in range(300)]
        fresh = [e for e in examples if e.prior is None]
        boxed = [e.box is not None for e in fresh]
        assert all(e.box is None for e in examples if e.prior is not None)
        assert abs(np.mean(boxed) - box_prob) < 0.1
        if box_prob < 1:
            assert any(e.pos or e.smaps[0] is not None for e in fresh if e.box is None)
    with pytest.raises(ValueError, match="box_prob"):
        Recipe(box_prob=1.5)


def test_pancakes_training_reads_a_pack(tmp_path):
    """`train --pack` (a lent GPU machine has no data root) trains and validates on the packed
    datasets, split by subject as from the data root."""
    from napari_pancakes.training.datasets import write_pack

    yy, xx = np.mgrid[0:64, 0:64]
    images = np.stack([np.clip((np.hypot(yy - 20 - i % 20, xx - 30) < 12) * 0.7 + 0.1, 0, 1)
                       for i in range(40)]).astype(np.float32)
    labels = (images > 0.4).astype(np.uint8)
    pack = write_pack({"discs": RealDataset("discs", images, labels)}, tmp_path / "p.npz")
    train(TrainConfig(out=str(tmp_path / "run"), steps=1, pack=str(pack), batch_sets=1, s_range=(2, 2),
                      m_range=(2, 3), k_range=(3, 4), val_sets=1, data_root=str(tmp_path / "no-data"), mni=False,
                      features=8, threads=1, cache_dir=str(tmp_path / "cache"), log_every=1, warmup=1))
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "discs=" in log  # the packed dataset was validated on


def test_refiner_training_records_its_recipe_and_resumes(tmp_path):
    """`training.refiner` from a pack: it trains, validates, writes best.safetensors whose metadata
    names the recipe it was trained with (a shipped file says how it was made), and a second
    call resumes from the checkpoint instead of starting over."""
    import json

    from napari_pancakes.refine import load_refiner
    from napari_pancakes.training.datasets import write_pack
    from napari_pancakes.training.refiner import main as refiner_main

    yy, xx = np.mgrid[0:64, 0:64]
    images = np.stack([np.clip((np.hypot(yy - 20 - i % 20, xx - 30) < 12) * 0.7 + 0.1, 0, 1)
                       for i in range(20)]).astype(np.float32)
    pack = write_pack({"discs": RealDataset("discs", images, (images > 0.4).astype(np.uint8))}, tmp_path / "p.npz")
    out = tmp_path / "run"
    args = ["--pack", str(pack), "--out", str(out), "--leave-out", "", "--init", "", "--batch", "2", "--steps", "2",
            "--pancakes-per-source", "2", "--small-prob", "0.5", "--small-radii", "1", "4", "--poor-start-prob", "0.25"]
    refiner_main(args + ["--minutes", "0.02"])
    meta = load_refiner(out / "best.safetensors", device="cpu").metadata
    recipe = meta["recipe"] if isinstance(meta["recipe"], dict) else json.loads(meta["recipe"])
    assert recipe["small_prob"] == 0.5 and list(recipe["small_radii"]) == [1.0, 4.0]
    assert recipe["poor_start_prob"] == 0.25 and recipe["superpixel_prob"] == 0.0
    state = json.loads((out / "checkpoint.json").read_text())
    first = state["it"]
    assert first > 0
    refiner_main(args + ["--minutes", str(state["elapsed"] / 60 + 0.02)])  # the budget is in total
    assert "resumed at iteration" in (out / "log.txt").read_text()
    assert json.loads((out / "checkpoint.json").read_text())["it"] > first


def test_box_superpixel_targets_only_replace_box_examples():
    """Recipe.box_superpixel_prob gives a superpixel region (not the annotated label) to real crops
    whose first prompt is a box, and to nothing else."""
    from napari_pancakes.training.refiner import Recipe, make_example

    yy, xx = np.mgrid[0:64, 0:64]
    disk = np.hypot(yy - 32, xx - 32) < 14
    img = np.where(disk, 0.9, 0.1).astype(np.float32)
    img[4:20, 44:60] = 0.5  # an unlabelled square: a region a superpixel target can take
    src = [_disk_source(img, disk, 64)]

    def draws(recipe, n=40):
        rng = np.random.default_rng(3)
        return [make_example(src, rng, 64, recipe) for _ in range(n)]

    plain = draws(Recipe(synthetic_prob=0.0, box_prob=0.5))
    assert all(ex.img[ex.target].mean() > 0.7 for ex in plain)  # off: always the annotated disk
    changed = draws(Recipe(synthetic_prob=0.0, box_prob=0.5, box_superpixel_prob=1.0))
    boxed = [ex for ex in changed if ex.box is not None]
    others = [ex for ex in changed if ex.box is None]
    assert boxed and others
    # without a box the target is still the annotated disk (some crop of it); with one it is a region
    # the superpixels found, which is not always the disk
    assert all(ex.img[ex.target].mean() > 0.7 for ex in others)
    assert any(ex.img[ex.target].mean() < 0.7 for ex in boxed)


def test_refiner_checkpoints_from_the_earlier_layout_still_resume(tmp_path):
    """Committed refiner campaigns were written as ``net.*`` / ``opt.*`` tensors with the torch RNG
    in the JSON; the package's one checkpoint reader restores model, optimiser and RNG from them, and
    the next save is in the common layout (``model.*``, ``optim.*``, ``rng.torch``)."""
    import json

    from safetensors.torch import save_file

    from napari_pancakes.refine.network import RefinerConfig, RefinerNet
    from napari_pancakes.training.refiner import load_checkpoint, save_checkpoint

    torch.manual_seed(3)
    net = RefinerNet(RefinerConfig(features=(8, 8)))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    net(torch.zeros(1, net.config.in_channels, 16, 16)).sum().backward()
    opt.step()
    old = {f"net.{k}": v.contiguous() for k, v in net.state_dict().items()}
    for i, s in opt.state_dict()["state"].items():
        old.update({f"opt.{i}.{k}": v.reshape(v.shape).contiguous().clone() for k, v in s.items()})
    save_file(old, str(tmp_path / "checkpoint.safetensors"))
    rng = torch.get_rng_state()
    (tmp_path / "checkpoint.json").write_text(json.dumps({"it": 7, "elapsed": 1.5, "torch_rng": rng.tolist(),
                                                          "param_groups": opt.state_dict()["param_groups"]}))
    fresh = RefinerNet(RefinerConfig(features=(8, 8)))
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    torch.manual_seed(99)
    state = load_checkpoint(tmp_path, fresh, fresh_opt)
    assert state == {"it": 7, "elapsed": 1.5}
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in fresh.state_dict().items())
    moments = fresh_opt.state_dict()["state"][0]["exp_avg"]
    assert torch.equal(moments, opt.state_dict()["state"][0]["exp_avg"])
    save_checkpoint(tmp_path, fresh, fresh_opt, state)
    meta = json.loads((tmp_path / "checkpoint.json").read_text())
    assert meta["it"] == 7 and "torch_rng" not in meta and meta["format"].startswith("napari-pancakes-checkpoint")


def test_read_colour_image_gives_rgb_files_as_rgb_and_grey_ones_as_none(tmp_path):
    """The reader keeps intensity only; benchmarks that give the session a user's RGB image read
    it with ``read_colour_image``, by the same sorted index, resized like the intensity."""
    from skimage.io import imsave

    from napari_pancakes.training.datasets import read_colour_image

    folder = tmp_path / "set" / "images"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rgb = (rng.random((40, 60, 3)) * 255).astype(np.uint8)
    imsave(folder / "000.png", rgb, check_contrast=False)
    imsave(folder / "001.png", np.repeat(rgb[..., :1], 3, -1), check_contrast=False)  # grey stored as RGB
    imsave(folder / "002.png", rgb[..., 0], check_contrast=False)
    out = read_colour_image(tmp_path, "set", 0, 32)
    assert out.shape == (32, 32, 3) and out.dtype == np.float32
    assert abs(out[..., 2].mean() - rgb[..., 2].mean()) < 3  # channels kept in order, values not rescaled
    assert read_colour_image(tmp_path, "set", 1, 32) is None and read_colour_image(tmp_path, "set", 2, 32) is None
