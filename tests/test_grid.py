"""Tests of densitylearn.grid: the torch evaluators against PySCF's eval_gto (the slow twin)."""

import numpy as np
import pytest
import torch

from densitylearn import grid
from densitylearn.basis import AuxBasis, Shell, gto_norm
from densitylearn.errors import InputError
from densitylearn.units import ANGSTROM_BOHR

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="CUDA not available")

WATER = (np.array([8, 1, 1]),
         np.array([[0.0, 0.0, 0.1173], [0.0, 0.7572, -0.4692], [0.0, -0.7572, -0.4692]]) * ANGSTROM_BOHR)
ETHANOL = (np.array([6, 6, 8, 1, 1, 1, 1, 1, 1]),
           np.array([[-1.168, -0.404, 0.000], [0.068, 0.463, 0.000], [1.216, -0.382, 0.000],
                     [1.983, 0.195, 0.000], [0.058, 1.107, 0.888], [0.058, 1.107, -0.888],
                     [-2.070, 0.207, 0.000], [-1.179, -1.043, 0.883], [-1.179, -1.043, -0.883]])
           * ANGSTROM_BOHR)
MOLECULES = {"water": WATER, "ethanol": ETHANOL}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # the CI machines are shared: OpenMP threads fighting over cores make torch 50x slower
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def aux_mol(basis, numbers, positions):
    from pyscf import gto

    return gto.M(atom=[(int(z), tuple(p)) for z, p in zip(numbers, positions)], unit="Bohr",
                 basis=basis.to_pyscf_basis(), spin=int(np.sum(numbers)) % 2, verbose=0)


def test_points(positions, n=400, seed=0):
    """Points at the nuclei, right next to them, in the bonding region and far away (bohr)."""
    rng = np.random.default_rng(seed)
    return np.concatenate([positions, positions + rng.normal(size=positions.shape) * 1e-3,
                           positions.mean(0) + rng.normal(size=(n, 3)) * 2.0,
                           positions.mean(0) + rng.normal(size=(20, 3)) * 12.0,
                           [[40.0, 0.0, 0.0]]])


test_points.__test__ = False


@pytest.fixture(scope="module")
def bases():
    zs = [1, 6, 8]
    return {"def2-universal-jfit": AuxBasis.load("def2-universal-jfit", zs),
            "etb:2.0": AuxBasis.load("etb:2.0", zs),
            "high-l": high_l_basis()}


def high_l_basis():
    """A hand-built basis with contracted shells up to l = 6 (not sorted by l on input)."""
    def shell(l, exps, raw):
        exps = np.array(exps)
        return Shell(l, exps, np.array(raw) * gto_norm(l, exps))

    h = [shell(0, [3.0, 0.5], [0.4, 0.7]), shell(6, [0.9], [1.0]), shell(1, [0.8], [1.0])]
    o = [shell(5, [2.0, 0.6], [0.3, 0.8]), shell(0, [40.0, 5.0, 0.7], [0.2, 0.5, 0.6]),
         shell(6, [1.5], [1.0]), shell(6, [0.4], [1.0]), shell(2, [1.2, 0.3], [0.5, 0.5]),
         shell(5, [0.35], [1.0])]
    c = [shell(3, [0.9], [1.0]), shell(0, [1.0], [1.0]), shell(4, [0.7], [1.0])]
    return AuxBasis("high-l test", {1: h, 8: o, 6: c})


@pytest.mark.parametrize("mol", ["water", "ethanol"])
@pytest.mark.parametrize("name", ["def2-universal-jfit", "etb:2.0", "high-l"])
def test_basis_and_density_match_pyscf(bases, name, mol):
    basis = bases[name]
    z, pos = MOLECULES[mol]
    pts = test_points(pos)
    ref = aux_mol(basis, z, pos).eval_gto("GTOval_sph", pts)
    ao = grid.evaluate_basis(basis, z, pos, pts)
    assert ao.dtype == torch.float64 and ao.shape == ref.shape
    scale = max(1.0, np.abs(ref).max())
    assert np.abs(ao.numpy() - ref).max() < 1e-10 * scale

    c = np.random.default_rng(1).normal(size=ref.shape[1])
    rho_ref = ref @ c
    rho = grid.evaluate_density(basis, z, pos, c, pts).numpy()
    rho_tiny = grid.evaluate_density(basis, z, pos, c, pts, chunk_size=7).numpy()
    tol = 1e-10 * max(1.0, np.abs(rho_ref).max())
    assert np.abs(rho - rho_ref).max() < tol
    assert np.abs(rho_tiny - rho_ref).max() < tol
    assert rho[-1] == 0.0  # 40 bohr away: everything screened


def test_float32_and_dtype_rules(bases):
    basis = bases["etb:2.0"]
    z, pos = ETHANOL
    pts = test_points(pos)
    c = np.random.default_rng(2).normal(size=int(basis.layout(z)[-1]))
    rho64 = grid.evaluate_density(basis, z, pos, c, pts)
    assert rho64.dtype == torch.float64
    rho32 = grid.evaluate_density(basis, z, pos, torch.tensor(c, dtype=torch.float32), pts)
    assert rho32.dtype == torch.float32
    rel = (rho32.double() - rho64).abs().max() / rho64.abs().max()
    assert rel < 1e-5
    # numpy float32 points and numpy coefficients: follow the points
    assert grid.evaluate_density(basis, z, pos, c, pts.astype(np.float32)).dtype == torch.float32
    ao32 = grid.evaluate_basis(basis, z, pos, torch.tensor(pts, dtype=torch.float32))
    ao64 = grid.evaluate_basis(basis, z, pos, pts)
    assert ao32.dtype == torch.float32
    assert ((ao32.double() - ao64).abs().max() / ao64.abs().max()) < 1e-5


def test_gradient_is_basis_values(bases):
    basis = bases["def2-universal-jfit"]
    z, pos = WATER
    pts = test_points(pos, n=30)
    n = int(basis.layout(z)[-1])
    c = torch.randn(n, dtype=torch.float64, requires_grad=True)
    jac = torch.autograd.functional.jacobian(
        lambda cc: grid.evaluate_density(basis, z, pos, cc, pts, chunk_size=16), c)
    ao = grid.evaluate_basis(basis, z, pos, pts)
    assert torch.allclose(jac, ao, rtol=0, atol=1e-10 * ao.abs().max().item())
    w = torch.randn(len(pts), dtype=torch.float64)
    (w * grid.evaluate_density(basis, z, pos, c, pts)).sum().backward()
    assert torch.allclose(c.grad, ao.T @ w, rtol=1e-10, atol=1e-10)


def test_batch_equals_one_by_one(bases):
    basis = bases["def2-universal-jfit"]
    rng = np.random.default_rng(3)
    structs = [WATER, ETHANOL, (WATER[0], WATER[1] + 0.3), (np.array([1]), np.zeros((1, 3)))]
    pts = [test_points(p, n=50 + 10 * i, seed=i) for i, (_, p) in enumerate(structs)]
    pts[3] = np.zeros((0, 3))  # a structure without points
    coefs = [rng.normal(size=int(basis.layout(zz)[-1])) for zz, _ in structs]
    batch = {grid.BATCH_NUMBERS: np.concatenate([s[0] for s in structs]),
             grid.BATCH_POSITIONS: np.concatenate([s[1] for s in structs]),
             grid.BATCH_COEFFICIENTS: torch.tensor(np.concatenate(coefs)),
             grid.BATCH_POINTS: np.concatenate(pts),
             grid.BATCH_N_ATOMS: [len(s[0]) for s in structs],
             grid.BATCH_N_POINTS: [len(p) for p in pts],
             grid.BATCH_N_FUNCTIONS: [len(c) for c in coefs]}
    one = torch.cat([grid.evaluate_density(basis, zz, pp, c, q)
                     for (zz, pp), c, q in zip(structs, coefs, pts)])
    for chunk in (None, 13):
        got = grid.evaluate_density_batch(basis, batch, chunk_size=chunk)
        assert got.shape == one.shape
        assert torch.allclose(got, one, rtol=1e-12, atol=1e-12)
    bad = dict(batch)
    bad[grid.BATCH_N_FUNCTIONS] = [1, 2, 3, 4]
    with pytest.raises(InputError):
        grid.evaluate_density_batch(basis, bad)


class FakeSAED:
    """Stands in for densitylearn.saed.SAED: a Gaussian on each atom."""

    def evaluate_torch(self, numbers, positions, points):
        d2 = ((points[:, None, :] - positions[None, :, :]) ** 2).sum(-1)
        return (numbers.to(points.dtype)[None, :] * torch.exp(-d2)).sum(-1)


def test_saed_is_added(bases):
    basis = bases["def2-universal-jfit"]
    z, pos = WATER
    pts = test_points(pos, n=20)
    c = np.random.default_rng(4).normal(size=int(basis.layout(z)[-1]))
    saed = FakeSAED()
    plain = grid.evaluate_density(basis, z, pos, c, pts)
    total = grid.evaluate_density(basis, z, pos, c, pts, saed=saed)
    prior = saed.evaluate_torch(torch.tensor(z), torch.tensor(pos), torch.tensor(pts))
    assert torch.allclose(total, plain + prior, rtol=1e-14, atol=1e-14)


def test_bad_inputs(bases):
    basis = bases["def2-universal-jfit"]
    z, pos = WATER
    n = int(basis.layout(z)[-1])
    pts = test_points(pos, n=5)
    with pytest.raises(InputError, match="expects"):
        grid.evaluate_density(basis, z, pos, np.zeros(n - 1), pts)
    with pytest.raises(InputError, match="expects"):
        grid.evaluate_density(basis, z, pos, np.zeros((n, 1)), pts)
    c = np.zeros(n)
    c[3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        grid.evaluate_density(basis, z, pos, c, pts)
    for bad in (np.zeros((5, 2)), np.zeros(3), np.zeros((2, 3, 1))):
        with pytest.raises(InputError, match=r"\(n, 3\)"):
            grid.evaluate_density(basis, z, pos, np.zeros(n), bad)
        with pytest.raises(InputError, match=r"\(n, 3\)"):
            grid.evaluate_basis(basis, z, pos, bad)
    with pytest.raises(InputError):
        grid.evaluate_density(basis, z, pos[:2], np.zeros(n), pts)
    with pytest.raises(InputError) as err:
        grid.evaluate_density(basis, z, pos, np.zeros(n), pts, chunk_size=0)
    assert "\n" not in str(err.value)


def test_screening_radius():
    s = Shell(2, np.array([0.5]), np.array([1.0]))
    r = grid.shell_cutoff_radius(s, 1e-12)
    bound = np.sqrt(5 / (4 * np.pi)) * r**2 * np.exp(-0.5 * r**2)
    assert abs(bound - 1e-12) < 1e-15
    assert grid.shell_cutoff_radius(s, 1e-6) < r


def test_becke_grid_integrates_density(bases):
    from densitylearn.structure import Structure

    basis = bases["def2-universal-jfit"]
    z, pos = WATER
    pts, w = grid.becke_grid(Structure(z, pos), level=3)
    assert pts.shape == (len(w), 3) and len(w) > 10000
    c = np.random.default_rng(5).normal(size=int(basis.layout(z)[-1]))
    n_exact = sum(basis.s_integrals(zz) @ c[a:b] for zz, a, b in
                  zip(z, basis.layout(z)[:-1], basis.layout(z)[1:]))
    n_grid = float(w @ grid.evaluate_density(basis, z, pos, c, pts).numpy())
    assert abs(n_grid - n_exact) < 1e-5 * max(1.0, abs(n_exact))
    p2, w2 = grid.becke_grid((z, pos), level=3)
    assert np.allclose(p2, pts) and np.allclose(w2, w)


def test_uniform_box_is_cube_order():
    z, pos = WATER
    origin, axes, shape, pts = grid.uniform_box(z, pos, spacing=0.5, margin=2.0)
    assert pts.shape == (int(np.prod(shape)), 3)
    assert np.allclose(origin, pos.min(0) - 2.0)
    assert np.allclose(axes, 0.5 * np.eye(3))
    assert np.all(origin + (shape - 1) * 0.5 >= pos.max(0) + 2.0 - 0.5)
    cube = pts.reshape(*shape, 3)
    i, j, k = 2, 3, 4
    assert np.allclose(cube[i, j, k], origin + i * axes[0] + j * axes[1] + k * axes[2])
    assert np.allclose(pts[1] - pts[0], axes[2])  # z fastest, x slowest


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cuda_matches_cpu(bases, dtype):
    basis = bases["etb:2.0"]
    z, pos = ETHANOL
    pts = test_points(pos)
    c = np.random.default_rng(6).normal(size=int(basis.layout(z)[-1]))
    ref = grid.evaluate_density(basis, z, pos, c, pts)
    c_gpu = torch.tensor(c, dtype=dtype, device="cuda", requires_grad=True)
    got = grid.evaluate_density(basis, z, pos, c_gpu, pts)
    assert got.device.type == "cuda" and got.dtype == dtype
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    assert (got.double().cpu() - ref).abs().max() < tol * ref.abs().max()
    got.sum().backward()
    ao = grid.evaluate_basis(basis, z, pos, pts)
    assert (c_gpu.grad.double().cpu() - ao.sum(0)).abs().max() < tol * ao.sum(0).abs().max()
    ao_gpu = grid.evaluate_basis(basis, z, pos, torch.tensor(pts, dtype=dtype, device="cuda"))
    assert (ao_gpu.double().cpu() - ao).abs().max() < tol * ao.abs().max()


def _fused_vs_torch(basis, dtype, device):
    """Fused-kernel densities of a two-structure batch against the torch path."""
    from densitylearn import _triton_grid

    (z1, p1), (z2, p2) = ETHANOL, WATER
    p2 = p2 + 0.4  # overlapping in space: structures must not see each other's atoms
    z = np.concatenate([z1, z2])
    pos = torch.tensor(np.concatenate([p1, p2]), dtype=dtype, device=device)
    pts = torch.tensor(np.concatenate([test_points(p1, n=150), test_points(p2, n=150, seed=1)]),
                       dtype=dtype, device=device)
    n_pts = [len(test_points(p1, n=150)), len(test_points(p2, n=150, seed=1))]
    c = torch.tensor(np.random.default_rng(7).normal(size=int(basis.layout(z)[-1])), dtype=dtype, device=device)
    a_s = torch.as_tensor(np.repeat([0, 1], [len(z1), len(z2)]), device=device)
    p_s = torch.as_tensor(np.repeat([0, 1], n_pts), device=device)
    plan = grid._plan(basis, grid.DEFAULT_THRESHOLD)
    ref = grid._screened_density(basis, plan, z, pos, c, basis.layout(z), pts, a_s, p_s, 4096, 1 << 20)
    got = _triton_grid.screened_density(basis, plan, z, pos, c, basis.layout(z), pts, a_s, p_s)
    return got, ref


def test_fused_kernel_in_triton_interpreter(saed_cache):
    """The Triton kernels, run by Triton's CPU interpreter, equal the torch path (l <= 6).

    Runs in a subprocess: the interpreter must be chosen before triton is first imported.
    """
    import importlib.util
    import os
    import subprocess
    import sys

    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton not installed")
    if CUDA:  # the CUDA tests below run the compiled kernels themselves
        pytest.skip("CUDA machine: the compiled kernels are tested directly")
    code = """
import sys, torch
sys.path.insert(0, %r)
import test_grid as T
from densitylearn.saed import load_saed
saed = load_saed([1, 6, 8])
for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 2e-6)):
    got, ref = T._fused_vs_torch(T.high_l_basis(), dtype, "cpu")
    assert torch.isfinite(got).all()
    assert (got - ref).abs().max() < tol * ref.abs().max(), ("density", dtype)
    got, ref = T._fused_saed_vs_torch(saed, dtype, "cpu")
    assert (got - ref).abs().max() < tol * ref.abs().max(), ("saed", dtype)
print("fused kernels ok")
""" % os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, TRITON_INTERPRET="1", DENSITYLEARN_CACHE=saed_cache, OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and "fused kernels ok" in res.stdout, res.stderr[-2000:]


def test_solid_harmonics_are_exact_monomial_sums():
    """M_l reproduces PySCF-order solid harmonics as polynomials (the fused kernels' basis)."""
    from densitylearn import _triton_grid
    from densitylearn.basis import solid_harmonics_pyscf

    r = np.random.default_rng(3).normal(size=(50, 3)) * 2.0
    for l in range(7):
        ex = np.array(_triton_grid.monomial_exponents(l))
        assert len(ex) == (l + 1) * (l + 2) // 2 and (ex.sum(1) == l).all()
        mono = np.prod(r[:, None, :] ** ex[None], axis=2)
        want = solid_harmonics_pyscf(l, torch.tensor(r)).numpy()
        got = mono @ _triton_grid.monomial_matrix(l).T
        assert np.abs(got - want).max() < 1e-12 * np.abs(want).max()


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cuda_fused_kernel_matches_torch_path(bases, saed_cache, dtype):
    pytest.importorskip("triton")
    from densitylearn.saed import load_saed

    got, ref = _fused_saed_vs_torch(load_saed([1, 6, 8], cache_dir=saed_cache), dtype, "cuda")
    assert (got - ref).abs().max() < (1e-12 if dtype == torch.float64 else 2e-6) * ref.abs().max()
    for name in ("high-l", "def2-universal-jfit"):
        got, ref = _fused_vs_torch(bases[name], dtype, "cuda")
        tol = 1e-12 if dtype == torch.float64 else 2e-6
        assert (got - ref).abs().max() < tol * ref.abs().max(), name
    # the public entry point takes the fused path without gradients and the torch path with
    z, pos = ETHANOL
    basis = bases["etb:2.0"]
    c = torch.tensor(np.random.default_rng(8).normal(size=int(basis.layout(z)[-1])), dtype=dtype, device="cuda")
    pts = torch.tensor(test_points(pos), dtype=dtype, device="cuda")
    with torch.no_grad():
        fused = grid.evaluate_density(basis, z, pos, c, pts)
    plain = grid.evaluate_density(basis, z, pos, c.clone().requires_grad_(True), pts).detach()
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    assert (fused - plain).abs().max() < tol * plain.abs().max()


def _fused_saed_vs_torch(saed, dtype, device):
    from densitylearn import _triton_grid

    (z1, p1), (z2, p2) = ETHANOL, WATER
    p2 = p2 + 0.4
    z = np.concatenate([z1, z2])
    pos = torch.tensor(np.concatenate([p1, p2]), dtype=dtype, device=device)
    q1, q2 = test_points(p1, n=150), test_points(p2, n=150, seed=1)
    pts = torch.tensor(np.concatenate([q1, q2]), dtype=dtype, device=device)
    a_s = torch.as_tensor(np.repeat([0, 1], [len(z1), len(z2)]), device=device)
    p_s = torch.as_tensor(np.repeat([0, 1], [len(q1), len(q2)]), device=device)
    got = _triton_grid.saed_density(saed, z, pos, pts, a_s, p_s)
    ref = torch.cat([saed.evaluate_torch(z1, p1, torch.tensor(q1, dtype=dtype, device=device)),
                     saed.evaluate_torch(z2, p2, torch.tensor(q2, dtype=dtype, device=device))])
    return got, ref


def test_read_only_arrays_are_copied_not_aliased():
    # cached arrays are frozen (writeable=False); a tensor made from one must not share it
    from densitylearn.grid import _as_tensor

    frozen = np.arange(6.0)
    frozen.flags.writeable = False
    t = _as_tensor(frozen, torch.float64, torch.device("cpu"))
    t += 1.0
    assert frozen[0] == 0.0 and float(t[0]) == 1.0
    writable = np.arange(6.0)  # writable arrays are still shared, not copied
    _as_tensor(writable, torch.float64, torch.device("cpu")).add_(1.0)
    assert writable[0] == 1.0
