"""Crystals end to end: Si allotrope builder, periodic non-self-consistent band energies and
Harris energies, training with cell validation, prediction, evaluation and `nscf` on cells.

Real PySCF (pyscf.pbc, GTH) on the smallest case, Si2 diamond cells with gth-szv, a 2x1x1
k-mesh and a 20 hartree FFT cutoff (17^3 mesh). Every check compares two routes: PySCF's
own SCF energy and band energies, a second density evaluator, a finite difference, or the
`evaluate` command.
"""

import json
import os
from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import load_example
from densitylearn import cli
from densitylearn.errors import InputError
from densitylearn.units import HARTREE_EV

COMPUTE = ["--basis", "gth-szv", "--ke-cutoff", "20", "--kmesh", "2,1,1", "--no-progress"]
TINY = {"cutoff": 6.0, "hidden_irreps": "8x0e+4x1o+4x2e+2x3o+2x4e", "num_layers": 2, "radial_hidden": 16,
        "embedding_dim": 8}
MEV = HARTREE_EV * 1000


def _allotropes():
    return load_example("si_allotropes")


# ----------------------------------------------------------------------------- allotropes
def test_allotrope_study_keeps_held_out_phases_out_of_training():
    import argparse

    mod = load_example("si_allotrope_study")
    args = argparse.Namespace(train="diamond,beta_sn", test="bc8", variants=2, interp_variants=1, test_variants=1,
                              rattle=0.05, strain=0.03, seed=0, conventional_variants=True)
    sets = mod.structure_sets(args)
    names = {k: [a.info["name"] for a in v] for k, v in sets.items()}
    assert names["train"] == ["diamond", "diamond_v0", "diamond_v1", "beta_sn", "beta_sn_v0", "beta_sn_v1"]
    assert names["interp"] == ["diamond_t0", "beta_sn_t0"] and names["test"] == ["bc8", "bc8_v0"]
    assert len(sets["train"][1]) == 8 and len(sets["train"][0]) == 2  # conventional-cell variants
    # interpolation variants are new geometries of a training phase, not copies
    assert not np.allclose(sets["interp"][0].positions, sets["train"][1].positions)
    # one-atom simple hexagonal repeated to 8 atoms (2x2x2), two rattle amplitudes cycled
    args = argparse.Namespace(train="sh", test="bc8", variants=4, interp_variants=1, test_variants=0,
                              rattle=(0.0, 0.1), strain=0.0, seed=0, conventional_variants=True,
                              min_variant_atoms=8)
    sets = mod.structure_sets(args)
    ideal, *var = sets["train"]
    assert len(ideal) == 1 and [len(a) for a in var] == [8] * 4
    assert np.allclose(var[0].cell.lengths(), 2 * ideal.cell.lengths())
    grid = mod._allotropes().supercell(ideal, 8)
    shift = [np.abs(a.positions - grid.positions).max() for a in var]
    assert shift[0] == shift[2] == 0.0 and shift[1] > 0.1 and shift[3] > 0.1


def test_kpoint_convergence_report_tables():
    mod = load_example("si_kpoint_convergence")
    h = 1 / mod.HARTREE_MEV  # one meV/atom in hartree

    def rec(name, length, e_mev, converged=True):
        return dict(name=name, length=length, kmesh=[2, 2, 2], e_free_per_atom=-3.9 + e_mev * h,
                    converged=converged)

    records = [rec("diamond", 10, 0), rec("bc8", 10, 40), rec("diamond", 20, -100), rec("bc8", 20, -50),
               rec("sh", 10, 300), rec("sh", 20, 0, converged=False)]
    lines = mod.report(records).splitlines()
    # E - E_diamond: bc8 +40 at L=10, +50 at L=20; the unconverged sh record is left out
    assert "| bc8 | 2x2x2, +40.0 | 2x2x2, +50.0 |" in lines
    assert "| sh | 2x2x2, +300.0 | - |" in lines
    # own change from L=10 to L=20
    assert "| diamond | -100.0 |" in lines and "| bc8 | -90.0 |" in lines
    # error of the relative energy at L=10 against the largest L: 40 - 50
    tail = lines[lines.index(next(x for x in lines if x.startswith("Error of E - E_diamond"))):]
    assert "| bc8 | -10.0 |" in tail and "| sh | - |" in tail


def test_allotrope_builder_counts_and_bonds(tmp_path):
    from ase.neighborlist import neighbor_list

    mod = _allotropes()
    primitive = {"diamond": 2, "lonsdaleite": 4, "beta_sn": 2, "bc8": 8, "si136": 34, "si46": 46, "st12": 12,
                 "bct5": 2, "sh": 1}
    for name in mod.ALLOTROPES:
        conv = mod.build(name, primitive=False)
        assert len(conv) == mod.CONVENTIONAL_ATOMS[name], name
        prim = mod.build(name)
        assert len(prim) == primitive[name], name
        # the same crystal: equal density of atoms
        assert abs(conv.get_volume() / len(conv) - prim.get_volume() / len(prim)) < 1e-6, name
        i, d = neighbor_list("id", prim, 2.7)
        cn = np.bincount(i, minlength=len(prim))
        if name in mod.TETRAHEDRAL:
            assert (cn == 4).all() and 2.29 < d.min() and d.max() < 2.40, (name, cn, d.min(), d.max())
        elif name == "st12":  # four-fold, bonds 2.28 / 2.40 / 2.55 (AFLOW A_tP12_96_ab)
            assert (cn == 4).all() and np.allclose(np.unique(d.round(2)), [2.28, 2.40, 2.55]), np.unique(d)
        elif name == "bct5":  # five-fold: one bond along c of 2 z c, four of hypot(a / sqrt 2, (1/2 - 2 z) c)
            a, c, z = 3.34916, 3.34916 * 1.94217355994, 1 - 0.819
            assert (cn == 5).all()
            assert np.allclose(np.sort(d)[:len(prim)], 2 * z * c, atol=1e-6)
            assert np.allclose(np.sort(d)[len(prim):], np.hypot(a / np.sqrt(2), (0.5 - 2 * z) * c), atol=1e-6)
        elif name == "sh":  # simple hexagonal: 2 neighbours at c, 6 at a
            assert (cn == 8).all()
            assert np.allclose(np.sort(d), [2.380] * 2 + [2.547] * 6, atol=1e-6)
        else:  # beta-Sn: 4 bonds of sqrt((a/2)^2 + (c/4)^2) and 2 of c
            assert (cn == 6).all()
            assert np.allclose(np.sort(d)[:4 * len(prim)], np.hypot(4.686 / 2, 2.585 / 4), atol=1e-6)
            assert np.allclose(np.sort(d)[4 * len(prim):], 2.585, atol=1e-6)
    d = neighbor_list("d", mod.build("diamond"), 2.7)
    assert np.allclose(d, np.sqrt(3) / 4 * mod.A_DIAMOND)
    d = neighbor_list("d", mod.build("lonsdaleite"), 2.7)
    assert np.allclose(d, np.sqrt(3) / 4 * mod.A_DIAMOND)  # ideal: the diamond bond length

    # seeded variants: reproducible, strained and rattled, readable by densitylearn
    base = mod.build("bc8")
    v1, v2 = mod.variants(base, 2, seed=3), mod.variants(base, 2, seed=3)
    assert np.array_equal(v1[1].positions, v2[1].positions)
    assert not np.allclose(v1[0].cell[:], base.cell[:]) and not np.allclose(v1[0].cell[:], v1[1].cell[:])
    paths = mod.write_structures(str(tmp_path), ["diamond", "bc8"], n_variants=2, seed=1)
    from densitylearn.structure import read_structures

    frames = read_structures(paths[1])
    assert len(frames) == 3 and all(s.is_periodic and len(s) == 8 for s in frames)


# ----------------------------------------------------------------------------- references
@pytest.fixture(scope="module")
def cells(tmp_path_factory, saed_cache):
    """Two Si2 cells -> `compute` -> `fit-basis` (def2-universal-jfit) and a
    def2-universal-jkfit fit (rcond 1e-6) of the first for the properties."""
    from ase.build import bulk
    from ase.io import write

    os.environ["DENSITYLEARN_CACHE"] = saed_cache
    d = tmp_path_factory.mktemp("cells")
    frames = []
    for k, (rattle, a) in enumerate([(0.05, 5.43), (0.08, 5.40)]):
        at = bulk("Si", "diamond", a=a)
        at.rattle(rattle, seed=k)
        frames.append(at)
    xyz = str(d / "si.extxyz")
    write(xyz, frames)
    out = str(d / "chk")
    assert cli.main(["compute", xyz, "--out", out, *COMPUTE]) == 0
    chks = sorted(os.path.join(out, f) for f in os.listdir(out) if f.endswith(".chk"))
    assert len(chks) == 2
    h5 = str(d / "si.h5")
    assert cli.main(["fit-basis", *chks, "--out", h5, "--auxbasis", "def2-universal-jfit", "--quiet"]) == 0
    jk = str(d / "si_jk.h5")
    assert cli.main(["fit-basis", chks[0], "--out", jk, "--auxbasis", "def2-universal-jkfit",
                     "--rcond", "1e-6", "--quiet"]) == 0
    return {"dir": d, "xyz": xyz, "chks": chks, "h5": h5, "jk": jk}


def test_nscf_from_the_scf_density_reproduces_the_scf(cells):
    from pyscf.scf import chkfile as scf_chkfile

    from densitylearn.properties import nscf_periodic
    from densitylearn.reference import load_reference

    ref = load_reference(cells["chks"][0])
    res = nscf_periodic(ref.mol, ref.kpts, dm=ref.dm, xc="pbe")
    assert abs(res.energy - ref.e_tot) < 1e-6  # measured 3e-11 hartree
    assert abs(res.n_electrons - 8.0) < 1e-8
    scf = scf_chkfile.load(cells["chks"][0], "scf")
    eps, occ = np.asarray(scf["mo_energy"]), np.asarray(scf["mo_occ"])
    assert res.band_energies.shape == eps.shape == (2, 8)
    assert np.abs(res.band_energies - eps).max() < 1e-5  # measured 3e-10 hartree
    assert np.array_equal(res.occupations, occ)
    assert abs(res.gap - (eps[occ == 0].min() - eps[occ > 0].max())) < 1e-5
    assert res.direct_gap >= res.gap - 1e-12
    # another input density gives another energy and other bands
    res2 = nscf_periodic(ref.mol, ref.kpts, dm=ref.dm * 1.02, xc="pbe")
    assert abs(res2.energy - ref.e_tot) > 1e-5 and np.abs(res2.band_energies - eps).max() > 1e-3
    # the molecular path refuses a cell; bad dm shapes are one line
    from densitylearn.properties import nscf_properties

    with pytest.raises(InputError, match="periodic"):
        nscf_properties(ref.mol, dm=ref.dm[0])
    with pytest.raises(InputError, match="shape"):
        nscf_periodic(ref.mol, ref.kpts, dm=ref.dm[:1], xc="pbe")


def test_nscf_gamma_point_lda_reproduces_the_scf(tmp_path):
    """The other branches: a gamma-point RKS reference (real density matrix) and an LDA."""
    from ase.build import bulk
    from pyscf.scf import chkfile as scf_chkfile

    from densitylearn.properties import nscf_periodic
    from densitylearn.reference import load_reference

    poscar = str(tmp_path / "si2.vasp")
    bulk("Si", "diamond", a=5.43).write(poscar, format="vasp")
    args = [a if a != "2,1,1" else "1,1,1" for a in COMPUTE]
    assert cli.main(["compute", poscar, "--out", str(tmp_path / "chk"), *args, "--xc", "lda,vwn"]) == 0
    chk = str(tmp_path / "chk" / "si2.chk")
    ref = load_reference(chk)
    assert ref.kpts.shape == (1, 3) and ref.xc == "lda,vwn"
    res = nscf_periodic(ref.mol, ref.kpts, dm=ref.dm, xc=ref.xc)
    assert abs(res.energy - ref.e_tot) < 1e-6  # measured 3e-11 hartree
    eps = np.asarray(scf_chkfile.load(chk, "scf")["mo_energy"]).reshape(1, -1)
    assert np.abs(res.band_energies - eps).max() < 1e-5
    assert res.direct_gap == pytest.approx(res.gap)  # one k-point


def test_smeared_reference_and_harris_mermin(tmp_path):
    """Fermi-Dirac smearing (metals): the reference records its width and free energy, the
    Harris-Mermin free energy of the smeared SCF density matrices is PySCF's e_free, and its
    central differences (density matrices carried along) are PySCF's analytic forces."""
    from ase.build import bulk
    from ase.io import write
    from pyscf.scf import chkfile as scf_chkfile

    from densitylearn.properties import (central_difference_forces, displaced_cell, fermi_dirac_occupations,
                                         nscf_periodic, reference_forces)
    from densitylearn.reference import load_reference, read_settings

    at = bulk("Si", "diamond", a=5.0)  # compressed: a small gap that a wide smearing fills
    at.rattle(0.05, seed=3)
    xyz = str(tmp_path / "si.extxyz")
    write(xyz, at)
    out = str(tmp_path / "chk")
    assert cli.main(["compute", xyz, "--out", out, *COMPUTE, "--smearing", "0.02"]) == 0
    chk = os.path.join(out, os.listdir(out)[0])
    st = read_settings(chk)
    assert st["smearing"] == 0.02 and st["e_free"] < st["e_tot"]
    ref = load_reference(chk)
    assert ref.smearing == 0.02 and ref.e_free == st["e_free"]
    occ = np.asarray(scf_chkfile.load(chk, "scf")["mo_occ"])
    assert ((occ > 1e-3) & (occ < 2 - 1e-3)).any()  # fractional occupations
    res = nscf_periodic(ref.mol, ref.kpts, dm=ref.dm, xc="pbe", smearing=ref.smearing)
    assert abs(res.energy - ref.e_free) < 1e-6
    np.testing.assert_allclose(res.occupations, occ, atol=1e-6)
    plain = nscf_periodic(ref.mol, ref.kpts, dm=ref.dm, xc="pbe")
    assert abs(plain.energy - res.energy) > 1e-4  # the entropy and the occupations matter here
    assert plain.gap == pytest.approx(res.gap)  # band edges from the integer filling either way
    f0 = reference_forces(chk)
    f = central_difference_forces(
        lambda disp: [nscf_periodic(displaced_cell(ref.mol, x.positions), ref.kpts, dm=ref.dm, xc="pbe",
                                    smearing=ref.smearing).energy for x in disp], ref.structure)
    assert np.abs(f0).max() > 1e-3 and np.abs(f - f0).max() < 5e-5
    # occupations hold the electron count; the entropy of a step function is zero
    o, s_ = fermi_dirac_occupations(np.array([-1.0, 0.0, 1.0]), 2.0, 1e-4)
    assert o.sum() == pytest.approx(2.0) and s_ == pytest.approx(0.0, abs=1e-12)
    # the smearing is part of the resumability check, and molecules refuse it
    from densitylearn.errors import MismatchError
    from densitylearn.reference import compute_references
    from densitylearn.structure import read_structures

    with pytest.raises(MismatchError, match="smearing 0.02"):
        compute_references(read_structures(xyz), out, basis="gth-szv", kmesh="2,1,1", ke_cutoff=20,
                           progress=False)
    water = tmp_path / "h2o.xyz"
    water.write_text("3\nwater\nO 0.0 0.0 0.1173\nH 0.0 0.7572 -0.4692\nH 0.0 -0.7572 -0.4692\n")
    assert cli.main(["compute", str(water), "--out", str(tmp_path / "m"), "--smearing", "0.01", "--no-progress"]) == 2


def test_nscf_from_fitted_densities(cells):
    """Errors of the DCD and TCD fits of the SCF density (def2-universal-jkfit, 0.48 % / 0.52 %
    L1 floors on this mesh) against the SCF density's own non-self-consistent run."""
    from densitylearn.data import CoefficientDataset
    from densitylearn.properties import nscf_periodic, periodic_errors
    from densitylearn.reference import load_reference

    ref = load_reference(cells["chks"][0])
    r0 = nscf_periodic(ref.mol, ref.kpts, dm=ref.dm, xc="pbe")
    ds = CoefficientDataset(cells["jk"])
    errs = {}
    for t in ("total", "difference"):
        res = nscf_periodic(ref.mol, ref.kpts, ds.coefficients(0, t), ds.basis, t, "pbe", saed=ds.saed)
        assert abs(res.n_electrons - 8.0) < 0.01  # analytically 8; the mesh under-resolves steep functions
        errs[t] = periodic_errors(res, r0)
    # measured: TCD 0.36 meV/atom, gap -0.09 meV, bands max 2.3 meV; DCD 2.4 meV/atom, gap 0.44 meV,
    # bands max 4.1 meV (the chemical-accuracy lines: 1 meV/atom, 43 meV)
    for t, e in errs.items():
        assert abs(e["energy_mev_per_atom"]) < 4.0 and abs(e["gap_mev"]) < 5.0, (t, e)
        assert e["band_energy_max_mev"] < 6.0, (t, e)
    # the coarse def2-universal-jfit fit (5 % floor) is far worse: the check can tell
    ds_j = CoefficientDataset(cells["h5"])
    res = nscf_periodic(ref.mol, ref.kpts, ds_j.coefficients(0, "difference"), ds_j.basis, "difference", "pbe",
                        saed=ds_j.saed)
    assert abs(periodic_errors(res, r0)["energy_mev_per_atom"]) > 10.0
    with pytest.raises(InputError, match="SAED"):
        nscf_periodic(ref.mol, ref.kpts, ds.coefficients(0, "difference"), ds.basis, "difference", "pbe")


def test_saed_gradient_and_periodic_metric(cells, saed_cache):
    from densitylearn.data import CoefficientDataset
    from densitylearn.grid import cell_grid, evaluate_density_periodic, saed_periodic
    from densitylearn.properties import saed_periodic_deriv
    from densitylearn.train import periodic_grid_metric

    ds = CoefficientDataset(cells["h5"])
    rec = ds[0]
    pts = np.random.default_rng(0).uniform(0, 1, size=(50, 3)) @ rec["cell"]
    out = saed_periodic_deriv(ds.saed, rec["numbers"], rec["positions"], rec["cell"], pts)
    assert np.allclose(out[0], saed_periodic(ds.saed, rec["numbers"], rec["positions"], rec["cell"], pts),
                       rtol=1e-12, atol=1e-14)
    h = 1e-4
    for x in range(3):
        step = np.zeros(3)
        step[x] = h
        fd = (saed_periodic(ds.saed, rec["numbers"], rec["positions"], rec["cell"], pts + step)
              - saed_periodic(ds.saed, rec["numbers"], rec["positions"], rec["cell"], pts - step)) / (2 * h)
        assert np.abs(out[1 + x] - fd).max() < 1e-6 * max(1.0, np.abs(fd).max())
    # e @ M @ e is the squared L2 norm of the error density on the mesh (our own lattice sums)
    mesh = (9, 10, 11)
    m = periodic_grid_metric(ds.basis, rec["numbers"], rec["positions"], rec["cell"], mesh)
    e = np.random.default_rng(1).normal(size=m.shape[0]) * 0.01
    axes, grid = cell_grid(rec["cell"], mesh)
    rho = evaluate_density_periodic(ds.basis, rec["numbers"], rec["positions"], rec["cell"], e, grid).numpy()
    assert abs(e @ m @ e - (rho ** 2).sum() * abs(np.linalg.det(axes))) < 1e-9 * (e @ m @ e)
    # the training loss of a cell uses the metric on the reference's FFT mesh
    from densitylearn.train import MetricCache, reference_mesh

    assert reference_mesh(rec).tolist() == [17, 17, 17]
    for metric in ("overlap", "coulomb"):
        got = MetricCache(ds.basis, metric).get(0, rec["numbers"], rec["positions"], rec)
        assert np.allclose(got, periodic_grid_metric(ds.basis, rec["numbers"], rec["positions"], rec["cell"],
                                                     (17, 17, 17), metric=metric), rtol=1e-12, atol=1e-14)


def test_periodic_coulomb_metric_matches_analytic_fourier_transforms(cells):
    """The Coulomb metric by FFT of the lattice-summed functions on the mesh equals the one
    from PySCF's analytic Fourier transforms of the Gaussians (``ft_ao``) on the same G
    vectors, once the mesh resolves the functions (a smooth even-tempered basis here)."""
    from pyscf.pbc import gto as pbcgto
    from pyscf.pbc import tools
    from pyscf.pbc.df import ft_ao

    from densitylearn.basis import AuxBasis
    from densitylearn.data import CoefficientDataset
    from densitylearn.train import periodic_grid_metric

    rec = CoefficientDataset(cells["h5"])[0]
    basis = AuxBasis.load("etb:2.0", [14], orbital_basis="gth-szv")
    mesh = (24, 25, 26)  # odd and even sizes: the half spectrum's doubled planes
    m = periodic_grid_metric(basis, rec["numbers"], rec["positions"], rec["cell"], mesh, metric="coulomb")
    aux = pbcgto.M(atom=[("Si", p) for p in rec["positions"]], a=rec["cell"], unit="Bohr",
                   basis=basis.to_pyscf_basis(), mesh=list(mesh), spin=None, verbose=0)
    ft = ft_ao.ft_ao(aux, aux.get_Gv(mesh))
    ref = ((ft.conj().T * tools.get_coulG(aux, mesh=mesh)) @ ft).real / aux.vol
    nfun = sum(basis.n_functions(int(z)) for z in rec["numbers"])
    assert m.shape == ref.shape == (nfun, nfun)
    assert np.abs(m - ref).max() < 1e-9 * np.abs(ref).max()
    # a norm: positive semi-definite
    w = np.linalg.eigvalsh(m)
    assert w.min() > -1e-10 * w.max()
    with pytest.raises(InputError, match="overlap.*coulomb"):
        periodic_grid_metric(basis, rec["numbers"], rec["positions"], rec["cell"], mesh, metric="l1")


# ----------------------------------------------------------------------------- train, predict, nscf
@pytest.fixture(scope="module")
def trained(cells):
    cfg = str(cells["dir"] / "cfg.json")
    with open(cfg, "w") as fh:
        json.dump({"max_epochs": 3, "batch_size": 2, "val_fraction": 0.5, "val_structures": 1, "lr": 5e-3,
                   "warmup_steps": 2, "dtype": "float64", "model": TINY}, fh)
    runs = {}
    for t in ("difference", "total"):
        out = str(cells["dir"] / f"run_{t}")
        assert cli.main(["train", cells["h5"], "--out", out, "--target", t, "--config", cfg, "--device", "cpu",
                         "--quiet"]) == 0
        runs[t] = out
    return runs


@pytest.mark.parametrize("target", ["difference", "total"])
def test_cell_validation_matches_evaluate(cells, trained, target, tmp_path):
    """The training log's cell eps_mae (FFT mesh, lattice sums) equals `evaluate` of a
    prediction of the validation cell with the best checkpoint."""
    from densitylearn.evaluate import evaluate_file

    out = trained[target]
    log = [json.loads(x) for x in open(os.path.join(out, "log.jsonl"))]
    assert all(x["val_reference"] == "dft" for x in log)
    ck = torch.load(os.path.join(out, "best.pt"), weights_only=True)
    assert ck["dataset"]["periodic"] is True and ck["dataset"]["pseudo"] == "gth-pbe"
    val = int(ck["split"]["val"][0])
    pred = str(tmp_path / "pred.h5")
    assert cli.main(["predict", os.path.join(out, "best.pt"), cells["chks"][val], "--out", pred, "--quiet"]) == 0
    row = evaluate_file(pred, progress=False)["structures"][0]
    assert row["grid"].startswith("fft-mesh")
    assert abs(row[f"eps_mae_{target}"] - ck["best_val"]) < 1e-8
    assert 1.0 < ck["best_val"] < 60.0


def test_predict_cells_counts_files_and_refusals(cells, trained, tmp_path, capsys):
    from densitylearn.gridfit import read_chgcar
    from densitylearn.grid import cell_grid
    from densitylearn.predict import load_model, read_inputs
    from densitylearn.reference import load_reference, periodic_density_on_mesh

    structures = read_inputs([cells["chks"][0], cells["xyz"]])
    assert len(structures) == 3 and all(s.is_periodic for s in structures)
    for t in ("difference", "total"):
        p = load_model(os.path.join(trained[t], "best.pt"), device="cpu")
        assert p.periodic and p.pseudo == "gth-pbe"
        [pred] = p.predict(structures[:1])
        # valence electrons: analytic, and on the FFT mesh with lattice sums
        assert abs(pred.electron_count() - 8.0) < 1e-8
        ref = load_reference(cells["chks"][0])
        rho_ref, axes = periodic_density_on_mesh(ref)
        _, pts = cell_grid(pred.structure.cell, rho_ref.shape)
        rho = pred.density(pts)
        assert abs(rho.sum() * abs(np.linalg.det(axes)) - 8.0) < 0.1
        files = pred.write_cube(str(tmp_path / t), spacing=0.8)
        assert set(files) == ({"total.cube", "total.chgcar", "difference.cube", "difference.chgcar"}
                              if t == "difference" else {"total.cube", "total.chgcar"})
        chg = read_chgcar(files["total.chgcar"])
        _, gpts = cell_grid(pred.structure.cell, chg.shape)
        assert np.allclose(chg.values.reshape(-1), pred.density(gpts), rtol=1e-9, atol=1e-12)
        # a pyscf.pbc Cell is accepted too, and gives the same coefficients
        [again] = p.predict(ref.mol)
        assert np.allclose(again.coefficients, pred.coefficients, atol=1e-10)

    p = load_model(os.path.join(trained["difference"], "best.pt"), device="cpu")
    from densitylearn.structure import Structure

    mol = Structure(numbers=[14, 14], positions=[[0, 0, 0], [0, 0, 4.4]], name="si_dimer")
    for fn, words in [(lambda: p.check([mol]), "trained on periodic cells"),
                      (lambda: replace(p, periodic=False, pseudo="").check(structures[:1]), "trained on molecules"),
                      (lambda: replace(p, pseudo="gth-lda").check(structures[:1]), "pseudopotential")]:
        with pytest.raises(InputError) as info:
            fn()
        assert words in str(info.value) and "\n" not in str(info.value)
    # the CLI: one line, exit status 2
    mol_xyz = tmp_path / "dimer.xyz"
    mol_xyz.write_text("2\n\nSi 0 0 0\nSi 0 0 2.3\n")
    for args in (["predict", os.path.join(trained["total"], "best.pt"), str(mol_xyz), "--out",
                  str(tmp_path / "x.h5")],
                 ["nscf", os.path.join(trained["total"], "best.pt"), cells["chks"][0], "--pseudo", "gth-lda"]):
        capsys.readouterr()
        assert cli.main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err


def test_nscf_command_on_cells(cells, trained, tmp_path, capsys):
    out = str(tmp_path / "nscf.json")
    capsys.readouterr()
    assert cli.main(["nscf", os.path.join(trained["difference"], "best.pt"), cells["chks"][0], cells["xyz"],
                     "--kmesh", "2,1,1", "--ke-cutoff", "20", "--json", out]) == 0
    text = capsys.readouterr().out
    assert "band energies" in text and "dipole" not in text.splitlines()[-2]
    rep = json.load(open(out))
    first = rep["structures"][0]
    assert first["periodic"] and first["reference"] is not None
    bands = np.asarray(first["prediction"]["band_energies_hartree"])
    assert bands.shape == (2, 8)
    # the reference entry is the SCF density's own run: the SCF energy
    assert abs(first["reference"]["energy_hartree"] - first["reference_e_tot_hartree"]) < 1e-6
    err = first["errors"]
    assert err["energy_mev_per_atom"] == pytest.approx(
        (first["prediction"]["energy_hartree"] - first["reference"]["energy_hartree"]) * MEV / 2)
    # structures without a chkfile run on a cell built from --kmesh/--ke-cutoff: the first
    # frame of the extxyz is the first chkfile's structure, so the same numbers come out
    assert len(rep["structures"]) == 3 and rep["structures"][1]["errors"] is None
    assert rep["structures"][1]["prediction"]["energy_hartree"] == pytest.approx(
        first["prediction"]["energy_hartree"], abs=1e-8)
    assert rep["summary"]["n_compared"] == 1
    # SCF runs from a guess are molecular only: a cell is refused in one line
    capsys.readouterr()
    assert cli.main(["scf", cells["chks"][0], "--model", os.path.join(trained["difference"], "best.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "molecules only" in err[0]


def test_periodic_harris_forces(cells, trained):
    from densitylearn.predict import load_model, read_inputs
    from densitylearn.properties import (HARTREE_BOHR_EV_ANGSTROM, central_difference_forces, displaced_cell,
                                         nscf_periodic, nscf_predictions, reference_forces)
    from densitylearn.reference import load_reference

    # the Harris functional is stationary at the SCF density: central differences of the Harris
    # energy of the SCF density matrix carried along with the atoms give the SCF forces, which
    # PySCF computes analytically (KRKS gradient, GTH pseudopotentials) from the stored orbitals
    chk = cells["chks"][0]
    ref = load_reference(chk)
    f0 = reference_forces(chk)
    f = central_difference_forces(
        lambda disp: [nscf_periodic(displaced_cell(ref.mol, s.positions), ref.kpts, dm=ref.dm, xc="pbe").energy
                      for s in disp],
        ref.structure)
    assert np.abs(f0).max() * HARTREE_BOHR_EV_ANGSTROM > 0.1  # a rattled cell: real forces
    assert np.abs(f - f0).max() * HARTREE_BOHR_EV_ANGSTROM < 1e-4  # measured 1.3e-6 eV/A
    # the model path: the density is predicted again at every displaced geometry
    p = load_model(os.path.join(trained["difference"], "best.pt"), device="cpu")
    rep = nscf_predictions(p.predict(read_inputs([chk])), "pbe", "gth-szv", forces_from=p.predict)
    e = rep["structures"][0]
    fm = np.asarray(e["forces_ev_per_angstrom"])
    np.testing.assert_allclose(e["reference_forces_ev_per_angstrom"], f0 * HARTREE_BOHR_EV_ANGSTROM, atol=1e-9)
    assert fm.shape == (2, 3) and np.isfinite(fm).all()
    assert e["errors"]["force_mae_mev_per_angstrom"] == pytest.approx(
        np.abs(fm - f0 * HARTREE_BOHR_EV_ANGSTROM).mean() * 1000)
    # everything must follow the atoms: moving the whole crystal by one FFT-mesh step maps the
    # mesh onto itself, so the energy of the re-predicted density is unchanged (a SAED, basis
    # or pseudopotential left behind would change it). Smaller translations change it through
    # the mesh's aliasing of steep auxiliary functions ("egg-box"), which is why the model's
    # forces need a fine mesh (docs/periodic.rst)
    s0 = ref.structure
    shifted = replace(s0, positions=s0.positions + s0.cell[0] / ref.mol.mesh[0])
    en = [nscf_periodic(displaced_cell(ref.mol, x.positions), ref.kpts, pr.coefficients, pr.basis, pr.target, "pbe",
                       saed=p.saed).energy for x, pr in zip((s0, shifted), p.predict([s0, shifted]))]
    assert abs(en[1] - en[0]) < 1e-8
    half = replace(s0, positions=s0.positions + 0.5 * s0.cell[0] / ref.mol.mesh[0])
    pr = p.predict([half])[0]
    e_half = nscf_periodic(displaced_cell(ref.mol, half.positions), ref.kpts, pr.coefficients, pr.basis, pr.target,
                           "pbe", saed=p.saed).energy
    assert abs(e_half - en[0]) > 1e-6  # the check can tell a translation that does not map the mesh
    assert rep["summary"]["mae_force_mev_per_angstrom"] == pytest.approx(e["errors"]["force_mae_mev_per_angstrom"])
