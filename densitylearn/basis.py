"""Auxiliary Gaussian basis sets and the spherical-harmonic bridge between PySCF and e3nn.

An :class:`AuxBasis` holds, per element, a tuple of :class:`Shell` records (angular
momentum, exponents, normalised contraction coefficients). A basis function of shell
``s`` on an atom at ``A`` is, with ``r = x - A``::

    chi_{s,m}(x) = sum_k c_k |r|^l exp(-a_k |r|^2) Y_{l,m}(r / |r|)

where ``Y_{l,m}`` are real spherical harmonics normalised to one on the unit sphere, in
PySCF's order (``pyscf.lib.parameters.REAL_SPHERIC``: p as x, y, z; l >= 2 as m = -l..l
with z as polar axis), and ``c_k`` already includes the primitive normalisation, so every
function has unit norm (PySCF's ``mol._libcint_ctr_coeff``). Shells are stored sorted by
angular momentum (stable within one l), which fixes the coefficient layout of an atom as
all s functions, then all p functions, and so on; a coefficient vector of a structure is
the atoms' blocks in atom order. This is exactly the AO order of the PySCF auxiliary
molecule built from :meth:`AuxBasis.to_pyscf_basis`.

e3nn (0.5+) orders l = 1 as (x, y, z), like PySCF, but uses y as polar axis for l >= 2.
This module is the only place that knows: with ``P`` the rotation (x, y, z) -> (y, z, x),
``Y_pyscf_l(r) = B_l Y_e3nn_l(r)`` with ``B_1 = 1`` and ``B_l = D^l_e3nn(P)`` for l >= 2.
Everything else asks :func:`e3nn_to_pyscf_matrix`, :func:`wigner_D_pyscf`,
:func:`solid_harmonics_pyscf` or the :class:`AuxBasis` methods.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from dataclasses import dataclass
from importlib import resources

import numpy as np

from .errors import InputError, MismatchError

#: Spherical-harmonic order of every coefficient array densitylearn writes.
SH_ORDER = "pyscf-real-spherical"

_PERM_YZX = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])

_L_LETTERS = "spdfghik"


@dataclass(frozen=True, eq=False)
class Shell:
    """One contracted shell of an auxiliary basis.

    Attributes
    ----------
    l : int
        Angular momentum.
    exponents : ndarray, shape (n_prim,)
        Gaussian exponents a_k in bohr^-2.
    coefficients : ndarray, shape (n_prim,)
        Contraction coefficients c_k including primitive normalisation (unit-norm function).
    """

    l: int
    exponents: np.ndarray
    coefficients: np.ndarray

    @property
    def n_functions(self) -> int:
        return 2 * self.l + 1

    def as_list(self) -> list:
        return [int(self.l), [float(a) for a in self.exponents], [float(c) for c in self.coefficients]]


def gto_norm(l: int, a):
    """Radial normalisation of r^l exp(-a r^2): 1 / sqrt(int_0^inf r^(2l+2) exp(-2 a r^2) dr)."""
    a = np.asarray(a, dtype=np.float64)
    return 1.0 / np.sqrt(math.gamma(l + 1.5) / (2.0 * (2.0 * a) ** (l + 1.5)))


def _normalised(shell: Shell) -> Shell:
    """The shell with its contraction rescaled to unit norm (as PySCF does)."""
    a = np.asarray(shell.exponents, dtype=np.float64).reshape(-1)
    c = np.asarray(shell.coefficients, dtype=np.float64).reshape(-1)
    if a.shape != c.shape or a.size == 0 or np.any(a <= 0):
        raise InputError(f"shell l={shell.l}: need matching positive exponents and coefficients")
    l = int(shell.l)
    # <r^l e^{-a r^2} Y | r^l e^{-b r^2} Y> = Gamma(l + 3/2) / (2 (a + b)^(l + 3/2))
    s = math.gamma(l + 1.5) / (2.0 * (a[:, None] + a[None, :]) ** (l + 1.5))
    norm = math.sqrt(float(c @ s @ c))
    # leave already-normalised shells bit-identical, so stored definitions keep their hash
    return Shell(l, a.copy(), c.copy() if abs(norm - 1.0) < 1e-10 else c / norm)


def _shipped_folder():
    """The folder of shipped basis files: the installed ``densitylearn.basis_sets`` package,
    or ``basis_sets/`` beside the package in a source checkout (where setuptools' mapping
    of that folder into the package does not apply)."""
    try:
        return resources.files("densitylearn.basis_sets")
    except ModuleNotFoundError:
        from pathlib import Path

        return Path(__file__).resolve().parent.parent / "basis_sets"


def shipped_basis_path(name: str) -> str | None:
    """Path of a basis file shipped in ``basis_sets/`` (``NAME.nw``), or None."""
    fname = name if name.endswith(".nw") else name + ".nw"
    p = _shipped_folder().joinpath(fname)
    return str(p) if p.is_file() else None


def shipped_basis_names() -> list[str]:
    """Names of the auxiliary bases shipped with the package."""
    root = _shipped_folder()
    return sorted(p.name[:-3] for p in root.iterdir() if p.name.endswith(".nw"))


class AuxBasis:
    """An auxiliary basis for a set of elements.

    Build one with :meth:`AuxBasis.load` (from a name) or :meth:`AuxBasis.from_definition`
    (from what a dataset or checkpoint stored). Instances are immutable.

    Parameters
    ----------
    name : str
        The specification it was built from (``def2-universal-jfit``, ``etb:2.0``, a
        shipped name or a file path).
    shells : dict[int, sequence of Shell]
        Shells per atomic number.
    orbital_basis : str or None
        The orbital basis an even-tempered set was generated from (None otherwise).
    """

    def __init__(self, name: str, shells: dict, orbital_basis: str | None = None):
        self.name = str(name)
        self.orbital_basis = orbital_basis
        canon = {}
        for z, shs in shells.items():
            z = int(z)
            shs = sorted(shs, key=lambda s: s.l)  # stable: keeps file order within an l
            if not shs:
                raise InputError(f"auxiliary basis {name}: no functions for element Z={z}")
            canon[z] = tuple(_normalised(s) for s in shs)
        self._shells = dict(sorted(canon.items()))

    # ------------------------------------------------------------------ construction
    @classmethod
    def load(cls, spec: str, elements, orbital_basis: str = "def2-svp") -> "AuxBasis":
        """Build the basis ``spec`` for the given elements.

        ``spec`` may be a PySCF basis name (``def2-universal-jfit``,
        ``def2-universal-jkfit``, ``cc-pvtz-jkfit``, ...), ``etb:BETA`` for PySCF's
        even-tempered set generated from ``orbital_basis`` (``pyscf.df.aug_etb``), the name
        of a basis shipped in ``basis_sets/`` or a path to an NWChem-format file.
        """
        import warnings

        from ase.data import chemical_symbols
        from pyscf import gto
        from pyscf.lib.exceptions import BasisNotFoundError

        zs = sorted({int(as_atomic_number(e)) for e in elements})
        if not zs:
            raise InputError(f"auxiliary basis {spec}: no elements requested")
        shells: dict[int, tuple] = {}
        if spec.lower().startswith("etb:"):
            try:
                beta = float(spec.split(":", 1)[1])
            except ValueError:
                raise InputError(f"auxiliary basis {spec!r}: expected etb:BETA, e.g. etb:2.0") from None
            if beta <= 1.0:
                raise InputError(f"auxiliary basis {spec!r}: BETA must exceed 1")
            from pyscf import df

            for z in zs:
                sym = chemical_symbols[z]
                mol = gto.M(atom=[(sym, (0, 0, 0))], basis=orbital_basis, spin=z % 2, verbose=0)
                raw = df.aug_etb(mol, beta)[sym]
                shells[z] = _shells_from_pyscf(raw, sym, spec)
            return cls(spec, shells, orbital_basis=orbital_basis)

        path = spec if os.path.isfile(spec) else shipped_basis_path(spec)
        for z in zs:
            sym = chemical_symbols[z]
            try:
                if path is not None:
                    with open(path) as fh:
                        raw = gto.basis.parse(fh.read(), sym, optimize=False)
                else:
                    with warnings.catch_warnings():  # PySCF suggests basis-set-exchange
                        warnings.simplefilter("ignore")
                        raw = gto.basis.load(spec, sym)
            except (KeyError, RuntimeError, FileNotFoundError, BasisNotFoundError) as exc:
                raise InputError(f"auxiliary basis {spec!r} has no functions for {sym} ({exc})") from None
            if not raw:
                raise InputError(f"auxiliary basis {spec!r} has no functions for {sym}")
            shells[z] = _shells_from_pyscf(raw, sym, spec)
        return cls(spec, shells, orbital_basis=None)

    @classmethod
    def from_definition(cls, definition) -> "AuxBasis":
        """Rebuild from :meth:`definition` output (a dict or its JSON string)."""
        if isinstance(definition, (str, bytes)):
            definition = json.loads(definition)
        shells = {int(z): tuple(Shell(l, np.array(e), np.array(c)) for l, e, c in shs)
                  for z, shs in definition["elements"].items()}
        return cls(definition["name"], shells, definition.get("orbital_basis"))

    # ------------------------------------------------------------------ description
    @property
    def elements(self) -> tuple[int, ...]:
        """Atomic numbers covered, sorted."""
        return tuple(self._shells)

    def shells(self, z: int) -> tuple[Shell, ...]:
        try:
            return self._shells[int(z)]
        except KeyError:
            raise MismatchError(f"auxiliary basis {self.name} has no functions for Z={int(z)} "
                                f"(covers {list(self.elements)})") from None

    def n_functions(self, z: int) -> int:
        """Number of basis functions on one atom of element ``z``."""
        return sum(s.n_functions for s in self.shells(z))

    def lmax(self, z: int | None = None) -> int:
        zs = self.elements if z is None else [z]
        return max(s.l for zz in zs for s in self.shells(zz))

    def irreps(self, z: int) -> str:
        """e3nn irreps string of one atom's coefficients, e.g. ``'10x0e+6x1o+4x2e'``.

        Each shell of angular momentum l is an irrep l with parity (-1)^l, in the stored
        (l-sorted) shell order.
        """
        counts: dict[int, int] = {}
        for s in self.shells(z):
            counts[s.l] = counts.get(s.l, 0) + 1
        return "+".join(f"{n}x{l}{'e' if l % 2 == 0 else 'o'}" for l, n in sorted(counts.items()))

    def shell_ls(self, z: int) -> np.ndarray:
        """Angular momentum of each function of one atom, shape (n_functions(z),)."""
        return np.concatenate([np.full(s.n_functions, s.l) for s in self.shells(z)])

    def s_integrals(self, z: int) -> np.ndarray:
        """int chi dr of each function of one atom (zero unless l = 0), shape (n_functions(z),).

        For a unit-norm s function sum_k c_k exp(-a_k r^2) Y_00 this is
        sum_k c_k sqrt(4 pi) * (pi / a_k)^(3/2) / (4 pi).
        """
        out = []
        for s in self.shells(z):
            if s.l == 0:
                val = float(np.sum(s.coefficients * (np.pi / s.exponents) ** 1.5)) / math.sqrt(4 * np.pi)
                out.append(np.array([val]))
            else:
                out.append(np.zeros(s.n_functions))
        return np.concatenate(out)

    def layout(self, numbers) -> np.ndarray:
        """Offsets of each atom's block in a structure's coefficient vector, shape (n_atoms + 1,)."""
        sizes = [self.n_functions(z) for z in np.asarray(numbers).reshape(-1)]
        return np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)

    def check_coefficients(self, numbers, coefficients, label: str = "coefficients") -> np.ndarray:
        """Return ``coefficients`` as float64 after checking length and finiteness."""
        c = np.asarray(coefficients)
        n = int(self.layout(numbers)[-1])
        if c.ndim != 1 or c.shape[0] != n:
            raise InputError(f"{label}: {c.shape} coefficients, basis {self.name} expects ({n},)")
        if not np.all(np.isfinite(c)):
            raise InputError(f"{label}: coefficients contain NaN or infinity")
        return c.astype(np.float64, copy=False)

    def to_pyscf_basis(self) -> dict:
        """The basis in PySCF's input format, ``{symbol: [[l, [a, c], ...], ...]}``.

        Coefficients are given without primitive norms; PySCF renormalises them back to
        the stored unit-norm contraction.
        """
        from ase.data import chemical_symbols

        out = {}
        for z, shs in self._shells.items():
            out[chemical_symbols[z]] = [[s.l] + [[float(a), float(c / gto_norm(s.l, a))]
                                                 for a, c in zip(s.exponents, s.coefficients)]
                                        for s in shs]
        return out

    def to_nwchem(self) -> str:
        """The basis as an NWChem-format text (readable by :meth:`load` and PySCF)."""
        from ase.data import chemical_symbols

        lines = [f"# densitylearn auxiliary basis {self.name}", "BASIS \"ao basis\" SPHERICAL PRINT"]
        for z, shs in self._shells.items():
            sym = chemical_symbols[z]
            lines.append(f"#BASIS SET: {sym}, {self.n_functions(z)} functions")
            for s in shs:
                lines.append(f"{sym}    {_L_LETTERS[s.l].upper()}")
                for a, c in zip(s.exponents, s.coefficients):
                    lines.append(f"  {a:22.14E}  {c / gto_norm(s.l, a):22.14E}")
        lines.append("END")
        return "\n".join(lines) + "\n"

    def definition(self, elements=None) -> dict:
        """Full, JSON-serialisable definition (restricted to ``elements`` if given)."""
        zs = self.elements if elements is None else sorted({int(z) for z in elements})
        return {"name": self.name, "orbital_basis": self.orbital_basis,
                "elements": {str(z): [s.as_list() for s in self.shells(z)] for z in zs}}

    def element_hash(self, z: int) -> str:
        """SHA-256 of one element's shells (exponents and coefficients to full precision)."""
        payload = json.dumps([s.as_list() for s in self.shells(z)], separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()

    @property
    def hash(self) -> str:
        """SHA-256 over all elements' shells (the name is not part of it)."""
        payload = json.dumps({str(z): self.element_hash(z) for z in self.elements}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def subset(self, elements) -> "AuxBasis":
        """The same basis restricted to ``elements``."""
        return AuxBasis(self.name, {int(z): self.shells(z) for z in sorted({int(z) for z in elements})},
                        self.orbital_basis)

    def require_same(self, other: "AuxBasis", elements=None, context: str = "") -> None:
        """Raise :class:`MismatchError` unless both bases agree on ``elements`` (default: all of self's)."""
        zs = self.elements if elements is None else sorted({int(z) for z in elements})
        where = f"{context}: " if context else ""
        for z in zs:
            if z not in other.elements:
                raise MismatchError(f"{where}auxiliary basis {other.name} has no functions for Z={z}")
            if self.element_hash(z) != other.element_hash(z):
                raise MismatchError(f"{where}auxiliary basis differs for Z={z} "
                                    f"({self.name} vs {other.name}, hashes {self.hash} vs {other.hash})")

    def __repr__(self) -> str:
        per = ", ".join(f"{z}:{self.n_functions(z)}" for z in self.elements)
        return f"AuxBasis({self.name!r}, functions per element {{{per}}}, hash={self.hash})"

    # ------------------------------------------------------------------ SH bridge
    def e3nn_to_pyscf(self, z: int) -> np.ndarray:
        """Orthogonal matrix M, shape (n, n), n = n_functions(z): c_pyscf = M @ c_e3nn.

        ``c_e3nn`` is one atom's coefficient vector in e3nn's convention (features of the
        irreps :meth:`irreps`), ``c_pyscf`` the same density in this basis's PySCF order.
        """
        n = self.n_functions(z)
        m = np.zeros((n, n))
        i = 0
        for s in self.shells(z):
            d = s.n_functions
            # density = c_py . Y_py = c_py . B Y_e3 -> c_e3 = B^T c_py -> c_py = B c_e3
            m[i:i + d, i:i + d] = e3nn_to_pyscf_matrix(s.l)
            i += d
        return m

    def rotation_matrix(self, z: int, rotation) -> np.ndarray:
        """Block-diagonal Wigner matrix acting on one atom's PySCF-ordered coefficients.

        If a structure is rotated, x -> R x (``rotation`` = R, proper or improper), its
        density's coefficients transform as ``c' = D @ c`` atom by atom (with atoms kept in
        order).
        """
        n = self.n_functions(z)
        m = np.zeros((n, n))
        i = 0
        for s in self.shells(z):
            d = s.n_functions
            m[i:i + d, i:i + d] = wigner_D_pyscf(s.l, rotation)
            i += d
        return m

    def rotate_coefficients(self, numbers, coefficients, rotation) -> np.ndarray:
        """Coefficients of the density of the rotated structure (x -> R x), PySCF order."""
        numbers = np.asarray(numbers)
        c = self.check_coefficients(numbers, coefficients)
        off = self.layout(numbers)
        out = np.empty_like(c)
        cache: dict[int, np.ndarray] = {}
        for a, z in enumerate(numbers):
            if int(z) not in cache:
                cache[int(z)] = self.rotation_matrix(int(z), rotation)
            out[off[a]:off[a + 1]] = cache[int(z)] @ c[off[a]:off[a + 1]]
        return out


def as_atomic_number(e) -> int:
    """Atomic number of ``e`` (an int or an element symbol); :class:`InputError` otherwise."""
    from ase.data import atomic_numbers, chemical_symbols

    if isinstance(e, (bool, np.bool_)):
        raise InputError(f"unknown element {e!r}")
    if isinstance(e, (int, np.integer)):
        z = int(e)
    elif isinstance(e, (float, np.floating)) and float(e).is_integer():
        z = int(e)
    else:
        s = str(e).strip()
        z = atomic_numbers.get(s[:1].upper() + s[1:].lower(), 0) if s else 0
        if z == 0:
            raise InputError(f"unknown element {e!r}")
    if not 1 <= z < len(chemical_symbols):
        raise InputError(f"unknown element Z={z}")
    return z


def _shells_from_pyscf(raw, symbol: str, spec: str) -> tuple[Shell, ...]:
    """Normalised shells from a PySCF basis list, one :class:`Shell` per contraction."""
    from pyscf import gto

    try:
        mol = gto.M(atom=[(symbol, (0, 0, 0))], basis={symbol: raw}, spin=None, verbose=0)
    except Exception as exc:  # malformed basis text
        raise InputError(f"auxiliary basis {spec!r}: cannot build {symbol} ({exc})") from None
    out = []
    for ib in range(mol.nbas):
        l = int(mol.bas_angular(ib))
        exps = mol.bas_exp(ib)
        ctr = mol._libcint_ctr_coeff(ib)  # (nprim, nctr), primitive norms included
        for k in range(ctr.shape[1]):
            keep = ctr[:, k] != 0
            out.append(Shell(l, exps[keep].copy(), ctr[keep, k].copy()))
    return tuple(out)


# ---------------------------------------------------------------------------- bridge
def _sample_points(l: int) -> np.ndarray:
    """Fixed, well-spread sample vectors for fitting linear maps between harmonics."""
    return np.random.default_rng(1234 + l).normal(size=(6 * (2 * l + 1), 3))


def _linear_map(y_from: np.ndarray, y_to: np.ndarray) -> np.ndarray:
    """Matrix M with y_to = y_from @ M.T (exact for maps between harmonics of one l)."""
    m, *_ = np.linalg.lstsq(y_from, y_to, rcond=None)
    return m.T


@functools.lru_cache(maxsize=None)
def _e3nn_to_pyscf_cached(l: int) -> np.ndarray:
    if l <= 1:
        return np.eye(2 * l + 1)
    import torch
    from e3nn import o3

    r = torch.tensor(_sample_points(l), dtype=torch.float64)
    y_e3 = o3.spherical_harmonics(l, r, normalize=False, normalization="integral").numpy()
    y_py = solid_harmonics_pyscf(l, r).numpy()
    b = _linear_map(y_e3, y_py)
    # B is orthogonal with entries of a rotation's Wigner matrix; clean round-off
    b[np.abs(b) < 1e-14] = 0.0
    return b


def e3nn_to_pyscf_matrix(l: int) -> np.ndarray:
    """B_l, shape (2l+1, 2l+1): PySCF's real harmonics are ``Y_pyscf = B_l @ Y_e3nn``.

    Here ``Y_e3nn = e3nn.o3.spherical_harmonics(l, r, normalization='integral')`` on the
    raw (x, y, z) vector. B_1 is the identity; for l >= 2, B_l = D^l_e3nn(P) with P the
    cyclic rotation (x, y, z) -> (y, z, x), computed to machine precision by fitting the
    two sets of polynomials on sample points (e3nn's own ``D_from_matrix`` works through
    float32 tables).
    """
    return _e3nn_to_pyscf_cached(int(l)).copy()


def wigner_D_pyscf(l: int, rotation) -> np.ndarray:
    """Wigner matrix of ``rotation`` (3x3, proper or improper) for PySCF-ordered harmonics.

    For R orthogonal, ``Y_pyscf_l(R r) = D @ Y_pyscf_l(r)``; the coefficients of a density
    rotated by R transform as ``c' = D @ c``. Includes the parity (-1)^l of reflections.
    Computed in float64 from the solid harmonics themselves (exact up to round-off).
    """
    import torch

    r = np.asarray(rotation, dtype=np.float64)
    if r.shape != (3, 3) or not np.allclose(r @ r.T, np.eye(3), atol=1e-8):
        raise InputError("rotation must be an orthogonal 3x3 matrix")
    if l == 0:
        return np.ones((1, 1))
    pts = torch.tensor(_sample_points(l), dtype=torch.float64)
    y = solid_harmonics_pyscf(l, pts).numpy()
    y_rot = solid_harmonics_pyscf(l, pts @ torch.tensor(r).T).numpy()
    return _linear_map(y, y_rot)


def solid_harmonics_pyscf(l: int, xyz):
    """Regular solid harmonics ``|r|^l Y_lm(r^)`` in PySCF's order (torch).

    Parameters
    ----------
    l : int
        Angular momentum (0..11).
    xyz : torch.Tensor, shape (..., 3)
        Displacement vectors (bohr).

    Returns
    -------
    torch.Tensor, shape (..., 2l+1)
        Homogeneous polynomials of degree l; with unit-sphere-normalised angular parts.
    """
    from e3nn import o3

    if l <= 1:
        return o3.spherical_harmonics(l, xyz, normalize=False, normalization="integral")
    return o3.spherical_harmonics(l, xyz[..., [1, 2, 0]], normalize=False, normalization="integral")
