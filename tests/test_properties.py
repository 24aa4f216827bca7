"""Non-self-consistent properties and SCF guesses (densitylearn.properties), real PySCF.

The reference SCFs (conftest) use a level-1 grid, so the exact-density tests use the same
level. Measured numbers are printed (pytest -s) for the report.
"""

import os

import numpy as np
import pytest

from densitylearn.basis import AuxBasis
from densitylearn.errors import InputError
from densitylearn.fitting import fit_reference, make_auxmol
from densitylearn.properties import (NSCFResult, aux_moments, compare_guesses, format_runs,
                                     guess_density_matrix, nscf_properties, run_scf_with_guess)
from densitylearn.saed import saed_density_matrix
from densitylearn.units import HARTREE_EV

from conftest import WATER, run_rks

GRID = 1  # the conftest SCFs' grid level


def _gap(mf):
    nocc = mf.mol.nelectron // 2
    return mf.mo_energy[nocc] - mf.mo_energy[nocc - 1]


@pytest.fixture(scope="module", params=["water", "ammonia"])
def system(request, water_scf, ammonia_scf, saed_cache):
    mol, mf = water_scf if request.param == "water" else ammonia_scf
    # module scope runs before the autouse cache fixture: name the session cache explicitly
    dm_saed = saed_density_matrix(mol, "pbe", basis="def2-svp",
                                  cache_dir=os.path.join(saed_cache, "saed"))
    return request.param, mol, mf, dm_saed


@pytest.fixture(scope="module")
def fits(system):
    """Fitted coefficients {aux spec: (basis, FitResult)} of the system's SCF density."""
    _, mol, mf, dm_saed = system
    out = {}
    for spec in ("def2-universal-jfit", "etb:2.0"):
        basis = AuxBasis.load(spec, [1, 7, 8])
        out[spec] = (basis, fit_reference(mol, mf.make_rdm1(), dm_saed, basis))
    return out


# ----------------------------------------------------------------------------- exactness
def test_scf_density_matrix_reproduces_scf(system):
    """One diagonalisation at the converged density: SCF orbital energies and energy."""
    name, mol, mf, _ = system
    r = nscf_properties(mol, dm=mf.make_rdm1(), xc="pbe", grid_level=GRID)
    assert isinstance(r, NSCFResult) and r.source == "density_matrix"
    assert abs(r.energy - mf.e_tot) < 1e-6
    np.testing.assert_allclose(r.mo_energy, mf.mo_energy, atol=1e-5)
    np.testing.assert_allclose(r.dipole, mf.dip_moment(verbose=0), atol=1e-8)
    np.testing.assert_allclose(r.dm, mf.make_rdm1(), atol=1e-4)
    assert abs(r.gap - _gap(mf)) < 1e-5
    assert r.n_electrons == pytest.approx(mol.nelectron, abs=1e-10)
    assert r.n_electrons_grid == pytest.approx(mol.nelectron, abs=1e-3)
    assert r.mo_occ.sum() == mol.nelectron
    print(f"\n{name} exact DM: dE {r.energy - mf.e_tot:.2e} Ha, "
          f"max d eps {np.abs(r.mo_energy - mf.mo_energy).max():.2e} Ha")


def test_lda_path_reproduces_lda_scf():
    mol, mf = run_rks(WATER, xc="lda,vwn")
    r = nscf_properties(mol, dm=mf.make_rdm1(), xc="lda,vwn", grid_level=GRID)
    assert abs(r.energy - mf.e_tot) < 1e-6
    np.testing.assert_allclose(r.mo_energy, mf.mo_energy, atol=1e-5)


def test_harris_energy_is_stationary(system):
    """Energy error is second order in a density perturbation, orbital energies first order."""
    _, mol, mf, _ = system
    dm = mf.make_rdm1()
    rng = np.random.default_rng(0)
    x = rng.normal(size=dm.shape)
    x = 1e-3 * (x + x.T)
    errs = [abs(nscf_properties(mol, dm=dm + t * x, xc="pbe", grid_level=GRID).energy - mf.e_tot)
            for t in (1.0, 0.5)]
    assert errs[1] < 0.35 * errs[0]  # ~1/4 for a quadratic error


# ----------------------------------------------------------------------------- fitted densities
@pytest.mark.parametrize("spec", ["def2-universal-jfit", "etb:2.0"])
@pytest.mark.parametrize("target", ["difference", "total"])
def test_fitted_density_properties(system, fits, spec, target):
    name, mol, mf, dm_saed = system
    basis, fit = fits[spec]
    c = fit.difference if target == "difference" else fit.total
    r = nscf_properties(mol, c, basis, target, "pbe", dm_saed=dm_saed, grid_level=GRID)
    assert r.source == f"coefficients:{target}"
    de = (r.energy - mf.e_tot) * HARTREE_EV * 1000 / mol.natm   # meV/atom
    dgap = (r.gap - _gap(mf)) * HARTREE_EV * 1000                # meV
    ddip = np.linalg.norm(r.dipole - mf.dip_moment(verbose=0))   # Debye
    print(f"\n{name} {spec} {target}: Harris {de:+.3f} meV/atom, gap {dgap:+.2f} meV, dipole {ddip:.4f} D")
    assert r.n_electrons == pytest.approx(mol.nelectron, abs=1e-8)  # constrained fit
    assert abs(de) < 6.0
    assert abs(dgap) < 30.0
    assert ddip < 0.1
    if spec == "etb:2.0" and target == "difference":
        assert abs(de) < 1.0  # the paper's chemical-accuracy line


def test_dcd_beats_tcd_in_harris_energy_with_etb(system, fits):
    _, mol, mf, dm_saed = system
    basis, fit = fits["etb:2.0"]
    e = {t: nscf_properties(mol, getattr(fit, t), basis, t, "pbe", dm_saed=dm_saed, grid_level=GRID).energy
         for t in ("difference", "total")}
    assert abs(e["difference"] - mf.e_tot) < abs(e["total"] - mf.e_tot)


def test_saed_density_matrix_made_when_not_given(water_scf, saed_cache):
    mol, mf = water_scf
    basis = AuxBasis.load("def2-universal-jfit", [1, 8])
    dm_saed = saed_density_matrix(mol, "pbe", basis="def2-svp")
    c = fit_reference(mol, mf.make_rdm1(), dm_saed, basis).difference
    a = nscf_properties(mol, c, basis, "difference", "pbe", grid_level=GRID)
    b = nscf_properties(mol, c, basis, "difference", "pbe", dm_saed=dm_saed, grid_level=GRID)
    assert a.energy == pytest.approx(b.energy, abs=1e-10)


def test_aux_moments_match_quadrature(water_scf):
    """Analytic int chi and int r chi (the fast path) against a fine Becke grid (the slow twin)."""
    from pyscf.dft import gen_grid

    mol, _ = water_scf
    basis = AuxBasis.load("def2-universal-jfit", [1, 8])
    auxmol = make_auxmol(mol, basis)
    q, r = aux_moments(auxmol)
    np.testing.assert_allclose(q, np.concatenate([basis.s_integrals(z) for z in (8, 1, 1)]), atol=1e-12)
    g = gen_grid.Grids(mol)
    g.level = 5
    g.build()
    chi = auxmol.eval_gto("GTOval_sph", g.coords)
    np.testing.assert_allclose(np.einsum("g,gp->p", g.weights, chi), q, atol=1e-6)
    np.testing.assert_allclose(np.einsum("g,gx,gp->xp", g.weights, g.coords, chi), r, atol=1e-6)


# ----------------------------------------------------------------------------- SCF guesses
def test_fitted_dcd_guess_needs_fewer_iterations_than_minao(system, fits):
    name, mol, mf, dm_saed = system
    basis, fit = fits["def2-universal-jfit"]
    dm0 = guess_density_matrix(mol, fit.difference, basis, "difference", "pbe", dm_saed=dm_saed, grid_level=GRID)
    assert dm0.shape == (mol.nao, mol.nao)
    assert np.einsum("ij,ji->", dm0, mol.intor("int1e_ovlp")) == pytest.approx(mol.nelectron, abs=1e-8)
    guesses = ("minao", "atom", "huckel", "sap") if name == "water" else ("minao",)
    runs = compare_guesses(mol, "pbe", dm0, guesses=guesses, grid_level=GRID)
    print(f"\n{format_runs(runs, name)}")
    assert [r.guess for r in runs] == ["densitylearn", *guesses]
    assert all(r.converged and r.error is None and r.fallback is None for r in runs)
    ours, minao = runs[0], runs[1]
    assert ours.iterations < minao.iterations
    assert ours.e_tot == pytest.approx(mf.e_tot, abs=1e-7)


def test_unconverged_run_is_reported_with_minao_fallback(water_scf):
    mol, _ = water_scf
    run = run_scf_with_guess(mol, "pbe", init_guess="huckel", grid_level=GRID, max_cycle=2)
    assert not run.converged and run.iterations == 2
    assert run.fallback is not None and run.fallback.guess == "minao"
    assert run.total_iterations == 2 + run.fallback.iterations
    rec = run.record()
    assert rec["fallback"]["guess"] == "minao" and rec["converged"] is False
    assert "fallback minao" in format_runs([run])


# ----------------------------------------------------------------------------- bad input
def test_bad_inputs_are_one_line_input_errors(water_scf):
    from pyscf import gto

    mol, mf = water_scf
    basis = AuxBasis.load("def2-universal-jfit", [1, 8])
    n = int(basis.layout([8, 1, 1])[-1])
    dm = mf.make_rdm1()
    cases = [
        dict(dm=dm, xc="b3lyp"),                                   # hybrid
        dict(dm=dm, xc="tpss"),                                    # meta-GGA
        dict(dm=dm, xc="no-such-functional"),
        dict(coefficients=np.zeros(n), basis=basis, dm=dm),        # both inputs
        dict(),                                                    # neither
        dict(coefficients=np.zeros(n + 1), basis=basis, target="total"),
        dict(coefficients=np.zeros(n), basis=basis, target="density"),
        dict(coefficients=np.zeros(n), target="total"),            # no basis
        dict(dm=dm[:3, :3]),
    ]
    for kw in cases:
        with pytest.raises(InputError) as exc:
            nscf_properties(mol, **kw)
        assert "\n" not in str(exc.value)
    radical = gto.M(atom="O 0 0 0; H 0 0 1.8", unit="bohr", spin=1, basis="def2-svp", verbose=0)
    with pytest.raises(InputError, match="closed-shell"):
        nscf_properties(radical, dm=np.zeros((radical.nao, radical.nao)))
    no_n = AuxBasis.load("def2-universal-jfit", [1])
    with pytest.raises(InputError, match="no functions"):
        nscf_properties(mol, np.zeros(10), no_n, "total")
    with pytest.raises(InputError, match="initial guess"):
        run_scf_with_guess(mol, "pbe", init_guess="guessing")
