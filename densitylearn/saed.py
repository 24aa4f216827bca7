"""SAED: the superposition of spherically averaged neutral-atom electron densities.

This module is the one owner of the SAED definition (Delta-SAED learns
``rho_d = rho_total - rho_SAED``). For every element Z the atomic density comes from a
spherically averaged, spin-restricted neutral-atom Kohn-Sham calculation with the same
functional and orbital basis as the molecular reference
(``pyscf.scf.atom_ks.get_atm_nrks``, fractional occupations from PySCF's
``NRSRHFS_CONFIGURATION``). Its density matrix ``D = C diag(occ) C^T`` is turned into an
analytic radial Gaussian expansion (bohr, e/bohr^3)::

    rho_Z(r) = sum_k w_k r^(p_k) exp(-b_k r^2),      p_k = 2 l even

Each term is a product of two primitives of the same angular momentum l on one centre;
summing ``Y_lm^2`` over m gives ``(2l + 1) / (4 pi)``. Terms with equal ``(p, b)`` are
merged. The atom_ks density matrix is spherical by construction (PySCF diagonalises the
m-averaged Fock matrix and repeats the coefficients and occupations over m); we measured
deviations at the 1e-16 level and average over m within each l block anyway, so the
expansion is exactly spherical by construction as well.

Public API
----------
:class:`SAED`
    Immutable per-element terms for one ``(xc, basis)``; numpy and torch evaluation,
    analytic electron counts, definition/hash for provenance.
:func:`load_saed`
    Compute (once) and cache the atomic densities as JSON.
:func:`saed_density_matrix`
    Block-diagonal SAED density matrix of a PySCF molecule in its own orbital basis.

Pseudopotential references (periodic cells with GTH pseudopotentials): ``atom_ks``
rejects pseudo-atoms, so :func:`load_saed` with ``pseudo=`` solves the spherically averaged
GTH pseudo-atom itself (:func:`_pseudo_atom_ks`: PySCF's ``AtomSphAverageRKS`` with the
core Hamiltonian of ``atom_hf_pp``, the same functional and orbital basis). Its terms
integrate to the valence count (4 for Si with gth-pbe), the SAED records ``pseudo`` and
the counts (:meth:`SAED.electrons`) in its definition; all-electron definitions and
hashes are unchanged.

Atomic results depend on PySCF's SCF convergence (``conv_tol`` 1e-9 inside atom_ks), so
two machines may produce terms that differ in the last digits: datasets and checkpoints
should store :meth:`SAED.definition` and compare :attr:`SAED.hash`, not recompute.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import warnings

import numpy as np

from .basis import as_atomic_number
from .errors import InputError, MismatchError
from .io_utils import atomic_path

#: Density (e/bohr^3) below which an atom's contribution is screened away.
DEFAULT_CUTOFF_TOL = 1e-14

#: Version of the cache-file layout (bump to invalidate old caches).
_CACHE_VERSION = 1

_DEFINITION_KIND = "densitylearn.saed"


# ---------------------------------------------------------------------------- helpers
def _canon_name(name, what: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"SAED: {what} must be a non-empty name, got {name!r}")
    return name.strip().lower()


def _symbol(z: int) -> str:
    from ase.data import chemical_symbols

    return chemical_symbols[z]


def radial_integrals(powers, exponents) -> np.ndarray:
    """``4 pi int_0^inf r^(p+2) exp(-b r^2) dr`` for each term.

    Parameters
    ----------
    powers : array-like of int, shape (n,)
    exponents : array-like of float, shape (n,), bohr^-2

    Returns
    -------
    ndarray, shape (n,)
        Integrals in bohr^3 (multiply by weights to get electrons).
    """
    p = np.asarray(powers, dtype=np.float64)
    b = np.asarray(exponents, dtype=np.float64)
    s = (p + 3.0) / 2.0
    gam = np.array([math.gamma(x) for x in s.ravel()]).reshape(s.shape)
    return 4.0 * np.pi * gam / (2.0 * b ** s)


def radial_density(powers, exponents, weights, r) -> np.ndarray:
    """Evaluate ``sum_k w_k r^(p_k) exp(-b_k r^2)`` at radii ``r`` (bohr), e/bohr^3."""
    r = np.asarray(r, dtype=np.float64)
    r2 = (r * r)[..., None]
    p = np.asarray(powers)
    return (np.asarray(weights) * r2 ** (p // 2) * np.exp(-np.asarray(exponents) * r2)).sum(-1)


def cutoff_radius(powers, exponents, weights, tol: float = DEFAULT_CUTOFF_TOL) -> float:
    """Radius (bohr) beyond which ``sum_k |w_k| r^p_k exp(-b_k r^2) < tol``.

    The bound uses absolute weights, so it also bounds ``|rho_Z(r)|``. Beyond the largest
    term maximum ``sqrt(p / 2b)`` every term decreases, so the bound is found by
    bisection there.
    """
    p = np.asarray(powers, dtype=np.float64)
    b = np.asarray(exponents, dtype=np.float64)
    w = np.abs(np.asarray(weights, dtype=np.float64))
    if w.size == 0:
        return 0.0

    def env(r):
        return float((w * r ** p * np.exp(-b * r * r)).sum())

    lo = float(np.sqrt((p / (2.0 * b)).max()))
    if env(lo) < tol:
        # still need the largest r below lo where env >= tol; scan inwards
        rs = np.linspace(0.0, lo, 2001)
        vals = np.array([env(x) for x in rs])
        above = np.nonzero(vals >= tol)[0]
        return float(rs[min(above[-1] + 1, len(rs) - 1)]) if above.size else 0.0
    hi = max(lo, 1.0)
    while env(hi) >= tol:
        hi *= 2.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if env(mid) >= tol:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-6:
            break
    return hi


# ---------------------------------------------------------------------------- the atom
def _atom_mol(z: int, basis: str, pseudo: str | None = None):
    """A fresh one-atom PySCF Mole (bohr, spherical AOs) for element ``z`` in ``basis``.

    With ``pseudo`` (a GTH name such as ``'gth-pbe'``) the atom carries that
    pseudopotential and only its valence electrons.
    """
    from pyscf import gto

    sym = _symbol(z)
    try:
        with warnings.catch_warnings():  # PySCF suggests basis-set-exchange for unknown names
            warnings.simplefilter("ignore", UserWarning)
            extra = {"pseudo": pseudo} if pseudo else {}
            # pseudopotential cores hold an even number of electrons: the parity of z stays
            mol = gto.M(atom=[[sym, (0.0, 0.0, 0.0)]], basis=basis, spin=z % 2, unit="bohr",
                        cart=False, verbose=0, **extra)
    except Exception as exc:  # BasisNotFoundError, KeyError, RuntimeError ...
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        what = f"orbital basis {basis!r}" + (f" with pseudopotential {pseudo!r}" if pseudo else "")
        raise InputError(f"SAED: {what} has no functions for {sym} ({msg})") from None
    if pseudo and not mol._pseudo:
        raise InputError(f"SAED: pseudopotential {pseudo!r} has no entry for {sym}")
    if mol.nao == 0:
        raise InputError(f"SAED: orbital basis {basis!r} has no functions for {sym}")
    return mol


def _shell_signature(mol, shells) -> list:
    """(l, exponents, normalised contraction coefficients) of ``shells`` of ``mol``."""
    out = []
    for ib in shells:
        out.append((int(mol.bas_angular(ib)), np.asarray(mol.bas_exp(ib)).copy(),
                    np.asarray(mol._libcint_ctr_coeff(ib)).copy()))
    return out


def atomic_density_matrix(z: int, xc: str, basis: str, pseudo: str | None = None) -> np.ndarray:
    """Spherically averaged neutral-atom KS density matrix, m-averaged per l block.

    With ``pseudo`` the atom is the GTH pseudo-atom (valence electrons only), solved by
    :func:`_pseudo_atom_ks` (PySCF's atom_ks rejects pseudopotentials).

    Parameters
    ----------
    z : int
        Atomic number.
    xc : str
        Functional (PySCF name, passed to ``get_atm_nrks``; its default 'slater' is never used).
    basis : str
        Orbital basis name.

    Returns
    -------
    ndarray, shape (nao, nao)
        Density matrix in the spherical AOs of :func:`_atom_mol` (``z``, ``basis``,
        ``pseudo``); trace of ``D S`` is ``z`` (the valence count with ``pseudo``).
    """
    from pyscf.scf import atom_ks

    mol = _atom_mol(z, basis, pseudo)
    sym = _symbol(z)
    if pseudo:
        return _spherical_average(mol, _pseudo_atom_ks(mol, xc))
    try:
        with warnings.catch_warnings():  # PySCF deprecates remove_linear_dep_ inside atom_hf
            warnings.simplefilter("ignore", DeprecationWarning)
            res = atom_ks.get_atm_nrks(mol, xc=xc)
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"SAED: atomic KS for {sym} with xc={xc!r}, basis={basis!r} failed ({msg})") from None
    # get_atm_nrks returns {symbol: (e_tot, mo_energy, mo_coeff, mo_occ)}
    _, _, c, occ = res[sym]
    dm = (c * occ) @ c.T
    return _spherical_average(mol, dm)


def _pseudo_atom_ks(mol, xc: str) -> np.ndarray:
    """Density matrix of a spherically averaged GTH pseudo-atom at functional ``xc``.

    PySCF's :class:`~pyscf.scf.atom_ks.AtomSphAverageRKS` (m-averaged Fock matrix,
    fractional occupations of ``NRSRHFS_CONFIGURATION`` minus the pseudopotential's core
    shells) with the core Hamiltonian of :class:`~pyscf.scf.atom_hf_pp.AtomSCFPP`
    (kinetic energy plus the GTH local and non-local parts). The initial guess is the
    core Hamiltonian ('1e'): PySCF's default guess does not accept pseudopotentials.
    """
    from pyscf.data import elements
    from pyscf.scf import atom_hf_pp, atom_ks

    class _AtomKSPP(atom_ks.AtomSphAverageRKS):
        get_hcore = atom_hf_pp.AtomSCFPP.get_hcore

    sym = mol.atom_pure_symbol(0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mf = _AtomKSPP(mol)
            mf.xc = xc
            mf.atomic_configuration = elements.NRSRHFS_CONFIGURATION
            mf.grids.atom_grid = (100, 434)
            mf.init_guess = "1e"
            mf.conv_tol = 1e-10
            mf.verbose = 0
            mf.kernel()
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"SAED: atomic KS for the {sym} pseudo-atom with xc={xc!r} failed ({msg})") from None
    if not mf.converged:
        raise InputError(f"SAED: atomic KS for the {sym} pseudo-atom with xc={xc!r} did not converge")
    return (mf.mo_coeff * mf.mo_occ) @ mf.mo_coeff.T


def valence_electrons(z: int, pseudo: str | None) -> int:
    """Electrons a neutral atom keeps with the GTH pseudopotential ``pseudo`` (``z`` when None).

    Read from the pseudopotential's header (its first entry lists the valence electrons
    per angular momentum); :class:`InputError` when ``pseudo`` has no entry for ``z``.
    """
    if not pseudo:
        return int(z)
    from pyscf.pbc.gto import pseudo as pbc_pseudo

    try:
        pp = pbc_pseudo.load(str(pseudo), _symbol(int(z)))
        return int(sum(pp[0]))
    except Exception:
        raise InputError(f"pseudopotential {pseudo!r} has no entry for {_symbol(int(z))}") from None


def _l_functions(mol):
    """Radial functions of ``mol``: list of (l, exps, coeffs, first AO index)."""
    funcs = []
    ao = 0
    for ib in range(mol.nbas):
        l = int(mol.bas_angular(ib))
        exps = np.asarray(mol.bas_exp(ib), dtype=np.float64)
        ctr = np.asarray(mol._libcint_ctr_coeff(ib), dtype=np.float64)  # (nprim, nctr)
        for k in range(ctr.shape[1]):
            funcs.append((l, exps, ctr[:, k].copy(), ao))
            ao += 2 * l + 1
    if ao != mol.nao:
        raise InputError(f"SAED: unexpected AO layout for {mol.atom_symbol(0)} (cartesian basis?)")
    return funcs


def _m_blocks(mol):
    """Per l: (n_func, 2l+1) AO indices, rows = radial functions, columns = m."""
    out: dict[int, list] = {}
    for l, _, _, ao in _l_functions(mol):
        out.setdefault(l, []).append(np.arange(ao, ao + 2 * l + 1))
    return {l: np.array(v) for l, v in out.items()}


def spherical_deviation(mol, dm) -> float:
    """Largest deviation of ``dm`` from a spherical (m-diagonal, m-independent, l-diagonal) form."""
    return float(np.abs(dm - _spherical_average(mol, dm)).max())


def _spherical_average(mol, dm) -> np.ndarray:
    """Average ``dm`` over m within each l block; zero couplings between different l or m."""
    out = np.zeros_like(dm)
    for l, idx in _m_blocks(mol).items():
        deg = 2 * l + 1
        d = np.zeros((idx.shape[0], idx.shape[0]))
        for m in range(deg):
            d += dm[np.ix_(idx[:, m], idx[:, m])]
        d /= deg
        d = 0.5 * (d + d.T)
        for m in range(deg):
            out[np.ix_(idx[:, m], idx[:, m])] = d
    return out


def density_terms(mol, dm):
    """Radial Gaussian expansion of a spherical one-atom density matrix.

    Parameters
    ----------
    mol : pyscf.gto.Mole
        One-atom molecule with spherical AOs.
    dm : ndarray, shape (nao, nao)
        Spherical density matrix (see :func:`_spherical_average`).

    Returns
    -------
    powers : ndarray of int64, shape (n,)
    exponents : ndarray of float64, shape (n,), bohr^-2
    weights : ndarray of float64, shape (n,), e/bohr^(3+p)
        Sorted by (power, exponent); equal (power, exponent) merged; zero weights dropped.
    """
    funcs = _l_functions(mol)
    merged: dict[tuple[int, float], float] = {}
    for l in sorted({f[0] for f in funcs}):
        fl = [f for f in funcs if f[0] == l]
        prims = sorted({float(a) for f in fl for a in f[1]})
        pos = {a: i for i, a in enumerate(prims)}
        cmat = np.zeros((len(fl), len(prims)))
        for i, (_, exps, coef, _) in enumerate(fl):
            for a, c in zip(exps, coef):
                cmat[i, pos[float(a)]] += c
        aos = np.array([f[3] for f in fl])
        d = dm[np.ix_(aos, aos)]  # m = first component; spherical dm has the same block for all m
        wmat = (2 * l + 1) / (4.0 * np.pi) * (cmat.T @ d @ cmat)
        for i in range(len(prims)):
            for j in range(i, len(prims)):
                w = wmat[i, i] if i == j else wmat[i, j] + wmat[j, i]
                key = (2 * l, prims[i] + prims[j])
                merged[key] = merged.get(key, 0.0) + w
    keys = sorted(k for k, w in merged.items() if w != 0.0)
    powers = np.array([k[0] for k in keys], dtype=np.int64)
    exponents = np.array([k[1] for k in keys], dtype=np.float64)
    weights = np.array([merged[k] for k in keys], dtype=np.float64)
    return powers, exponents, weights


# ---------------------------------------------------------------------------- cache
def default_cache_dir() -> str:
    """``$DENSITYLEARN_CACHE/saed`` or ``~/.cache/densitylearn/saed`` (never the package)."""
    root = os.environ.get("DENSITYLEARN_CACHE")
    if root:
        return os.path.join(root, "saed")
    return os.path.join(os.path.expanduser("~"), ".cache", "densitylearn", "saed")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.+-]+", "_", text.lower())[:40]


def _cache_file(cache_dir: str, z: int, xc: str, basis: str, pseudo: str | None = None) -> str:
    if pseudo:
        tag = hashlib.sha256(json.dumps([xc, basis, pseudo]).encode()).hexdigest()[:10]
        return os.path.join(cache_dir, f"{z:03d}-{_symbol(z)}-{_slug(xc)}-{_slug(basis)}-"
                                       f"{_slug(pseudo)}-{tag}.json")
    tag = hashlib.sha256(json.dumps([xc, basis]).encode()).hexdigest()[:10]
    return os.path.join(cache_dir, f"{z:03d}-{_symbol(z)}-{_slug(xc)}-{_slug(basis)}-{tag}.json")


def _check_terms(z: int, powers, exponents, weights, where: str, electrons: int | None = None) -> None:
    """InputError unless the terms are well-formed and integrate to ``electrons`` (default ``z``)."""
    p, b, w = (np.asarray(x) for x in (powers, exponents, weights))
    if not (p.ndim == b.ndim == w.ndim == 1 and p.shape == b.shape == w.shape) or p.size == 0:
        raise InputError(f"{where}: SAED terms for Z={z} must be three equal-length 1-d arrays")
    if not (np.all(np.isfinite(b)) and np.all(np.isfinite(w)) and np.all(b > 0)):
        raise InputError(f"{where}: SAED terms for Z={z} have non-finite or non-positive exponents")
    if np.any(p < 0) or np.any(p % 2):
        raise InputError(f"{where}: SAED terms for Z={z} have powers that are not even and >= 0")
    n = float((w * radial_integrals(p, b)).sum())
    want = z if electrons is None else int(electrons)
    if abs(n - want) > 1e-8 * max(1.0, want):
        raise InputError(f"{where}: SAED terms for Z={z} integrate to {n:.10f} electrons, not {want}")


def _compute_record(z: int, xc: str, basis: str, pseudo: str | None = None) -> dict:
    import pyscf

    mol = _atom_mol(z, basis, pseudo)
    dm = atomic_density_matrix(z, xc, basis, pseudo)
    p, b, w = density_terms(mol, dm)
    _check_terms(z, p, b, w, f"atomic {_symbol(z)} ({xc}/{basis})", electrons=mol.nelectron)
    extra = {"pseudo": pseudo, "electrons": int(mol.nelectron)} if pseudo else {}
    return {"version": _CACHE_VERSION, "z": z, "symbol": _symbol(z), "xc": xc, "basis": basis,
            **extra, "pyscf": pyscf.__version__, "nao": int(mol.nao),
            "powers": [int(x) for x in p], "exponents": [float(x) for x in b],
            "weights": [float(x) for x in w], "dm": [[float(x) for x in row] for row in dm]}


def _read_record(path: str, z: int, xc: str, basis: str, pseudo: str | None = None):
    """The cached record at ``path``, or None when missing, corrupt or for something else."""
    try:
        with open(path) as fh:
            rec = json.load(fh)
        if (rec.get("version") != _CACHE_VERSION or rec.get("z") != z or rec.get("xc") != xc
                or rec.get("basis") != basis or rec.get("pseudo") != (pseudo or None)):
            return None
        _check_terms(z, rec["powers"], rec["exponents"], rec["weights"], path,
                     electrons=rec.get("electrons") if pseudo else None)
        dm = np.asarray(rec["dm"], dtype=np.float64)
        if dm.shape != (rec["nao"], rec["nao"]) or not np.all(np.isfinite(dm)):
            return None
        return rec
    except (OSError, ValueError, KeyError, TypeError, InputError):
        return None


def _atomic_record(z: int, xc: str, basis: str, cache_dir=None, pseudo: str | None = None) -> dict:
    """Cached atomic record (terms and density matrix); computed and written when absent."""
    folder = default_cache_dir() if cache_dir is None else os.fspath(cache_dir)
    path = _cache_file(folder, z, xc, basis, pseudo)
    rec = _read_record(path, z, xc, basis, pseudo)
    if rec is None:
        rec = _compute_record(z, xc, basis, pseudo)
        with atomic_path(path) as tmp:
            with open(tmp, "w") as fh:
                json.dump(rec, fh)
    return rec


# ---------------------------------------------------------------------------- SAED

#: Relative agreement of SAED exponents and weights (weights: of the element's largest
#: weight) under which two SAEDs count as the same (:meth:`SAED.same_terms`): atomic SCFs
#: repeat themselves to about 1e-14 across machines, a different functional or basis moves
#: the weights by far more than 1e-8.
SAED_EXPONENT_RTOL = 1e-12
SAED_WEIGHT_RTOL = 1e-8


class SAED:
    """Spherically averaged atomic densities for one ``(xc, basis)``, as radial Gaussians.

    Build with :func:`load_saed` or :meth:`from_definition`. Instances are immutable;
    term arrays are read-only.

    Parameters
    ----------
    xc : str
        Functional of the atomic calculations (lower-cased).
    basis : str
        Orbital basis name (lower-cased).
    terms : dict[int, tuple(powers, exponents, weights)]
        Per atomic number: int64 (n,), float64 (n,) bohr^-2, float64 (n,) e/bohr^(3+p).
        Each element's terms must integrate to Z (checked, InputError otherwise).
    """

    __slots__ = ("_xc", "_basis", "_terms", "_cutoffs", "_pseudo", "_valence")

    def __init__(self, xc: str, basis: str, terms: dict, pseudo: str | None = None,
                 valence: dict | None = None):
        xc = _canon_name(xc, "xc")
        basis = _canon_name(basis, "basis")
        pseudo = _canon_name(pseudo, "pseudo") if pseudo else None
        valence = {as_atomic_number(z): int(n) for z, n in (valence or {}).items()}
        canon = {}
        for z, (p, b, w) in sorted(((as_atomic_number(z), t) for z, t in terms.items()), key=lambda kv: kv[0]):
            p = np.array(p, dtype=np.int64)
            b = np.array(b, dtype=np.float64)
            w = np.array(w, dtype=np.float64)
            if pseudo and z not in valence:
                raise InputError(f"SAED {xc}/{basis}/{pseudo}: no valence electron count for Z={z}")
            _check_terms(z, p, b, w, f"SAED {xc}/{basis}", electrons=valence.get(z) if pseudo else None)
            for a in (p, b, w):
                a.setflags(write=False)
            canon[z] = (p, b, w)
        if not canon:
            raise InputError(f"SAED {xc}/{basis}: no elements")
        object.__setattr__(self, "_xc", xc)
        object.__setattr__(self, "_basis", basis)
        object.__setattr__(self, "_terms", canon)
        object.__setattr__(self, "_cutoffs", {})
        object.__setattr__(self, "_pseudo", pseudo)
        object.__setattr__(self, "_valence", {z: valence[z] for z in canon} if pseudo else
                           {z: z for z in canon})

    def __setattr__(self, name, value):
        raise AttributeError("SAED is immutable")

    # ------------------------------------------------------------------ description
    @property
    def xc(self) -> str:
        return self._xc

    @property
    def basis(self) -> str:
        """Orbital basis name of the atomic calculations."""
        return self._basis

    @property
    def pseudo(self) -> str | None:
        """Pseudopotential of the atomic calculations (None: all-electron atoms)."""
        return self._pseudo

    def electrons(self, z) -> int:
        """Electrons of element ``z``'s neutral atom in this SAED (Z, or its valence count)."""
        z = as_atomic_number(z)
        self.terms(z)
        return self._valence[z]

    @property
    def elements(self) -> tuple[int, ...]:
        """Atomic numbers covered, sorted."""
        return tuple(self._terms)

    def terms(self, z) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(powers int64 (n,), exponents float64 (n,) bohr^-2, weights float64 (n,))`` of element ``z``."""
        z = as_atomic_number(z)
        try:
            return self._terms[z]
        except KeyError:
            raise InputError(f"SAED {self.xc}/{self.basis} has no density for {_symbol(z)} "
                             f"(covers {[_symbol(e) for e in self.elements]})") from None

    def radial(self, z, r) -> np.ndarray:
        """Atomic density of element ``z`` at radii ``r`` (bohr), e/bohr^3, shape of ``r``."""
        return radial_density(*self.terms(z), r)

    def cutoff(self, z, tol: float = DEFAULT_CUTOFF_TOL) -> float:
        """Radius (bohr) beyond which element ``z``'s density is below ``tol`` (e/bohr^3)."""
        z = as_atomic_number(z)
        key = (z, float(tol))
        if key not in self._cutoffs:
            self._cutoffs[key] = cutoff_radius(*self.terms(z), tol=tol)
        return self._cutoffs[key]

    def electron_count(self, numbers) -> float:
        """Analytic number of electrons of the SAED of ``numbers`` (sum of each Z's integral)."""
        total = 0.0
        for z in np.asarray(numbers).ravel():
            p, b, w = self.terms(z)
            total += float((w * radial_integrals(p, b)).sum())
        return total

    def definition(self) -> dict:
        """JSON-serialisable definition (round-trips through :meth:`from_definition`)."""
        out = {"kind": _DEFINITION_KIND, "xc": self.xc, "basis": self.basis,
               "elements": {str(z): self._element_def(z) for z in self.elements}}
        if self.pseudo:  # absent for all-electron SAEDs, so their hashes do not change
            out["pseudo"] = self.pseudo
            out["valence"] = {str(z): self._valence[z] for z in self.elements}
        return out

    def _element_def(self, z: int) -> dict:
        p, b, w = self._terms[z]
        return {"powers": [int(x) for x in p], "exponents": [float(x) for x in b],
                "weights": [float(x) for x in w]}

    @classmethod
    def from_definition(cls, definition) -> "SAED":
        """Rebuild from :meth:`definition` output (a dict or its JSON string)."""
        try:
            if isinstance(definition, (str, bytes)):
                definition = json.loads(definition)
            if definition.get("kind", _DEFINITION_KIND) != _DEFINITION_KIND:
                raise InputError(f"not an SAED definition (kind {definition.get('kind')!r})")
            terms = {int(z): (e["powers"], e["exponents"], e["weights"])
                     for z, e in definition["elements"].items()}
            return cls(definition["xc"], definition["basis"], terms, pseudo=definition.get("pseudo"),
                       valence={int(z): int(n) for z, n in (definition.get("valence") or {}).items()})
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            if isinstance(exc, InputError):
                raise
            raise InputError(f"malformed SAED definition ({type(exc).__name__}: {exc})") from None

    @property
    def hash(self) -> str:
        """First 16 hex digits of the SHA-256 of the canonical JSON :meth:`definition`."""
        payload = json.dumps(self.definition(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def require_same(self, other: "SAED", elements=None, context: str = "") -> None:
        """Raise :class:`MismatchError` unless ``other`` agrees with self on ``elements``.

        ``elements`` defaults to all of self's. The message names what differs (xc, basis,
        a missing element, or an element's terms).
        """
        where = f"{context}: " if context else ""
        if not isinstance(other, SAED):
            raise MismatchError(f"{where}expected an SAED, got {type(other).__name__}")
        if self.xc != other.xc:
            raise MismatchError(f"{where}SAED functional differs ({self.xc} vs {other.xc})")
        if self.basis != other.basis:
            raise MismatchError(f"{where}SAED orbital basis differs ({self.basis} vs {other.basis})")
        if self.pseudo != other.pseudo:
            raise MismatchError(f"{where}SAED pseudopotential differs ({self.pseudo} vs {other.pseudo})")
        zs = self.elements if elements is None else sorted({as_atomic_number(z) for z in elements})
        for z in zs:
            for s in (self, other):
                if z not in s.elements:
                    raise MismatchError(f"{where}SAED (hash {s.hash}) has no density for {_symbol(z)}")
            if not self.same_terms(other, z):
                raise MismatchError(f"{where}SAED terms differ for {_symbol(z)} "
                                    f"({self.xc}/{self.basis}, hashes {self.hash} vs {other.hash})")

    def same_terms(self, other: "SAED", z) -> bool:
        """Whether ``other`` has the same radial terms for element ``z`` up to round-off.

        The weights come from an atomic SCF, which reproduces itself only to about 1e-14 on
        another machine (BLAS, thread count), so equal hashes are too strict: powers must be
        equal, exponents agree to :data:`SAED_EXPONENT_RTOL` and weights to
        :data:`SAED_WEIGHT_RTOL` of the largest weight. Pseudopotential valences must match.
        """
        z = as_atomic_number(z)
        if z not in self.elements or z not in other.elements:
            return False
        if self.pseudo and self._valence.get(z) != other._valence.get(z):
            return False
        a, b = self._element_def(z), other._element_def(z)
        if a["powers"] != b["powers"] or len(a["exponents"]) != len(b["exponents"]):
            return False
        ea, eb = np.asarray(a["exponents"]), np.asarray(b["exponents"])
        wa, wb = np.asarray(a["weights"]), np.asarray(b["weights"])
        scale = max(float(np.abs(wa).max(initial=0.0)), float(np.abs(wb).max(initial=0.0)), 1e-300)
        return bool(np.allclose(ea, eb, rtol=SAED_EXPONENT_RTOL, atol=0.0)
                    and np.all(np.abs(wa - wb) <= SAED_WEIGHT_RTOL * scale))

    def __repr__(self) -> str:
        els = " ".join(_symbol(z) for z in self.elements)
        pp = f", pseudo={self.pseudo!r}" if self.pseudo else ""
        return f"SAED(xc={self.xc!r}, basis={self.basis!r}{pp}, elements=[{els}], hash={self.hash})"

    def __eq__(self, other) -> bool:
        return isinstance(other, SAED) and self.hash == other.hash

    def __hash__(self) -> int:
        return hash(self.hash)

    # ------------------------------------------------------------------ evaluation
    def _check_structure(self, numbers, positions, points):
        numbers = np.asarray(numbers)
        if numbers.ndim != 1:
            raise InputError(f"SAED: numbers must be 1-d, got shape {numbers.shape}")
        numbers = np.array([as_atomic_number(z) for z in numbers], dtype=np.int64)
        missing = sorted(set(numbers.tolist()) - set(self.elements))
        if missing:
            raise InputError(f"SAED {self.xc}/{self.basis} has no density for "
                             f"{', '.join(_symbol(z) for z in missing)}")
        positions = np.asarray(positions, dtype=np.float64)
        if positions.shape != (len(numbers), 3):
            raise InputError(f"SAED: positions must have shape ({len(numbers)}, 3), got {positions.shape}")
        if not np.all(np.isfinite(positions)):
            raise InputError("SAED: positions contain NaN or inf")
        return numbers, positions

    def evaluate(self, numbers, positions, points, screen: bool = True,
                 tol: float = DEFAULT_CUTOFF_TOL, budget: int = 1 << 22) -> np.ndarray:
        """SAED density at ``points`` (numpy, float64).

        Parameters
        ----------
        numbers : array-like of int, shape (n_atoms,)
        positions : array-like, shape (n_atoms, 3), bohr
        points : array-like, shape (n_points, 3), bohr
        screen : bool
            True (default): atom-centric cell list, each atom touches only the points within
            its cutoff radius (:meth:`cutoff`), linear scaling. False: every atom on every
            point, no screening (the slow reference).
        tol : float
            Screening threshold, e/bohr^3 per atom.
        budget : int
            Maximum number of (point, term) values held at once.

        Returns
        -------
        ndarray, shape (n_points,)
            Density in e/bohr^3.
        """
        numbers, positions = self._check_structure(numbers, positions, points)
        points = np.asarray(points, dtype=np.float64)
        if points.ndim != 2 or points.shape[1] != 3:
            raise InputError(f"SAED: points must have shape (n_points, 3), got {points.shape}")
        rho = np.zeros(len(points))
        if len(points) == 0 or len(numbers) == 0:
            return rho
        if not screen:
            for z, x in zip(numbers, positions):
                p, b, w = self._terms[int(z)]
                step = max(1, budget // len(p))
                for s in range(0, len(points), step):
                    d = points[s:s + step] - x
                    r2 = np.einsum("ij,ij->i", d, d)
                    rho[s:s + step] += _eval_np(p, b, w, r2)
            return rho
        cut = {z: self.cutoff(z, tol) for z in set(numbers.tolist())}
        cell = max(max(cut.values()), 1e-3)
        origin = positions.min(0)
        ipt = np.floor((points - origin) / cell).astype(np.int64)
        iat = np.floor((positions - origin) / cell).astype(np.int64)
        lo = np.minimum(ipt.min(0), iat.min(0) - 1)
        hi = np.maximum(ipt.max(0), iat.max(0) + 1)
        dims = hi - lo + 1
        pkey = _cell_key(ipt - lo, dims)
        order = np.argsort(pkey, kind="stable")
        skey = pkey[order]
        offsets = np.array([(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)])
        for z, x, c in zip(numbers, positions, iat - lo):
            p, b, w = self._terms[int(z)]
            keys = _cell_key(c + offsets, dims)
            starts = np.searchsorted(skey, keys, "left")
            stops = np.searchsorted(skey, keys, "right")
            nonempty = stops > starts
            if not nonempty.any():
                continue
            idx = order[np.concatenate([np.arange(a, e) for a, e in zip(starts[nonempty], stops[nonempty])])]
            d = points[idx] - x
            r2 = np.einsum("ij,ij->i", d, d)
            keep = r2 < cut[int(z)] ** 2
            idx, r2 = idx[keep], r2[keep]
            step = max(1, budget // len(p))
            for s in range(0, len(idx), step):
                rho[idx[s:s + step]] += _eval_np(p, b, w, r2[s:s + step])  # indices unique per atom
        return rho

    def evaluate_torch(self, numbers, positions, points, tol: float = DEFAULT_CUTOFF_TOL,
                       chunk_size: int = 1 << 16, budget: int = 1 << 23):
        """SAED density at ``points`` with torch, linear in atoms and points.

        Points are processed in chunks of ``chunk_size``; for each point the atoms in the 27
        neighbouring cells of a cell list (cell edge = largest cutoff radius among the
        elements present) are candidates, kept when closer than their element's cutoff
        (:meth:`cutoff` at ``tol``). Candidate pairs are expanded in groups so that at most
        ``budget`` (pair, term) values exist at once: memory is bounded independently of
        the number of atoms and points, and no (n_points, n_atoms) matrix is formed.

        Parameters
        ----------
        numbers : Tensor or array-like of int, shape (n_atoms,)
        positions : Tensor or array-like, shape (n_atoms, 3), bohr
        points : Tensor or array-like, shape (n_points, 3), bohr
            Device and dtype of the result follow ``points`` (float64 for non-tensors).
        tol : float
            Screening threshold, e/bohr^3 per atom.
        chunk_size : int
            Points per chunk.
        budget : int
            Maximum number of (pair, term) values held at once.

        Returns
        -------
        Tensor, shape (n_points,)
            Density in e/bohr^3 on ``points``' device, in its dtype. Not differentiable
            (computed under ``torch.no_grad``).
        """
        import torch

        if isinstance(points, torch.Tensor):
            device, dtype = points.device, (points.dtype if points.is_floating_point() else torch.float64)
        else:
            device, dtype = torch.device("cpu"), torch.float64
        nums_np = numbers.detach().cpu().numpy() if isinstance(numbers, torch.Tensor) else numbers
        pos_np = positions.detach().cpu().numpy() if isinstance(positions, torch.Tensor) else positions
        nums_np, pos_np = self._check_structure(nums_np, pos_np, None)
        with torch.no_grad():
            pts = torch.as_tensor(points).to(device=device, dtype=dtype)
            if pts.ndim != 2 or pts.shape[1] != 3:
                raise InputError(f"SAED: points must have shape (n_points, 3), got {tuple(pts.shape)}")
            n_pts = pts.shape[0]
            rho = torch.zeros(n_pts, device=device, dtype=dtype)
            if n_pts == 0 or len(nums_np) == 0:
                return rho
            return _evaluate_torch(self, nums_np, pos_np, pts, rho, tol, int(chunk_size), int(budget))


def _eval_np(p, b, w, r2) -> np.ndarray:
    """sum_k w_k r2^(p_k/2) exp(-b_k r2) for r2 (m,), chunk-sized."""
    r2 = r2[:, None]
    return (w * r2 ** (p // 2) * np.exp(-b * r2)).sum(1)


def _cell_key(c, dims):
    """Linear key of integer cell coordinates ``c`` (..., 3) inside a grid of ``dims``."""
    return (c[..., 0] * dims[1] + c[..., 1]) * dims[2] + c[..., 2]


def _evaluate_torch(saed: SAED, numbers, positions, pts, rho, tol, chunk_size, budget):
    import torch

    device, dtype = pts.device, pts.dtype
    zs = sorted(set(numbers.tolist()))
    cut = np.array([saed.cutoff(z, tol) for z in zs])
    cell = max(float(cut.max()), 1e-3)
    local = {z: i for i, z in enumerate(zs)}
    elem = torch.as_tensor(np.array([local[int(z)] for z in numbers]), device=device)
    cut2 = torch.as_tensor(cut ** 2, device=device, dtype=dtype)
    tables = []
    for z in zs:
        p, b, w = (np.asarray(a) for a in saed.terms(z))
        # terms split by power of r^2 (0 or 1 for Gaussian-fitted atomic densities), so the
        # inner loop never calls pow
        tables.append([(int(k), torch.tensor(np.array(b[p // 2 == k]), device=device, dtype=dtype),
                        torch.tensor(np.array(w[p // 2 == k]), device=device, dtype=dtype))
                       for k in sorted(set((p // 2).tolist()))])
    max_terms = max(sum(len(b) for _, b, _ in t) for t in tables)
    pair_budget = max(1, budget // max_terms)

    origin = positions.min(0)
    iat = np.floor((positions - origin) / cell).astype(np.int64)
    dims_np = iat.max(0) + 1
    pos = torch.as_tensor(positions, device=device, dtype=dtype)
    akey = torch.as_tensor(_cell_key(iat, dims_np), device=device)
    akey_sorted, order = torch.sort(akey, stable=True)
    ukeys, counts = torch.unique_consecutive(akey_sorted, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    dims = torch.as_tensor(dims_np, device=device)
    origin_t = torch.as_tensor(origin, device=device, dtype=dtype)
    offsets = torch.tensor([(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)],
                           device=device)
    n_u = ukeys.shape[0]

    for s in range(0, pts.shape[0], chunk_size):
        chunk = pts[s:s + chunk_size]
        n = chunk.shape[0]
        cp = torch.floor((chunk - origin_t) / cell)
        # points far outside the atoms' box have no neighbours; clamp before the int cast
        cp = cp.clamp(min=-2.0, max=float(dims_np.max() + 1)).long()
        c = cp[:, None, :] + offsets[None]  # (n, 27, 3)
        valid = ((c >= 0) & (c < dims)).all(-1)
        key = _cell_key(c, dims)
        slot = torch.searchsorted(ukeys, key).clamp(max=n_u - 1)
        found = valid & (ukeys[slot] == key)
        cnt = torch.where(found, counts[slot], torch.zeros_like(slot))  # (n, 27)
        st = starts[slot]
        per_point = cnt.sum(1)
        csum = torch.cumsum(per_point, 0)
        total = int(csum[-1]) if n else 0
        if total == 0:
            continue
        # split the chunk into groups of consecutive points holding <= pair_budget pairs
        bounds = [0]
        while bounds[-1] < n:
            base = int(csum[bounds[-1] - 1]) if bounds[-1] > 0 else 0
            nxt = int(torch.searchsorted(csum, torch.tensor(base + pair_budget, device=device), right=True))
            bounds.append(max(nxt, bounds[-1] + 1))
        for g0, g1 in zip(bounds[:-1], bounds[1:]):
            gc = cnt[g0:g1].reshape(-1)
            gs = st[g0:g1].reshape(-1)
            npair = int(gc.sum())
            if npair == 0:
                continue
            entry_pt = torch.arange(g0, g1, device=device).repeat_interleave(27)
            pair_pt = entry_pt.repeat_interleave(gc)
            first = torch.cumsum(gc, 0) - gc
            within = torch.arange(npair, device=device) - first.repeat_interleave(gc)
            pair_at = order[gs.repeat_interleave(gc) + within]
            d = chunk[pair_pt] - pos[pair_at]
            r2 = (d * d).sum(-1)
            e = elem[pair_at]
            keep = r2 < cut2[e]
            pair_pt, r2, e = pair_pt[keep], r2[keep], e[keep]
            out = torch.zeros(n, device=device, dtype=dtype)
            for i, groups in enumerate(tables):
                m = e == i
                if not bool(m.any()):
                    continue
                x = r2[m][:, None]
                vals = None
                for k, b, w in groups:
                    v = torch.exp(-b * x) @ w
                    if k:
                        v = v * x[:, 0] ** k
                    vals = v if vals is None else vals + v
                out.index_add_(0, pair_pt[m], vals)
            rho[s:s + n] += out
    return rho


# ---------------------------------------------------------------------------- front doors
def load_saed(elements, xc: str = "pbe", basis: str = "def2-svp", cache_dir=None,
              pseudo: str | None = None) -> SAED:
    """SAED for ``elements``, computed once per (element, xc, basis, pseudo) and cached as JSON.

    Parameters
    ----------
    elements : iterable of int or str
        Atomic numbers or symbols (duplicates ignored).
    xc : str
        Functional of the reference calculations (PySCF name).
    basis : str
        Orbital basis name of the reference calculations.
    cache_dir : path or None
        Cache folder; default ``$DENSITYLEARN_CACHE/saed`` or ``~/.cache/densitylearn/saed``.
        Files are written atomically; a corrupt or foreign file is recomputed.
    pseudo : str, optional
        Pseudopotential of the reference (periodic GTH references, e.g. ``'gth-pbe'``):
        the atoms are GTH pseudo-atoms and each element's density integrates to its
        valence electron count (4 for Si), not Z.

    Returns
    -------
    SAED
    """
    xc = _canon_name(xc, "xc")
    basis = _canon_name(basis, "basis")
    pseudo = _canon_name(pseudo, "pseudo") if pseudo else None
    if isinstance(elements, (str, int, np.integer)):
        elements = [elements]
    zs = sorted({as_atomic_number(e) for e in elements})
    if not zs:
        raise InputError(f"SAED {xc}/{basis}: no elements requested")
    terms, valence = {}, {}
    for z in zs:
        rec = _atomic_record(z, xc, basis, cache_dir, pseudo)
        terms[z] = (rec["powers"], rec["exponents"], rec["weights"])
        valence[z] = int(rec.get("electrons", z))
    return SAED(xc, basis, terms, pseudo=pseudo, valence=valence if pseudo else None)


def _basis_name_for(mol, label: str, symbol: str):
    """Basis name of atom ``label`` in ``mol`` (None when given explicitly, not by name)."""
    basis = mol.basis
    if isinstance(basis, dict):
        basis = basis.get(label, basis.get(symbol, basis.get("default")))
    return basis if isinstance(basis, str) else None


def saed_density_matrix(mol, xc: str, cache_dir=None, basis: str | None = None) -> np.ndarray:
    """Block-diagonal SAED density matrix of ``mol`` in its own orbital basis.

    Each atom's AO block (``mol.aoslice_by_atom()``) holds the m-averaged atomic density
    matrix of its element from the same cached calculation as :func:`load_saed`, so the
    density of the result equals ``load_saed(...).evaluate`` of the molecule.

    Parameters
    ----------
    mol : pyscf.gto.Mole
        Built molecule, all-electron; may come from a chkfile (only its basis and atoms
        are used). Cartesian AOs are supported through ``mol.cart2sph_coeff()``.
    xc : str
        Functional of the atomic calculations.
    cache_dir : path or None
        As in :func:`load_saed`.
    basis : str, optional
        Name of ``mol``'s orbital basis, for Moles whose basis is stored as explicit shells
        (rebuilt from chkfiles): the cached atomic calculation of that name is used when its
        shells match, instead of a fresh uncached atomic calculation.

    Returns
    -------
    ndarray, shape (nao, nao)
        In ``mol``'s AO order (spherical or cartesian, as ``mol.cart``).
    """
    from pyscf import gto

    xc = _canon_name(xc, "xc")
    nao_sph = mol.nao_nr(cart=False) if mol.cart else mol.nao
    dm = np.zeros((nao_sph, nao_sph))
    aoslices = mol.aoslice_by_atom()
    ao_sph = np.concatenate([[0], np.cumsum([(2 * mol.bas_angular(i) + 1) * mol.bas_nctr(i)
                                             for i in range(mol.nbas)])])
    done: dict[tuple, np.ndarray] = {}
    for ia in range(mol.natm):
        label = mol.atom_symbol(ia)
        symbol = mol.atom_pure_symbol(ia)
        z = int(gto.charge(symbol))
        sh0, sh1 = int(aoslices[ia, 0]), int(aoslices[ia, 1])
        if sh1 == sh0:
            continue  # no basis functions on this atom (ghost)
        if mol.atom_nelec_core(ia) or (len(mol._ecpbas) and np.any(np.asarray(mol._ecpbas)[:, 0] == ia)):
            raise InputError(f"SAED: atom {ia} ({label}) carries an ECP/pseudopotential; "
                             "only all-electron atoms are supported")
        name = basis or _basis_name_for(mol, label, symbol)
        sig = _shell_signature(mol, range(sh0, sh1))
        key = (z, name, tuple((l, e.tobytes(), c.tobytes()) for l, e, c in sig))
        if key not in done:
            atm = None
            if name is not None:
                atm = _atom_mol(z, _canon_name(name, "basis"))
                if not _same_shells(sig, _shell_signature(atm, range(atm.nbas))):
                    atm = None
            if atm is not None:
                rec = _atomic_record(z, xc, _canon_name(name, "basis"), cache_dir)
                d = np.asarray(rec["dm"], dtype=np.float64)
            else:  # basis given explicitly (not by name): compute, no cache
                atm = gto.M(atom=[[symbol, (0.0, 0.0, 0.0)]], basis={symbol: mol._basis[label]},
                            spin=z % 2, unit="bohr", cart=False, verbose=0)
                from pyscf.scf import atom_ks

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    _, _, c, occ = atom_ks.get_atm_nrks(atm, xc=xc)[symbol]
                d = _spherical_average(atm, (c * occ) @ c.T)
            if d.shape != (atm.nao, atm.nao):
                raise InputError(f"SAED: cached density matrix for {symbol} has the wrong size")
            done[key] = d
        d = done[key]
        a0, a1 = int(ao_sph[sh0]), int(ao_sph[sh1])
        if a1 - a0 != d.shape[0]:
            raise InputError(f"SAED: AO count of {label} ({a1 - a0}) differs from the atomic "
                             f"calculation ({d.shape[0]})")
        dm[a0:a1, a0:a1] = d
    if mol.cart:
        c2s = mol.cart2sph_coeff()
        dm = c2s @ dm @ c2s.T
    return dm


def _same_shells(a, b) -> bool:
    if len(a) != len(b):
        return False
    for (la, ea, ca), (lb, eb, cb) in zip(a, b):
        if la != lb or ea.shape != eb.shape or ca.shape != cb.shape:
            return False
        if not (np.allclose(ea, eb, rtol=1e-12, atol=0) and np.allclose(ca, cb, rtol=1e-10, atol=1e-14)):
            return False
    return True
