"""``densitylearn fit-basis`` end to end on real PySCF references (H2O, NH3, CH4)."""

import os

import numpy as np
import pytest

from densitylearn import cli
from densitylearn.data import CoefficientDataset
from densitylearn.fitting import electron_integrals

from conftest import FIT


def test_fit_basis_writes_both_targets_and_floors(chks, tmp_path, capsys):
    out = tmp_path / "data.h5"
    assert cli.main(["fit-basis", *chks, "--out", str(out), *FIT]) == 0
    printed = capsys.readouterr().out
    assert "3 structures" in printed and "DCD" in printed
    ds = CoefficientDataset(str(out))
    assert len(ds) == 3 and set(ds.targets) == {"total", "saed"}
    attrs = ds.header()
    assert attrs["xc"] == "pbe" and attrs["orbital_basis"] == "def2-svp" and attrs["metric"] == "coulomb"
    assert attrs["saed_hash"] and attrs["auxbasis_name"] == "def2-universal-jfit"
    for i in range(len(ds)):
        rec = ds[i]
        q = electron_integrals(ds.basis, rec["numbers"])
        assert q @ rec["coef_total"] == pytest.approx(rec["numbers"].sum(), abs=1e-8)
        assert q @ ds.coefficients(i, "difference") == pytest.approx(0.0, abs=1e-8)
        # the difference density is easier to fit than the total density
        assert 0 < rec["eps_mae_difference"] < rec["eps_mae_total"] < 5.0
        assert np.isfinite(rec["energy"]) and rec["source"].endswith(".chk")
    assert not os.path.exists(str(out) + ".parts")


def test_interrupted_run_resumes_and_never_leaves_a_partial_file(chks, tmp_path, capsys):
    out = tmp_path / "data.h5"
    bad = tmp_path / "zz_broken.chk"
    bad.write_bytes(b"not an hdf5 file")
    rc = cli.main(["fit-basis", *chks, str(bad), "--out", str(out), *FIT])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "zz_broken.chk" in err[0]
    assert not out.exists()
    parts = sorted((tmp_path / "data.h5.parts").iterdir())
    assert len(parts) == 3  # the good structures were kept
    stamps = [p.stat().st_mtime_ns for p in parts]
    assert cli.main(["fit-basis", *chks, "--out", str(out), *FIT]) == 0
    assert len(CoefficientDataset(str(out))) == 3
    # reruns refuse to clobber a finished dataset
    assert cli.main(["fit-basis", *chks, "--out", str(out), *FIT]) == 2
    assert "exists" in capsys.readouterr().err
    assert stamps  # parts were reused (the second run found them all done)


def test_shards_merge_to_the_full_dataset(chks, tmp_path):
    full = tmp_path / "full.h5"
    assert cli.main(["fit-basis", *chks, "--out", str(full), *FIT]) == 0
    shards = []
    for i in range(2):
        p = tmp_path / f"shard{i}.h5"
        assert cli.main(["fit-basis", *chks, "--out", str(p), "--shard", f"{i}/2", *FIT]) == 0
        shards.append(str(p))
    merged = tmp_path / "merged.h5"
    assert cli.main(["merge", *shards, "--out", str(merged)]) == 0
    a, b = CoefficientDataset(str(full)), CoefficientDataset(str(merged))
    assert sorted(a.column("name")) == sorted(b.column("name"))
    for i, name in enumerate(a.column("name")):
        j = list(b.column("name")).index(name)
        np.testing.assert_allclose(a[i]["coef_total"], b[j]["coef_total"], atol=1e-12)
        np.testing.assert_allclose(a[i]["coef_saed"], b[j]["coef_saed"], atol=1e-12)


def test_bad_inputs(chks, tmp_path, capsys):
    assert cli.main(["fit-basis", str(tmp_path / "missing.chk"), "--out", str(tmp_path / "x.h5")]) == 2
    assert "missing.chk" in capsys.readouterr().err
    assert cli.main(["fit-basis", chks[0], "--out", str(tmp_path / "x.h5"), "--auxbasis", "nonsense-fit"]) == 2
    assert "nonsense-fit" in capsys.readouterr().err
    assert cli.main(["fit-basis", chks[0], "--out", str(tmp_path / "x.h5"), "--shard", "3/2"]) == 2


def test_no_floors_stores_nan_and_the_same_coefficients(chks, fit_dataset, tmp_path):
    out = tmp_path / "nofloor.h5"
    assert cli.main(["fit-basis", *chks, "--out", str(out), "--no-floors", *FIT]) == 0
    ds, ref = CoefficientDataset(str(out)), CoefficientDataset(fit_dataset)
    assert np.isnan(ds.column("eps_mae_total")).all()
    np.testing.assert_array_equal(ds[0]["coef_total"], ref[0]["coef_total"])
