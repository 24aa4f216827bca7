"""Grid-to-coefficients fitting (densitylearn.gridfit, ``densitylearn fit-grid``).

Exactness (known coefficients -> cube / CHGCAR -> fit back), a real PySCF density against
the Coulomb-metric fit, and bad input giving one-line errors that name the file.
"""

import itertools
import json
import os

import numpy as np
import pytest

from densitylearn import cli
from densitylearn.basis import AuxBasis, Shell
from densitylearn.cube import write_cube
from densitylearn.errors import InputError, MismatchError
from densitylearn.fitting import electron_integrals
from densitylearn.grid import evaluate_density, uniform_box
from densitylearn.gridfit import GridDensity, fit_grid, read_chgcar, read_cube, read_grid
from densitylearn.units import ANGSTROM_BOHR, BOHR_ANGSTROM

WATER_BOHR = np.array([[0.0, 0.0, 0.117], [0.0, 0.757, -0.467], [0.0, -0.757, -0.467]]) * ANGSTROM_BOHR


def _shell(l, a):
    return Shell(l, np.array([a]), np.array([1.0]))


@pytest.fixture(scope="module")
def small_basis():
    """A basis a 0.2-0.3 bohr grid resolves (no core functions steeper than 6 bohr^-2)."""
    return AuxBasis("gridfit-test", {
        8: [_shell(0, 6.0), _shell(0, 2.0), _shell(0, 0.7), _shell(0, 0.3), _shell(1, 3.0), _shell(1, 0.8),
            _shell(2, 1.5)],
        1: [_shell(0, 3.0), _shell(0, 0.8), _shell(0, 0.3), _shell(1, 1.0)],
        14: [_shell(0, 2.0), _shell(0, 0.6), _shell(0, 0.3), _shell(1, 0.8), _shell(1, 0.35), _shell(2, 0.5)]})


def _coefficients(basis, numbers, seed):
    """Random coefficients with positive s parts (a mostly positive, density-like field)."""
    rng = np.random.default_rng(seed)
    ls = np.concatenate([basis.shell_ls(z) for z in numbers])
    c = rng.normal(scale=0.1, size=len(ls))
    c[ls == 0] = rng.uniform(0.3, 1.0, size=int((ls == 0).sum()))
    return c


# ----------------------------------------------------------------------------- (a) exactness
def test_cube_round_trip_recovers_coefficients(tmp_path, small_basis):
    numbers = np.array([8, 1, 1])
    c = _coefficients(small_basis, numbers, 0)
    origin, axes, shape, pts = uniform_box(numbers, WATER_BOHR, spacing=0.2, margin=4.0)
    rho = evaluate_density(small_basis, numbers, WATER_BOHR, c, pts).numpy().reshape(tuple(shape))

    # in memory: exact up to float64 round-off
    fit = fit_grid(GridDensity(numbers, WATER_BOHR, origin, axes, rho), small_basis)
    assert fit.unresolved == 0 and fit.n_images == 0
    np.testing.assert_allclose(fit.total, c, rtol=0, atol=1e-9)
    assert fit.residual_total.l1_percent < 1e-8

    # through a cube file (6 significant digits, positions to 1e-6 bohr)
    path = tmp_path / "water.cube"
    write_cube(str(path), numbers, WATER_BOHR, origin, axes, rho)
    grid = read_cube(str(path))
    assert grid.shape == tuple(shape) and not grid.pbc.any()
    np.testing.assert_allclose(grid.positions, WATER_BOHR, atol=1e-6)
    fit = fit_grid(grid, small_basis)
    np.testing.assert_allclose(fit.total, c, rtol=0, atol=2e-5)
    r = fit.residual_total
    assert r.l1_percent < 1e-3 and r.max_abs_error < 1e-4
    q = np.concatenate([small_basis.s_integrals(z) for z in numbers])
    assert r.electrons_fit == pytest.approx(q @ c, abs=1e-4)
    assert r.electrons_grid == pytest.approx(rho.sum() * 0.2 ** 3, rel=1e-5)

    # the count constraint holds exactly and costs nothing when the data already obey it
    fit_n = fit_grid(grid, small_basis, electrons=float(q @ c))
    assert fit_n.residual_total.electrons_fit == pytest.approx(q @ c, abs=1e-10)
    np.testing.assert_allclose(fit_n.total, c, rtol=0, atol=2e-5)


def test_cube_in_angstrom_units(tmp_path, small_basis):
    """A negative voxel count means Angstrom lengths (Gaussian's convention)."""
    numbers = np.array([8, 1, 1])
    c = _coefficients(small_basis, numbers, 1)
    origin, axes, shape, pts = uniform_box(numbers, WATER_BOHR, spacing=0.3, margin=3.5)
    rho = evaluate_density(small_basis, numbers, WATER_BOHR, c, pts).numpy().reshape(tuple(shape))
    bohr = tmp_path / "bohr.cube"
    write_cube(str(bohr), numbers, WATER_BOHR, origin, axes, rho)
    lines = bohr.read_text().splitlines()
    a = BOHR_ANGSTROM
    lines[2] = f"{3:5d} {origin[0] * a:12.6f} {origin[1] * a:12.6f} {origin[2] * a:12.6f}"
    for i in range(3):
        lines[3 + i] = f"{-shape[i]:5d} " + " ".join(f"{x * a:12.6f}" for x in axes[i])
    for i in range(3):
        p = WATER_BOHR[i] * a
        lines[6 + i] = f"{numbers[i]:5d} {float(numbers[i]):12.6f} {p[0]:12.6f} {p[1]:12.6f} {p[2]:12.6f}"
    ang = tmp_path / "angstrom.cube"
    ang.write_text("\n".join(lines) + "\n")
    grid = read_cube(str(ang))
    np.testing.assert_allclose(grid.axes, axes, atol=1e-5)
    np.testing.assert_allclose(grid.positions, WATER_BOHR, atol=1e-5)
    np.testing.assert_allclose(fit_grid(grid, small_basis).total, c, rtol=0, atol=1e-3)


# ----------------------------------------------------------------------------- (c) periodic
def _si_chgcar(path, basis, c, n=24, saed=None):
    """Write the lattice-summed density of known coefficients (plus the lattice-summed SAED
    if given) in Si's cell as a CHGCAR (with ASE)."""
    from ase.build import bulk
    from ase.calculators.vasp import VaspChargeDensity

    atoms = bulk("Si", "diamond", a=5.43)
    cell = atoms.cell[:] * ANGSTROM_BOHR
    pos = atoms.positions * ANGSTROM_BOHR
    pts = np.stack(np.meshgrid(*[np.arange(n) / n] * 3, indexing="ij"), -1).reshape(-1, 3) @ cell
    # images from a generous, independent range (far beyond every function's reach)
    shifts = np.array(list(itertools.product(range(-4, 5), repeat=3)), dtype=np.float64) @ cell
    ipos = (pos[None] + shifts[:, None]).reshape(-1, 3)
    inum = np.tile(atoms.numbers, len(shifts))
    rho = evaluate_density(basis, inum, ipos, np.tile(c, len(shifts)), pts).numpy()
    if saed is not None:
        rho = rho + saed.evaluate(inum, ipos, pts)
    rho = rho.reshape(n, n, n)
    chg = VaspChargeDensity(None)
    chg.atoms = [atoms]
    chg.chg = [rho / BOHR_ANGSTROM ** 3]  # ASE holds e/Angstrom^3 and writes rho * V
    chg.write(str(path), format="chgcar")
    return atoms, rho


def test_chgcar_lattice_sums_recover_coefficients(tmp_path, small_basis):
    numbers = np.array([14, 14])
    c = _coefficients(small_basis, numbers, 2)
    atoms, rho = _si_chgcar(tmp_path / "CHGCAR", small_basis, c)
    grid = read_grid(str(tmp_path / "CHGCAR"))
    assert grid.fmt == "chgcar" and grid.pbc.all() and grid.shape == (24, 24, 24)
    np.testing.assert_allclose(grid.values, rho, rtol=1e-9, atol=1e-12)  # unit conversion
    np.testing.assert_allclose(grid.cell, atoms.cell[:] * ANGSTROM_BOHR, atol=1e-9)
    fit = fit_grid(grid, small_basis)
    assert fit.n_images > 50 and fit.unresolved == 0
    np.testing.assert_allclose(fit.total, c, rtol=0, atol=1e-8)
    assert fit.residual_total.l1_percent < 1e-6
    # the cell integral of a lattice-summed function is the function's integral
    assert fit.residual_total.electrons_grid == pytest.approx(fit.residual_total.electrons_fit, rel=1e-8)

    # without lattice sums (the same grid read as a molecular cube) the fit is wrong
    mol = GridDensity(grid.numbers, grid.positions, grid.origin, grid.axes, grid.values)
    assert np.abs(fit_grid(mol, small_basis).total - c).max() > 1e-2


def test_fit_grid_command_writes_a_dataset(tmp_path, small_basis, saed_cache):
    """CLI on a CHGCAR of SAED + known difference coefficients with --difference: the
    lattice-summed SAED is subtracted and the difference coefficients come back; dataset
    schema, SAED recorded, JSON report."""
    from densitylearn.data import CoefficientDataset
    from densitylearn.saed import load_saed

    basis_file = tmp_path / "si.nw"
    basis_file.write_text(small_basis.to_nwchem())
    saed = load_saed([14], xc="pbe", basis="sto-3g")  # the cache the command uses ($DENSITYLEARN_CACHE)
    c = _coefficients(small_basis, [14, 14], 3) * 0.1
    _si_chgcar(tmp_path / "CHGCAR", small_basis, c, n=16, saed=saed)
    out, rep = tmp_path / "si.h5", tmp_path / "si.json"
    args = ["fit-grid", str(tmp_path / "CHGCAR"), "--basis", str(basis_file), "--out", str(out),
            "--difference", "--xc", "pbe", "--ref-basis", "sto-3g", "--json", str(rep)]
    assert cli.main(args) == 0
    ds = CoefficientDataset(str(out))
    assert ds.kind == "fit" and ds.targets == ("total", "difference") and ds.attrs["metric"] == "grid-l2"
    assert ds.saed.hash == saed.hash
    rec = ds[0]
    assert rec["pbc"].all() and list(rec["numbers"]) == [14, 14]
    assert rec["source"] == f"chgcar:{tmp_path / 'CHGCAR'}"  # not mistaken for a chkfile
    np.testing.assert_allclose(rec["coef_difference"], c, rtol=0, atol=1e-7)
    report = json.loads(rep.read_text())
    assert report["n_images"] > 0 and report["difference"]["l1_percent"] < 1e-6
    assert rec["eps_mae_difference"] == pytest.approx(report["difference"]["l1_percent"])
    # the small basis cannot carry the SAED's Si cores: the total fit is far worse
    assert report["total"]["l1_percent"] > 1.0
    q = np.concatenate([small_basis.s_integrals(14)] * 2)
    assert report["difference"]["electrons_fit"] == pytest.approx(28 + q @ c, abs=1e-6)
    assert cli.main(args) == 2  # never overwrites without --overwrite


# ----------------------------------------------------------------------------- (b) real density
def test_real_water_density_against_coulomb_fit(tmp_path, water_scf, saed_cache, capsys):
    """PBE/def2-SVP water on a 0.2 bohr cube, def2-universal-jfit (numbers in gridfit's docstring)."""
    from densitylearn.data import CoefficientDataset
    from densitylearn.fitting import fit_reference
    from densitylearn.grid import becke_grid
    from densitylearn.metrics import eps_mae, reference_density
    from densitylearn.saed import load_saed, saed_density_matrix

    mol, mf = water_scf
    dm = mf.make_rdm1()
    numbers, pos = np.array([8, 1, 1]), mol.atom_coords()
    origin, axes, shape, pts = uniform_box(numbers, pos, spacing=0.2, margin=4.0)
    rho = reference_density(mol, dm, pts)
    path = tmp_path / "water.cube"
    write_cube(str(path), numbers, pos, origin, axes, rho.reshape(tuple(shape)))

    out = tmp_path / "water.h5"
    assert cli.main(["fit-grid", str(path), "--basis", "def2-universal-jfit", "--difference",
                     "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "L1 residual" in printed and "DCD+SAED" in printed
    ds = CoefficientDataset(str(out))
    rec = ds[0]
    eps_grid_t, eps_grid_d = rec["eps_mae_total"], rec["eps_mae_difference"]
    # measured 1.62 % and 1.43 %
    assert 0.5 < eps_grid_t < 2.5 and 0.5 < eps_grid_d < eps_grid_t

    basis = AuxBasis.load("def2-universal-jfit", [1, 8])
    saed = load_saed([1, 8], xc="pbe", basis="def2-svp", cache_dir=saed_cache)
    ref = fit_reference(mol, dm, saed_density_matrix(mol, "pbe", cache_dir=saed_cache), basis, constrain=False)
    coul_t = evaluate_density(basis, numbers, pos, ref.total, pts).numpy()
    coul_grid = 100 * np.abs(coul_t - rho).sum() / rho.sum()
    # comparable to the Coulomb-metric fit of the exact density matrix (measured 1.47 %)
    assert eps_grid_t < 1.25 * coul_grid

    # and so on the Becke grid against the exact density
    bp, bw = becke_grid(mol, level=2)
    rho_b = reference_density(mol, dm, bp)
    grid_b = eps_mae(evaluate_density(basis, numbers, pos, rec["coef_total"], bp).numpy(), rho_b, bw)
    coul_b = eps_mae(evaluate_density(basis, numbers, pos, ref.total, bp).numpy(), rho_b, bw)
    diff_b = eps_mae(evaluate_density(basis, numbers, pos, rec["coef_difference"], bp, saed=saed).numpy(),
                     rho_b, bw)
    assert grid_b < 1.25 * coul_b and diff_b < grid_b


def test_total_from_difference_and_saed_fit_is_robust_to_the_core(tmp_path, water_scf, saed_cache, capsys):
    """A cube with a point on the O nucleus: the grid's own total fit chases the cusp
    (measured 2.09 % eps_mae against 1.01 % for the Coulomb fit, dl-dcd), the default
    total = DCD fit + Coulomb fit of the SAED stays at 1.08 % (numbers in docs/grid_fitting.rst)."""
    from densitylearn.data import CoefficientDataset
    from densitylearn.fitting import fit_reference
    from densitylearn.grid import becke_grid
    from densitylearn.gridfit import saed_coulomb_fit
    from densitylearn.metrics import eps_mae, reference_density
    from densitylearn.saed import load_saed, saed_density_matrix

    mol, mf = water_scf
    dm = mf.make_rdm1()
    numbers, pos = np.array([8, 1, 1]), mol.atom_coords()
    spacing = 0.2
    origin, axes, shape, _ = uniform_box(numbers, pos, spacing=spacing, margin=4.0)
    origin = pos[0] - np.round((pos[0] - origin) / spacing) * spacing  # O on a grid point
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    pts = origin + idx * spacing
    assert np.min(np.linalg.norm(pts - pos[0], axis=1)) < 1e-9
    path = tmp_path / "water_on_grid.cube"
    write_cube(str(path), numbers, pos, origin, axes, reference_density(mol, dm, pts).reshape(tuple(shape)))

    basis = AuxBasis.load("dl-dcd", [1, 8])
    saed = load_saed([1, 8], xc="pbe", basis="def2-svp", cache_dir=saed_cache)
    coul = fit_reference(mol, dm, saed_density_matrix(mol, "pbe", cache_dir=saed_cache), basis)
    # the SAED fit is fit-basis's own SAED fit
    sc = saed_coulomb_fit(basis, numbers, pos, cache_dir=saed_cache)
    assert np.abs(sc - coul.saed).max() < 1e-7

    bp, bw = becke_grid(mol, level=2)
    rho = reference_density(mol, dm, bp)

    def score(c):
        return eps_mae(evaluate_density(basis, numbers, pos, c, bp).numpy(), rho, bw)

    runs = {}
    for how in ("auto", "grid"):
        out = tmp_path / f"{how}.h5"
        assert cli.main(["fit-grid", str(path), "--basis", "dl-dcd", "--difference", "--electrons", "auto",
                         "--total-fit", how, "--out", str(out)]) == 0
        printed = capsys.readouterr().out
        ds = CoefficientDataset(str(out))
        runs[how] = (ds, printed)
    ds, printed = runs["auto"]
    assert ds.attrs["total_fit"] == "difference+saed-coulomb-fit" and "Coulomb fit of the SAED" in printed
    rec = ds[0]
    assert np.abs(rec["coef_total"] - rec["coef_difference"] - sc).max() < 1e-6
    ds_g = runs["grid"][0]
    assert ds_g.attrs["total_fit"] == "grid-l2"
    assert np.array_equal(ds_g[0]["coef_difference"], rec["coef_difference"])  # the same difference fit
    e_saed, e_grid, e_coul = score(rec["coef_total"]), score(ds_g[0]["coef_total"]), score(coul.total)
    assert e_saed < 1.15 * e_coul, (e_saed, e_coul)
    assert e_grid > e_saed + 0.5, (e_grid, e_saed)
    # both integrate to the constrained 10 electrons
    q = electron_integrals(basis, numbers)
    assert abs(q @ rec["coef_total"] - 10) < 1e-8 and abs(q @ ds_g[0]["coef_total"] - 10) < 1e-8


# ----------------------------------------------------------------------------- (d) bad input
def _one_line_error(capsys, args, *fragments):
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for f in fragments:
        assert f in err, err
    return err


@pytest.fixture(scope="module")
def good_files(tmp_path_factory, small_basis):
    root = tmp_path_factory.mktemp("grids")
    numbers = np.array([8, 1, 1])
    origin, axes, shape, pts = uniform_box(numbers, WATER_BOHR, spacing=0.4, margin=3.0)
    rho = evaluate_density(small_basis, numbers, WATER_BOHR, _coefficients(small_basis, numbers, 4),
                           pts).numpy()
    write_cube(str(root / "ok.cube"), numbers, WATER_BOHR, origin, axes, rho.reshape(tuple(shape)))
    _si_chgcar(root / "CHGCAR", small_basis, _coefficients(small_basis, [14, 14], 5), n=12)
    return root


def test_bad_grid_shape(tmp_path, good_files, capsys):
    lines = (good_files / "ok.cube").read_text().splitlines()
    short = tmp_path / "short.cube"
    short.write_text("\n".join(lines[:-2]) + "\n")
    _one_line_error(capsys, ["fit-grid", str(short), "--basis", "def2-universal-jfit", "--out",
                             str(tmp_path / "x.h5")], str(short), "header's")
    longer = tmp_path / "long.cube"
    longer.write_text("\n".join(lines + [lines[-1]]) + "\n")
    with pytest.raises(InputError, match="long.cube: grid has .* values, but the header"):
        read_cube(str(longer))
    # a CHGCAR whose grid line does not match its data, in either direction
    text = (good_files / "CHGCAR").read_text().splitlines()
    i = next(k for k, line in enumerate(text) if line.split() == ["12", "12", "12"])
    for dims, what in (("12 12 13", "needs"), ("12 12 11", "more values")):
        bad = tmp_path / f"CHGCAR_{dims.replace(' ', '')}"
        bad.write_text("\n".join(text[:i] + [dims] + text[i + 1:]) + "\n")
        _one_line_error(capsys, ["fit-grid", str(bad), "--basis", "def2-universal-jfit", "--out",
                                 str(tmp_path / "x.h5")], str(bad), what)
    assert not (tmp_path / "x.h5").exists()


def test_basis_without_the_element_names_the_file(tmp_path, good_files, capsys):
    _one_line_error(capsys, ["fit-grid", str(good_files / "ok.cube"), "--basis", "sto-3g-nonexistent",
                             "--out", str(tmp_path / "x.h5")], str(good_files / "ok.cube"), "sto-3g-nonexistent")


def test_chgcar_atoms_must_match_the_structure(tmp_path, good_files, capsys):
    from ase.build import bulk
    from ase.io import write

    write(str(tmp_path / "ge.vasp"), bulk("Ge", "diamond", a=5.43), format="vasp")
    moved = bulk("Si", "diamond", a=5.43)
    moved.positions[1] += 0.05
    write(str(tmp_path / "moved.vasp"), moved, format="vasp")
    same = bulk("Si", "diamond", a=5.43)
    same.positions[0] += same.cell[0]  # a lattice translation is the same structure
    write(str(tmp_path / "same.xyz"), same)
    chg = str(good_files / "CHGCAR")
    read_grid(chg, structure=str(tmp_path / "same.xyz"))
    err = _one_line_error(capsys, ["fit-grid", chg, "--structure", str(tmp_path / "ge.vasp"), "--basis",
                                   "def2-universal-jfit", "--out", str(tmp_path / "x.h5")], chg, "ge.vasp")
    assert "Ge" in err
    with pytest.raises(MismatchError, match="atom 1 lies"):
        read_grid(chg, structure=str(tmp_path / "moved.vasp"))


def test_saed_total_fit_needs_a_molecular_difference_fit(tmp_path, good_files, capsys):
    for extra in ([], ["--difference", "--pseudo", "gth-pbe", "--ref-basis", "gth-szv"]):
        _one_line_error(capsys, ["fit-grid", str(good_files / "CHGCAR"), "--basis", "def2-universal-jfit",
                                 "--total-fit", "saed", *extra, "--out", str(tmp_path / "x.h5")],
                        str(good_files / "CHGCAR"), "--total-fit saed")
    assert not (tmp_path / "x.h5").exists()


def test_zero_volume_cell(tmp_path, good_files, capsys):
    text = (good_files / "CHGCAR").read_text().splitlines()
    text[4] = "  0.0 0.0 0.0"  # third lattice vector
    bad = tmp_path / "CHGCAR_flat"
    bad.write_text("\n".join(text) + "\n")
    _one_line_error(capsys, ["fit-grid", str(bad), "--basis", "def2-universal-jfit", "--out",
                             str(tmp_path / "x.h5")], str(bad), "zero-volume")
    lines = (good_files / "ok.cube").read_text().splitlines()
    n = lines[5].split()[0]
    lines[5] = f"{n} 0.0 0.0 0.0"
    flat = tmp_path / "flat.cube"
    flat.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match="flat.cube: zero-volume"):
        read_cube(str(flat))


def test_nan_values(tmp_path, good_files, capsys):
    lines = (good_files / "ok.cube").read_text().splitlines()
    lines[20] = "NaN " + " ".join(lines[20].split()[1:])
    bad = tmp_path / "nan.cube"
    bad.write_text("\n".join(lines) + "\n")
    _one_line_error(capsys, ["fit-grid", str(bad), "--basis", "def2-universal-jfit", "--out",
                             str(tmp_path / "x.h5")], str(bad), "NaN")
    lines[20] = "oops " + " ".join(lines[20].split()[1:])
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match="nan.cube: .*non-numeric value 'oops'"):
        read_cube(str(bad))
    with pytest.raises(InputError, match="nan.cube: not a readable CHGCAR"):
        read_chgcar(str(bad))
