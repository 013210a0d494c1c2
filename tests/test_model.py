import math

import numpy as np
import pytest
import torch

from napari_pancakes.model import Pancakes, PancakesConfig, count_parameters, pair_codes, sinusoidal_code


def test_sinusoidal_code_matches_paper_formula():
    J, T = 8, 5
    u = sinusoidal_code(torch.tensor([0.0, 1.0, 3.0]), T, J).numpy()
    for row, t in enumerate([0, 1, 3]):
        for j in range(J // 2):
            z = (t / T) * 2 ** (2 * (2 * j) * math.pi / J)
            assert u[row, 2 * j] == pytest.approx(math.sin(z + math.pi / 2), abs=1e-5)
            assert u[row, 2 * j + 1] == pytest.approx(math.sin(z - math.pi / 2), abs=1e-5)


def test_code_period_depends_on_m_and_k():
    a = pair_codes(4, 10, 8)
    b = pair_codes(8, 10, 8)
    assert a.shape == (4, 10, 16) and b.shape == (8, 10, 16)
    # protocol 2 of M=4 sits at the same phase (t/T = 1/2) as protocol 4 of M=8
    assert torch.allclose(a[2, :, :8], b[4, :, :8])
    assert not torch.allclose(a[1, 0], a[2, 0])
    # every protocol shares the label codes
    assert torch.allclose(a[0, :, 8:], a[3, :, 8:])


def test_odd_code_length_is_rejected():
    with pytest.raises(ValueError):
        sinusoidal_code(torch.zeros(2), 4, 7)


def test_parameter_count_in_paper_range():
    n = count_parameters(Pancakes())
    assert 150_000 <= n <= 300_000  # paper: ~0.22M


@pytest.mark.parametrize("m,k,n,h,w", [(1, 2, 1, 128, 128), (8, 20, 3, 128, 128), (3, 7, 2, 64, 96), (15, 40, 5, 32, 32)])
def test_forward_shapes(m, k, n, h, w):
    model = Pancakes().eval()
    with torch.no_grad():
        logits = model(torch.rand(n, 1, h, w), m, k)
    assert logits.shape == (n, m, k, h, w)
    assert torch.isfinite(logits).all()


def test_batched_pairs_equal_pairwise_evaluation():
    """All (m, k) pairs from one phi give the same logits as evaluating each pair alone."""
    torch.manual_seed(0)
    model = Pancakes(PancakesConfig(head_dim=8)).eval()
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        full = model(x, 3, 4)
        g = model.features(model.phi(x))
        v = pair_codes(3, 4, model.config.code_dim)
        for mi in range(3):
            for ki in range(4):
                w, b = model.h.pair_weights(v[mi, ki][None])
                single = torch.einsum("ndhw,d->nhw", g, w[0]) + b[0]
                assert torch.allclose(full[:, mi, ki], single, atol=1e-4)
