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


def random_rotation(seed=0, improper=False):
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return -q if improper else q
