"""``densitylearn evaluate``: eps_mae against the exact reference densities."""

import json
import os
import shutil

import h5py
import numpy as np
import pytest

from densitylearn import cli
from densitylearn.data import CoefficientDataset
from densitylearn.metrics import eps_mae, per_element_eps, reference_density


def test_evaluate_reproduces_the_fitting_floors(fit_dataset, tmp_path, capsys):
    out = tmp_path / "report.json"
    plots = tmp_path / "plots"
    cubes = tmp_path / "cubes"
    assert cli.main(["evaluate", fit_dataset, "--grid-level", "1", "--json", str(out),
                     "--plots", str(plots), "--cube", str(cubes), "--cube-spacing", "0.4",
                     "--quiet"]) == 0
    assert len(list(cubes.glob("*.difference.cube"))) == 3
    assert len(list(cubes.glob("*.error.cube"))) == 3
    text = capsys.readouterr().out
    assert "DCD better than TCD" in text
    report = json.loads(out.read_text())
    ds = CoefficientDataset(fit_dataset)
    floors = dict(zip(ds.column("name"), zip(ds.column("eps_mae_total"), ds.column("eps_mae_difference"))))
    for row in report["structures"]:
        t, d = floors[row["name"]]
        assert row["eps_mae_total"] == pytest.approx(t, rel=1e-6)
        assert row["eps_mae_difference"] == pytest.approx(d, rel=1e-6)
    assert set(report["per_element"]["DCD"]) == {"H", "C", "N", "O"}
    assert report["summary"]["dcd_better_fraction"] == 1.0
    assert sorted(p.name for p in plots.iterdir()) == ["per_element.png", "radial_error_profiles.png",
                                                       "relative_gain_violin.png"]


def test_per_element_partition_sums_to_the_total(chks):
    from densitylearn.grid import becke_grid
    from densitylearn.reference import load_reference

    ref = load_reference(chks[0])
    pts, w, atoms = becke_grid(ref.mol, level=1, return_atoms=True)
    rho = reference_density(ref.mol, ref.dm, pts)
    noisy = rho * (1 + 0.01 * np.sin(pts[:, 0]))
    parts = per_element_eps(noisy, rho, w, atoms, ref.structure.numbers)
    err = sum(e for e, _ in parts.values())
    n = sum(r for _, r in parts.values())
    assert n == pytest.approx(ref.structure.n_electrons, rel=1e-4)
    assert 100 * err / n == pytest.approx(eps_mae(noisy, rho, w), rel=1e-12)


def test_reference_density_equals_pyscf_for_any_symmetric_dm(chks):
    # the thin eigen-factorised contraction against PySCF's eval_rho, for the SCF density
    # matrix and for an indefinite one (fractional or negative eigenvalues)
    from pyscf.dft import numint

    from densitylearn.grid import becke_grid
    from densitylearn.reference import load_reference

    ref = load_reference(chks[0])
    pts, _ = becke_grid(ref.mol, level=1)
    ao = numint.eval_ao(ref.mol, pts)
    rng = np.random.default_rng(0)
    a = rng.normal(size=ref.dm.shape)
    for dm in (ref.dm, ref.dm + 0.05 * (a + a.T)):
        expect = numint.eval_rho(ref.mol, ao, dm, xctype="LDA")
        got = reference_density(ref.mol, dm, pts, block=997)
        assert np.max(np.abs(got - expect)) < 1e-10 * np.max(np.abs(expect))


def test_bad_inputs_are_one_line_errors(fit_dataset, chks, tmp_path, capsys):
    # a reference whose geometry differs
    moved = tmp_path / "moved"
    moved.mkdir()
    for c in chks:
        shutil.copy(c, moved)
    with h5py.File(moved / "mols_0.chk", "r+") as f:  # water
        mol = json.loads(f["mol"][()])
        mol["_atom"][0][1][0] += 0.1
        del f["mol"]
        f["mol"] = json.dumps(mol)
    assert cli.main(["evaluate", fit_dataset, "--reference", *map(str, moved.iterdir()), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "geometry" in err[0] and "mols_0" in err[0]
    # NaN coefficients
    bad = tmp_path / "nan.h5"
    shutil.copy(fit_dataset, bad)
    with h5py.File(bad, "r+") as f:
        f["coef_total"][3] = np.nan
    assert cli.main(["evaluate", str(bad), "--quiet"]) == 2
    assert "NaN" in capsys.readouterr().err
    # a basis other than the one asked for
    assert cli.main(["evaluate", fit_dataset, "--auxbasis", "def2-universal-jkfit", "--quiet"]) == 2
    assert "differs" in capsys.readouterr().err


def test_heldout_scores_merge_shards_exactly(tmp_path, capsys):
    # the incremental held-out scorer: rows of several shard files merge (a torn last line
    # from a killed run is ignored), molecules outside a model are counted apart, and
    # per-element eps_mae comes from the summed integrated errors, not from averaged percents
    import argparse

    from conftest import load_example

    mod = load_example("qm9_heldout_scores")
    folder = tmp_path / "heldout_scores"
    folder.mkdir()

    def row(name, eps, err_h, ref_h):
        return json.dumps({"name": name, "eps_mae": eps, "per_element": {"H": [err_h, ref_h], "C": [0.1, 10.0]}})

    (folder / "tcd.0of2.jsonl").write_text(row("qm9_000001", 2.0, 0.2, 2.0) + "\n"
                                           + json.dumps({"name": "qm9_000003", "skipped": "elements F"}) + "\n")
    (folder / "tcd.1of2.jsonl").write_text(row("qm9_000002", 4.0, 0.6, 4.0) + "\n" + '{"name": "qm9_0000')
    (folder / "dcd.0of1.jsonl").write_text(row("qm9_000001", 1.0, 0.1, 2.0) + "\n" + row("qm9_000002", 5.0, 0.1, 4.0)
                                           + "\n" + json.dumps({"name": "qm9_000003", "skipped": "elements F"}) + "\n")
    args = argparse.Namespace(work=str(tmp_path), test="spec")
    out = mod.report(args, [1, 2, 3, 4], ["tcd", str(tmp_path / "dcd.pt")])  # a name and a model file
    assert (out["scored"], out["skipped_elements"], out["pending"]) == (2, 1, 1)
    assert out["models"]["tcd"]["mean"] == pytest.approx(3.0)
    assert out["models"]["tcd"]["per_element"]["H"] == pytest.approx(100 * 0.8 / 6.0)  # not mean(10, 15)
    assert out["models"]["dcd"]["per_element"]["C"] == pytest.approx(1.0)
    assert out["last_better_fraction"] == pytest.approx(0.5)  # dcd better on molecule 1 only
    assert "2 scored by every model, 1 skipped" in capsys.readouterr().out
