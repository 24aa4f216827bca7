"""Auxiliary bases and the PySCF <-> e3nn spherical-harmonic bridge."""

import json

import numpy as np
import pytest
import torch
from conftest import WATER, random_rotation

from densitylearn.basis import (AuxBasis, Shell, e3nn_to_pyscf_matrix, gto_norm, shipped_basis_names,
                                solid_harmonics_pyscf, wigner_D_pyscf)
from densitylearn.errors import InputError, MismatchError
from densitylearn.fitting import fit_coefficients, make_auxmol, metric_matrix, MetricSolver, \
    project_density_matrices


def _high_l_basis():
    shells = [Shell(l, np.array([0.9, 0.3]), gto_norm(l, np.array([0.9, 0.3])) * np.array([0.6, 0.5]))
              for l in range(7)]
    return AuxBasis("hand-made", {8: shells, 1: shells[:3]})


def test_solid_harmonics_match_pyscf_eval_gto_up_to_l6():
    from pyscf import gto

    basis = _high_l_basis()
    mol = gto.M(atom="O 0 0 0; H 0.2 0.3 0.9", basis=basis.to_pyscf_basis(), spin=1, verbose=0)
    rng = np.random.default_rng(1)
    pts = np.vstack([rng.normal(scale=1.5, size=(200, 3)), mol.atom_coords()])
    ref = mol.eval_gto("GTOval_sph", pts)
    cols = []
    for a, z in enumerate([8, 1]):
        r = torch.tensor(pts - mol.atom_coord(a))
        for sh in basis.shells(z):
            rad = (torch.tensor(sh.coefficients) * torch.exp(-torch.tensor(sh.exponents)
                                                              * (r ** 2).sum(-1, keepdim=True))).sum(-1)
            cols.append((solid_harmonics_pyscf(sh.l, r) * rad[:, None]).numpy())
    ours = np.concatenate(cols, axis=1)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=1e-12 * np.abs(ref).max())


@pytest.mark.parametrize("improper", [False, True])
def test_wigner_matrices_rotate_pyscf_harmonics(improper):
    rot = random_rotation(3, improper=improper)
    r = torch.tensor(np.random.default_rng(2).normal(size=(50, 3)))
    for l in range(7):
        d = wigner_D_pyscf(l, rot)
        lhs = solid_harmonics_pyscf(l, r @ torch.tensor(rot).T).numpy()
        rhs = solid_harmonics_pyscf(l, r).numpy() @ d.T
        np.testing.assert_allclose(lhs, rhs, atol=1e-10)
        np.testing.assert_allclose(d @ d.T, np.eye(2 * l + 1), atol=1e-12)


def test_e3nn_bridge_is_orthogonal_and_identity_for_p():
    np.testing.assert_array_equal(e3nn_to_pyscf_matrix(1), np.eye(3))
    for l in range(2, 7):
        b = e3nn_to_pyscf_matrix(l)
        np.testing.assert_allclose(b @ b.T, np.eye(2 * l + 1), atol=1e-12)


def test_e3nn_convention_coefficients_rotate_with_e3nn_wigner():
    """Coefficients converted to e3nn order transform with e3nn's own D matrices."""
    from e3nn import o3

    basis = AuxBasis.load("def2-universal-jfit", ["O"])
    rot = random_rotation(5)
    c = np.random.default_rng(0).normal(size=basis.n_functions(8))
    m = basis.e3nn_to_pyscf(8)
    c_e3 = m.T @ c
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # e3nn builds D from default-dtype tables
    try:
        d_e3 = o3.Irreps(basis.irreps(8)).D_from_matrix(torch.tensor(rot)).numpy()
    finally:
        torch.set_default_dtype(old)
    rotated_pyscf = basis.rotation_matrix(8, rot) @ c
    np.testing.assert_allclose(m @ (d_e3 @ c_e3), rotated_pyscf, atol=1e-12)


@pytest.mark.parametrize("improper", [False, True])
def test_rotated_molecule_refit_equals_wigner_rotated_coefficients(improper):
    """Rotate water, rerun SCF and refit: every ordering or sign error shows up here.

    Hartree-Fock, because DFT integration grids are not rotation invariant (~1e-5).
    """
    from pyscf import gto, scf

    def run_rhf(atom, unit):
        mol = gto.M(atom=atom, basis="def2-svp", unit=unit, verbose=0)
        mf = scf.RHF(mol)
        mf.conv_tol = 1e-12
        mf.kernel()
        return mol, mf

    mol, mf = run_rhf(WATER, "Angstrom")
    basis = AuxBasis.load("def2-universal-jfit", [1, 8])
    rot = random_rotation(7, improper=improper)
    xyz = mol.atom_coords() @ rot.T
    mol2, mf2 = run_rhf([(mol.atom_symbol(i), xyz[i]) for i in range(mol.natm)], "Bohr")

    def fit(m, f):
        aux = make_auxmol(m, basis)
        return fit_coefficients(project_density_matrices(m, aux, f.make_rdm1()),
                                MetricSolver(metric_matrix(aux)))[0]

    c1, c2 = fit(mol, mf), fit(mol2, mf2)
    np.testing.assert_allclose(basis.rotate_coefficients([8, 1, 1], c1, rot), c2, atol=1e-7)
    assert np.abs(c1 - c2).max() > 1e-2  # the rotation is not trivial


def test_irreps_layout_and_counts():
    basis = AuxBasis.load("def2-universal-jfit", ["H", "O"])
    from e3nn import o3

    assert basis.irreps(1) == "3x0e+1x1o+1x2e"  # def2-universal-jfit H: contracted s shells
    assert basis.n_functions(1) == 11 == o3.Irreps(basis.irreps(1)).dim
    assert o3.Irreps(basis.irreps(8)).dim == basis.n_functions(8)
    assert list(basis.layout([8, 1, 1])) == [0, 49, 60, 71]
    ls = basis.shell_ls(8)
    assert np.all(np.diff(ls) >= 0)  # shells sorted by l


def test_definition_round_trip_and_nwchem_file(tmp_path):
    basis = AuxBasis.load("etb:2.0", ["H", "C", "O"])
    again = AuxBasis.from_definition(json.dumps(basis.definition()))
    assert again.hash == basis.hash
    path = tmp_path / "mine.nw"
    path.write_text(basis.to_nwchem())
    from_file = AuxBasis.load(str(path), ["H", "C", "O"])
    for z in (1, 6, 8):
        assert from_file.irreps(z) == basis.irreps(z)
        for a, b in zip(from_file.shells(z), basis.shells(z)):
            np.testing.assert_allclose(a.coefficients, b.coefficients, rtol=1e-12)
    assert basis.subset([1]).hash != basis.hash
    basis.subset([1, 8]).require_same(basis)
    with pytest.raises(MismatchError):
        AuxBasis.load("def2-universal-jfit", ["H"]).require_same(basis)


def test_s_integrals_match_numerical_integration():
    from pyscf import dft, gto

    basis = AuxBasis.load("def2-universal-jfit", ["O"])
    mol = gto.M(atom="O 0 0 0", basis=basis.to_pyscf_basis(), verbose=0)
    grids = dft.gen_grid.Grids(mol)
    grids.level = 6
    grids.build()
    numeric = grids.weights @ mol.eval_gto("GTOval_sph", grids.coords)
    np.testing.assert_allclose(basis.s_integrals(8), numeric, atol=1e-7)
    assert np.all(basis.s_integrals(8)[basis.shell_ls(8) > 0] == 0)


def test_bad_specs_are_one_line_errors():
    with pytest.raises(InputError, match="etb"):
        AuxBasis.load("etb:abc", ["H"])
    with pytest.raises(InputError, match="Xx|element"):
        AuxBasis.load("def2-universal-jfit", ["Xx"])
    with pytest.raises(InputError, match="no-such-basis"):
        AuxBasis.load("no-such-basis", ["H"])
    basis = AuxBasis.load("def2-universal-jfit", ["H"])
    with pytest.raises(InputError, match="expects"):
        basis.check_coefficients([1], np.zeros(3))
    with pytest.raises(InputError, match="NaN"):
        basis.check_coefficients([1], np.full(11, np.nan))


def test_shipped_basis_loads():
    names = shipped_basis_names()
    assert "dl-dcd" in names
    basis = AuxBasis.load("dl-dcd", ["H", "C", "N", "O", "F"])
    assert all(basis.n_functions(z) > 0 for z in (1, 6, 7, 8, 9))
