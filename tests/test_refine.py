"""Click refinement core: simulated user, prompts, model behaviour with the shipped weights, session history."""
import numpy as np
import pytest

from napari_pancakes.refine import RefineSession, load_refiner, prompts_from_mask
from napari_pancakes.refine.network import RefinerNet
from napari_pancakes.io_weights import save_weights
from napari_pancakes.refine.predictor import DEFAULT_REFINER_WEIGHTS, REFINER_FORMAT
from napari_pancakes.training.simulate import clicks_to_reach, dice, next_click, simulate_session


@pytest.fixture(scope="module")
def refiner():
    assert DEFAULT_REFINER_WEIGHTS.is_file(), "the refiner weights must ship with the package"
    return load_refiner(device="cpu")


def disk_image(h=96, w=112, cy=48, cx=56, r=24, seed=0):
    """A bright disk on a dark noisy background, and its mask."""
    yy, xx = np.mgrid[0:h, 0:w]
    mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
    rng = np.random.default_rng(seed)
    img = 0.2 + 0.6 * mask + rng.normal(0, 0.03, (h, w))
    return img.astype(np.float32), mask


# --- simulated user ---------------------------------------------------------------------
def test_next_click_on_hand_made_masks():
    truth = np.zeros((40, 50), bool)
    truth[10:31, 5:26] = True  # 21x21 square, centre (20, 15)
    (y, x), pos = next_click(np.zeros_like(truth), truth)
    assert pos and (y, x) == (20, 15)
    # a false alarm larger than the miss wins and gives a negative click at its centre
    pred = truth.copy()
    pred[10:13, 5:26] = False  # small miss
    pred[5:36, 30:47] = True  # big false alarm, 31x17, centre (20, 38)
    (y, x), pos = next_click(pred, truth)
    assert not pos and (y, x) == (20, 38)
    assert next_click(truth, truth) is None
    # the image border counts as a boundary: a miss touching it is clicked inside, away from it
    edge = np.zeros((30, 30), bool)
    edge[:, :9] = True
    (y, x), pos = next_click(np.zeros_like(edge), edge)
    assert pos and x == 4


def test_noc_and_dice_helpers():
    assert clicks_to_reach([0.0, 0.5, 0.86, 0.9], 0.85, 10) == 2
    assert clicks_to_reach([0.0, 0.5], 0.85, 10) == 10
    a = np.zeros((5, 5), bool)
    assert dice(a, a) == 1.0
    with pytest.raises(ValueError):
        dice(a, np.zeros((4, 5), bool))


# --- prompts from a mask ----------------------------------------------------------------
def test_prompts_from_mask_core_and_band():
    from scipy import ndimage as ndi

    mask = np.zeros((120, 140), bool)
    mask[30:90, 20:80] = True
    mask[50:70, 100:130] = True  # a second, thinner component
    pos, neg = prompts_from_mask(mask, n_positive=4, n_negative=5)
    assert len(pos) >= 2 and len(neg) == 5
    inside = ndi.distance_transform_edt(mask)
    outside = ndi.distance_transform_edt(~mask)
    assert all(inside[y, x] >= 5 for y, x in pos), "positives must be deep inside"
    assert all(2 <= outside[y, x] <= 8 for y, x in neg), "negatives must be in the band just outside"
    for pts in (pos, neg):
        d = [np.hypot(a[0] - b[0], a[1] - b[1]) for i, a in enumerate(pts) for b in pts[i + 1 :]]
        assert min(d) >= 0.1 * 140 - 1e-6, "points must be spread out"
    assert prompts_from_mask(np.zeros((10, 10), bool)) == ([], [])
    with pytest.raises(ValueError):
        prompts_from_mask(np.zeros((2, 10, 10), bool))


# --- the model -------------------------------------------------------------------------------
def test_positive_click_grows_mask_into_missed_region(refiner):
    img, truth = disk_image()
    partial = truth.copy()
    partial[:, 56:] = False  # the right half is missed
    session = RefineSession(refiner, img, initial_mask=partial)
    before = session.mask.copy()
    missed = truth & ~partial
    after = session.add_click(48, 70, positive=True)
    assert after[48, 70], "the clicked pixel must be in the mask"
    assert (after & missed).sum() > 0.7 * missed.sum(), "the missed half must be recovered"
    assert (after & ~truth).sum() < 0.2 * truth.sum(), "without leaking into the background"
    assert dice(after, truth) > dice(before, truth) + 0.2


def test_negative_click_removes_false_alarm(refiner):
    img, truth = disk_image()
    grown = truth.copy()
    grown[:, 85:] = True  # a false band at the right
    session = RefineSession(refiner, img, initial_mask=grown)
    after = session.add_click(48, 100, positive=False)
    assert not after[48, 100]
    assert (after[:, 90:]).sum() < 0.3 * grown[:, 90:].sum()


def test_from_nothing_one_click_finds_object_any_size(refiner):
    img, truth = disk_image(h=77, w=203, cy=40, cx=100, r=20)
    mask = refiner.predict(img, positive=[(40, 100)])
    assert mask.shape == img.shape and mask.dtype == bool
    assert dice(mask, truth) > 0.7


def test_undo_redo_clear_restore_exactly(refiner):
    img, truth = disk_image()
    s = RefineSession(refiner, img)
    assert not s.mask.any() and not s.can_undo
    m1 = s.add_click(48, 56, True).copy()
    m2 = s.add_click(5, 5, False).copy()
    assert np.array_equal(s.undo(), m1) and s.clicks == [(48.0, 56.0, True)]
    assert np.array_equal(s.redo(), m2) and len(s.clicks) == 2
    s.undo()
    m3 = s.add_click(48, 30, True)  # a new click drops the redo branch
    assert not s.can_redo and len(s.history) == 3
    assert not s.clear().any() and s.clicks == []
    assert np.array_equal(s.undo(), m3)
    s.undo(), s.undo()
    assert np.array_equal(s.undo(), np.zeros_like(truth))  # undo at the start is a no-op
    # the history keeps each mask as packed bits (an eighth of a bool array's bytes)
    assert all(st.bits.nbytes == -(-truth.size // 8) for st in s._states)


def test_bad_input_raises_clear_errors(refiner):
    img, truth = disk_image()
    with pytest.raises(ValueError, match="one 2D image"):
        refiner.predict(np.zeros((3, 20, 20)), positive=[(1, 1)])
    bad = img.copy()
    bad[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        refiner.predict(bad, positive=[(10, 10)])
    with pytest.raises(ValueError, match="outside the image"):
        refiner.predict(img, positive=[(96, 10)])
    with pytest.raises(ValueError, match="outside the image"):
        RefineSession(refiner, img).add_click(-1, 5, True)
    with pytest.raises(ValueError, match="prior"):
        refiner.predict(img, positive=[(10, 10)], prior=np.zeros((10, 10), bool))
    with pytest.raises(ValueError, match="initial mask"):
        RefineSession(refiner, img, initial_mask=np.zeros((5, 5), bool))


def test_weights_roundtrip_and_wrong_file(tmp_path, refiner):
    path = save_weights(refiner.net, tmp_path / "r.safetensors", fmt=REFINER_FORMAT)
    again = load_refiner(path, device="cpu")
    img, _ = disk_image()
    assert np.array_equal(again.predict(img, [(48, 56)]), refiner.predict(img, [(48, 56)]))
    other = tmp_path / "other.safetensors"
    from safetensors.torch import save_file
    import torch

    save_file({"w": torch.zeros(2)}, str(other), metadata={"format": "napari-pancakes/1", "config": "{}"})
    with pytest.raises(ValueError, match="not a napari-pancakes refiner"):
        load_refiner(other)
    with pytest.raises(FileNotFoundError):
        load_refiner(tmp_path / "missing.safetensors")
    assert isinstance(again.net, RefinerNet)


def test_average_of_refiner_files_is_the_mean_and_refuses_mixed_stages(tmp_path, refiner):
    import json

    import torch

    from napari_pancakes.io_weights import average_refiner_files, load_refiner_net

    a = save_weights(refiner.net, tmp_path / "a.safetensors", extra={"leave_out": ["x"]}, fmt=REFINER_FORMAT)
    shifted = load_refiner_net(a)[0]
    with torch.no_grad():
        for p in shifted.parameters():
            p.add_(1.0)
    b = save_weights(shifted, tmp_path / "b.safetensors", extra={"leave_out": ["x"]}, fmt=REFINER_FORMAT)
    net, meta = load_refiner_net(average_refiner_files([a, b], tmp_path / "mean.safetensors"))
    for (name, p), p0 in zip(net.named_parameters(), refiner.net.parameters()):
        assert torch.allclose(p, p0.cpu() + 0.5, atol=1e-5), name
    assert meta["leave_out"] == '["x"]' and len(json.loads(meta["averaged_from"])) == 2
    with pytest.raises(FileExistsError):
        average_refiner_files([a, b], tmp_path / "mean.safetensors")
    c = save_weights(shifted, tmp_path / "c.safetensors", extra={"leave_out": []}, fmt=REFINER_FORMAT)
    with pytest.raises(ValueError, match="held out different datasets"):
        average_refiner_files([a, c], tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="at least two"):
        average_refiner_files([a], tmp_path / "bad.safetensors")


def test_simulated_session_improves(refiner):
    img, truth = disk_image(seed=3)
    dices, times = simulate_session(refiner, img, truth, n_clicks=3)
    assert len(dices) == 4 and dices[0] == 0.0
    assert max(dices) > 0.8


def test_clicked_spot_always_follows_the_click():
    from napari_pancakes.refine.predictor import honour_clicks

    mask = np.zeros((300, 300), bool)
    out = honour_clicks(mask.copy(), [(10.0, 20.0, True), (150.2, 150.7, True), (150.2, 150.7, False)])
    assert out[10, 20] and out[10, 21] and not out[10, 25]
    assert not out[150, 151], "a later click on the same spot wins"
    assert out.sum() < 20


def test_predict_honours_clicks(refiner):
    img, truth = disk_image()
    pred = refiner.predict(img, positive=[(5, 5)], negative=[(48, 56)], prior=truth)
    assert pred[5, 5] and not pred[48, 56]


# --- walker, locality, box and scribbles (issue 11, issue 12 defect 4) ------------------------
def test_walker_is_scikit_image_random_walker_without_prior():
    from skimage.segmentation import random_walker

    from napari_pancakes.refine.walker import random_walk

    img, truth = disk_image(h=40, w=44, cy=20, cx=22, r=10)
    img = (img - img.min()) / np.ptp(img)
    seeds = np.zeros(img.shape, np.int32)
    seeds[20, 22] = 1
    seeds[0, :] = 2
    ref = random_walker(img.astype(np.float64), seeds, beta=130, mode="bf", return_full_prob=True)[0]
    ours = random_walk(img, seeds == 1, seeds == 2)
    assert np.abs(ours - ref).max() < 1e-4
    # a prior pulls unseeded pixels toward it
    prior = np.zeros(img.shape, np.float32)
    prior[:, :5] = 1
    pulled = random_walk(img, seeds == 1, seeds == 2, prior=prior, lam=1.0)
    assert pulled[30, 2] > ours[30, 2] + 0.3


def test_negative_click_is_local():
    from napari_pancakes.refine.session import localise

    def click_at(y, x):
        footprint = np.zeros((120, 120), bool)
        footprint[y, x] = True
        return footprint

    prev = np.zeros((120, 120), bool)
    prev[20:40, 20:40] = True  # a correct object
    prev[80:100, 80:100] = True  # another one
    erased = np.zeros_like(prev)  # a predictor that wiped everything
    # a negative click in empty background far from both keeps both
    assert np.array_equal(localise(prev, erased, click_at(60, 110), radius=12), prev)
    # a negative click on one object may remove that object only
    out = localise(prev, erased, click_at(30, 30), radius=12)
    assert not out[20:40, 20:40].any() and out[80:100, 80:100].all()
    # a drawn path reaches as far as its neighbourhood: 12 px from the path's end, not beyond
    path = np.zeros_like(prev)
    path[60, 50:70] = True
    near_object, far_object = np.zeros_like(prev), np.zeros_like(prev)
    near_object[58:63, 76:79] = True  # 7-9 px from the path's end
    far_object[58:63, 86:89] = True  # 17-19 px
    both = prev | near_object | far_object
    out = localise(both, erased, path, radius=12)
    assert not out[near_object].any() and out[far_object].all() and out[prev].all()


@pytest.mark.parametrize("method", ["network", "hybrid"])
def test_negative_scribble_in_background_keeps_distant_objects(refiner, monkeypatch, method):
    """A predictor that wipes the image at a negative scribble: the objects far from the
    scribble stay, now and after the next positive click."""
    from napari_pancakes.refine.predictor import Refiner

    img, truth = disk_image(h=128, w=128, cy=40, cx=40, r=14)
    yy, xx = np.mgrid[0:128, 0:128]
    second = (yy - 90) ** 2 + (xx - 90) ** 2 < 12**2
    forward = Refiner.predict_work

    def wipes_at_negative_scribbles(self, work, pos, neg, prior, box=None, pos_map=None, neg_map=None):
        if neg_map is not None and not pos:
            return np.full((self.config.resolution,) * 2, -8.0, np.float32)
        return forward(self, work, pos, neg, prior, box, pos_map, neg_map)

    monkeypatch.setattr(Refiner, "predict_work", wipes_at_negative_scribbles)
    s = RefineSession(refiner, img + 0.6 * second, initial_mask=truth | second, method=method)
    after = s.add_scribble([(5, 100), (5, 125)], positive=False)
    assert after[truth].mean() > 0.9 and after[second].mean() > 0.9


@pytest.mark.parametrize("method", ["network", "hybrid", "classical"])
def test_session_negative_click_in_background_keeps_distant_objects(refiner, method):
    img, truth = disk_image(h=128, w=128, cy=40, cx=40, r=14)
    yy, xx = np.mgrid[0:128, 0:128]
    second = (yy - 90) ** 2 + (xx - 90) ** 2 < 12**2
    img = img + 0.6 * second
    both = truth | second
    s = RefineSession(refiner if method != "classical" else None, img, initial_mask=both, method=method)
    after = s.add_click(10, 120, positive=False)
    assert not after[10, 120]
    assert after[truth].mean() > 0.9 and after[second].mean() > 0.9


def wiping_predictor():
    """A stand-in for ``Refiner.predict_work`` that wipes the image at each new negative click and
    otherwise returns the fed-back logits with a blob at each positive click."""
    negatives_after = {0: 0}  # clicks so far -> negative clicks among them (the same for repeated calls)

    def predict_work(self, work, pos, neg, prior, *args, **kwargs):
        r = self.config.resolution
        out = np.full((r, r), -8.0, np.float32) if prior is None else prior.astype(np.float32).copy()
        n = len(pos) + len(neg)
        negatives_after[n] = len(neg)
        if len(neg) > negatives_after.get(n - 1, 0):  # the newest click is negative
            out[:] = -8.0
        gy, gx = np.mgrid[0:r, 0:r]
        for y, x in pos:
            out[np.hypot(gy - y, gx - x) < 3] = 8.0
        return out

    return predict_work


@pytest.mark.parametrize("method", ["network", "hybrid"])
def test_negative_click_stays_local_at_the_next_prompt(refiner, monkeypatch, method):
    """A predictor that wipes the image at each new negative click: the shown mask keeps the far
    object (localise), and so must the next positive click, which starts from the fed-back logits."""
    from napari_pancakes.refine.predictor import Refiner

    img, truth = disk_image(h=128, w=128, cy=40, cx=40, r=14)
    yy, xx = np.mgrid[0:128, 0:128]
    second = (yy - 90) ** 2 + (xx - 90) ** 2 < 12**2
    monkeypatch.setattr(Refiner, "predict_work", wiping_predictor())
    s = RefineSession(refiner, img + 0.6 * second, initial_mask=truth | second, method=method)
    assert s.add_click(10, 120, positive=False)[second].mean() > 0.9
    after = s.add_click(40, 40, positive=True)
    assert after[second].mean() > 0.9 and after[truth].mean() > 0.9
    # two negative clicks at once (queued while a slow predictor ran) are local too
    after = s.add_clicks(negative=[(5, 5), (120, 10)])
    assert after[second].mean() > 0.9 and after[truth].mean() > 0.9


@pytest.mark.parametrize("method", ["network", "hybrid", "classical"])
def test_box_and_scribble_prompts(refiner, method):
    img, truth = disk_image(h=96, w=160, cy=48, cx=56, r=20)
    yy, xx = np.mgrid[0:96, 0:160]
    other = (yy - 48) ** 2 + (xx - 125) ** 2 < 18**2  # a similar object outside the box
    img = img + 0.6 * other
    ref = refiner if method != "classical" else None
    if method == "network" and refiner.config.in_channels < 5:
        pytest.skip("these weights have no box channel")
    s = RefineSession(ref, img, method=method)
    boxed = s.set_box((26, 34, 70, 78))
    assert s.box == (26.0, 34.0, 70.0, 78.0)
    assert dice(boxed, truth) > 0.7 and boxed[other].mean() < 0.1, (dice(boxed, truth), boxed[other].mean())
    with pytest.raises(ValueError, match="empty"):
        s.set_box((10, 10, 10.2, 40))


@pytest.mark.parametrize("method", ["network", "hybrid", "classical"])
def test_scribble_prompt(refiner, method):
    img, truth = disk_image(h=96, w=160, cy=48, cx=56, r=20)
    ref = refiner if method != "classical" else None
    s = RefineSession(ref, img, method=method)
    drawn = s.add_scribble([(48, 45), (50, 56), (47, 66)], positive=True)
    assert len(s.scribbles) == 1
    assert dice(drawn, truth) > 0.7, dice(drawn, truth)
    assert s.undo().sum() == 0


def test_four_channel_files_load_and_gain_a_neutral_box_channel(tmp_path):
    import torch

    from napari_pancakes.refine.network import RefinerConfig, with_box_channel

    torch.manual_seed(0)
    old = RefinerNet(RefinerConfig(in_channels=4))
    path = save_weights(old, tmp_path / "old.safetensors", fmt=REFINER_FORMAT)
    loaded = load_refiner(path, device="cpu")
    assert loaded.config.in_channels == 4
    new = with_box_channel(loaded.net)
    x = torch.rand(1, 4, 128, 128)
    x5 = torch.cat([x[:, :3], torch.zeros(1, 1, 128, 128), x[:, 3:]], 1)
    with torch.no_grad():
        assert torch.allclose(old(x), new(x5), atol=1e-5)


@pytest.mark.parametrize("max_side", [512, 64])  # 64: the walker's grid is smaller than the image
def test_hybrid_on_the_image_grid_follows_all_prompts(refiner, monkeypatch, max_side):
    import napari_pancakes.refine.session as session_module

    monkeypatch.setattr(session_module, "HYBRID_GRID", "image")
    monkeypatch.setattr(session_module, "IMAGE_GRID_MAX_SIDE", max_side)
    img, truth = disk_image(h=96, w=160, cy=48, cx=56, r=20)
    yy, xx = np.mgrid[0:96, 0:160]
    other = (yy - 48) ** 2 + (xx - 125) ** 2 < 18**2
    img = img + 0.6 * other
    s = RefineSession(refiner, img, method="hybrid")
    clicked = s.add_click(48, 56)
    assert clicked.shape == truth.shape and dice(clicked, truth) > 0.7, dice(clicked, truth)
    kept = s.add_click(90, 5, positive=False)  # background far away: the disk stays
    assert not kept[90, 5] and kept[truth].mean() > 0.9
    boxed = RefineSession(refiner, img, method="hybrid").set_box((26, 34, 70, 78))
    assert dice(boxed, truth) > 0.7 and boxed[other].mean() < 0.1
    drawn = RefineSession(refiner, img, method="hybrid").add_scribble([(48, 45), (50, 56), (47, 66)])
    assert dice(drawn, truth) > 0.7


@pytest.mark.parametrize("max_side", [512, 64])  # 64: the walker's grid is smaller than the image
def test_classical_walker_on_a_grid_for_large_images(monkeypatch, max_side):
    """The classical walker runs on at most ``IMAGE_GRID_MAX_SIDE`` pixels a side (one solve over
    a 3000 x 3000 image took minutes); clicks, a box and a starting mask still land where given."""
    import napari_pancakes.refine.session as session_module

    monkeypatch.setattr(session_module, "IMAGE_GRID_MAX_SIDE", max_side)
    walked = []
    walk = session_module.random_walk
    monkeypatch.setattr(session_module, "random_walk", lambda image, *a, **k: walked.append(image.shape) or walk(image, *a, **k))
    img, truth = disk_image(h=96, w=160, cy=48, cx=56, r=20)
    s = RefineSession(None, img, method="classical")
    clicked = s.add_click(48, 56)
    assert clicked.shape == truth.shape and dice(clicked, truth) > 0.85, dice(clicked, truth)
    fixed = s.add_click(90, 150, positive=False)
    assert dice(fixed, truth) > 0.85 and not fixed[90, 150]
    boxed = RefineSession(None, img, method="classical").set_box((26, 34, 70, 78))
    assert dice(boxed, truth) > 0.85, dice(boxed, truth)
    start = np.roll(truth, 4, axis=1)
    from_start = RefineSession(None, img, initial_mask=start, method="classical").add_click(48, 56)
    assert dice(from_start, truth) > 0.85, dice(from_start, truth)
    assert set(walked) == {(96, 160) if max_side >= 160 else (38, 64)}


@pytest.mark.parametrize("method", ["network", "hybrid"])
@pytest.mark.parametrize("side", [512, 600])  # 600: beyond a 4x reduction, masks go to the grid by cell means
def test_a_click_keeps_detail_finer_than_the_working_grid(refiner, method, side):
    """A chosen label of a large image keeps its fine detail where the click changed nothing:
    tiny dots (2 px, below the 128 px grid of a 512 px image) far from the click survive exactly."""
    h = w = side
    yy, xx = np.mgrid[0:h, 0:w]
    blob = (yy - 380) ** 2 + (xx - 380) ** 2 < 50**2
    dots = np.zeros((h, w), bool)
    dots[40:200:12, 40:200:12] = True
    dots |= np.roll(dots, 1, 0) | np.roll(dots, 1, 1)
    rng = np.random.default_rng(0)
    img = (0.2 + 0.6 * (blob | dots) + rng.normal(0, 0.02, (h, w))).astype(np.float32)
    s = RefineSession(refiner, img, initial_mask=dots, method=method)
    after = s.add_click(380, 380)
    assert after[blob].mean() > 0.3  # the click added (much of) the blob
    assert np.array_equal(after[:260, :260], dots[:260, :260])  # the dots, far away, are untouched


def test_resize_image_is_the_cell_mean_beyond_a_4x_reduction_and_the_filter_up_to_it():
    """Shrinking beyond 4x (a click's mask of a 3000 px image, a large image for Pancakes) averages
    each output cell exactly, in milliseconds; up to 4x the anti-aliased resize runs as before."""
    from skimage.transform import resize

    from napari_pancakes.preprocess import cell_of, resize_image

    rng = np.random.default_rng(0)
    big = (rng.random((1030, 777)) > 0.6).astype(np.float32)
    frac = resize_image(big, (128, 128))
    ys, xs = np.arange(128) * 1030 // 128, np.arange(128) * 777 // 128
    assert frac.shape == (128, 128) and frac.dtype == np.float32
    assert np.isclose(frac[5, 7], big[ys[5]:ys[6], xs[7]:xs[8]].mean())
    assert np.isclose(frac[-1, -1], big[ys[-1]:, xs[-1]:].mean())
    assert np.isclose(frac.mean(), big.mean(), atol=1e-3)
    small = rng.random((512, 300)).astype(np.float32)
    expected = resize(small, (128, 128), order=1, anti_aliasing=True, preserve_range=True)
    assert np.allclose(resize_image(small, (128, 128)), expected)
    cells = cell_of(1030, 128)  # the way back: every pixel to the cell whose mean it joined
    assert cells[0] == 0 and cells[-1] == 127 and all(cells[ys[i]:ys[i + 1]].tolist() == [i] * (ys[i + 1] - ys[i])
                                                      for i in range(127))
    sharp = resize_image(big, (128, 128), anti_aliasing=False)  # the walkers' grid: sampled, not averaged
    assert np.allclose(sharp, resize(big, (128, 128), order=1, anti_aliasing=False, preserve_range=True))


def test_walker_with_a_prior_solves_iteratively_to_the_direct_answer(monkeypatch):
    import napari_pancakes.refine.walker as walker

    img, truth = disk_image(h=80, w=90, r=20)
    rng = np.random.default_rng(1)
    prior = np.clip(truth + rng.normal(0, 0.4, truth.shape), 0, 1)
    fg = walker.seed_disks([(48, 56)], truth.shape, 1.5)
    bg = walker.border_mask(truth.shape)
    direct_solve = walker.spsolve

    def refuse(*args, **kwargs):
        raise AssertionError("the direct solve was used")

    monkeypatch.setattr(walker, "spsolve", refuse)
    iterative = walker.random_walk(img, fg, bg, prior=prior, lam=0.5)  # CG converged on its own
    monkeypatch.setattr(walker, "spsolve", direct_solve)
    monkeypatch.setattr(walker, "CG_MIN_LAMBDA", np.inf)  # the direct solve
    direct = walker.random_walk(img, fg, bg, prior=prior, lam=0.5)
    assert np.abs(iterative - direct).max() < 1e-4
    assert np.array_equal(iterative > 0.5, direct > 0.5)


def _bench_refine():
    """benchmarks/bench_refine.py as a module (benchmarks/ is not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_refine.py"
    spec = importlib.util.spec_from_file_location("bench_refine", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_refine_benchmark_targets_table_per_dataset(tmp_path):
    """The benchmark's Targets table gives the NoC ratio per dataset as well as on average, and
    ``--markdown`` writes the table again from a result file (the mean ratio alone hides that a
    dataset neither start reaches 85 on counts 10 against 10)."""
    import json

    bench = _bench_refine()
    n = 5
    easy_a = np.array([[0, 0.5, 0.9, 0.95, 0.95, 0.95]] * 2)  # NoC@85 = 2
    easy_b = np.array([[0.6, 0.9, 0.9, 0.95, 0.95, 0.95]] * 2)  # NoC@85 = 1
    hard = np.array([[0, 0.2, 0.3, 0.4, 0.5, 0.5]] * 2)  # never: NoC@85 = n
    sets = {"easy": {"images": 2, "best_pair": [0, 1], "best_pair_set_dice": 0.6},
            "hard": {"images": 2, "best_pair": [0, 2], "best_pair_set_dice": 0.1}}
    for name, a, b in (("easy", easy_a, easy_b), ("hard", hard, hard)):
        sets[name]["hybrid"] = {m: bench.summarise(c, [0.01], n) for m, c in
                                (("a_nothing", a), ("b_pancakes", b), ("c_box", a))}
    res = {"clicks": n, "weights": "w", "weights_meta": {}, "max_images": 2, "cpu_count": 2,
           "load_average_1min_end": 1.0, "methods": ["hybrid"], "sets": sets,
           "mean": bench.mean_over_sets(sets, ["hybrid"])}
    md = bench.to_markdown(res)
    assert "| hybrid | easy | 95.0 | 2.00 | 1.00 | 0.50 | 100 % | 100 % |" in md
    assert "| hybrid | hard | 50.0 | 5.00 | 5.00 | 1.00 | 0 % | 0 % |" in md
    assert "| hybrid | **mean** | 72.5 | 3.50 | 3.00 | 0.86 | 50 % | 50 % |" in md
    (tmp_path / "r.json").write_text(json.dumps(res))
    assert bench.main(["--markdown", str(tmp_path / "r.json")]) == 0
    assert (tmp_path / "r.md").read_text() == md


def test_refine_benchmark_compares_two_results_image_by_image(tmp_path):
    """``--compare`` pools the per-image curves of two results on the same images: a candidate
    better on every image by 0.1 after 5 clicks gets +10.0 with an interval above zero; one that
    is better on some images and worse on others gets an interval around zero; results on
    different images are refused."""
    import json

    bench = _bench_refine()
    rng = np.random.default_rng(0)
    base_curves = {name: np.clip(np.sort(rng.uniform(0, 0.9, (6, 11)), 1), 0, 1) for name in ("x", "y")}

    def result(shift, indices=(0, 1, 2, 3, 4, 5)):
        sets = {}
        for name, c in base_curves.items():
            c = np.clip(c + shift(c.shape), 0, 1)
            sets[name] = {"images": 6, "image_indices": list(indices), "best_pair": [0, 1], "best_pair_set_dice": 0.5,
                          "hybrid": {m: bench.summarise(c, [0.01], 10) for m in bench.MODES}}
        return {"weights": "w", "methods": ["hybrid"], "sets": sets}

    base = result(lambda s: 0)
    plus_ten = lambda s: np.where(np.arange(s[0])[:, None] % 2, 0.105, 0.095) * np.ones(s)  # noqa: E731
    better = bench.compare(base, result(plus_ten))["methods"]["hybrid"]["a_nothing"]["dice_at_5"]
    assert better["pairs"] == 12 and abs(better["mean_difference"] - 0.1) < 0.01 and better["ci95"][0] > 0
    mixed = bench.compare(base, result(lambda s: np.where(np.arange(s[0])[:, None] % 2, 0.05, -0.05) * np.ones(s)))
    ci = mixed["methods"]["hybrid"]["c_box"]["mean_1_to_n"]["ci95"]
    assert ci[0] < 0 < ci[1]
    with pytest.raises(SystemExit):
        bench.compare(base, result(lambda s: 0, indices=(0, 1, 2, 3, 4, 7)))
    for i, r in enumerate((base, result(plus_ten))):
        (tmp_path / f"{i}.json").write_text(json.dumps(r))
    assert bench.main(["--compare", str(tmp_path / "0.json"), str(tmp_path / "1.json"), "--out", str(tmp_path)]) == 0
    assert "| hybrid | (a) nothing | 12 | +10.0 |" in (tmp_path / "refine-compare.md").read_text()


def test_click_agreement_counts_clicks_the_answer_labels_wrongly(monkeypatch):
    """``--click-agreement`` counts, per dataset, the clicks whose pixel the network labels against
    the click: none for the shipped network on a clear disc, every one for a network whose logits
    are turned round."""
    from napari_pancakes.refine.predictor import Refiner

    bench = _bench_refine()
    yy, xx = np.mgrid[0:96, 0:96]
    truths = np.stack([np.hypot(yy - 40, xx - 50) < 14, np.hypot(yy - 60, xx - 30) < 10])
    images = np.where(truths, 0.8, 0.2).astype(np.float32) + np.random.default_rng(0).normal(0, 0.02, truths.shape)
    monkeypatch.setattr(bench, "load_leave_out", lambda root, n, cache: {"discs": (images, truths, [0, 1])})
    row = bench.click_agreement(None, 2, None, None, 3)["sets"]["discs"]
    assert row["new_total"] >= 2 and row["new_disagree"] == 0 and row["earlier_disagree"] == 0
    forward = Refiner.predict_work
    monkeypatch.setattr(Refiner, "predict_work", lambda self, *a, **k: -forward(self, *a, **k))
    row = bench.click_agreement(None, 2, None, None, 3)["sets"]["discs"]
    assert row["new_total"] >= 2 and row["new_disagree"] == row["new_total"]
    assert row["mean_click_loss"] > 1.0


def test_locality_benchmark_sees_what_a_negative_click_kept(monkeypatch):
    """``--locality``: from a start holding a correct disc and a wrong one, with a missed third,
    the negative click on the wrong disc (whose answer wipes the image) keeps the correct one; the
    next, positive click must not remove it."""
    from napari_pancakes.refine.predictor import Refiner

    bench = _bench_refine()
    yy, xx = np.mgrid[0:128, 0:128]
    right, wrong, missed = (np.hypot(yy - cy, xx - cx) < r for cy, cx, r in ((40, 40, 14), (90, 90, 20), (100, 20, 8)))
    image = (0.2 + 0.6 * (right | wrong | missed)).astype(np.float32)[None]
    monkeypatch.setattr(bench, "load_leave_out", lambda root, n, cache: {"discs": (image, (right | missed)[None], [0])})
    monkeypatch.setattr(bench, "best_pancakes_labels", lambda images, truths, model: ([right | wrong], (0, 0), 0.5))
    monkeypatch.setattr(Refiner, "predict_work", wiping_predictor())
    row = bench.locality(None, 1, None, None, None, 3)["sets"]["discs"]["b_pancakes"]
    assert row["negative_clicks_that_kept"] == 1 and row["next_prompt_removed"] == 0


def test_refine_benchmark_sets_session_switches_by_name():
    """``bench_refine.py --session NAME=VALUE`` runs an experiment's variant without editing the
    session's defaults; values take the switch's type, and a name the session lacks is refused
    (a typo must not run the baseline under the variant's name)."""
    bench = _bench_refine()
    assert bench.session_settings(["LOCAL_RADIUS=0.2", "KEEP_DETAIL=0", "HYBRID_GRID=image"]) == {
        "LOCAL_RADIUS": 0.2, "KEEP_DETAIL": False, "HYBRID_GRID": "image"}
    assert bench.session_settings(None) == {}
    assert bench.session_settings(["KEEP_DETAIL=true"]) == {"KEEP_DETAIL": True}
    with pytest.raises(SystemExit, match="no switch"):
        bench.session_settings(["LOCAL_RADUIS=0.2"])
    with pytest.raises(SystemExit, match="takes a float"):
        bench.session_settings(["LOCAL_RADIUS=wide"])


def test_large_image_benchmark_times_every_prompt_and_segments_the_disc():
    """``bench_refine.py --large``: one row per side and method, every prompt timed, and the
    box's answer is the disc (a broken grid mapping would not be)."""
    bench = _bench_refine()
    res = bench.large_images(None, ["hybrid", "classical"], sides=(96, 160))
    assert [(r["side"], r["method"]) for r in res["rows"]] == [(96, "hybrid"), (96, "classical"),
                                                               (160, "hybrid"), (160, "classical")]
    for row in res["rows"]:
        assert all(row[k] > 0 for k in ("click", "negative click", "box")) and row["dice_after_box"] > 0.9
    assert "| 160 | classical |" in bench.large_markdown(res)
