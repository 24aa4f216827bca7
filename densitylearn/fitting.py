"""Density fitting of PySCF density matrices onto an auxiliary basis (plain functions).

Given an orbital-basis density matrix D, the fitted density rho_fit = sum_P c_P chi_P
minimises the metric error ||rho - rho_fit||_M:

* Coulomb metric (default): ``c = J^-1 b`` with ``J_PQ = (P|Q)`` and ``b_P = sum_mn (P|mn) D_mn``
  (two-electron Coulomb integrals). This is the fit PySCF's density-fitted J uses.
* overlap metric: ``c = S^-1 b`` with ``S_PQ = <P|Q>`` and ``b_P = sum_mn <P mn> D_mn``.

With the electron-count constraint the fit is the metric-closest density whose integral
is exactly ``N``: ``c = c0 + lam M^-1 q`` with ``q_P = int chi_P`` and
``lam = (N - q.c0) / (q.M^-1 q)``. The fit is linear in D (also with the constraint when the
target count is linear in D), so the difference-density coefficients are
``fit(D, N) - fit(D_saed, sum Z) = fit(D - D_saed, N - sum Z)``.

Coefficients are in the :class:`densitylearn.basis.AuxBasis` layout (PySCF order).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .basis import AuxBasis
from .errors import InputError

METRICS = ("coulomb", "overlap")

_INTOR = {"coulomb": ("int3c2e", "int2c2e"), "overlap": ("int3c1e", "int1e_ovlp")}


def make_auxmol(mol, basis: AuxBasis):
    """A PySCF Mole with ``basis`` on ``mol``'s atoms (same geometry, AO order = our layout)."""
    from pyscf import gto

    auxmol = gto.Mole()
    auxmol.atom = mol._atom
    auxmol.unit = "Bohr"
    auxmol.basis = basis.to_pyscf_basis()
    auxmol.charge = 0
    auxmol.spin = None
    auxmol.cart = False
    auxmol.verbose = 0
    auxmol.build()
    return auxmol


def structure_metric(basis: AuxBasis, numbers, positions, metric: str = "coulomb") -> np.ndarray:
    """Metric matrix of a structure's auxiliary functions, shape (n_functions, n_functions).

    ``(P|Q)`` (Coulomb, hartree-weighted) or ``<P|Q>`` (overlap); positions in bohr. For an
    error density with coefficients e, ``e @ M @ e`` is its Coulomb self-energy (hartree,
    times 2) or its squared L2 norm (e^2/bohr^3).
    """
    from pyscf import gto

    from ase.data import chemical_symbols

    auxmol = gto.Mole()
    auxmol.atom = [(chemical_symbols[int(z)], tuple(p)) for z, p in
                   zip(np.asarray(numbers).reshape(-1), np.asarray(positions, dtype=np.float64))]
    auxmol.unit = "Bohr"
    auxmol.basis = basis.to_pyscf_basis()
    auxmol.spin = None
    auxmol.verbose = 0
    auxmol.build()
    return metric_matrix(auxmol, metric)


def metric_matrix(auxmol, metric: str = "coulomb") -> np.ndarray:
    """The two-centre metric, shape (naux, naux): ``(P|Q)`` or ``<P|Q>``."""
    _check_metric(metric)
    return auxmol.intor(_INTOR[metric][1])


def project_density_matrices(mol, auxmol, dms, metric: str = "coulomb",
                             max_memory_mb: float = 500.0) -> np.ndarray:
    """``b_P = sum_mn (P|mn) D_mn`` (or ``<P mn>``) for each density matrix, shape (n_dm, naux).

    Three-centre integrals are computed in blocks of auxiliary shells (s2ij packing) so that
    memory stays below ``max_memory_mb``.
    """
    from pyscf import lib
    from pyscf.df import incore

    _check_metric(metric)
    dms = np.asarray(dms, dtype=np.float64)
    if dms.ndim == 2:
        dms = dms[None]
    nao = mol.nao
    if dms.shape[1:] != (nao, nao):
        raise InputError(f"density matrices have shape {dms.shape[1:]}, the molecule has {nao} AOs")
    # pack symmetric D so that sum_{m>=n} (2 - delta_mn) D_mn (mn|P) = sum_mn D_mn (mn|P)
    packed = np.stack([lib.pack_tril(d + d.T - np.diag(np.diag(d))) for d in dms])
    npair = packed.shape[1]
    ao_loc = auxmol.ao_loc_nr()
    max_cols = max(1, int(max_memory_mb * 1e6 / 8 / npair))
    out = np.empty((len(dms), auxmol.nao))
    intor = _INTOR[metric][0]
    s0 = 0
    while s0 < auxmol.nbas:
        s1 = s0 + 1
        while s1 < auxmol.nbas and ao_loc[s1 + 1] - ao_loc[s0] <= max_cols:
            s1 += 1
        ints = incore.aux_e2(mol, auxmol, intor=intor, aosym="s2ij",
                             shls_slice=(0, mol.nbas, 0, mol.nbas, s0, s1))
        out[:, ao_loc[s0]:ao_loc[s1]] = packed @ ints.reshape(npair, -1)
        s0 = s1
    return out


class MetricSolver:
    """Solves ``M x = b`` for a symmetric positive (semi)definite metric.

    Cholesky when it succeeds; otherwise an eigendecomposition that drops directions with
    eigenvalues below ``lindep * max eigenvalue`` (near-linear dependence in large
    even-tempered sets), stated in :attr:`dropped`.
    """

    def __init__(self, m: np.ndarray, lindep: float = 1e-13):
        import scipy.linalg

        self.dropped = 0
        try:
            self._cho = scipy.linalg.cho_factor(m, lower=True, check_finite=False)
            self._eig = None
        except np.linalg.LinAlgError:
            w, v = np.linalg.eigh(m)
            keep = w > lindep * w.max()
            self.dropped = int((~keep).sum())
            self._cho = None
            self._eig = (w[keep], v[:, keep])

    def solve(self, b: np.ndarray) -> np.ndarray:
        import scipy.linalg

        b = np.asarray(b, dtype=np.float64)
        if self._cho is not None:
            return scipy.linalg.cho_solve(self._cho, b.T, check_finite=False).T
        w, v = self._eig
        return ((b @ v) / w) @ v.T


def fit_coefficients(b: np.ndarray, solver: MetricSolver, q: np.ndarray | None = None,
                     n_electrons=None) -> np.ndarray:
    """Coefficients from projections ``b`` (shape (k, naux) or (naux,)).

    With ``n_electrons`` (scalar or (k,)) and ``q`` (``int chi_P``, shape (naux,)), each fit is
    constrained to integrate to its electron count.
    """
    c = solver.solve(b)
    if n_electrons is None:
        return c
    if q is None:
        raise ValueError("the electron-count constraint needs q = int chi_P")
    minv_q = solver.solve(q)
    lam = (np.asarray(n_electrons, dtype=np.float64) - c @ q) / (q @ minv_q)
    return c + np.multiply.outer(lam, minv_q) if np.ndim(lam) else c + lam * minv_q


def electron_integrals(basis: AuxBasis, numbers) -> np.ndarray:
    """``q_P = int chi_P dr`` for a structure's coefficient layout, shape (n_functions,)."""
    return np.concatenate([basis.s_integrals(int(z)) for z in np.asarray(numbers).reshape(-1)])


@dataclass
class FitResult:
    """Density-fitting coefficients of one structure (PySCF order, :class:`AuxBasis` layout).

    Attributes
    ----------
    total : ndarray, shape (n_functions,)
        Fit of the total density (TCD target).
    saed : ndarray, shape (n_functions,)
        Fit of the SAED density (not used at reconstruction, where SAED is analytic).
    metric : str
        ``'coulomb'`` or ``'overlap'``.
    constrained : bool
        Whether each fit integrates exactly to its electron count.
    """

    total: np.ndarray
    saed: np.ndarray
    metric: str
    constrained: bool

    @property
    def difference(self) -> np.ndarray:
        """Coefficients of the difference density rho_t - rho_SAED (DCD target)."""
        return self.total - self.saed


def fit_reference(mol, dm: np.ndarray, dm_saed: np.ndarray, basis: AuxBasis,
                  metric: str = "coulomb", constrain: bool = True, auxmol=None) -> FitResult:
    """Fit a molecule's total density matrix and its SAED density matrix in one pass.

    Parameters
    ----------
    mol : pyscf.gto.Mole
        The orbital-basis molecule of the reference calculation.
    dm : ndarray, shape (nao, nao)
        Total (spin-summed) density matrix.
    dm_saed : ndarray, shape (nao, nao)
        Block-diagonal SAED density matrix (:func:`densitylearn.saed.saed_density_matrix`).
    basis : AuxBasis
        Auxiliary basis covering the molecule's elements.
    metric : {'coulomb', 'overlap'}
    constrain : bool
        Constrain the total fit to N electrons and the SAED fit to sum(Z).
    """
    if auxmol is None:
        auxmol = make_auxmol(mol, basis)
    numbers = np.array([int(round(z)) for z in mol.atom_charges()])
    b = project_density_matrices(mol, auxmol, [dm, dm_saed], metric)
    solver = MetricSolver(metric_matrix(auxmol, metric))
    if constrain:
        q = electron_integrals(basis, numbers)
        counts = [float(mol.nelectron), float(numbers.sum())]
        c = fit_coefficients(b, solver, q, counts)
    else:
        c = fit_coefficients(b, solver)
    return FitResult(total=c[0], saed=c[1], metric=metric, constrained=constrain)


def coulomb_matrix(mol, auxmol, coefficients: np.ndarray) -> np.ndarray:
    """Orbital-basis Coulomb matrix of a fitted density: ``J_mn = sum_P (mn|P) c_P``, (nao, nao)."""
    from pyscf import lib
    from pyscf.df import incore

    ints = incore.aux_e2(mol, auxmol, intor="int3c2e", aosym="s2ij")
    return lib.unpack_tril(ints @ np.asarray(coefficients, dtype=np.float64))


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise InputError(f"unknown fitting metric {metric!r}; choose one of {', '.join(METRICS)}")
