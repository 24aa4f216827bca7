"""Molecular integration grids built with torch (densitylearn.becke) against PySCF's own."""

import numpy as np
import pytest
import torch

from densitylearn.becke import atomic_grid, becke_grid_torch
from densitylearn.errors import InputError
from densitylearn.grid import becke_grid
from densitylearn.units import ANGSTROM_BOHR

ETHANOL = (np.array([6, 6, 8, 1, 1, 1, 1, 1, 1]), ANGSTROM_BOHR * np.array([
    [-0.0017, -0.0037, 0.0024], [1.5135, 0.0026, 0.0047], [-0.4963, 1.3361, -0.0130],
    [-0.3808, -0.5322, 0.8838], [-0.3798, -0.5190, -0.8906], [1.8936, 1.0262, 0.0104],
    [1.8968, -0.5093, -0.8881], [1.8935, -0.5073, 0.8997], [-1.4563, 1.3076, -0.0081]]))


def _match(points_a, weights_a, points_b, weights_b):
    """Weights of b at a's points (matched by coordinates); a's points absent from b get None."""
    key = lambda p: tuple(np.round(p, 7))  # noqa: E731
    table = {key(p): w for p, w in zip(points_b, weights_b)}
    return [table.get(key(p)) for p in points_a]


@pytest.mark.parametrize("level", [1, 3])
def test_torch_grid_equals_pyscf_grid(level):
    numbers, positions = ETHANOL
    pts, w = becke_grid_torch(numbers, positions, level=level)
    ref_pts, ref_w = becke_grid((numbers, positions), level=level)
    got = _match(ref_pts, ref_w, pts.numpy(), w.numpy())
    # every PySCF point with a weight is ours too (PySCF adds a few zero-weight padding points)
    assert all(g is not None for g, rw in zip(got, ref_w) if rw != 0)
    diff = max(abs(g - rw) for g, rw in zip(got, ref_w) if g is not None)
    assert diff < 1e-11 * np.abs(ref_w).max()
    assert pts.shape[0] <= len(ref_w) <= pts.shape[0] + 8
    assert float(w.sum()) == pytest.approx(float(ref_w.sum()), rel=1e-13)


def test_grid_integrates_and_follows_the_atoms():
    numbers, positions = ETHANOL
    pts, w, owner = becke_grid_torch(numbers, positions, level=2, return_atoms=True)
    # partition of unity: a Gaussian on each atom integrates to the same value everywhere
    for a in (0, 2, 5):
        r2 = ((pts - torch.as_tensor(positions[a])) ** 2).sum(1)
        assert float((w * torch.exp(-r2)).sum()) == pytest.approx(np.pi ** 1.5, rel=1e-6)
    assert owner.shape == w.shape and int(owner.max()) == len(numbers) - 1
    # translated molecule: same weights, points moved
    shift = np.array([0.3, -1.7, 2.2])
    pts2, w2 = becke_grid_torch(numbers, positions + shift, level=2)
    np.testing.assert_allclose(w2.numpy(), w.numpy(), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(pts2.numpy(), pts.numpy() + shift, atol=1e-12)


def test_single_atom_and_bad_input():
    pts, w = becke_grid_torch([8], [[0.0, 0.0, 0.0]], level=1)
    rel, vol = atomic_grid(8, 1)
    np.testing.assert_allclose(w.numpy(), vol)
    with pytest.raises(InputError, match="shape"):
        becke_grid_torch([8, 1], [[0.0, 0.0, 0.0]])
    with pytest.raises(InputError, match="finite"):
        becke_grid_torch([8], [[np.nan, 0.0, 0.0]])
    with pytest.raises(InputError, match="level"):
        becke_grid_torch([8], [[0.0, 0.0, 0.0]], level=12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_grid_equals_cpu_grid():
    numbers, positions = ETHANOL
    pts, w = becke_grid_torch(numbers, positions, level=3)
    pts_c, w_c = becke_grid_torch(numbers, positions, level=3, device="cuda")
    np.testing.assert_allclose(w_c.cpu().numpy(), w.numpy(), rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(pts_c.cpu().numpy(), pts.numpy(), atol=1e-12)
