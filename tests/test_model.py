"""The equivariant model and the graph batches: symmetry through model + grid, batching,
the electron-count constraint, normalisation, contracts and checkpoints (tiny, random)."""

import copy

import numpy as np
import pytest
import torch
from ase.build import molecule
from conftest import random_rotation
from e3nn import o3
from e3nn.util.test import assert_equivariant

from densitylearn import graph as G
from densitylearn.basis import AuxBasis
from densitylearn.data import CoefficientDataset, make_header, write_dataset
from densitylearn.errors import InputError
from densitylearn.fitting import electron_integrals
from densitylearn.grid import BATCH_COEFFICIENTS, evaluate_density
from densitylearn.model import DensityModel, ModelConfig, count_parameters
from densitylearn.units import ANGSTROM_BOHR

ELEMENTS = [1, 6, 7, 8, 9]

TINY = dict(cutoff=5.0, hidden_irreps="8x0e+4x1o+3x2e+2x3o+2x4e", sh_lmax=2, num_layers=2,
            num_radial=4, radial_hidden=8, radial_layers=1, embedding_dim=8, avg_num_neighbors=6.0)

TOL = {torch.float64: 1e-9, torch.float32: 1e-4}


def _mol(name, charge=0):
    m = molecule(name)
    return {"numbers": m.numbers.astype(np.int64), "positions": m.positions * ANGSTROM_BOHR,
            "charge": charge, "name": name}


@pytest.fixture(scope="module")
def basis():
    return AuxBasis.load("def2-universal-jfit", ELEMENTS)


@pytest.fixture(scope="module")
def mols():
    # CF3CN: C, N, F; ethanol: H, C, O (and bonds beyond the cutoff); NH4+ charged
    nh4 = {"numbers": np.array([7, 1, 1, 1, 1]),
           "positions": np.array([[0, 0, 0], [1.19, 1.19, 1.19], [-1.19, -1.19, 1.19],
                                  [-1.19, 1.19, -1.19], [1.19, -1.19, -1.19]]), "charge": 1, "name": "NH4+"}
    return [_mol("CH3CH2OH"), _mol("CF3CN"), nh4]


def _records(basis, n, seed=0):
    """Random coefficient records with nonzero means in every channel (l > 0 too)."""
    rng = np.random.default_rng(seed)
    shift = {z: rng.normal(size=basis.n_functions(z)) for z in ELEMENTS}
    spread = {z: np.exp(rng.normal(size=basis.n_functions(z))) for z in ELEMENTS}
    for i in range(n):
        z = rng.choice(ELEMENTS, size=rng.integers(2, 5))
        tot = np.concatenate([shift[a] + spread[a] * rng.normal(size=basis.n_functions(a)) for a in z])
        yield {"numbers": z, "positions": rng.normal(size=(len(z), 3)) * 2.0, "charge": 0,
               "coef_total": tot, "coef_saed": 0.5 * tot, "name": f"r{i}"}


@pytest.fixture(scope="module")
def dataset_path(basis, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("model") / "d.h5")
    attrs = make_header(basis, kind="fit", targets=("total", "saed"), metric="coulomb", constrained=True,
                        xc="pbe", orbital_basis="def2-svp", grid_level=1)
    write_dataset(path, attrs, _records(basis, 12))
    return path


@pytest.fixture(scope="module")
def models(basis, dataset_path):
    """{(target, dtype): model}, same weights across dtypes, normalisation fitted."""
    torch.manual_seed(0)
    out = {}
    for target in ("total", "difference"):
        m = DensityModel(ModelConfig.from_dict(TINY), basis, target)
        m.fit_normalisation(G.GraphDataset(dataset_path, target))
        out[target, torch.float32] = m.float().eval()
        out[target, torch.float64] = copy.deepcopy(m).double().eval()
    return out


def _predict(model, rec, basis):
    with torch.no_grad():
        return model(G.collate([rec], basis))


def _points(rec, n=300, seed=1):
    rng = np.random.default_rng(seed)
    pos = rec["positions"]
    return pos[rng.integers(0, len(pos), n)] + rng.normal(size=(n, 3)) * 1.2


# ----------------------------------------------------------------------------- graph
def test_neighbour_list_matches_brute_force(basis, mols):
    batch = G.collate(mols, basis, cutoff=3.0)
    pos = batch[G.POSITIONS].numpy()
    expect = set()
    for s in range(len(mols)):
        a0, a1 = batch[G.ATOM_PTR][s:s + 2].tolist()
        for i in range(a0, a1):
            for j in range(a0, a1):
                if i != j and np.linalg.norm(pos[j] - pos[i]) <= 3.0:
                    expect.add((i, j))
    got = set(map(tuple, batch[G.EDGE_INDEX].T.tolist()))
    assert got == expect and len(expect) > 0
    ei = batch[G.EDGE_INDEX]
    torch.testing.assert_close(batch[G.EDGE_VEC], batch[G.POSITIONS][ei[1]] - batch[G.POSITIONS][ei[0]])


def test_collate_keys_and_layout(basis, mols, dataset_path):
    batch = G.collate(mols, basis)
    assert batch[G.BATCH].tolist() == [0] * 9 + [1] * 6 + [2] * 5
    assert batch[G.N_ELECTRONS].tolist() == [26.0, 46.0, 10.0]
    assert batch[G.CHARGE].tolist() == [0.0, 0.0, 1.0]
    assert batch[G.COEF_OFFSETS][-1] == batch[G.ATOM_COEF_OFFSETS][-1] == sum(
        basis.layout(m["numbers"])[-1] for m in mols)
    assert G.COEFFICIENTS == BATCH_COEFFICIENTS  # model output feeds grid.evaluate_density_batch
    ds = G.GraphDataset(dataset_path, "difference")
    recs = [ds[i] for i in range(3)]
    b = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=ds.collate).__iter__().__next__()
    np.testing.assert_array_equal(b[G.TARGET_COEFFICIENTS].numpy(),
                                  np.concatenate([r["coef_total"] - r["coef_saed"] for r in recs]))
    with pytest.raises(InputError, match="target"):
        G.GraphDataset(dataset_path, "saed")


def test_partly_periodic_structure_refused(basis, mols):
    rec = dict(mols[0], pbc=np.array([True, True, False]), cell=np.eye(3) * 10)
    with pytest.raises(InputError, match="partly periodic"):
        G.collate([rec], basis)


# ----------------------------------------------------------------------------- equivariance
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("target", ["total", "difference"])
def test_density_equivariant_through_model_and_grid(models, basis, mols, dtype, target):
    """rho'(R x + t) == rho(x) for rotations (proper, improper), translations, permutations."""
    model = models[target, dtype]
    rec = mols[1] if target == "total" else mols[0]
    x = _points(rec)
    c = _predict(model, rec, basis)[G.COEFFICIENTS]
    rho = evaluate_density(basis, rec["numbers"], rec["positions"], c, torch.as_tensor(x, dtype=dtype))
    scale = rho.abs().max().item()
    assert scale > 1e-3
    rng = np.random.default_rng(5)
    cases = [(random_rotation(1), np.zeros(3), None), (random_rotation(2, improper=True), np.zeros(3), None),
             (np.eye(3), rng.normal(size=3) * 5, None),
             (random_rotation(3, improper=True), rng.normal(size=3) * 5, rng.permutation(len(rec["numbers"])))]
    for rot, t, perm in cases:
        new = dict(rec, positions=rec["positions"] @ rot.T + t)
        if perm is not None:
            new["numbers"], new["positions"] = new["numbers"][perm], new["positions"][perm]
        c2 = _predict(model, new, basis)[G.COEFFICIENTS]
        rho2 = evaluate_density(basis, new["numbers"], new["positions"], c2,
                                torch.as_tensor(x @ rot.T + t, dtype=dtype))
        err = (rho2 - rho).abs().max().item() / scale
        assert err < TOL[dtype], (rot, t, perm, err)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_assert_equivariant_e3nn_output(models, mols, dtype):
    """e3nn's own check on the per-atom e3nn-convention output (positions as cartesian points)."""
    model = models["difference", dtype]
    rec = mols[0]
    numbers = torch.as_tensor(rec["numbers"])
    irreps_out = o3.Irreps("+".join(str(model.irreps_out(int(z))) for z in rec["numbers"]))

    def f(pos):
        with torch.no_grad():
            return model({G.NUMBERS: numbers, G.POSITIONS: pos})[G.COEFFICIENTS_E3NN][None]

    pos = torch.as_tensor(rec["positions"], dtype=dtype)
    # e3nn builds its Wigner-D generators in the default dtype (float32: ~1e-6 errors), so
    # switch it like e3nn's own float_tolerance fixture does, and restore it
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        assert_equivariant(f, args_in=[pos], irreps_in=["cartesian_points"], irreps_out=[irreps_out],
                           tolerance={torch.float64: 1e-9, torch.float32: 1e-3}[dtype])
    finally:
        torch.set_default_dtype(old)


def test_coefficients_rotate_with_exact_wigner_matrices(models, basis, mols):
    """PySCF-order output of a rotated molecule == basis.rotate_coefficients (float64 Wigner D)."""
    model = models["total", torch.float64]
    rec = mols[1]
    c = _predict(model, rec, basis)[G.COEFFICIENTS].numpy()
    for rot in (random_rotation(11), random_rotation(12, improper=True)):
        c2 = _predict(model, dict(rec, positions=rec["positions"] @ rot.T), basis)[G.COEFFICIENTS].numpy()
        expect = basis.rotate_coefficients(rec["numbers"], c, rot)
        assert np.abs(c2 - expect).max() < 1e-10 * np.abs(c).max()


# ----------------------------------------------------------------------------- batching, constraint
@pytest.mark.parametrize("target", ["total", "difference"])
def test_batched_equals_one_by_one(models, basis, mols, target):
    model = models[target, torch.float64]
    with torch.no_grad():
        out = model(G.collate(mols, basis, cutoff=6.0))  # larger pre-built edges: same result
    off = out[G.COEF_OFFSETS]
    for s, rec in enumerate(mols):
        one = _predict(model, rec, basis)[G.COEFFICIENTS]
        torch.testing.assert_close(out[G.COEFFICIENTS][off[s]:off[s + 1]], one, rtol=0, atol=1e-12)
    torch.testing.assert_close(out[G.COEFFICIENTS][off[0]:off[1]], model.predict(mols[0]["numbers"],
                                                                                mols[0]["positions"]),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("target", ["total", "difference"])
def test_electron_count_constraint(models, basis, mols, target):
    model = models[target, torch.float64]
    with torch.no_grad():
        out = model(G.collate(mols, basis))
    off = out[G.COEF_OFFSETS]
    for s, rec in enumerate(mols):
        q = electron_integrals(basis, rec["numbers"])
        n = q @ out[G.COEFFICIENTS][off[s]:off[s + 1]].numpy()
        expect = rec["numbers"].sum() - rec["charge"] if target == "total" else -rec["charge"]
        assert abs(n - expect) < 1e-10
    free = DensityModel(ModelConfig.from_dict(dict(TINY, electron_constraint=False)), basis, target).double()
    free.load_state_dict(model.state_dict())
    with torch.no_grad():
        c = free(G.collate(mols[:1], basis))[G.COEFFICIENTS].numpy()
    assert abs(electron_integrals(basis, mols[0]["numbers"]) @ c - (26.0 if target == "total" else 0.0)) > 1e-3


def test_gradients_reach_all_parameters(models, basis, mols):
    model = copy.deepcopy(models["difference", torch.float32]).train()
    batch = G.collate(mols, basis)
    out = model(batch)
    out[G.COEFFICIENTS].pow(2).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


# ----------------------------------------------------------------------------- normalisation
def test_fit_normalisation_statistics(models, basis, dataset_path):
    model = copy.deepcopy(models["total", torch.float64])
    ds = CoefficientDataset(dataset_path)
    stats = model.fit_normalisation(ds)  # float64 buffers: exact statistics
    assert sum(s["atoms"] for s in stats.values()) == ds.atom_offsets[-1]
    blocks = {z: [] for z in ELEMENTS}
    for i in range(len(ds)):
        r = ds[i]
        off = basis.layout(r["numbers"])
        for a, z in enumerate(r["numbers"]):
            blocks[int(z)].append(r["coef_total"][off[a]:off[a + 1]])
    for k, z in enumerate(model.elements):
        ro = model.readout[k]
        if not blocks[z]:
            continue
        b = np.array(blocks[z])
        ls = basis.shell_ls(z)
        mean = np.where(ls == 0, b.mean(0), 0.0)
        np.testing.assert_allclose(ro.mean.numpy(), mean, atol=1e-12)
        i = 0
        for sh in basis.shells(z):
            d = sh.n_functions
            rms = np.sqrt(((b[:, i:i + d] - mean[i:i + d]) ** 2).mean())
            np.testing.assert_allclose(ro.scale[i:i + d].numpy(), rms, rtol=1e-12)
            i += d
    assert bool(model.normalisation_fitted)
    with pytest.raises(InputError, match="target"):
        model.fit_normalisation(G.GraphDataset(dataset_path, "difference"))


# ----------------------------------------------------------------------------- contracts
def test_unknown_element_refused(basis, mols):
    model = DensityModel(ModelConfig.from_dict(TINY), basis, "total", elements=[1, 6, 8])
    with pytest.raises(InputError, match=r"\bN\b.*Z=7"):
        model(G.collate([mols[1]], basis))
    with pytest.raises(InputError, match="Z=16"):
        DensityModel(ModelConfig.from_dict(TINY), basis, "total", elements=[1, 16])


def test_config_validation():
    with pytest.raises(InputError, match="unknown key 'hiden_irreps'"):
        ModelConfig.from_dict({"hiden_irreps": "8x0e"})
    with pytest.raises(InputError, match="cutoff"):
        ModelConfig(cutoff=-1.0)
    with pytest.raises(InputError, match="hidden_irreps"):
        ModelConfig(hidden_irreps="8x1o")
    assert ModelConfig.from_dict(ModelConfig().to_dict()) == ModelConfig()


def test_hidden_irreps_must_reach_basis(basis):
    with pytest.raises(InputError, match="4e"):
        DensityModel(ModelConfig.from_dict(dict(TINY, hidden_irreps="8x0e+4x1o+2x2e+2x3o")), basis, "total")


def test_state_dict_round_trip(models, basis, mols, tmp_path):
    model = models["difference", torch.float64]
    path = tmp_path / "ckpt.pt"
    torch.save({"description": model.describe(), "state_dict": model.state_dict()}, path)
    ck = torch.load(path, weights_only=True)
    clone = DensityModel.from_description(ck["description"]).double()
    clone.load_state_dict(ck["state_dict"])
    assert clone.target == "difference" and clone.elements == tuple(ELEMENTS)
    batch = G.collate(mols, basis)
    with torch.no_grad():
        torch.testing.assert_close(clone(batch)[G.COEFFICIENTS], model(batch)[G.COEFFICIENTS], rtol=0, atol=0)
    assert count_parameters(clone) == count_parameters(model) > 0
    # a float32 checkpoint loaded into a float64 model keeps exact e3nn constants
    clone.load_state_dict(models["difference", torch.float32].state_dict())
    rec, rot = mols[1], random_rotation(21, improper=True)
    c = _predict(clone, rec, basis)[G.COEFFICIENTS].numpy()
    c2 = _predict(clone, dict(rec, positions=rec["positions"] @ rot.T), basis)[G.COEFFICIENTS].numpy()
    assert np.abs(c2 - basis.rotate_coefficients(rec["numbers"], c, rot)).max() < 1e-12 * np.abs(c).max()


def test_isolated_atom_and_distant_fragments(models, basis):
    """No edges at all (F-) and an atom beyond the cutoff: finite output, exact count."""
    model = models["difference", torch.float64]
    ion = {"numbers": np.array([9]), "positions": np.zeros((1, 3)), "charge": -1}
    far = {"numbers": np.array([1, 1, 8]), "positions": np.array([[0, 0, 0], [1.4, 0, 0], [40.0, 0, 0]]),
           "charge": 0}
    with torch.no_grad():
        out = model(G.collate([ion, far], basis))
    c = out[G.COEFFICIENTS].numpy()
    assert np.all(np.isfinite(c))
    off = out[G.COEF_OFFSETS].numpy()
    assert abs(basis.s_integrals(9) @ c[off[0]:off[1]] - 1.0) < 1e-10
