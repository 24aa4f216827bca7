"""Inference: the Python API (load_model / Predictor / Prediction) and `densitylearn predict`."""

import json

import h5py
import numpy as np
import pytest

from densitylearn import cli
from densitylearn.errors import InputError
from densitylearn.predict import Predictor, load_model
from densitylearn.structure import Structure, structure_from_chk
from densitylearn.units import BOHR_ANGSTROM

from conftest import random_rotation

TINY_MODEL = {"num_layers": 1, "hidden_irreps": "8x0e+4x1o+2x2e+2x3o+2x4e", "sh_lmax": 4, "embedding_dim": 8,
              "num_radial": 4, "radial_hidden": 8}
# float64 so that "identical" can be checked to ~1e-10 (float32 rounds away the last bits)
CFG = dict(max_epochs=1, batch_size=1, val_fraction=0.34, val_structures=1, val_grid_level=1,
           warmup_steps=1, dtype="float64", device="cpu", model=TINY_MODEL)


@pytest.fixture(scope="module")
def models(fit_dataset, tmp_path_factory):
    """Checkpoints of a tiny DCD and a tiny TCD model: {'difference': path, 'total': path}."""
    from densitylearn.train import TrainConfig, train

    root = tmp_path_factory.mktemp("predict_models")
    out = {}
    for target in ("difference", "total"):
        train(fit_dataset, str(root / target), TrainConfig.from_dict(dict(CFG, target=target)), progress=False)
        out[target] = str(root / target / "best.pt")
    return out


@pytest.fixture(scope="module")
def dcd(models):
    return load_model(models["difference"], device="cpu")


@pytest.fixture(scope="module")
def tcd(models):
    return load_model(models["total"], device="cpu")


def _water(chks):
    return structure_from_chk(next(c for c in chks if c.endswith("mols_0.chk")))  # water


def test_predictor_carries_model_saed_and_reference_settings(dcd, tcd):
    assert isinstance(dcd, Predictor)
    assert dcd.target == "difference" and dcd.saed is not None and tcd.target == "total"
    assert dcd.xc == "pbe" and dcd.orbital_basis == "def2-svp"
    assert set(dcd.elements) == {1, 6, 7, 8}
    assert not dcd.model.training  # eval mode, EMA weights
    assert dcd.charges == (0,) and dcd.spins == (0,)


def test_batched_equals_one_by_one(dcd, chks):
    structures = [structure_from_chk(c) for c in chks]
    batched = dcd.predict(structures, batch_size=64)
    assert [p.structure.name for p in batched] == [s.name for s in structures]
    for s, p in zip(structures, batched):
        [single] = dcd.predict(s, batch_size=1)
        assert p.coefficients.shape == (int(dcd.basis.layout(s.numbers)[-1]),)
        np.testing.assert_allclose(p.coefficients, single.coefficients, rtol=0, atol=1e-12)
    # a batch size that splits the list gives the same
    split = dcd.predict(structures, batch_size=2)
    for a, b in zip(batched, split):
        np.testing.assert_allclose(a.coefficients, b.coefficients, rtol=0, atol=1e-12)


def test_ase_atoms_pyscf_mole_and_chkfile_agree(dcd, chks):
    from pyscf import gto

    ref = _water(chks)
    atoms = ref.to_ase()  # Angstrom
    mol = gto.M(atom=[(int(z), tuple(p)) for z, p in zip(ref.numbers, ref.positions * BOHR_ANGSTROM)],
                unit="Angstrom", basis="sto-3g", verbose=0)
    from_chk, from_ase, from_mole = dcd.predict([ref, atoms, mol])
    np.testing.assert_allclose(from_ase.structure.positions, ref.positions, rtol=0, atol=1e-10)
    np.testing.assert_allclose(from_mole.structure.positions, ref.positions, rtol=0, atol=1e-10)
    np.testing.assert_allclose(from_ase.coefficients, from_chk.coefficients, rtol=0, atol=1e-9)
    np.testing.assert_allclose(from_mole.coefficients, from_chk.coefficients, rtol=0, atol=1e-9)
    assert from_ase.structure.name == "mols_0"  # Structure.to_ase keeps the name in info
    assert from_mole.structure.name == "structure_2"  # unnamed inputs: position in the input


@pytest.mark.parametrize("target", ["difference", "total"])
def test_electron_count_and_becke_integral_equal_n(target, dcd, tcd, chks):
    from densitylearn.grid import becke_grid

    predictor = dcd if target == "difference" else tcd
    s = _water(chks)
    [p] = predictor.predict(s)
    n = s.n_electrons
    assert p.target == target
    assert (p.saed is not None) == (target == "difference")
    assert p.electron_count() == pytest.approx(n, abs=1e-8)
    if target == "difference":  # the SAED carries sum Z, the coefficients carry ~0
        assert p.electron_count() - p.saed.electron_count(s.numbers) == pytest.approx(0.0, abs=1e-8)
    points, weights = becke_grid(s, level=3)
    rho = p.density(points)
    assert rho.shape == (len(points),)
    assert float(weights @ rho) == pytest.approx(n, abs=1e-3)


@pytest.mark.parametrize("target", ["difference", "total"])
def test_fitted_reference_is_the_training_target(target, dcd, tcd, chks, fit_dataset):
    """Predictor.fitted(chk), the perfect model's prediction, is the fit-basis record of that
    chkfile for the model's target, and its density is the SCF density (eval_gto) to within
    the auxiliary basis's fitting error."""
    import os

    from pyscf import dft

    from densitylearn.data import CoefficientDataset
    from densitylearn.reference import load_reference

    predictor = dcd if target == "difference" else tcd
    chk = next(c for c in chks if c.endswith("mols_0.chk"))
    p = predictor.fitted(chk)
    assert p.target == target and (p.saed is not None) == (target == "difference")
    ds = CoefficientDataset(fit_dataset)
    [i] = [k for k in range(len(ds)) if os.path.abspath(ds[k]["source"]) == os.path.abspath(chk)]
    np.testing.assert_allclose(p.coefficients, ds.coefficients(i, target), rtol=0, atol=1e-10)
    assert p.electron_count() == pytest.approx(p.structure.n_electrons, abs=1e-8)
    ref = load_reference(chk)
    grids = dft.gen_grid.Grids(ref.mol)
    grids.level = 3
    grids.build()
    ao = dft.numint.eval_ao(ref.mol, grids.coords)
    rho_ref = dft.numint.eval_rho(ref.mol, ao, ref.dm)
    eps = float(grids.weights @ np.abs(p.density(grids.coords) - rho_ref)) / p.structure.n_electrons
    # the fitting floor fit-basis recorded (per cent, level-1 grid) for this chkfile
    assert 0 < 100 * eps == pytest.approx(ds[i]["eps_mae_" + target], rel=0.05)
    with pytest.raises(InputError, match="no such file"):
        predictor.fitted(str(chk) + ".missing")


def test_rotated_molecule_gives_rotated_density(dcd, chks):
    s = _water(chks)
    rot = random_rotation(3)
    centre = s.positions.mean(0)
    moved = Structure(numbers=s.numbers, positions=(s.positions - centre) @ rot.T + centre, name="rotated")
    rng = np.random.default_rng(0)
    points = centre + rng.normal(scale=1.5, size=(200, 3))
    [a, b] = dcd.predict([s, moved])
    rho_a = a.density(points)
    rho_b = b.density((points - centre) @ rot.T + centre)
    np.testing.assert_allclose(rho_b, rho_a, rtol=1e-7, atol=1e-9)


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(models, dcd, chks):
    structures = [structure_from_chk(c) for c in chks]
    gpu = load_model(models["difference"], device="cuda")
    points = np.random.default_rng(1).normal(scale=2.0, size=(500, 3))
    for a, b in zip(dcd.predict(structures), gpu.predict(structures)):
        np.testing.assert_allclose(b.coefficients, a.coefficients, rtol=0, atol=1e-10)
        np.testing.assert_allclose(b.density(points), a.density(points), rtol=1e-9, atol=1e-12)


def test_write_cube(dcd, tcd, chks, tmp_path):
    s = _water(chks)
    [p] = dcd.predict(s)
    written = p.write_cube(str(tmp_path / "c"), spacing=0.5, margin=2.0)
    assert sorted(written) == ["difference", "total"]
    [q] = tcd.predict(s)
    assert sorted(q.write_cube(str(tmp_path / "c2"), spacing=0.5, margin=2.0)) == ["total"]


def test_api_refuses_bad_structures(dcd, models, monkeypatch, tmp_path):
    from ase import Atoms

    with pytest.raises(InputError, match=r"structure sulfur: element S \(Z=16\)"):
        dcd.predict(Atoms("SH2", positions=[[0, 0, 0], [0, 0.96, 0.9], [0, -0.96, 0.9]], info={"name": "sulfur"}))
    cation = Atoms("NH4", positions=[[0, 0, 0], [0.63, 0.63, 0.63], [-0.63, -0.63, 0.63],
                                     [-0.63, 0.63, -0.63], [0.63, -0.63, -0.63]], info={"charge": 1, "name": "nh4"})
    with pytest.raises(InputError, match="nh4: charge \\+1.*neutral closed-shell"):
        dcd.predict(cation)
    with pytest.raises(InputError, match="methyl: .*2S=1"):
        dcd.predict(Atoms("CH3", positions=[[0, 0, 0], [1.08, 0, 0], [-0.54, 0.94, 0], [-0.54, -0.94, 0]],
                          info={"name": "methyl"}))
    with pytest.raises(InputError, match="cannot predict a str"):
        dcd.predict(["water.xyz"])
    # unknown built-in name: one line listing what is available
    import densitylearn.predict as P

    monkeypatch.setattr(P, "pretrained_dir", lambda: str(tmp_path))
    with pytest.raises(InputError, match="unknown model 'qm9-dcd'.*available: none installed"):
        load_model("qm9-dcd")
    (tmp_path / "tiny.pt").write_bytes(open(models["total"], "rb").read())
    assert load_model("tiny", device="cpu").target == "total"
    with pytest.raises(InputError, match="unknown model 'qm9-dcd'; available: tiny"):
        load_model("qm9-dcd")
    with pytest.raises(InputError, match="nothing.pt: no such checkpoint file"):
        load_model(str(tmp_path / "nothing.pt"))


def test_cli_writes_a_prediction_file_that_evaluate_accepts(models, chks, tmp_path, capsys):
    from densitylearn.evaluate import evaluate_file

    for target, path in models.items():
        out = tmp_path / f"{target}.h5"
        assert cli.main(["predict", path, *chks, "--out", str(out), "--quiet", "--device", "cpu",
                         "--batch-size", "2", "--cube", str(tmp_path / "cubes" / target),
                         "--cube-spacing", "0.6", "--cube-margin", "2"]) == 0
        assert "predicted 3 structures" in capsys.readouterr().out
        with h5py.File(out, "r") as f:
            assert f.attrs["kind"] == "prediction"
            assert json.loads(f.attrs["targets"]) == [target]
            assert bool(f.attrs["saed_definition"]) == (target == "difference")
            assert json.loads(f.attrs["model"])["target"] == target
            assert f.attrs["xc"] == "pbe" and f.attrs["checkpoint"].endswith("best.pt")
            assert sorted(f["source"].asstr()[:]) == sorted(chks)
        n_cubes = len(list((tmp_path / "cubes" / target).glob("*.cube")))
        assert n_cubes == (6 if target == "difference" else 3)
    # the evaluate command runs on the DCD file and finds the references through 'source'
    report = tmp_path / "dcd.json"
    assert cli.main(["evaluate", str(tmp_path / "difference.h5"), "--grid-level", "1", "--quiet",
                     "--json", str(report)]) == 0
    rows = json.loads(report.read_text())["structures"]
    assert len(rows) == 3 and all(np.isfinite(r["eps_mae_difference"]) for r in rows)
    # the DCD density includes the SAED: the coefficients alone hold ~0 electrons (error ~100 %)
    assert all(r["eps_mae_difference"] < 60 for r in rows)
    tcd = evaluate_file(str(tmp_path / "total.h5"), grid_level=1, progress=False, limit=1)
    assert tcd["targets"] == ["TCD"] and np.isfinite(tcd["structures"][0]["eps_mae_total"])


def test_cli_bad_inputs_exit_2(models, chks, tmp_path, capsys):
    def err(*argv):
        rc = cli.main(["predict", *argv, "--out", str(tmp_path / "p.h5"), "--quiet", "--device", "cpu"])
        msg = capsys.readouterr().err.strip()
        assert rc == 2 and len(msg.splitlines()) == 1, msg
        return msg

    assert "unknown model 'no-such-model'" in err("no-such-model", *chks)
    assert "available:" in err("no-such-model", *chks)
    sulfur = tmp_path / "h2s.xyz"
    sulfur.write_text("3\n\nS 0 0 0\nH 0 0.96 0.9\nH 0 -0.96 0.9\n")
    assert "h2s: element S (Z=16)" in err(models["difference"], str(sulfur))
    junk = tmp_path / "junk.xyz"
    junk.write_text("this is not\nan xyz file\n")
    assert "junk.xyz: cannot read structures" in err(models["difference"], str(junk))
    assert "no such file" in err(models["difference"], str(tmp_path / "missing.xyz"))
    radical = tmp_path / "methyl.xyz"
    radical.write_text("4\n\nC 0 0 0\nH 1.08 0 0\nH -0.54 0.94 0\nH -0.54 -0.94 0\n")
    assert "methyl: charge +0, 2S=1, but the model supports neutral closed-shell" in err(models["total"], str(radical))
    cation = tmp_path / "nh4.xyz"
    cation.write_text('5\ncharge=1\nN 0 0 0\nH 0.63 0.63 0.63\nH -0.63 -0.63 0.63\nH -0.63 0.63 -0.63\n'
                      'H 0.63 -0.63 -0.63\n')
    assert "nh4: charge +1" in err(models["total"], str(cation))
    assert not (tmp_path / "p.h5").exists()  # nothing written on refusal


def test_export_writes_a_slim_model_that_predicts_the_same(models, dcd, chks, tmp_path, capsys):
    card = tmp_path / "card.json"
    card.write_text(json.dumps({"training": "3 toy molecules", "heldout_eps_mae": None}))
    out = tmp_path / "slim.pt"
    assert cli.main(["export", models["difference"], str(out), "--card", str(card)]) == 0
    assert "parameters" in capsys.readouterr().out
    import os

    assert os.path.getsize(out) < 0.6 * os.path.getsize(models["difference"])  # no optimiser, no raw weights
    slim = load_model(str(out), device="cpu")
    assert slim.description["card"]["training"] == "3 toy molecules"
    assert "/" not in slim.description["training_dataset"]["path"]  # no absolute paths of the exporter
    s = _water(chks)
    a, b = dcd.predict(s)[0], slim.predict(s)[0]
    np.testing.assert_array_equal(a.coefficients, b.coefficients)
    # bad input: one line, exit 2, nothing overwritten
    card.write_text("[1, 2]")
    assert cli.main(["export", models["difference"], str(tmp_path / "x.pt"), "--card", str(card)]) == 2
    assert "card.json: the model card must be a JSON object" in capsys.readouterr().err
    assert cli.main(["export", models["difference"], str(out)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()
