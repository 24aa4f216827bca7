"""Tests of densitylearn.saed: analytic atomic densities, evaluation paths, SAED density matrix."""

import json
import os

import numpy as np
import pytest

pytest.importorskip("pyscf")
torch = pytest.importorskip("torch")

from densitylearn import saed as S  # noqa: E402
from densitylearn.errors import InputError, MismatchError  # noqa: E402
from conftest import reweighted  # noqa: E402

ELEMENTS = (1, 6, 7, 8, 9)

WATER_BOHR = np.array([[0.0, 0.0, 0.2217], [0.0, 1.4309, -0.8867], [0.0, -1.4309, -0.8867]])


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("saed_cache"))


@pytest.fixture(scope="module")
def saed(cache_dir):
    return S.load_saed(["H", "C", "N", "O", "F"], xc="pbe", basis="def2-svp", cache_dir=cache_dir)


def _radial_points(n=300, seed=0):
    r = np.concatenate([[0.0], np.geomspace(1e-5, 25.0, n)])
    rng = np.random.default_rng(seed)
    dirs = rng.normal(size=(len(r), 3))
    dirs /= np.linalg.norm(dirs, axis=1)[:, None]
    return r, r[:, None] * dirs


def _water_mol(**kw):
    from pyscf import gto

    return gto.M(atom=[("O", WATER_BOHR[0]), ("H", WATER_BOHR[1]), ("H", WATER_BOHR[2])],
                 unit="bohr", basis="def2-svp", verbose=0, **kw)


# ---------------------------------------------------------------------------- atoms
@pytest.mark.parametrize("z", ELEMENTS)
def test_analytic_matches_pyscf_atomic_density(saed, cache_dir, z):
    from pyscf import dft

    rec = S._atomic_record(z, "pbe", "def2-svp", cache_dir)
    mol = S._atom_mol(z, "def2-svp")
    dm = np.asarray(rec["dm"])
    r, pts = _radial_points()
    ref = dft.numint.eval_rho(mol, dft.numint.eval_ao(mol, pts), dm)
    ana = saed.radial(z, r)
    assert np.abs(ana - ref).max() / ref.max() <= 1e-10
    p, b, w = saed.terms(z)
    assert p.dtype == np.int64 and b.dtype == np.float64 and w.dtype == np.float64
    assert np.all(p % 2 == 0)
    assert len(set(zip(p.tolist(), b.tolist()))) == len(p)  # merged
    assert abs(float((w * S.radial_integrals(p, b)).sum()) - z) < 1e-8
    assert abs(saed.electron_count([z]) - z) < 1e-8
    assert saed.radial(z, [saed.cutoff(z)])[0] < 1e-14


def test_atom_ks_dm_is_spherical():
    """atom_ks builds m-independent blocks; the raw DM is spherical to rounding."""
    import warnings

    from pyscf.scf import atom_ks

    mol = S._atom_mol(6, "def2-svp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        _, _, c, occ = atom_ks.get_atm_nrks(mol, xc="pbe")["C"]
    raw = (c * occ) @ c.T
    assert S.spherical_deviation(mol, raw) < 1e-14


def test_electron_count_molecule(saed):
    assert saed.electron_count([8, 1, 1]) == pytest.approx(10.0, abs=1e-8)


# ---------------------------------------------------------------------------- evaluation
def test_numpy_torch_and_screening_on_water(saed):
    rng = np.random.default_rng(1)
    pts = np.concatenate([rng.normal(scale=3.0, size=(1500, 3)), WATER_BOHR,
                          rng.uniform(-25, 25, size=(300, 3))])
    numbers = [8, 1, 1]
    ref = saed.evaluate(numbers, WATER_BOHR, pts, screen=False)
    scr = saed.evaluate(numbers, WATER_BOHR, pts)
    assert np.abs(scr - ref).max() <= 1e-12
    out = saed.evaluate_torch(torch.tensor(numbers), torch.tensor(WATER_BOHR), torch.tensor(pts))
    assert out.dtype == torch.float64 and out.shape == (len(pts),)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-13, atol=1e-13)
    # numpy in, tiny chunks and pair budget exercise the grouping
    out2 = saed.evaluate_torch(numbers, WATER_BOHR, pts, chunk_size=97, budget=5000)
    np.testing.assert_allclose(out2.numpy(), ref, rtol=1e-13, atol=1e-13)
    out32 = saed.evaluate_torch(numbers, WATER_BOHR, torch.tensor(pts, dtype=torch.float32))
    assert out32.dtype == torch.float32
    np.testing.assert_allclose(out32.numpy(), ref, rtol=1e-4, atol=1e-6)


def test_cell_list_on_spread_system(saed):
    """Many atoms over several cells: screened numpy and torch agree with the dense reference."""
    rng = np.random.default_rng(2)
    n = 40
    numbers = rng.choice(ELEMENTS, size=n)
    positions = rng.uniform(-20.0, 20.0, size=(n, 3))
    pts = np.concatenate([positions[:10] + rng.normal(scale=0.5, size=(10, 3)),
                          rng.uniform(-35.0, 35.0, size=(2000, 3)), [[1e6, 0.0, 0.0]]])
    ref = saed.evaluate(numbers, positions, pts, screen=False)
    assert np.abs(saed.evaluate(numbers, positions, pts, budget=300) - ref).max() <= 1e-12
    out = saed.evaluate_torch(numbers, positions, pts, chunk_size=256, budget=20000).numpy()
    assert np.abs(out - ref).max() <= 1e-12
    assert out[-1] == 0.0


def test_evaluate_rejects_bad_input(saed):
    with pytest.raises(InputError, match="Cl"):
        saed.evaluate([17], [[0.0, 0.0, 0.0]], np.zeros((1, 3)))
    with pytest.raises(InputError, match="positions"):
        saed.evaluate([1, 1], [[0.0, 0.0, 0.0]], np.zeros((1, 3)))
    with pytest.raises(InputError):
        saed.evaluate_torch([1], [[np.nan, 0.0, 0.0]], np.zeros((1, 3)))


# ---------------------------------------------------------------------------- density matrix
def test_saed_density_matrix_on_becke_grid(saed, cache_dir):
    from pyscf import dft

    mol = _water_mol()
    dm = S.saed_density_matrix(mol, "pbe", cache_dir=cache_dir)
    assert dm.shape == (mol.nao, mol.nao)
    np.testing.assert_allclose(dm, dm.T, atol=0)
    s = mol.intor("int1e_ovlp")
    assert np.trace(dm @ s) == pytest.approx(10.0, abs=1e-9)
    grids = dft.gen_grid.Grids(mol)
    grids.level = 3
    grids.build()
    rho_dm = dft.numint.eval_rho(mol, dft.numint.eval_ao(mol, grids.coords), dm)
    rho = saed.evaluate(mol.atom_charges(), mol.atom_coords(), grids.coords)
    assert np.abs(rho_dm - rho).max() / rho.max() <= 1e-10
    assert float(grids.weights @ rho) == pytest.approx(10.0, abs=2e-3)

    # a Mole rebuilt from its serialised form (as lib.chkfile.load_mol does) gives the same DM
    from pyscf import gto

    np.testing.assert_array_equal(S.saed_density_matrix(gto.loads(mol.dumps()), "pbe",
                                                        cache_dir=cache_dir), dm)
    # basis given as explicit shells (no name): recomputed, equal up to atomic-SCF noise
    explicit = {s: gto.basis.load("def2-svp", s) for s in ("O", "H")}
    mole = gto.M(atom=mol.atom, unit="bohr", basis=explicit, verbose=0)
    np.testing.assert_allclose(S.saed_density_matrix(mole, "pbe", cache_dir=cache_dir), dm, atol=1e-6)

    # cartesian AOs give the same density
    molc = _water_mol(cart=True)
    dmc = S.saed_density_matrix(molc, "pbe", cache_dir=cache_dir)
    pts = grids.coords[::50]
    rho_c = dft.numint.eval_rho(molc, dft.numint.eval_ao(molc, pts), dmc)
    assert np.abs(rho_c - rho[::50]).max() / rho.max() <= 1e-10


# ---------------------------------------------------------------------------- identity
def test_definition_round_trip_and_hash(saed, cache_dir):
    d = saed.definition()
    again = S.SAED.from_definition(json.loads(json.dumps(d)))
    assert again.hash == saed.hash and len(saed.hash) == 16
    assert S.SAED.from_definition(json.dumps(d)) == saed
    saed.require_same(again)
    # a second load from the cache gives the identical object
    assert S.load_saed(ELEMENTS, cache_dir=cache_dir).hash == saed.hash
    sub = S.load_saed(["H", "O"], cache_dir=cache_dir)
    saed.require_same(sub, elements=[1, 8])
    with pytest.raises(MismatchError, match="C"):
        saed.require_same(sub)
    with pytest.raises(MismatchError, match="functional"):
        saed.require_same(S.SAED("b3lyp", "def2-svp", {1: saed.terms(1)}), elements=[1])
    p, b, w = saed.terms(1)
    # round-off of an atomic SCF on another machine (about 1e-14) is the same SAED; a change
    # of the weights at 1e-6 (count kept) or of the exponents at 1e-9 is not
    saed.require_same(S.SAED("pbe", "def2-svp", {1: (p, b, w * (1 + 1e-12))}), elements=[1])
    assert saed.same_terms(S.SAED("pbe", "def2-svp", {1: (p, b, w + 1e-14)}), 1)
    for bad in ((p, b, reweighted(1, p, b, w, 1e-6)), (p, b * (1 + 1e-9), w)):
        other = S.SAED("pbe", "def2-svp", {1: bad})
        assert not saed.same_terms(other, 1)
        with pytest.raises(MismatchError, match="H"):
            saed.require_same(other, elements=[1])
    with pytest.raises((AttributeError, ValueError)):
        saed.terms(1)[2][0] = 0.0
    with pytest.raises(AttributeError):
        saed.xc = "lda"


def test_cache_files_and_corruption(tmp_path, cache_dir):
    first = S.load_saed(["H"], cache_dir=cache_dir)
    src = S._cache_file(cache_dir, 1, "pbe", "def2-svp")
    assert os.path.isfile(src)
    folder = tmp_path / "c"
    folder.mkdir()
    path = S._cache_file(str(folder), 1, "pbe", "def2-svp")
    with open(path, "w") as fh:
        fh.write('{"version": 1, "z": 1, "powe')  # truncated
    again = S.load_saed(["H"], cache_dir=str(folder))  # recomputed
    with open(path) as fh:
        json.load(fh)  # rewritten, valid
    # recomputation may differ from the first run in the last digits (SCF noise), not more
    np.testing.assert_allclose(again.terms(1)[2], first.terms(1)[2], rtol=1e-6)
    assert again.electron_count([1]) == pytest.approx(1.0, abs=1e-8)
    assert [f for f in os.listdir(folder) if f.endswith(".tmp")] == []


def test_env_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("DENSITYLEARN_CACHE", str(tmp_path))
    assert S.default_cache_dir() == os.path.join(str(tmp_path), "saed")


def test_bad_elements_and_definitions(saed, cache_dir):
    for bad in ("Xx", 0, 200, "", 1.5):
        with pytest.raises(InputError):
            S.load_saed([bad], cache_dir=cache_dir)
    with pytest.raises(InputError, match="no-such-basis"):
        S.load_saed(["H"], basis="no-such-basis", cache_dir=cache_dir)
    p, b, w = saed.terms(6)
    with pytest.raises(InputError, match="Z=7"):  # carbon's terms claimed for nitrogen
        S.SAED("pbe", "def2-svp", {7: (p, b, w)})
    d = saed.definition()
    d["elements"]["1"]["weights"][0] *= 1.01
    with pytest.raises(InputError, match="Z=1"):
        S.SAED.from_definition(d)
    with pytest.raises(InputError):
        S.SAED.from_definition({"xc": "pbe"})
    with pytest.raises(InputError, match="Cl"):
        saed.terms("Cl")
