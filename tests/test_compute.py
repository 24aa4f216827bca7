"""Tests of ``densitylearn compute`` and :mod:`densitylearn.reference` on tiny molecules.

Everything runs in-process through :func:`densitylearn.cli.main` with STO-3G and grid
level 1, so the whole file takes seconds on two cores.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

from densitylearn import cli
from densitylearn.units import ANGSTROM_BOHR

FAST = ["--basis", "sto-3g", "--grid-level", "1", "--no-progress"]

H2O = "3\nwater\nO 0.0 0.0 0.1173\nH 0.0 0.7572 -0.4692\nH 0.0 -0.7572 -0.4692\n"
H2 = "2\nhydrogen\nH 0.0 0.0 0.0\nH 0.0 0.0 0.74\n"
NH3 = ("4\nammonia\nN 0.0 0.0 0.1162\nH 0.0 0.9397 -0.2711\nH 0.8138 -0.4699 -0.2711\n"
       "H -0.8138 -0.4699 -0.2711\n")


def _write(path, text):
    path.write_text(text)
    return str(path)


def _main(capsys, *argv):
    rc = cli.main(["compute", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _rks_energy(xyz_text, basis="sto-3g", grid_level=1):
    from pyscf import dft, gto

    lines = xyz_text.strip().splitlines()[2:]
    mol = gto.M(atom="\n".join(lines), basis=basis, unit="Angstrom", verbose=0)
    mf = dft.RKS(mol)
    mf.xc = "pbe"
    mf.grids.level = grid_level
    mf.conv_tol = 1e-9
    return mf.kernel()


@pytest.fixture(scope="module")
def computed(tmp_path_factory):
    """H2O and H2 computed once (PBE/STO-3G, grid level 1), shared by several tests."""
    d = tmp_path_factory.mktemp("ref")
    h2o = _write(d / "h2o.xyz", H2O)
    h2 = _write(d / "h2.xyz", H2)
    out = str(d / "out")
    rc = cli.main(["compute", h2o, h2, "--out", out, *FAST])
    assert rc == 0
    return dict(dir=d, h2o=h2o, h2=h2, out=out)


def test_chkfile_energy_and_density(computed):
    from densitylearn.reference import Reference, load_reference, read_settings

    out = computed["out"]
    assert sorted(os.listdir(out)) == ["h2.chk", "h2o.chk"]  # no temporary files left
    ref = load_reference(os.path.join(out, "h2o.chk"))
    assert isinstance(ref, Reference)
    assert ref.e_tot == pytest.approx(_rks_energy(H2O), abs=1e-8)
    S = ref.mol.intor("int1e_ovlp")
    assert ref.dm.shape == (ref.mol.nao, ref.mol.nao) == (7, 7)
    assert np.trace(ref.dm @ S) == pytest.approx(10.0, abs=1e-8)
    np.testing.assert_allclose(ref.dm, ref.dm.T, atol=1e-12)
    assert (ref.xc, ref.basis, ref.grid_level, ref.converged) == ("pbe", "sto-3g", 1, True)
    assert ref.structure.name == "h2o" and ref.structure.source.endswith("h2o.xyz@0")
    assert ref.structure.numbers.tolist() == [8, 1, 1]
    np.testing.assert_allclose(ref.structure.positions[1], np.array([0.0, 0.7572, -0.4692]) * ANGSTROM_BOHR,
                               atol=1e-10)
    np.testing.assert_allclose(ref.mol.atom_coords(), ref.structure.positions, atol=1e-12)
    # the rebuilt Mole is fully usable, e.g. by PySCF's atomic KS (DESIGN section 4)
    assert ref.mol._ecpbas.shape[-1] == 8
    s = read_settings(ref.path)
    assert s["n_cycles"] >= 2 and s["wall_time_s"] > 0 and s["densitylearn_version"]
    assert s["restricted"] is True or s["restricted"] == 1

    h2 = load_reference(os.path.join(out, "h2.chk"))
    assert np.trace(h2.dm @ h2.mol.intor("int1e_ovlp")) == pytest.approx(2.0, abs=1e-8)


def test_rerun_skips_and_keeps_files(computed, capsys):
    paths = [os.path.join(computed["out"], n) for n in ("h2o.chk", "h2.chk")]
    before = [os.stat(p).st_mtime_ns for p in paths]
    rc, out, err = _main(capsys, computed["h2o"], computed["h2"], "--out", computed["out"], *FAST)
    assert rc == 0
    assert "0 computed, 2 skipped (already present), 0 failed, 0 unconverged" in out
    assert [os.stat(p).st_mtime_ns for p in paths] == before


def test_mismatched_settings_error_then_overwrite(computed, capsys, tmp_path):
    import shutil

    out = str(tmp_path / "out")
    shutil.copytree(computed["out"], out)
    mtime = os.stat(os.path.join(out, "h2.chk")).st_mtime_ns
    rc, _, err = _main(capsys, computed["h2"], "--out", out, "--basis", "6-31g", "--grid-level", "1",
                       "--no-progress")
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "h2.chk" in err and "--overwrite" in err and "another --out" in err
    assert os.stat(os.path.join(out, "h2.chk")).st_mtime_ns == mtime
    rc, out_txt, _ = _main(capsys, computed["h2"], "--out", out, "--basis", "6-31g", "--grid-level", "1",
                           "--no-progress", "--overwrite")
    assert rc == 0 and "1 computed" in out_txt
    from densitylearn.reference import load_reference

    assert load_reference(os.path.join(out, "h2.chk")).basis == "6-31g"


def test_shards_split_a_multiframe_file(tmp_path, capsys):
    multi = _write(tmp_path / "mols.xyz", H2 + H2 + H2)  # frames mols_0, mols_1, mols_2
    out = str(tmp_path / "out")
    rc, txt, _ = _main(capsys, multi, "--out", out, "--shard", "1/2", *FAST)
    assert rc == 0 and "1 computed" in txt and "of 1 " in txt
    assert os.listdir(out) == ["mols_1.chk"]
    rc, txt, _ = _main(capsys, multi, "--out", out, "--shard", "0/2", "--workers", "2", *FAST)
    assert rc == 0 and "2 computed" in txt
    assert sorted(os.listdir(out)) == ["mols_0.chk", "mols_1.chk", "mols_2.chk"]
    rc, _, err = _main(capsys, multi, "--out", out, "--shard", "2/2", *FAST)
    assert rc == 2 and "--shard" in err


def test_unconverged_is_reported_and_not_kept(tmp_path, capsys):
    f = _write(tmp_path / "nh3.xyz", NH3)
    out = tmp_path / "out"
    rc, txt, err = _main(capsys, f, "--out", str(out), "--max-cycle", "1", *FAST)
    assert rc == 1
    assert "0 computed" in txt and "1 unconverged" in txt and "unconverged: nh3" in txt
    assert "not converged" in err and "nh3" in err
    assert sorted(os.listdir(out)) == ["nh3.unconverged.chk"]
    from densitylearn.reference import load_reference

    assert load_reference(str(out / "nh3.unconverged.chk")).converged is False


def test_open_shell_runs_unrestricted(tmp_path, capsys):
    from pyscf import dft, gto

    from densitylearn.reference import load_reference

    f = _write(tmp_path / "h.xyz", "1\nhydrogen atom\nH 0 0 0\n")
    rc, _, _ = _main(capsys, f, "--out", str(tmp_path / "out"), *FAST)
    assert rc == 0
    ref = load_reference(str(tmp_path / "out" / "h.chk"))
    assert ref.mol.spin == 1 and ref.structure.spin == 1
    assert np.trace(ref.dm @ ref.mol.intor("int1e_ovlp")) == pytest.approx(1.0, abs=1e-8)
    mf = dft.UKS(gto.M(atom="H 0 0 0", basis="sto-3g", spin=1, verbose=0))
    mf.xc, mf.grids.level, mf.conv_tol = "pbe", 1, 1e-9
    assert ref.e_tot == pytest.approx(mf.kernel(), abs=1e-8)


def test_library_api(tmp_path):
    from densitylearn.reference import compute_references, run_reference
    from densitylearn.structure import read_structures

    (s,) = read_structures(_write(tmp_path / "h2.xyz", H2))
    res = run_reference(s, basis="sto-3g", grid_level=1, return_objects=True)
    assert res["converged"] and res["e_tot"] == pytest.approx(res["mf"].e_tot)
    assert res["mol"].nao == 2 and res["restricted"]
    summary = compute_references([s], str(tmp_path / "out"), basis="sto-3g", grid_level=1,
                                 progress=False)
    assert summary["computed"] == ["h2"] and summary["failed"] == []
    assert summary["results"]["h2"]["e_tot"] == pytest.approx(res["e_tot"], abs=1e-10)


def test_chkfile_written_meanwhile_is_kept(computed, tmp_path):
    # another worker or machine finished the structure after this job was queued: the
    # job keeps that file instead of running the SCF again, and refuses one of other settings
    import shutil

    from densitylearn.errors import MismatchError
    from densitylearn.reference import compute_one
    from densitylearn.structure import read_structures

    (s,) = read_structures(computed["h2o"])
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(os.path.join(computed["out"], "h2o.chk"), out / "h2o.chk")
    before = os.stat(out / "h2o.chk").st_mtime_ns
    res = compute_one(s, str(out), basis="sto-3g", grid_level=1, skip_existing=True)
    assert res["status"] == "skipped" and os.stat(out / "h2o.chk").st_mtime_ns == before
    with pytest.raises(MismatchError, match="appeared meanwhile"):
        compute_one(s, str(out), basis="sto-3g", grid_level=2, skip_existing=True)


@pytest.mark.parametrize("case", ["missing", "garbage", "charge", "spin", "nan", "periodic",
                                  "bad_frame", "xc"])
def test_bad_inputs_one_line_exit_2(case, computed, tmp_path, capsys):
    out = computed["out"]
    before = {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in os.listdir(out)}
    extra = []
    if case == "missing":
        f = str(tmp_path / "nope.xyz")
    elif case == "garbage":
        f = _write(tmp_path / "junk.xyz", "this is\nnot a structure file\n")
    elif case == "charge":
        f, extra = computed["h2o"], ["--charge", "11"]
    elif case == "spin":
        f, extra = computed["h2o"], ["--spin", "1"]
    elif case == "nan":
        f = _write(tmp_path / "nan.xyz", "2\n\nH 0 0 0\nH 0 0 nan\n")
    elif case == "periodic":
        f = _write(tmp_path / "cell.xyz",
                   '2\nLattice="3 0 0 0 3 0 0 0 3" Properties=species:S:1:pos:R:3 pbc="T T T"\n'
                   "H 0 0 0\nH 2.99 0 0\n")
    elif case == "bad_frame":  # the bad structure comes after a good one: nothing is computed
        f = _write(tmp_path / "frames.xyz", H2 + "2\n\nH 0 0 0\nH 0 0 0.01\n")
    elif case == "xc":
        f, extra = computed["h2o"], ["--xc", "nosuchfunctional"]
    rc, _, err = _main(capsys, f, computed["h2"], "--out", out, *FAST, *extra)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("densitylearn compute: error:")
    if case != "xc":
        assert os.path.basename(f) in lines[0]
    if case == "periodic":
        assert "overlap through the periodic images" in lines[0]
    if case == "bad_frame":
        assert "frames_1" in lines[0]
    assert {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in os.listdir(out)} == before


def test_cuda_without_gpu4pyscf(computed, tmp_path, capsys):
    pytest.importorskip("pyscf")
    if importlib.util.find_spec("gpu4pyscf") is not None:
        pytest.skip("gpu4pyscf is installed")
    rc, _, err = _main(capsys, computed["h2"], "--out", str(tmp_path / "o"), "--device", "cuda", *FAST)
    assert rc == 2 and "densitylearn[gpu]" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_qm9_range(tmp_path, capsys):
    if importlib.util.find_spec("qm9pack") is None:
        pytest.skip("qm9pack not installed")
    out = tmp_path / "out"
    rc, txt, _ = _main(capsys, "--qm9", "1", "--out", str(out), *FAST)  # methane
    assert rc == 0 and os.listdir(out) == ["qm9_000001.chk"]
    from densitylearn.reference import load_reference

    ref = load_reference(str(out / "qm9_000001.chk"))
    assert ref.structure.source == "qm9:1"
    assert np.trace(ref.dm @ ref.mol.intor("int1e_ovlp")) == pytest.approx(10.0, abs=1e-8)


def test_qm9_selection_keeps_the_requested_order():
    """A seeded random sample is computed in its own order (an interrupted run then holds a
    random part of it, not the lowest indices); repeats are dropped."""
    from densitylearn.structure import parse_index_range, qm9_structures

    assert parse_index_range("7,3-5,4,1") == [7, 3, 4, 5, 1]
    if importlib.util.find_spec("qm9pack") is None:
        pytest.skip("qm9pack not installed")
    mols = qm9_structures([5, 2, 9, 2])
    assert [m.name for m in mols] == ["qm9_000005", "qm9_000002", "qm9_000009"]
    assert [len(m.numbers) for m in mols] == [3, 4, 7]  # HCN, ammonia, a 7-atom molecule


def test_no_inputs_is_an_error(tmp_path, capsys):
    rc, _, err = _main(capsys, "--out", str(tmp_path / "o"))
    assert rc == 2 and "--qm9" in err


# ----------------------------------------------------------------------------- model guesses
SVP_L1 = ["--grid-level", "1", "--no-progress"]  # the shipped models' basis (def2-svp), coarse grid


def test_model_guess_gives_the_same_reference_in_fewer_cycles(tmp_path, capsys):
    from densitylearn.reference import load_reference, read_settings

    h2o, nh3 = _write(tmp_path / "h2o.xyz", H2O), _write(tmp_path / "nh3.xyz", NH3)
    rc, _, _ = _main(capsys, h2o, nh3, "--out", str(tmp_path / "minao"), *SVP_L1)
    assert rc == 0
    rc, txt, _ = _main(capsys, h2o, nh3, "--out", str(tmp_path / "ml"), "--guess", "qm9-dcd", *SVP_L1)
    assert rc == 0 and "2 computed" in txt and "rerun from minao" not in txt
    for name in ("h2o", "nh3"):
        a, b = (os.path.join(tmp_path, d, f"{name}.chk") for d in ("minao", "ml"))
        sa, sb = read_settings(a), read_settings(b)
        assert sa["init_guess"] == "minao" and sb["init_guess"] == "densitylearn:qm9-dcd"
        assert not sb["guess_fallback"]
        assert 0 < sb["guess_s"] < sb["wall_time_s"]
        # the same converged SCF, reached in fewer cycles from the model's density
        assert sb["n_cycles"] < sa["n_cycles"]
        ra, rb = load_reference(a), load_reference(b)
        assert rb.e_tot == pytest.approx(ra.e_tot, abs=1e-8)
        assert np.abs(rb.dm - ra.dm).max() < 1e-4
    # a rerun keeps the files whatever guess asked for them
    rc, txt, _ = _main(capsys, h2o, nh3, "--out", str(tmp_path / "ml"), *SVP_L1)
    assert rc == 0 and "2 skipped" in txt


def test_model_guess_is_picklable_for_worker_processes(tmp_path):
    import pickle

    from densitylearn.properties import ModelGuess
    from densitylearn.structure import read_structures

    (s,) = read_structures(_write(tmp_path / "h2o.xyz", H2O))
    guess = ModelGuess("qm9-dcd", "PBE", "def2-SVP")
    again = pickle.loads(pickle.dumps(guess))
    mol = s.to_pyscf(basis="def2-svp")
    dm = again(s, mol)
    assert dm.shape == (mol.nao, mol.nao) and np.allclose(dm, dm.T)
    assert np.trace(dm @ mol.intor("int1e_ovlp")) == pytest.approx(10.0, abs=1e-8)
    assert np.allclose(dm, guess(s, mol), atol=1e-12)


def test_model_guess_that_does_not_converge_falls_back_to_minao(tmp_path, capsys):
    f = _write(tmp_path / "nh3.xyz", NH3)
    out = tmp_path / "out"
    # one cycle to 1e-13 hartree: the guess (its mixing steps bring NH3 close on this coarse
    # grid) cannot make it, and neither can the minao rerun
    rc, txt, err = _main(capsys, f, "--out", str(out), "--guess", "qm9-dcd", "--max-cycle", "1",
                         "--conv-tol", "1e-13", *SVP_L1)
    assert rc == 1
    assert "1 unconverged" in txt and "1 rerun from minao" in txt and "guess_fallback: nh3" in txt
    assert "did not converge from the densitylearn:qm9-dcd guess; reran from minao" in err
    from densitylearn.reference import read_settings

    s = read_settings(str(out / "nh3.unconverged.chk"))
    assert s["guess_fallback"] and s["init_guess"] == "densitylearn:qm9-dcd" and s["n_cycles"] == 2


@pytest.mark.parametrize("case", ["unknown_model", "element", "xc", "open_shell", "periodic", "override_alone"])
def test_model_guess_bad_input_one_line_exit_2(case, tmp_path, capsys):
    f, extra = _write(tmp_path / "h2o.xyz", H2O), ["--guess", "qm9-dcd"]
    if case == "unknown_model":
        extra = ["--guess", "no-such-model"]
    elif case == "element":
        f = _write(tmp_path / "hcl.xyz", "2\nhydrogen chloride\nH 0 0 0\nCl 0 0 1.27\n")
    elif case == "xc":
        extra += ["--xc", "lda"]
    elif case == "open_shell":
        f = _write(tmp_path / "oh.xyz", "2\nhydroxyl\nO 0 0 0\nH 0 0 0.97\n")
    elif case == "periodic":
        f = _write(tmp_path / "cell.xyz",
                   '2\nLattice="4 0 0 0 4 0 0 0 4" Properties=species:S:1:pos:R:3 pbc="T T T"\n'
                   "H 0 0 0\nH 0.74 0 0\n")
    elif case == "override_alone":
        extra = ["--guess-override"]
    out = tmp_path / "out"
    rc, _, err = _main(capsys, f, "--out", str(out), *extra, *SVP_L1)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("densitylearn compute: error:"), err
    expect = {"unknown_model": "qm9-dcd", "element": "hcl", "xc": "--guess-override", "open_shell": "closed-shell",
              "periodic": "closed-shell", "override_alone": "--guess MODEL"}[case]
    assert expect in lines[0]
    assert not out.exists() or not os.listdir(out)


def _qm9_benchmark_script():
    spec = importlib.util.spec_from_file_location(
        "qm9_delta_saed_benchmark", os.path.join(os.path.dirname(__file__), "..", "examples",
                                                 "qm9_delta_saed_benchmark.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_qm9_enrichment_by_element_count():
    """``--enrich``: ``F:30`` draws molecules with F, ``N3:K`` those with at least 3 N; an
    added part never changes the draw before it (the shipped models' F:30 stays the same)."""
    import argparse

    bench = _qm9_benchmark_script()
    assert bench.enrich_spec("F:30,N3:4") == "F:30,N3:4"
    assert bench.enrich_spec("F:30,NO2:20") == "F:30,NO2:20"
    assert bench.nitro_groups("O=N(=O)C1=CC=CO1") == bench.nitro_groups("NC1=NOC(=C1)N(=O)=O") == 1
    assert bench.nitro_groups("CC(=O)N=O") == bench.nitro_groups("O=NC=O") == 0  # nitroso, amide: not nitro
    for bad in ("N0:3", "X:3", "N3:0", "N3", "N:", "n3:4", "NO:3", "NO2:0"):
        with pytest.raises(argparse.ArgumentTypeError):
            bench.enrich_spec(bad)
    if importlib.util.find_spec("qm9pack") is None:
        pytest.skip("qm9pack not installed")
    from densitylearn.structure import QM9_HELDOUT_START, qm9_structures

    exclude = list(range(1, 3000, 7))
    f_only = bench.enrichment("F:5", 0, exclude)
    both = bench.enrichment("F:5,N3:6", 0, exclude)
    assert both[:5] == f_only and len(both) == 11 and len(set(both)) == 11
    assert all(i < QM9_HELDOUT_START and i not in exclude for i in both)
    mols = qm9_structures(both)
    assert all(9 in m.numbers for m in mols[:5])
    assert all(int(np.sum(m.numbers == 7)) >= 3 for m in mols[5:])
    # nitro compounds: the training range has 21 of QM9's 139; NO2:K draws among them
    nitro = bench.enrichment("F:5,N3:6,NO2:30", 0, exclude)
    assert nitro[:11] == both and len(nitro) == 11 + 21 and max(nitro) < QM9_HELDOUT_START
    for m in qm9_structures(nitro[11:]):  # an N bonded to two terminal O atoms (distances in bohr)
        d = np.linalg.norm(m.positions[:, None] - m.positions[None], axis=-1)
        bonded = (d > 0) & (d < 2.6)
        assert any(sum(m.numbers[j] == 8 and bonded[j].sum() == 1 for j in np.where(bonded[i])[0]) == 2
                   for i in np.where(m.numbers == 7)[0])


def test_qm9_dimers_are_rigid_non_covalent_pairs():
    """examples/qm9_dimers.py: each dimer is two rigid QM9 monomers, every contact at >= 0.7 of
    the van der Waals sum except the one H...acceptor pair of an H-bond placement (1.75-2.5
    Angstrom from a polar H to N/O/F); the draw is seeded and a longer one extends a shorter."""
    if importlib.util.find_spec("qm9pack") is None:
        pytest.skip("qm9pack not installed")
    from ase.data import chemical_symbols

    from densitylearn.structure import ANGSTROM_BOHR, Structure, qm9_structures

    from conftest import load_example

    dim = load_example("qm9_dimers")
    idx = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25]
    pool = {int(m.source.split(":")[1]): ([chemical_symbols[z] for z in m.numbers], m.positions / ANGSTROM_BOHR)
            for m in qm9_structures(idx)}
    long = dim.make_dimers(30, 3, pool)
    short = dim.make_dimers(12, 3, pool)
    for (s1, x1, i1), (s2, x2, i2) in zip(short, long):
        assert s1 == s2 and i1 == i2 and np.array_equal(x1, x2)
    assert {info["mode"] for _, _, info in long} == {"hbond", "centroid", "random"}
    for sym, x, info in long:
        sa, xa = pool[info["qm9_a"]]
        sb, xb = pool[info["qm9_b"]]
        na = len(sa)
        assert sym == sa + sb
        for x0, xm in ((xa, x[:na]), (xb, x[na:])):  # rigid: internal distances unchanged
            d0 = np.linalg.norm(x0[:, None] - x0[None], axis=-1)
            d1 = np.linalg.norm(xm[:, None] - xm[None], axis=-1)
            assert np.allclose(d0, d1, atol=1e-8)
        sc = dim.contact_scales(sa, x[:na], sb, x[na:])
        assert np.isclose(sc.min(), info["min_contact_scale"], atol=1e-3)
        # two molecules by the library's own bond criterion, as the nscf command sees them
        dimer = Structure(numbers=[chemical_symbols.index(e) for e in sym], positions=x * ANGSTROM_BOHR)
        assert dimer.fragments().tolist() == [0] * na + [1] * (len(sym) - na)
        if info["mode"] == "hbond":
            d = np.linalg.norm(x[:na, None] - x[None, na:], axis=-1)
            hb = [(i, j) for i in dim.polar_h(sa, x[:na]) for j, s in enumerate(sb)
                  if s in ("N", "O", "F") and 1.75 - 1e-6 <= d[i, j] <= 2.5 + 1e-6]
            assert hb
            sc[tuple(np.array(hb).T)] = np.inf
        assert sc.min() >= dim.MIN_OTHER_SCALE - 1e-9


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name, None for a gone or zombie process."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            f = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if f[0] == "Z" else f


def _descendants(pid: int) -> list[int]:
    """Live (non-zombie) descendants of ``pid`` from /proc."""
    kids: dict[int, list[int]] = {}
    for d in filter(str.isdigit, os.listdir("/proc")):
        f = _proc_stat(int(d))
        if f is not None:
            kids.setdefault(int(f[1]), []).append(int(d))
    out, todo = [], [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _cpu_seconds(pid: int) -> float:
    f = _proc_stat(pid)
    return 0.0 if f is None else (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
def test_killed_compute_takes_its_workers_along(tmp_path):
    """``densitylearn compute --workers 2`` killed with SIGKILL mid-SCF: its pool workers end
    too (they would otherwise finish their SCFs for nobody, holding the cores a restarted run
    needs), and no chkfile appears after the kill."""
    import signal
    import subprocess
    import sys
    import time

    import ase.io
    from ase.build import molecule

    frames = []
    for k in range(4):
        m = molecule("CH3CH2OH")
        m.positions[0, 0] += 0.01 * k
        frames.append(m)
    ase.io.write(tmp_path / "eth.xyz", frames)
    out = tmp_path / "refs"
    code = "import sys; from densitylearn import cli; sys.exit(cli.main(sys.argv[1:]))"
    proc = subprocess.Popen([sys.executable, "-c", code, "compute", str(tmp_path / "eth.xyz"), "--out", str(out),
                             "--basis", "def2-tzvp", "--workers", "2", "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        deadline = time.time() + 120
        while time.time() < deadline:  # both workers past their imports and into an SCF
            busy = [p for p in _descendants(proc.pid) if _cpu_seconds(p) > 6.0]
            if len(busy) >= 2 or proc.poll() is not None:
                break
            time.sleep(0.2)
        assert proc.poll() is None and len(busy) >= 2, "the workers never got busy"
        workers = _descendants(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        t_kill = time.time()
        while time.time() < t_kill + 60 and any(_proc_stat(p) is not None for p in workers):
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
    alive = [p for p in workers if _proc_stat(p) is not None]
    for p in alive:
        os.kill(p, signal.SIGKILL)
    assert not alive, f"pool workers {alive} outlived the killed parent"
    late = [f for f in (os.listdir(out) if out.exists() else []) if f.endswith(".chk") and os.path.getmtime(out / f) > t_kill + 0.5]
    assert not late, f"chkfiles written after the kill: {late}"
