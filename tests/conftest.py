"""Shared fixtures: small real molecules with real PySCF (no mocks of the physics)."""

import os

import numpy as np
import pytest

# keep PySCF/BLAS from oversubscribing the CI's two cores
os.environ.setdefault("OMP_NUM_THREADS", "2")

WATER = "O 0.000 0.000 0.117; H 0.000 0.757 -0.467; H 0.000 -0.757 -0.467"
AMMONIA = "N 0 0 0.116; H 0 0.939 -0.271; H 0.813 -0.470 -0.271; H -0.813 -0.470 -0.271"
METHANE = "C 0 0 0; H 0.629 0.629 0.629; H -0.629 -0.629 0.629; H -0.629 0.629 -0.629; H 0.629 -0.629 -0.629"


def run_rks(atom, basis="def2-svp", xc="pbe", level=1, conv_tol=1e-10, unit="Angstrom"):
    from pyscf import dft, gto

    mol = gto.M(atom=atom, basis=basis, verbose=0, unit=unit)
    mf = dft.RKS(mol, xc=xc)
    mf.grids.level = level
    mf.conv_tol = conv_tol
    mf.kernel()
    assert mf.converged
    return mol, mf


@pytest.fixture(scope="session")
def water_scf():
    return run_rks(WATER)


@pytest.fixture(scope="session")
def ammonia_scf():
    return run_rks(AMMONIA)


@pytest.fixture(scope="session")
def saed_cache(tmp_path_factory):
    """A session-wide SAED cache folder (never the user's home)."""
    return str(tmp_path_factory.mktemp("saed_cache"))


SMALL_XYZ = ("3\nwater\nO 0.0 0.0 0.1173\nH 0.0 0.7572 -0.4692\nH 0.0 -0.7572 -0.4692\n"
             "4\nammonia\nN 0.0 0.0 0.1162\nH 0.0 0.9397 -0.2711\nH 0.8138 -0.4699 -0.2711\n"
             "H -0.8138 -0.4699 -0.2711\n"
             "5\nmethane\nC 0 0 0\nH 0.6291 0.6291 0.6291\nH -0.6291 -0.6291 0.6291\n"
             "H -0.6291 0.6291 -0.6291\nH 0.6291 -0.6291 -0.6291\n")

#: fit-basis options for fast tests (floors on a level-1 grid)
FIT = ["--auxbasis", "def2-universal-jfit", "--floor-grid-level", "1", "--quiet"]


@pytest.fixture(autouse=True)
def _saed_cache_env(monkeypatch, saed_cache):
    """Every test uses the session's SAED cache, never the user's home."""
    monkeypatch.setenv("DENSITYLEARN_CACHE", saed_cache)


@pytest.fixture(scope="session")
def chks(tmp_path_factory, saed_cache):
    """PBE/def2-SVP reference chkfiles of water, ammonia and methane (level-1 SCF grid)."""
    from densitylearn import cli

    root = tmp_path_factory.mktemp("refs")
    xyz = root / "mols.xyz"
    xyz.write_text(SMALL_XYZ)
    assert cli.main(["compute", str(xyz), "--out", str(root / "chk"), "--grid-level", "1",
                     "--no-progress"]) == 0
    return sorted(str(p) for p in (root / "chk").glob("*.chk"))


@pytest.fixture(scope="session")
def fit_dataset(chks, tmp_path_factory, saed_cache):
    """A fit-basis dataset of the three small molecules."""
    from densitylearn import cli

    os.environ["DENSITYLEARN_CACHE"] = saed_cache
    out = tmp_path_factory.mktemp("fit") / "data.h5"
    assert cli.main(["fit-basis", *chks, "--out", str(out), *FIT]) == 0
    return str(out)


def random_rotation(seed=0, improper=False):
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return -q if improper else q


def reweighted(z: int, powers, exponents, weights, rel: float) -> np.ndarray:
    """SAED weights changed by ``rel`` with alternating signs and rescaled to integrate to
    ``z`` electrons again: a valid SAED that differs from the given one at about ``rel``."""
    from densitylearn.saed import radial_integrals

    p, b, w = (np.asarray(x, dtype=float) for x in (powers, exponents, weights))
    w = w * (1.0 + rel * (-1.0) ** np.arange(w.size))
    return w * (z / float((w * radial_integrals(p.astype(int), b)).sum()))


def load_example(name: str):
    """Import ``examples/<name>.py`` as a module (the examples are scripts, not a package)."""
    import importlib.util

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location(name, os.path.join(root, "examples", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
