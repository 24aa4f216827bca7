"""The HDF5 coefficient dataset: round trip, O(1) access, fork safety, mismatch errors."""

import json
import pickle

import numpy as np
import pytest

from densitylearn.basis import AuxBasis
from densitylearn.data import CoefficientDataset, make_header, merge_datasets, write_dataset
from densitylearn.errors import InputError, MismatchError


def _records(basis, n, seed=0, prefix="m"):
    rng = np.random.default_rng(seed)
    for i in range(n):
        numbers = rng.choice([1, 6, 8], size=rng.integers(2, 6))
        nf = int(basis.layout(numbers)[-1])
        yield {"numbers": numbers, "positions": rng.normal(size=(len(numbers), 3)) * 3,
               "charge": 0, "spin": int(numbers.sum() % 2), "energy": -float(i),
               "eps_mae_total": 1.0 + i, "eps_mae_difference": 0.5 + i,
               "coef_total": rng.normal(size=nf), "coef_saed": rng.normal(size=nf),
               "name": f"{prefix}{i}", "source": f"/data/{prefix}{i}.chk"}


@pytest.fixture(scope="module")
def basis():
    return AuxBasis.load("def2-universal-jfit", [1, 6, 8])


def _write(path, basis, n, seed=0, prefix="m"):
    attrs = make_header(basis, kind="fit", targets=("total", "saed"), metric="coulomb",
                        constrained=True, xc="pbe", orbital_basis="def2-svp", grid_level=3)
    return write_dataset(str(path), attrs, _records(basis, n, seed, prefix))


def test_round_trip_and_random_access(tmp_path, basis):
    path = tmp_path / "d.h5"
    assert _write(path, basis, 1500, seed=1) == 1500  # more than one write buffer
    ds = CoefficientDataset(str(path), expect_basis=basis)
    expected = list(_records(basis, 1500, seed=1))
    assert len(ds) == 1500
    for i in (0, 1, 1023, 1024, 1499, -1):
        rec, ref = ds[i], expected[i]
        np.testing.assert_array_equal(rec["numbers"], ref["numbers"])
        np.testing.assert_array_equal(rec["positions"], ref["positions"])
        np.testing.assert_array_equal(rec["coef_total"], ref["coef_total"])
        np.testing.assert_array_equal(ds.coefficients(i % 1500, "difference"),
                                      ref["coef_total"] - ref["coef_saed"])
        assert rec["name"] == ref["name"] and rec["source"] == ref["source"]
        assert rec["energy"] == ref["energy"] and rec["spin"] == ref["spin"]
        assert rec["cell"].shape == (3, 3) and not rec["pbc"].any()
    attrs = ds.header()
    assert attrs["sh_order"] == "pyscf-real-spherical"
    assert json.loads(attrs["units"])["positions"] == "bohr"
    assert "pyscf" in json.loads(attrs["versions"])
    assert ds.basis.hash == basis.hash
    s = ds.summary()
    assert s["structures"] == 1500 and s["eps_mae_total_mean"] > s["eps_mae_difference_mean"]
    with pytest.raises(IndexError):
        ds[1500]


def test_pickled_reader_reopens_in_workers(tmp_path, basis):
    import multiprocessing as mp

    path = tmp_path / "d.h5"
    _write(path, basis, 20)
    ds = CoefficientDataset(str(path))
    first = ds[3]["coef_total"]  # opens the handle in this process
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._file is None
    with mp.get_context("fork").Pool(2) as pool:
        out = pool.map(_read_coef, [(clone, 3), (clone, 7)])
    np.testing.assert_array_equal(out[0], first)
    assert len(out[1]) == len(ds[7]["coef_total"])


def test_reader_in_memory_gives_the_same_records_as_copies(tmp_path, basis):
    path = tmp_path / "d.h5"
    _write(path, basis, 30, seed=2)
    disk = CoefficientDataset(str(path))
    mem = CoefficientDataset(str(path)).load_into_memory()
    assert mem.in_memory and not disk.in_memory
    for i in (0, 11, 29):
        a, b = disk[i], mem[i]
        assert a.keys() == b.keys()
        for k in a:
            if isinstance(a[k], np.ndarray):
                np.testing.assert_array_equal(a[k], b[k])
                assert a[k].dtype == b[k].dtype
            else:
                assert a[k] == b[k] and type(a[k]) is type(b[k])
    assert mem.elements == disk.elements
    np.testing.assert_array_equal(mem.column("name"), disk.column("name"))
    np.testing.assert_array_equal(mem.coefficients(5, "difference"), disk.coefficients(5, "difference"))
    # records are copies: changing one (as a batch builder might) leaves the held file alone
    rec = mem[4]
    for k in ("positions", "coef_total", "coef_saed", "cell"):
        rec[k] += 1.0
    np.testing.assert_array_equal(mem[4]["positions"], disk[4]["positions"])
    np.testing.assert_array_equal(mem[4]["coef_total"], disk[4]["coef_total"])
    # a pickled in-memory reader (DataLoader worker, spawned rank) reads the file again itself
    clone = pickle.loads(pickle.dumps(mem))
    assert clone._file is None and clone.in_memory
    np.testing.assert_array_equal(clone[7]["coef_saed"], disk[7]["coef_saed"])
    assert isinstance(clone._file, dict)
    mem.close()
    np.testing.assert_array_equal(mem[2]["numbers"], disk[2]["numbers"])  # reloads after close


def _read_coef(args):
    ds, i = args
    return ds[i]["coef_total"]


def test_basis_mismatch_and_corrupt_files(tmp_path, basis):
    path = tmp_path / "d.h5"
    _write(path, basis, 5)
    other = AuxBasis.load("def2-universal-jkfit", [1, 6, 8])
    with pytest.raises(MismatchError, match="differs"):
        CoefficientDataset(str(path), expect_basis=other)
    with pytest.raises(MismatchError, match="no functions"):
        CoefficientDataset(str(path), expect_basis=basis.subset([1, 8]))
    with pytest.raises(MismatchError, match="SAED"):
        CoefficientDataset(str(path), expect_saed=object())  # the file has no SAED
    data = path.read_bytes()
    bad = tmp_path / "truncated.h5"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated.h5"):
        CoefficientDataset(str(bad))
    with pytest.raises(InputError, match="no such file"):
        CoefficientDataset(str(tmp_path / "missing.h5"))


def test_wrong_coefficient_length_is_rejected_and_nothing_written(tmp_path, basis):
    path = tmp_path / "d.h5"
    recs = list(_records(basis, 3))
    recs[2]["coef_saed"] = recs[2]["coef_saed"][:-1]
    attrs = make_header(basis, kind="fit", targets=("total", "saed"))
    with pytest.raises(InputError, match="m2"):
        write_dataset(str(path), attrs, recs)
    assert not path.exists() and not list(tmp_path.iterdir())


def test_merge_shards(tmp_path, basis):
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    _write(a, basis, 4, seed=1, prefix="a")
    _write(b, basis, 3, seed=2, prefix="b")
    n = merge_datasets([str(a), str(b)], str(tmp_path / "all.h5"))
    ds = CoefficientDataset(str(tmp_path / "all.h5"))
    assert n == len(ds) == 7
    np.testing.assert_array_equal(ds[5]["coef_total"], CoefficientDataset(str(b))[1]["coef_total"])
    with pytest.raises(MismatchError, match="more than one"):
        merge_datasets([str(a), str(a)], str(tmp_path / "dup.h5"))
    other = tmp_path / "o.h5"
    attrs = make_header(basis, kind="fit", targets=("total", "saed"), metric="overlap",
                        constrained=True, xc="pbe", orbital_basis="def2-svp", grid_level=3)
    write_dataset(str(other), attrs, _records(basis, 2, prefix="o"))
    with pytest.raises(MismatchError, match="metric"):
        merge_datasets([str(a), str(other)], str(tmp_path / "bad.h5"))


def test_atomic_writes_have_the_usual_permissions(tmp_path):
    """Files written through atomic_path get 0666 & ~umask, not mkstemp's private 0600."""
    import os

    from densitylearn.io_utils import atomic_path

    mask = os.umask(0o022)
    try:
        with atomic_path(str(tmp_path / "out.txt")) as tmp:
            with open(tmp, "w") as fh:
                fh.write("x")
    finally:
        os.umask(mask)
    assert (os.stat(tmp_path / "out.txt").st_mode & 0o777) == 0o644
    assert os.listdir(tmp_path) == ["out.txt"]
