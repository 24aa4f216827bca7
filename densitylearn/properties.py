"""Non-self-consistent properties and SCF initial guesses from a predicted density.

A density given as auxiliary-basis coefficients (DCD: plus the analytic SAED density
matrix ``D_a``; TCD: coefficients alone), or as an orbital-basis density matrix, defines
one Kohn-Sham Fock matrix::

    F[rho_in] = h + J[rho_in] + V_xc[rho_in]

* ``J_mn = sum_P (mn|P) c_P + sum_ls (mn|ls) D_a,ls`` is exact (analytic integrals; the SAED
  part never goes through the auxiliary basis).
* ``V_xc`` is built like PySCF's ``nr_rks`` from ``rho_in`` and ``grad rho_in`` on the DFT
  grid (aux functions via ``eval_gto('GTOval_sph_deriv1')``, the SAED part via
  ``numint.eval_rho``), LDA and GGA functionals (libxc through PySCF).

One diagonalisation ``F C = S C eps`` gives orbital energies, the HOMO-LUMO gap, aufbau
closed-shell occupations and the output density matrix (an SCF initial guess), and the
Harris-Foulkes energy, which is stationary at the SCF density::

    E_H = sum_i f_i eps_i - 1/2 (rho_in|rho_in) - int v_xc[rho_in] rho_in + E_xc[rho_in] + E_nn

``(rho_in|rho_in) = c^T (P|Q) c + 2 Tr(D_a J_aux) + Tr(D_a J[D_a])``, exact; the
``int v_xc rho`` term uses the same grid quadrature as ``Tr(D V_xc)`` (for GGA
``int vrho rho + 2 vsigma grad rho . grad rho``), so a converged SCF density matrix
reproduces the SCF energy. The dipole moment is that of the input density (analytic
first moments of the aux functions and of ``D_a``, plus the nuclei).

Units: energies in hartree (``*_ev`` properties and record fields in eV), dipoles in Debye
(``densitylearn.units.AU_DEBYE``), positions in bohr. Closed-shell molecules, LDA/GGA
functionals; hybrids, meta-GGAs and NLC are refused (exact exchange needs a density
matrix, tau needs orbitals).

Forces: :func:`harris_forces` differentiates the Harris energy surface of a model by
central differences, ``F = -dE_H/dR`` with the input density re-predicted at every
displaced geometry (the model defines rho_in(R)); 6 N non-self-consistent evaluations,
grids and SAED rebuilt at each. :func:`reference_forces` gives the analytic PySCF forces
of a converged reference SCF to compare with. :func:`harris_forces_periodic` does the same
for cells (fixed lattice, k-points and FFT mesh), compared with PySCF's KRKS gradient.

Periodic cells: :func:`nscf_periodic` does the same for a ``pyscf.pbc`` cell on its FFT
mesh (FFT Hartree potential with G = 0 removed, libxc v_xc, PySCF's kinetic and GTH
pseudopotential integrals, one diagonalisation per k-point): band energies, the band gap
over the k-mesh, the direct gap and the Harris energy per atom;
:func:`nscf_periodic_entry` compares a predicted cell with its chkfile reference and
:func:`nscf_predictions` dispatches cells there. The molecular functions are unchanged.

SCF guesses: :func:`guess_density_matrix` (the output density matrix after a few cheap
Pulay-mixing steps on a density-fitted, coarse-grid Hamiltonian, usable as ``dm0`` in
PySCF and gpu4pyscf), :func:`run_scf_with_guess` and :func:`compare_guesses` (iterations
and wall time against PySCF's ``minao``/``atom``/``huckel``/``sap`` guesses; a run that
does not converge is rerun from ``minao`` and both runs are reported).
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass, replace

import numpy as np

from .errors import InputError
from .units import AU_DEBYE, BOHR_ANGSTROM, HARTREE_EV

#: Density targets a coefficient vector can describe.
TARGETS = ("difference", "total")

#: PySCF initial guesses compared by :func:`compare_guesses` (all exist in PySCF 2.14).
PYSCF_GUESSES = ("minao", "atom", "huckel", "sap")

#: Label of our guess in comparisons.
OUR_GUESS = "densitylearn"

#: DIIS start cycle of SCF runs from our guess. PySCF's default (1) takes two plain
#: Roothaan steps before extrapolating; from a guess already near convergence the second
#: one overshoots (on QM9 molecules the energy error grows about tenfold in that step), so
#: our guess starts DIIS at once. PySCF's own guesses keep PySCF's default unless asked.
GUESS_DIIS_START_CYCLE = 0


# ----------------------------------------------------------------------------- results
@dataclass(frozen=True, eq=False)
class NSCFResult:
    """Properties from one diagonalisation of ``F[rho_in]`` (closed shell).

    Attributes
    ----------
    energy : float
        Harris-Foulkes total energy, hartree.
    mo_energy : ndarray, shape (nmo,)
        Orbital energies of ``F[rho_in]``, hartree, ascending.
    mo_occ : ndarray, shape (nmo,)
        Aufbau occupations (2 or 0), electrons.
    mo_coeff : ndarray, shape (nao, nmo)
        Orbital coefficients (columns), S-orthonormal.
    dm : ndarray, shape (nao, nao)
        Output density matrix ``C f C^T`` (an SCF initial guess).
    homo, lumo : float
        Highest occupied / lowest unoccupied orbital energies, hartree (lumo is NaN when the
        basis has no virtual orbital).
    dipole : ndarray, shape (3,)
        Dipole moment of the input density and the nuclei, Debye (origin (0, 0, 0), as
        PySCF's ``dip_moment``).
    n_electrons : float
        Electron count of the input density, analytic.
    n_electrons_grid : float
        The same on the DFT grid (a quadrature check).
    components : dict[str, float]
        Harris energy terms, hartree: ``band`` (sum f eps), ``coulomb`` (1/2 (rho|rho)),
        ``xc`` (E_xc[rho_in]), ``vxc_rho`` (int v_xc rho_in), ``nuclear`` (E_nn).
    xc : str
    grid_level : int
    source : str
        ``'coefficients:difference'``, ``'coefficients:total'`` or ``'density_matrix'``;
        ``'+coulomb_relaxed'`` appended after a Coulomb relaxation.
    coulomb_steps : int
        Coulomb-relaxation steps taken before the diagonalisation (0: the input density as
        given; see :func:`nscf_properties`).
    """

    energy: float
    mo_energy: np.ndarray
    mo_occ: np.ndarray
    mo_coeff: np.ndarray
    dm: np.ndarray
    homo: float
    lumo: float
    dipole: np.ndarray
    n_electrons: float
    n_electrons_grid: float
    components: dict
    xc: str
    grid_level: int
    source: str
    coulomb_steps: int = 0

    @property
    def gap(self) -> float:
        """HOMO-LUMO gap, hartree."""
        return self.lumo - self.homo

    @property
    def gap_ev(self) -> float:
        """HOMO-LUMO gap, eV."""
        return self.gap * HARTREE_EV

    @property
    def dipole_norm(self) -> float:
        """``|dipole|``, Debye."""
        return float(np.linalg.norm(self.dipole))

    def record(self) -> dict:
        """JSON-ready summary (plain floats and lists; units in the key names)."""
        return {"energy_hartree": float(self.energy), "gap_ev": float(self.gap_ev),
                "homo_ev": float(self.homo * HARTREE_EV), "lumo_ev": float(self.lumo * HARTREE_EV),
                "dipole_debye": [float(x) for x in self.dipole], "dipole_norm_debye": self.dipole_norm,
                "n_electrons": float(self.n_electrons), "n_electrons_grid": float(self.n_electrons_grid),
                "mo_energy_hartree": [float(x) for x in self.mo_energy],
                "components_hartree": {k: float(v) for k, v in self.components.items()},
                "xc": self.xc, "grid_level": int(self.grid_level), "source": self.source,
                "coulomb_steps": int(self.coulomb_steps)}


# ----------------------------------------------------------------------------- checks
def _check_mol(mol) -> None:
    if hasattr(mol, "lattice_vectors"):
        raise InputError("non-self-consistent properties: periodic cells are not supported (molecules only)")
    if getattr(mol, "_atm", None) is None or not mol.natm:
        raise InputError("non-self-consistent properties: the PySCF molecule is not built (call mol.build())")
    if mol.spin != 0 or mol.nelectron % 2:
        raise InputError(f"non-self-consistent properties: closed-shell molecules only "
                         f"({mol.nelectron} electrons, 2S={mol.spin})")
    if len(getattr(mol, "_ecpbas", ())) or any(mol.atom_nelec_core(i) for i in range(mol.natm)):
        raise InputError("non-self-consistent properties: ECP/pseudopotential atoms are not supported")


def check_xc(xc: str) -> str:
    """Return ``xc`` if it is a pure LDA or GGA functional PySCF knows; InputError otherwise."""
    from pyscf.dft import numint

    if not isinstance(xc, str) or not xc.strip():
        raise InputError(f"functional must be a non-empty name, got {xc!r}")
    ni = numint.NumInt()
    try:
        xctype = ni._xc_type(xc)
        hyb = ni.hybrid_coeff(xc)
        rsh = ni.rsh_coeff(xc)
        nlc = ni.libxc.is_nlc(xc)
    except (KeyError, ValueError, NotImplementedError) as exc:
        raise InputError(f"unknown functional {xc!r} ({exc})") from None
    if xctype not in ("LDA", "GGA") or abs(hyb) > 0 or any(abs(x) > 0 for x in rsh[1:]) or nlc:
        raise InputError(f"functional {xc!r}: non-self-consistent properties support pure LDA/GGA "
                         "functionals only (exact exchange, meta-GGA and NLC need orbitals)")
    return xc


def _as_dm(mol, dm, label: str) -> np.ndarray:
    d = np.asarray(dm, dtype=np.float64)
    if d.shape != (mol.nao, mol.nao):
        raise InputError(f"{label}: shape {d.shape}, the molecule has {mol.nao} orbitals")
    if not np.all(np.isfinite(d)):
        raise InputError(f"{label}: contains NaN or infinity")
    return 0.5 * (d + d.T)


# ----------------------------------------------------------------------------- integrals
def aux_moments(auxmol) -> tuple[np.ndarray, np.ndarray]:
    """``int chi_P`` (naux,) and ``int r chi_P`` (3, naux, bohr) of every aux function.

    Analytic (libcint): the one-centre integrals against a constant function, an s shell
    of exponent 0 whose coefficient makes it exactly 1 (libcint's s functions carry
    ``1/sqrt(4 pi)``).
    """
    from pyscf import gto

    one = gto.M(atom=[["X", (0.0, 0.0, 0.0)]], basis={"X": [[0, [1.0, 1.0]]]}, unit="Bohr", verbose=0)
    one._env[one._bas[0, gto.PTR_EXP]] = 0.0
    one._env[one._bas[0, gto.PTR_COEFF]] = 2.0 * np.sqrt(np.pi)
    q = gto.intor_cross("int1e_ovlp", auxmol, one)[:, 0]
    with auxmol.with_common_origin((0.0, 0.0, 0.0)):
        r = gto.intor_cross("int1e_r", auxmol, one)[:, :, 0]
    return q, r


#: Screening threshold of the auxiliary density on DFT grids: a function is skipped where
#: ``|c_P chi_P|`` is below this bound (electrons/bohr^3).
AUX_SCREEN_THRESHOLD = 1e-13
#: Consecutive aux shells whose cutoff radii differ by less than this factor are evaluated
#: together (fewer, larger ``eval_gto`` calls).
AUX_CHUNK_RATIO = 1.5


def _atom_blocks(mol, dm) -> list[tuple[int, int]] | None:
    """The per-atom AO ranges of ``dm`` if it is symmetric and zero outside the atom-diagonal
    blocks (as the SAED density matrix is), else None."""
    dm = np.asarray(dm)
    if dm.ndim != 2 or dm.shape != (mol.nao, mol.nao) or not np.array_equal(dm, dm.T):
        return None
    blocks = [(int(p0), int(p1)) for _, _, p0, p1 in mol.aoslice_by_atom()]
    inside = np.zeros(dm.shape, dtype=bool)
    for p0, p1 in blocks:
        inside[p0:p1, p0:p1] = True
    return blocks if not np.any(dm[~inside]) else None


class _CoulombFit:
    """Coulomb-metric density fitting onto an auxiliary basis with kept integrals: the
    three-centre ``(mn|P)`` (s2ij-packed), the metric ``(P|Q)`` and its solver."""

    def __init__(self, ints, metric):
        from .fitting import MetricSolver

        self.ints, self.metric, self.solver = ints, metric, MetricSolver(metric)
        self.nao = int(round((np.sqrt(8 * ints.shape[0] + 1) - 1) / 2))
        self._rows, self._cols = np.tril_indices(self.nao)  # the s2ij pair order
        self._weight = np.where(self._rows == self._cols, 1.0, 2.0)

    def project(self, dm) -> np.ndarray:
        """b_P = (P|dm) of a symmetric density matrix (off-diagonal pairs counted twice)."""
        return (dm[self._rows, self._cols] * self._weight) @ self.ints

    def coefficients(self, dm) -> np.ndarray:
        """Fitted coefficients (P|Q)^-1 (Q|dm)."""
        return self.solver.solve(self.project(dm))

    def coulomb(self, c) -> np.ndarray:
        """J_mn = sum_P (mn|P) c_P, (nao, nao)."""
        j = np.empty((self.nao, self.nao))
        j[self._rows, self._cols] = j[self._cols, self._rows] = self.ints @ c
        return j


class _InputDensity:
    """rho_in = sum_P c_P chi_P + density of ``dm_part`` (either may be absent)."""

    def __init__(self, mol, coefficients=None, basis=None, dm_part=None):
        from .fitting import make_auxmol

        self.mol = mol
        self.c = None if coefficients is None else np.asarray(coefficients, dtype=np.float64)
        self.auxmol = None if self.c is None else make_auxmol(mol, basis)
        self.dm = dm_part
        self.atom_blocks = None if dm_part is None else _atom_blocks(mol, dm_part)
        self.fit = None  # _CoulombFit once coulomb(fit_dm=True) ran
        self.c_fitted = None  # then: auxiliary coefficients of the whole input density

    def coulomb(self, fit_dm: bool = False) -> tuple[np.ndarray, float]:
        """Orbital-basis Coulomb matrix (nao, nao) and 1/2 (rho|rho), hartree.

        Exact, unless ``fit_dm``: then the density-matrix part (the SAED) is density-fitted
        onto the auxiliary basis (Coulomb metric), which replaces a four-centre J build by
        three-centre integrals (for SCF guesses, where speed matters more than the last
        micro-hartree); its self-repulsion is then the robust-fit value (b . c_dm). With
        ``fit_dm`` the fit (:attr:`fit`, its integrals) and the input density's fitted
        coefficients (:attr:`c_fitted`) are kept for later density matrices."""
        from pyscf.df import incore
        from pyscf.scf import hf

        from .fitting import coulomb_matrix

        if fit_dm and self.c is not None:
            # one pass of three-centre integrals serves the projection b_P = (P|dm) and the
            # potential J_mn = sum_P (mn|P) (c + c_dm)_P
            fit = _CoulombFit(incore.aux_e2(self.mol, self.auxmol, intor="int3c2e", aosym="s2ij"),
                              self.auxmol.intor("int2c2e"))
            self.fit = fit
            cc = float(self.c @ fit.metric @ self.c)
            if self.dm is None:
                self.c_fitted = self.c
                return fit.coulomb(self.c), 0.5 * cc
            b = fit.project(self.dm)
            c_dm = fit.solver.solve(b)
            self.c_fitted = self.c + c_dm
            return fit.coulomb(self.c_fitted), 0.5 * (cc + 2.0 * float(self.c @ b) + float(c_dm @ b))
        j = np.zeros((self.mol.nao, self.mol.nao))
        rr = 0.0
        if self.c is not None:
            j_aux = coulomb_matrix(self.mol, self.auxmol, self.c)
            j += j_aux
            rr += float(self.c @ self.auxmol.intor("int2c2e") @ self.c)
            if self.dm is not None:
                rr += 2.0 * float(np.einsum("ij,ji->", self.dm, j_aux))
        if self.dm is not None:
            j_dm = hf.get_jk(self.mol, self.dm, hermi=1, with_k=False)[0]
            j += j_dm
            rr += float(np.einsum("ij,ji->", self.dm, j_dm))
        return j, 0.5 * rr

    def coulomb_of_dm(self, dm) -> np.ndarray:
        """Coulomb matrix (nao, nao) of another density matrix ``dm``: through the kept fit
        when :meth:`coulomb` ran with ``fit_dm`` (no new integrals), exact four-centre
        otherwise."""
        if self.fit is not None:
            return self.fit.coulomb(self.fit.coefficients(dm))
        from pyscf.scf import hf

        return hf.get_jk(self.mol, dm, hermi=1, with_k=False)[0]

    def moments(self) -> tuple[float, np.ndarray]:
        """Electron count and electronic first moment int r rho (3,), bohr, analytic."""
        n, r = 0.0, np.zeros(3)
        if self.c is not None:
            q, rq = aux_moments(self.auxmol)
            n += float(q @ self.c)
            r += rq @ self.c
        if self.dm is not None:
            n += float(np.einsum("ij,ji->", self.dm, self.mol.intor_symmetric("int1e_ovlp")))
            with self.mol.with_common_origin((0.0, 0.0, 0.0)):
                r += np.einsum("xij,ji->x", self.mol.intor_symmetric("int1e_r"), self.dm)
        return n, r

    def on_grid(self, ni, ao, mask, coords, xctype: str, max_memory_mb: float) -> np.ndarray:
        """rho (and grad rho for GGA) on a block of grid points, shape (1 or 4, ngrid)."""
        ng = coords.shape[0]
        ncomp = 1 if xctype == "LDA" else 4
        rho = np.zeros((ncomp, ng))
        if self.atom_blocks is not None:
            rho += self.blocks_on_grid(ao, ncomp)
        elif self.dm is not None:
            rho += np.asarray(ni.eval_rho(self.mol, ao, self.dm, mask, xctype, hermi=1)).reshape(ncomp, ng)
        if self.c is not None:
            rho += self.aux_on_points(coords, ncomp, max_memory_mb)
        return rho

    def blocks_on_grid(self, ao, ncomp: int) -> np.ndarray:
        """Density (and gradient) of a symmetric, atom-block-diagonal ``dm_part`` (the SAED
        density matrix) from the AO values ``ao`` ((ngrid, nao), or (>=4, ngrid, nao) with
        derivatives), shape (ncomp, ngrid).

        One small product per atom block instead of PySCF's dense ``ao @ dm``: a QM9
        molecule's SAED has about 1/natm of the dense matrix's non-zeros. Equal to
        ``NumInt.eval_rho`` to rounding (a test).
        """
        a = ao.reshape(1, *ao.shape) if ao.ndim == 2 else ao
        out = np.zeros((ncomp, a.shape[1]))
        for p0, p1 in self.atom_blocks:
            c0 = a[0, :, p0:p1] @ self.dm[p0:p1, p0:p1]
            out[0] += np.einsum("gi,gi->g", c0, a[0, :, p0:p1])
            for x in range(1, ncomp):
                out[x] += 2.0 * np.einsum("gi,gi->g", c0, a[x, :, p0:p1])
        return out

    def _shell_chunks(self):
        """Per atom: runs of consecutive aux shells with their common cutoff radius (bohr).

        A shell's radius is where ``|c_P| |chi_P|`` of its largest coefficient falls below
        :data:`AUX_SCREEN_THRESHOLD` (:func:`densitylearn.grid.shell_cutoff_radius` with
        libcint's contraction coefficients; shells with zero coefficients are dropped).
        Consecutive shells whose radii lie within a factor ``AUX_CHUNK_RATIO`` are
        evaluated together on the points inside the largest radius, so a QM9 molecule
        needs a few hundred ``eval_gto`` calls per block instead of one per shell.
        """
        if getattr(self, "_chunks", None) is not None:
            return self._chunks
        from types import SimpleNamespace

        from .grid import shell_cutoff_radius

        aux = self.auxmol
        ao_loc = aux.ao_loc_nr()
        per_atom = [[] for _ in range(aux.natm)]
        for ish in range(aux.nbas):
            f0, f1 = int(ao_loc[ish]), int(ao_loc[ish + 1])
            cmax = float(np.abs(self.c[f0:f1]).max()) if f1 > f0 else 0.0
            if cmax == 0.0:
                continue
            shell = SimpleNamespace(l=int(aux.bas_angular(ish)), exponents=aux.bas_exp(ish),
                                    coefficients=np.abs(aux._libcint_ctr_coeff(ish)).max(axis=1))
            r = shell_cutoff_radius(shell, AUX_SCREEN_THRESHOLD / cmax)
            if r > 0.0:
                per_atom[int(aux.bas_atom(ish))].append((ish, r))
        chunks = []
        for atom, shells in enumerate(per_atom):
            run = []
            for ish, r in shells:
                if run and (ish != run[-1][0] + 1 or max(r, run[0][1]) > AUX_CHUNK_RATIO * min(r, run[0][1])):
                    chunks.append((atom, run[0][0], run[-1][0] + 1, max(x[1] for x in run)))
                    run = []
                run.append((ish, r))
            if run:
                chunks.append((atom, run[0][0], run[-1][0] + 1, max(x[1] for x in run)))
        self._chunks = chunks
        return chunks

    def aux_on_points(self, coords, ncomp: int, max_memory_mb: float = 2000.0) -> np.ndarray:
        """``sum_P c_P chi_P`` (and its gradient when ``ncomp`` is 4) at ``coords``, (ncomp, n).

        Screened by distance: each run of shells (:meth:`_shell_chunks`) is evaluated only
        on the points within its cutoff radius, which skips the steep core functions
        almost everywhere. Equal to the unscreened sum to within
        :data:`AUX_SCREEN_THRESHOLD` per function.
        """
        coords = np.asarray(coords, dtype=np.float64)
        ng = coords.shape[0]
        out = np.zeros((ncomp, ng))
        if ng == 0:
            return out
        aux = self.auxmol
        ao_loc = aux.ao_loc_nr()
        name = "GTOval_sph" if ncomp == 1 else "GTOval_sph_deriv1"
        centres = aux.atom_coords()
        chunks = self._shell_chunks()
        by_atom = {}
        for ch in chunks:
            by_atom.setdefault(ch[0], []).append(ch)
        for atom, runs in by_atom.items():
            d2 = np.einsum("gx,gx->g", coords - centres[atom], coords - centres[atom])
            order = np.argsort(d2)
            d2s = d2[order]
            n_max = int(np.searchsorted(d2s, max(r for *_, r in runs) ** 2, side="right"))
            if n_max == 0:
                continue
            pts = coords[order[:n_max]]
            acc = np.zeros((ncomp, n_max))  # this atom's part, points sorted by distance
            for _, s0, s1, r in runs:
                n = int(np.searchsorted(d2s, r * r, side="right"))
                if n == 0:
                    continue
                f0, f1 = int(ao_loc[s0]), int(ao_loc[s1])
                step = max(64, int(max_memory_mb * 1e6 / (8 * ncomp * (f1 - f0))))
                for p0 in range(0, n, step):
                    p1 = min(n, p0 + step)
                    chi = np.asarray(aux.eval_gto(name, pts[p0:p1], shls_slice=(s0, s1))).reshape(ncomp, p1 - p0, f1 - f0)
                    acc[:, p0:p1] += chi @ self.c[f0:f1]
            out[:, order[:n_max]] += acc
        return out


class _RecordedDensity:
    """Passes ``density.on_grid`` through and keeps each grid block's values, so that a
    second pass over the same grid (:class:`_MixedDensity`) need not evaluate the
    auxiliary functions again."""

    def __init__(self, density):
        self.density, self.mol, self.blocks = density, density.mol, []

    def on_grid(self, ni, ao, mask, coords, xctype: str, max_memory_mb: float) -> np.ndarray:
        rho = self.density.on_grid(ni, ao, mask, coords, xctype, max_memory_mb)
        self.blocks.append(rho)
        return rho


class _MixedDensity:
    """w rho_in + rho[dm] on the grid blocks of a :class:`_RecordedDensity` pass (same
    grid, same block order)."""

    def __init__(self, recorded: _RecordedDensity, w: float, dm):
        self.recorded, self.mol, self.w, self.dm, self.k = recorded, recorded.mol, float(w), dm, 0

    def on_grid(self, ni, ao, mask, coords, xctype: str, max_memory_mb: float) -> np.ndarray:
        rho_in = self.recorded.blocks[self.k]
        self.k += 1
        rho_dm = np.asarray(ni.eval_rho(self.mol, ao, self.dm, mask, xctype, hermi=1)).reshape(rho_in.shape)
        return self.w * rho_in + rho_dm


def _dft_grids(mol, grid_level: int):
    from pyscf.dft import gen_grid

    grids = gen_grid.Grids(mol)
    grids.level = int(grid_level)
    grids.verbose = 0
    grids.build(with_non0tab=True)
    return grids


def _xc_terms(mol, density: _InputDensity, xc: str, grid_level: int, max_memory_mb: float, grids=None):
    """V_xc (nao, nao), E_xc, int v_xc rho, grid electron count (hartree, electrons).

    ``grids``: an already built PySCF grid (of ``grid_level``) to reuse."""
    from pyscf.dft import numint

    ni = numint.NumInt()
    xctype = ni._xc_type(xc)
    if grids is None:
        grids = _dft_grids(mol, grid_level)
    nao = mol.nao
    vmat = np.zeros((nao, nao))
    exc_sum = vrho_sum = nelec = 0.0
    ao_deriv = 0 if xctype == "LDA" else 1
    for ao, mask, weight, coords in ni.block_loop(mol, grids, nao, ao_deriv, max_memory=max_memory_mb):
        rho = density.on_grid(ni, ao, mask, coords, xctype, max_memory_mb)
        rho_in = rho[0] if xctype == "LDA" else rho
        exc, vxc = ni.eval_xc_eff(xc, rho_in, deriv=1, xctype=xctype, spin=0)[:2]
        vxc = np.asarray(vxc).reshape(rho.shape[0], -1)
        den = rho[0] * weight
        nelec += float(den.sum())
        exc_sum += float(den @ exc)
        wv = weight * vxc
        vrho_sum += float(np.sum(wv * rho))
        wv[0] *= 0.5  # symmetrised below
        aos = ao.reshape(1, *ao.shape) if xctype == "LDA" else ao[:4]
        aow = np.einsum("xgi,xg->gi", aos, wv)
        vmat += aos[0].T @ aow
    return vmat + vmat.T, exc_sum, vrho_sum, nelec


# ----------------------------------------------------------------------------- the API
def nscf_properties(mol, coefficients=None, basis=None, target: str = "difference", xc: str = "pbe",
                    dm_saed=None, grid_level: int = 3, *, dm=None, orbital_basis: str | None = None,
                    max_memory_mb: float = 500.0, fit_saed_coulomb: bool = False,
                    coulomb_steps: int = 0) -> NSCFResult:
    """Harris energy, orbital energies, gap, dipole and output density of one input density.

    Parameters
    ----------
    mol : pyscf.gto.Mole
        Built, closed-shell, all-electron molecule in the orbital basis of the calculation.
    coefficients : ndarray, shape (n_functions,), optional
        Auxiliary-basis coefficients in ``basis``'s PySCF order (dimensionless).
    basis : AuxBasis
        The coefficients' auxiliary basis (required with ``coefficients``).
    target : {'difference', 'total'}
        Whether the coefficients describe rho - rho_SAED (the SAED density matrix is added
        analytically) or the total density.
    xc : str
        LDA or GGA functional (PySCF/libxc name) of the Fock matrix and the energy.
    dm_saed : ndarray, shape (nao, nao), optional
        SAED density matrix for ``target='difference'``; computed with
        :func:`densitylearn.saed.saed_density_matrix` (functional ``xc``, basis name
        ``orbital_basis``) when omitted.
    grid_level : int
        PySCF Becke grid level of the XC quadrature.
    dm : ndarray, shape (nao, nao), optional
        An orbital-basis density matrix as the input density instead of coefficients (a
        converged SCF density matrix reproduces the SCF energy and orbital energies).
    orbital_basis : str, optional
        Name of ``mol``'s orbital basis, for the SAED cache when ``mol`` came from a chkfile.
    max_memory_mb : float
        Working memory of the grid loops, MB.
    fit_saed_coulomb : bool
        Density-fit the SAED's Coulomb potential onto the auxiliary basis instead of the
        exact four-centre build (faster; for guesses, see :func:`guess_density_matrix`).
    coulomb_steps : int
        0 (default): the properties of the predicted density itself, one diagonalisation.
        N > 0: first relax the predicted density's Coulomb (Hartree) potential: N Coulomb
        steps of :func:`guess_density_matrix` (``mixing_steps=0``), each a density-fitted J
        and a diagonalisation with V_xc held at the predicted density's (on the guess's
        level-1 grid), Pulay-extrapolated towards the density whose Hartree potential is
        self-consistent; then the properties of that relaxed density matrix (one
        diagonalisation on ``grid_level``, exact J). The long-range Coulomb response
        amplifies small density errors into orbital-energy shifts of whole molecules (the
        gap of a complex whose HOMO and LUMO sit on different monomers); V_xc is local and
        taken from the prediction. Coefficient inputs only. See docs/properties.rst.

    Returns
    -------
    NSCFResult
    """
    from pyscf.scf import hf

    n_relax = int(coulomb_steps)
    if n_relax < 0:
        raise InputError(f"coulomb_steps must be >= 0, got {coulomb_steps}")
    if n_relax:
        if coefficients is None:
            raise InputError("Coulomb relaxation (coulomb_steps > 0) needs predicted coefficients, "
                             "not a density matrix")
        if target == "difference" and dm_saed is None:
            from .saed import saed_density_matrix

            _check_mol(mol)
            dm_saed = saed_density_matrix(mol, check_xc(xc), basis=orbital_basis)
        d_relaxed = guess_density_matrix(mol, coefficients, basis, target, xc, dm_saed=dm_saed,
                                         mixing_steps=0, coulomb_steps=n_relax, orbital_basis=orbital_basis,
                                         max_memory_mb=max_memory_mb)
        res = nscf_properties(mol, xc=xc, grid_level=grid_level, dm=d_relaxed, max_memory_mb=max_memory_mb)
        return replace(res, source=f"coefficients:{target}+coulomb_relaxed", coulomb_steps=n_relax)

    density, source = _input_density(mol, coefficients, basis, target, xc, dm_saed, dm, orbital_basis)
    xc = check_xc(xc)
    j, e_coul = density.coulomb(fit_dm=fit_saed_coulomb)
    vxc, e_xc, vxc_rho, n_grid = _xc_terms(mol, density, xc, grid_level, max_memory_mb)
    h = hf.get_hcore(mol)
    s = mol.intor_symmetric("int1e_ovlp")
    mo_energy, mo_coeff = hf.eig(h + j + vxc, s)
    nocc = mol.nelectron // 2
    mo_occ = np.zeros_like(mo_energy)
    mo_occ[:nocc] = 2.0
    dm_out = (mo_coeff[:, :nocc] * 2.0) @ mo_coeff[:, :nocc].T
    band = float(mo_occ @ mo_energy)
    e_nuc = float(mol.energy_nuc())
    energy = band - e_coul - vxc_rho + e_xc + e_nuc

    n_el, r_el = density.moments()
    nuc = np.einsum("i,ix->x", mol.atom_charges(), mol.atom_coords())
    homo = float(mo_energy[nocc - 1])
    lumo = float(mo_energy[nocc]) if nocc < len(mo_energy) else float("nan")
    return NSCFResult(energy=float(energy), mo_energy=mo_energy, mo_occ=mo_occ, mo_coeff=mo_coeff, dm=dm_out,
                      homo=homo, lumo=lumo, dipole=(nuc - r_el) * AU_DEBYE, n_electrons=n_el,
                      n_electrons_grid=n_grid,
                      components={"band": band, "coulomb": e_coul, "xc": e_xc, "vxc_rho": vxc_rho,
                                  "nuclear": e_nuc},
                      xc=xc, grid_level=int(grid_level), source=source)


def _input_density(mol, coefficients, basis, target: str, xc: str, dm_saed, dm,
                   orbital_basis: str | None) -> tuple[_InputDensity, str]:
    """The checked input density of :func:`nscf_properties` and its source label."""
    _check_mol(mol)
    xc = check_xc(xc)
    if (coefficients is None) == (dm is None):
        raise InputError("give either coefficients (with basis and target) or a density matrix dm, not both")
    if dm is not None:
        density = _InputDensity(mol, dm_part=_as_dm(mol, dm, "density matrix"))
        source = "density_matrix"
    else:
        if target not in TARGETS:
            raise InputError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
        if basis is None:
            raise InputError("coefficients need their auxiliary basis (basis=AuxBasis)")
        numbers = np.array([int(round(z)) for z in mol.atom_charges()])
        missing = sorted(set(numbers.tolist()) - set(basis.elements))
        if missing:
            raise InputError(f"auxiliary basis {basis.name} has no functions for Z={missing[0]}")
        c = basis.check_coefficients(numbers, coefficients)
        dm_part = None
        if target == "difference":
            if dm_saed is None:
                from .saed import saed_density_matrix

                dm_saed = saed_density_matrix(mol, xc, basis=orbital_basis)
            dm_part = _as_dm(mol, dm_saed, "SAED density matrix")
        density = _InputDensity(mol, coefficients=c, basis=basis, dm_part=dm_part)
        source = f"coefficients:{target}"
    return density, source


#: Becke grid level of the guess's XC potential (the SCF itself keeps its own level).
GUESS_GRID_LEVEL = 1


#: Mixing of the guess (:func:`guess_density_matrix`): each step builds the Fock matrix of
#: ``(1 - a) rho + a rho_out``, the current density mixed with the output density of its
#: own Fock matrix (Pulay-extrapolated over the steps so far). 0: no mixing steps.
GUESS_MIXING = 0.5

#: Mixing steps of the guess that rebuild V_xc (each one V_xc build on the guess's grid).
GUESS_MIXING_STEPS = 2

#: Coulomb steps of the guess before each V_xc rebuild and after the last: Pulay steps
#: with V_xc held, each one fitted J and one diagonalisation (tens of milliseconds).
GUESS_COULOMB_STEPS = 4


#: Coulomb-relaxation steps recommended for :func:`nscf_properties` (``coulomb_steps``;
#: ``densitylearn nscf --coulomb-steps``), chosen on training-range QM9 molecules: the gaps
#: change by well under 1 meV beyond it (docs/properties.rst).
NSCF_COULOMB_STEPS = 8


def _occupied_dm(fock, s, nocc: int) -> np.ndarray:
    """Closed-shell aufbau density matrix of ``fock`` (nao, nao)."""
    from pyscf.scf import hf

    _, c = hf.eig(fock, s)
    return (c[:, :nocc] * 2.0) @ c[:, :nocc].T


def _pulay_weights(residuals, metric) -> np.ndarray:
    """Weights beta (sum 1) minimising |sum_i beta_i r_i| in ``metric`` (Pulay/DIIS)."""
    n = len(residuals)
    if n == 1:
        return np.ones(1)
    r = np.asarray(residuals)
    b = r @ metric @ r.T
    scale = float(np.abs(np.diag(b)).max()) or 1.0
    a = np.zeros((n + 1, n + 1))
    a[:n, :n] = b / scale
    a[:n, n] = a[n, :n] = 1.0
    rhs = np.zeros(n + 1)
    rhs[n] = 1.0
    return np.linalg.lstsq(a, rhs, rcond=1e-12)[0][:n]


def guess_density_matrix(mol, coefficients=None, basis=None, target: str = "difference", xc: str = "pbe",
                         dm_saed=None, grid_level: int = GUESS_GRID_LEVEL, fit_saed_coulomb: bool = True,
                         mixing: float = GUESS_MIXING, *, mixing_steps: int = GUESS_MIXING_STEPS,
                         coulomb_steps: int = GUESS_COULOMB_STEPS, dm=None, orbital_basis: str | None = None,
                         max_memory_mb: float = 500.0,
                         history: list | None = None) -> np.ndarray:
    """SCF initial guess from a predicted density, a density matrix (nao, nao).

    Pass it as ``dm0`` to ``mf.kernel(dm0=...)`` in PySCF or gpu4pyscf (a numpy array;
    gpu4pyscf converts it). Arguments as :func:`nscf_properties`, plus the mixing.

    The input density's Fock matrix is diagonalised once (as in :func:`nscf_properties`),
    giving the output density matrix ``D_out``. That one-shot output overshoots the SCF
    density (the input's error comes back amplified by the Coulomb response), so by default
    the guess first takes steps of density mixing towards the self-consistent density of
    the guess's cheap Hamiltonian (density-fitted Coulomb matrix, V_xc on a coarse grid).
    Each step builds the Fock matrix of ``(1 - a) rho + a rho[D_out]`` (``a`` = ``mixing``)
    from the current density ``rho`` and the output of its Fock matrix, and diagonalises
    it; from the second step on the mixed densities are Pulay-extrapolated over the steps
    so far (see below), with the residuals ``rho[D_out] - rho`` compared in the Coulomb
    metric of the auxiliary basis (all densities fitted onto it with the three-centre
    integrals of the Coulomb matrix).

    There are two kinds of step. A *Coulomb step* updates only the Coulomb matrix and holds
    V_xc: a fitted J and a diagonalisation, tens of milliseconds. A *mixing step* also
    rebuilds V_xc of the mixed density on the grid. The guess takes ``coulomb_steps``
    Coulomb steps before each of its ``mixing_steps`` mixing steps and after the last: the
    cheap steps converge the long-range Coulomb response that causes the overshoot, the few
    grid passes the XC part. The Coulomb steps' residuals belong to the V_xc they held, so
    the Pulay history restarts at each rebuild. ``coulomb_steps=0`` gives ``mixing_steps``
    plain mixing steps (one Pulay history); ``mixing=0`` or ``mixing_steps=coulomb_steps=0``
    returns the one-shot ``D_out``. Without the fit (``fit_saed_coulomb=False``, or a
    density-matrix input) the steps are plain linear mixing with the exact four-centre J,
    and Coulomb steps are not taken (each would cost a four-centre J build).

    A guess only has to start the SCF close to convergence, so it is built cheaply: the XC
    potential on a level-1 grid, and the SAED's Coulomb potential density-fitted onto the
    auxiliary basis (``fit_saed_coulomb``). The steps reuse the grid, the input density's
    grid values and the three-centre integrals; a mixing step costs one evaluation of
    ``rho[D]`` and one V_xc matrix on the coarse grid. ``history``: a list that receives,
    per step, the Coulomb norm ``sqrt((r|r))`` of the fitted residual (sqrt(hartree);
    fitted path only).
    """
    from pyscf.scf import hf

    a, steps, coulomb = float(mixing), int(mixing_steps), int(coulomb_steps)
    if not 0.0 <= a <= 1.0:
        raise InputError(f"guess mixing must be in [0, 1], got {mixing}")
    if steps < 0:
        raise InputError(f"guess mixing_steps must be >= 0, got {mixing_steps}")
    if coulomb < 0:
        raise InputError(f"guess coulomb_steps must be >= 0, got {coulomb_steps}")
    density, _ = _input_density(mol, coefficients, basis, target, xc, dm_saed, dm, orbital_basis)
    xc = check_xc(xc)
    h = hf.get_hcore(mol)
    s = mol.intor_symmetric("int1e_ovlp")
    nocc = mol.nelectron // 2
    grids = _dft_grids(mol, grid_level)
    recorded = _RecordedDensity(density)
    j_in, _ = density.coulomb(fit_dm=fit_saed_coulomb)
    vxc = _xc_terms(mol, recorded, xc, grid_level, max_memory_mb, grids)[0]
    dm_out = _occupied_dm(h + j_in + vxc, s, nocc)
    fit = density.fit
    if fit is None:
        coulomb = 0
    # per step: rebuild V_xc (a mixing step) or hold it (a Coulomb step)
    schedule = ([False] * coulomb + [True]) * steps + [False] * coulomb
    if a == 0.0 or not schedule:
        return dm_out
    # rho = w rho_in + rho[D]; the history keeps (w, D, D_out, and with a fit: the fitted
    # coefficients of D and D_out and the residual); fitting is linear, so the mixed
    # densities' coefficients are mixed like their density matrices
    w, d, c_d = 1.0, np.zeros_like(dm_out), 0.0
    past = []
    for rebuild in schedule:
        if fit is None:  # linear mixing, exact four-centre J
            past = [(w, d, dm_out)]
            beta = np.ones(1)
        else:
            c_out = fit.coefficients(dm_out)
            r = c_out - w * density.c_fitted - c_d
            past.append((w, d, dm_out, c_d, c_out, r))
            beta = _pulay_weights([p[5] for p in past], fit.metric)
            if history is not None:
                history.append(float(np.sqrt(max(r @ fit.metric @ r, 0.0))))
            c_d = sum(b * ((1.0 - a) * p[3] + a * p[4]) for b, p in zip(beta, past))
        w = float(sum(b * (1.0 - a) * p[0] for b, p in zip(beta, past)))
        d = sum(b * ((1.0 - a) * p[1] + a * p[2]) for b, p in zip(beta, past))
        if fit is None:
            fock = h + w * j_in + density.coulomb_of_dm(d)
        else:  # j_in is the fitted J of c_fitted
            fock = h + fit.coulomb(w * density.c_fitted + c_d)
        if rebuild:
            vxc = _xc_terms(mol, _MixedDensity(recorded, w, d), xc, grid_level, max_memory_mb, grids)[0]
            if coulomb:  # the Coulomb steps' residuals belong to the V_xc they held
                past = []
        dm_out = _occupied_dm(fock + vxc, s, nocc)
    return dm_out


@functools.lru_cache(maxsize=4)
def _cached_predictor(model: str, device):
    """One loaded model per process (reference workers start many SCFs from it)."""
    from .predict import load_model

    return load_model(model, device=device)


class ModelGuess:
    """SCF initial guesses from a trained model, for reference calculations.

    ``ModelGuess("qm9-dcd", "pbe", "def2-svp")(structure, mol)`` predicts the structure's
    density and returns :func:`guess_density_matrix` (nao, nao) for the built Mole ``mol``.
    Pass it as ``initial_guess`` to :func:`densitylearn.reference.compute_references`
    (``densitylearn compute --guess MODEL``): the SCF then starts from it with DIIS from
    cycle :data:`GUESS_DIIS_START_CYCLE`. Picklable (worker processes load the model once
    each, on first use).

    Parameters
    ----------
    model : str
        Checkpoint path or built-in model name (:func:`densitylearn.predict.load_model`).
    xc, orbital_basis : str
        The calculation's functional and orbital basis; a model trained on others is a
        :class:`~densitylearn.errors.MismatchError` unless ``override``
        (:func:`resolve_settings`).
    device : str, optional
        Where the model runs (None: CUDA when available).
    override_flag : str
        How the mismatch error tells the user to override (a command-line flag).
    """

    diis_start_cycle = GUESS_DIIS_START_CYCLE

    def __init__(self, model: str, xc: str, orbital_basis: str, device=None, override: bool = False,
                 override_flag: str = "override=True"):
        self.model, self.device = str(model), device
        p = self._predictor()
        self.xc, self.orbital_basis = resolve_settings(p.xc, p.orbital_basis, xc, orbital_basis, override,
                                                       context=f"model {model}", override_flag=override_flag)
        check_xc(self.xc)
        self.label = f"{OUR_GUESS}:{os.path.basename(self.model)}"

    def _predictor(self):
        return _cached_predictor(self.model, self.device)

    def check(self, structures) -> None:
        """InputError naming the first structure the model cannot predict (elements, charge,
        spin, periodicity); run before any SCF starts."""
        self._predictor().check(structures)

    def __call__(self, structure, mol) -> np.ndarray:
        [pred] = self._predictor().predict([structure])
        return guess_density_matrix(mol, pred.coefficients, pred.basis, pred.target, self.xc,
                                    orbital_basis=self.orbital_basis)


# ----------------------------------------------------------------------------- forces
#: Default central-difference step of :func:`harris_forces`, bohr.
FORCE_STEP_BOHR = 2e-3

#: hartree/bohr -> eV/Angstrom
HARTREE_BOHR_EV_ANGSTROM = HARTREE_EV / BOHR_ANGSTROM


def harris_forces(predict, structure, xc: str, orbital_basis: str, step: float = FORCE_STEP_BOHR,
                  grid_level: int = 3, max_memory_mb: float = 500.0) -> np.ndarray:
    """Forces on the nuclei from a model's Harris energy surface, hartree/bohr, (n_atoms, 3).

    ``F_Ax = -(E_H(R + h e_Ax) - E_H(R - h e_Ax)) / 2h`` where each ``E_H`` is
    :func:`nscf_properties` of the density the model predicts at that geometry (so the
    derivative includes how the predicted density follows the atoms). The molecular grid,
    the orbital basis and, for DCD, the SAED move with the atoms.

    Parameters
    ----------
    predict : callable
        Maps a list of :class:`~densitylearn.structure.Structure` to predictions with
        ``coefficients``, ``basis`` and ``target`` (e.g. ``Predictor.predict``).
    structure : Structure
        The molecule (bohr).
    xc, orbital_basis : str
        The calculation's functional and orbital basis.
    step : float
        Displacement h in bohr (the error is O(h^2); the grid quadrature adds noise of
        order 1e-6 hartree / h, so h should not be much below 1e-3).
    """
    def energies(displaced):
        preds = predict(displaced)  # all displaced geometries in one batched call
        return [nscf_properties(s.to_pyscf(basis=orbital_basis), pr.coefficients, pr.basis, pr.target, xc,
                                grid_level=grid_level, orbital_basis=orbital_basis,
                                max_memory_mb=max_memory_mb).energy for s, pr in zip(displaced, preds)]

    return central_difference_forces(energies, structure, step)


def displacements(structure, step: float) -> list:
    """The 6 N displaced copies of ``structure`` used by :func:`central_difference_forces`
    (atom-major, then x y z, then +h before -h)."""
    import dataclasses

    out = []
    for a in range(len(structure)):
        for x in range(3):
            for sign in (1.0, -1.0):
                pos = np.array(structure.positions, dtype=np.float64, copy=True)
                pos[a, x] += sign * step
                out.append(dataclasses.replace(structure, positions=pos))
    return out


def central_difference_forces(energies, structure, step: float = FORCE_STEP_BOHR) -> np.ndarray:
    """``F_Ax = -(E(R + h e_Ax) - E(R - h e_Ax)) / 2h``, hartree/bohr, shape (n_atoms, 3).

    ``energies(displaced)`` maps the list of :func:`displacements` to their energies
    (hartree), in order.
    """
    if not step > 0:
        raise InputError(f"force step must be > 0 bohr, got {step}")
    e = np.asarray(energies(displacements(structure, step)), dtype=np.float64).reshape(len(structure), 3, 2)
    return -(e[..., 0] - e[..., 1]) / (2.0 * step)


def harris_forces_periodic(predict, structure, cell, kpts, xc: str, step: float = FORCE_STEP_BOHR,
                           saed=None, smearing: float = 0.0) -> np.ndarray:
    """Forces on the atoms of a cell from a model's Harris energy surface, hartree/bohr.

    As :func:`harris_forces`, with the energy of :func:`nscf_periodic`: at every displaced
    geometry the model predicts the density again, the lattice-summed SAED (DCD) and the
    orbital basis follow the atoms, and the lattice, k-points, pseudopotential and FFT mesh
    stay those of ``cell``. A uniform mesh does not follow the atoms: its aliasing of steep
    auxiliary functions adds an "egg-box" ripple to the energy that can dominate the forces
    of an all-electron fitting basis on a coarse mesh (measured in docs/periodic.rst).

    Parameters
    ----------
    predict : callable
        Maps a list of periodic :class:`~densitylearn.structure.Structure` to predictions.
    structure : Structure
        The cell (positions in bohr) matching ``cell``.
    cell : pyscf.pbc.gto.Cell
        The built cell of the calculation (basis, pseudopotential, mesh).
    kpts : ndarray, shape (n_k, 3)
        Absolute k-points.
    saed : SAED, optional
        For DCD models: the pseudo-atom SAED (default: each prediction's own).
    smearing : float
        Fermi-Dirac width (hartree) of :func:`nscf_periodic`: the forces of the Harris free
        energy, as PySCF's forces of a smeared SCF.
    """
    def energies(displaced):
        out = []
        for s, pr in zip(displaced, predict(displaced)):
            sd = saed if saed is not None else (pr.saed if pr.target == "difference" else None)
            out.append(nscf_periodic(displaced_cell(cell, s.positions), kpts, pr.coefficients, pr.basis, pr.target,
                                     xc, saed=sd, smearing=smearing).energy)
        return out

    return central_difference_forces(energies, structure, step)


def displaced_cell(cell, positions_bohr):
    """A copy of a built cell with the atoms at ``positions_bohr``; lattice and FFT mesh kept."""
    c = cell.set_geom_(np.asarray(positions_bohr, dtype=np.float64), unit="Bohr", inplace=False)
    c.mesh = np.asarray(cell.mesh).copy()
    return c


def reference_forces(path: str) -> np.ndarray:
    """Analytic forces (hartree/bohr, (n_atoms, 3)) of a converged restricted-KS reference chkfile.

    PySCF's RKS nuclear gradient at the stored orbitals, with the reference's functional
    and grid level and the grid response included (no SCF is rerun).
    """
    from pyscf import dft
    from pyscf.scf import chkfile as scf_chkfile

    from .reference import load_reference

    ref = load_reference(path)
    if ref.kpts is not None:
        return _reference_forces_periodic(path, ref)
    scf = scf_chkfile.load(path, "scf")
    mo_coeff = np.asarray(scf["mo_coeff"])
    if mo_coeff.ndim != 2:
        raise InputError(f"{path}: reference forces need a restricted (closed-shell) SCF")
    mf = dft.RKS(ref.mol)
    mf.xc = ref.xc or "pbe"
    if ref.grid_level >= 0:
        mf.grids.level = int(ref.grid_level)
    mf.verbose = 0
    g = mf.nuc_grad_method()
    g.verbose = 0
    # include the moving-grid (Becke weight) terms: the exact derivative of the quadrature
    # energy, like central differences with grids that follow the atoms
    g.grid_response = True
    return -np.asarray(g.kernel(mo_energy=np.asarray(scf["mo_energy"]), mo_coeff=mo_coeff,
                                mo_occ=np.asarray(scf["mo_occ"])))


def _reference_forces_periodic(path: str, ref) -> np.ndarray:
    """PySCF's analytic KRKS nuclear gradient (GTH pseudopotentials, FFT density fitting)
    of a periodic chkfile at its stored orbitals, negated: forces in hartree/bohr."""
    from pyscf.pbc import dft as pbcdft
    from pyscf.pbc.grad import krks as krks_grad
    from pyscf.scf import chkfile as scf_chkfile

    scf = scf_chkfile.load(path, "scf")
    nk = len(ref.kpts)
    mo_coeff = np.asarray(scf["mo_coeff"]).reshape(nk, ref.mol.nao, -1)
    mo_occ = np.asarray(scf["mo_occ"], dtype=np.float64).reshape(nk, -1)
    mo_energy = np.asarray(scf["mo_energy"], dtype=np.float64).reshape(nk, -1)
    if mo_occ.max() > 2.0 + 1e-12:
        raise InputError(f"{path}: reference forces need a restricted (closed-shell) SCF")
    mf = pbcdft.KRKS(ref.mol, ref.kpts)
    mf.xc = ref.xc or "pbe"
    mf.verbose = 0
    mf.mo_coeff, mf.mo_occ, mf.mo_energy = list(mo_coeff), list(mo_occ), list(mo_energy)
    g = krks_grad.Gradients(mf)
    g.verbose = 0
    return -np.asarray(g.kernel(mo_energy=mf.mo_energy, mo_coeff=mf.mo_coeff, mo_occ=mf.mo_occ))


# ----------------------------------------------------------------------------- SCF runs
@dataclass(frozen=True, eq=False)
class SCFRun:
    """One SCF calculation from a given initial guess.

    Attributes
    ----------
    guess : str
        ``'densitylearn'`` (a given ``dm0``) or a PySCF ``init_guess`` name.
    converged : bool
    iterations : int
        SCF cycles of this run (PySCF's ``mf.cycles``; 0 when it failed before iterating).
    wall_s : float
        Wall time of the SCF, seconds (guess construction included for PySCF guesses; for
        ours the guess time is in ``guess_s``).
    e_tot : float
        Final total energy, hartree (NaN when the run raised).
    guess_s : float
        Seconds spent making a given ``dm0`` (0 when unknown or for PySCF guesses).
    error : str or None
        One line when the run raised (e.g. a guess PySCF cannot make for an element).
    fallback : SCFRun or None
        The rerun from ``minao`` when this run did not converge (never hidden).
    """

    guess: str
    converged: bool
    iterations: int
    wall_s: float
    e_tot: float
    guess_s: float = 0.0
    error: str | None = None
    fallback: "SCFRun | None" = None
    diis_start_cycle: int = 1

    @property
    def total_iterations(self) -> int:
        """Iterations including the fallback rerun."""
        return self.iterations + (self.fallback.total_iterations if self.fallback else 0)

    @property
    def total_wall_s(self) -> float:
        """Seconds including the guess and the fallback rerun."""
        return self.guess_s + self.wall_s + (self.fallback.total_wall_s if self.fallback else 0.0)

    def record(self) -> dict:
        """JSON-ready summary."""
        return {"guess": self.guess, "converged": bool(self.converged), "iterations": int(self.iterations),
                "wall_s": float(self.wall_s), "guess_s": float(self.guess_s), "e_tot_hartree": float(self.e_tot),
                "error": self.error, "total_iterations": self.total_iterations,
                "diis_start_cycle": int(self.diis_start_cycle),
                "fallback": self.fallback.record() if self.fallback else None}


def run_scf_with_guess(mol, xc: str, dm0=None, init_guess: str = "minao", grid_level: int = 3,
                       conv_tol: float = 1e-9, max_cycle: int = 50, fallback: str | None = "minao",
                       guess_s: float = 0.0, diis_start_cycle: int | None = None) -> SCFRun:
    """Run a restricted KS SCF from ``dm0`` (our guess) or PySCF's ``init_guess``.

    PySCF defaults otherwise (DIIS, ``conv_tol`` hartree); ``diis_start_cycle`` sets
    ``mf.diis_start_cycle`` (None: PySCF's default, 1). Iterations are PySCF's
    ``mf.cycles``, cross-checked with a callback counter. A run that does not converge (or
    raises) is rerun from ``fallback`` (unless None, with PySCF's defaults) and returned
    with it attached.
    """
    from pyscf import dft

    label = OUR_GUESS if dm0 is not None else str(init_guess)
    if dm0 is not None:
        dm0 = _as_dm(mol, dm0, "initial density matrix")
    elif init_guess not in PYSCF_GUESSES + ("hcore", "1e", "mod_huckel"):
        raise InputError(f"unknown initial guess {init_guess!r}; choose one of {', '.join(PYSCF_GUESSES)}")
    mf = dft.RKS(mol, xc=xc)
    mf.verbose = 0
    mf.grids.level = int(grid_level)
    mf.conv_tol = float(conv_tol)
    mf.max_cycle = int(max_cycle)
    if diis_start_cycle is not None:
        if int(diis_start_cycle) < 0:
            raise InputError(f"diis_start_cycle must be >= 0, got {diis_start_cycle}")
        mf.diis_start_cycle = int(diis_start_cycle)
    if dm0 is None:
        mf.init_guess = init_guess
    count = [0]

    def callback(_env):
        count[0] += 1

    mf.callback = callback
    t0 = time.perf_counter()
    error = None
    try:
        e_tot = float(mf.kernel(dm0=dm0))
        converged = bool(mf.converged)
    except Exception as exc:  # noqa: BLE001 - a failed guess is reported, never hidden
        e_tot, converged = float("nan"), False
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    wall = time.perf_counter() - t0
    iterations = int(getattr(mf, "cycles", count[0]) or count[0]) if error is None else count[0]
    run = SCFRun(guess=label, converged=converged, iterations=iterations, wall_s=wall, e_tot=e_tot,
                 guess_s=float(guess_s), error=error, diis_start_cycle=int(mf.diis_start_cycle))
    if not converged and fallback is not None:
        again = run_scf_with_guess(mol, xc, None, fallback, grid_level, conv_tol, max_cycle, fallback=None)
        run = replace(run, fallback=again)
    return run


def compare_guesses(mol, xc: str, dm0=None, guesses=PYSCF_GUESSES, guess_s: float = 0.0,
                    guess_diis_start_cycle: int | None = GUESS_DIIS_START_CYCLE,
                    pyscf_diis_start_cycle: int | None = None, **scf_kwargs) -> list[SCFRun]:
    """SCF from our ``dm0`` (first, when given) and from each PySCF guess in ``guesses``.

    ``guess_diis_start_cycle`` is the DIIS start of the run from ``dm0``
    (:data:`GUESS_DIIS_START_CYCLE`), ``pyscf_diis_start_cycle`` that of PySCF's guesses
    (None: PySCF's default). Other keyword arguments go to :func:`run_scf_with_guess`.
    Returns one :class:`SCFRun` per guess, in order.
    """
    for g in guesses:
        if g not in PYSCF_GUESSES + ("hcore", "1e", "mod_huckel"):
            raise InputError(f"unknown initial guess {g!r}; choose from {', '.join(PYSCF_GUESSES)}")
    runs = []
    if dm0 is not None:
        runs.append(run_scf_with_guess(mol, xc, dm0=dm0, guess_s=guess_s, diis_start_cycle=guess_diis_start_cycle,
                                       **scf_kwargs))
    for g in guesses:
        runs.append(run_scf_with_guess(mol, xc, init_guess=g, diis_start_cycle=pyscf_diis_start_cycle,
                                       **scf_kwargs))
    return runs


def format_runs(runs, name: str = "") -> str:
    """One line per run: guess, iterations, wall time, convergence and fallback."""
    lines = []
    for r in runs:
        state = "converged" if r.converged else ("ERROR " + r.error if r.error else "NOT converged")
        extra = ""
        if r.fallback is not None:
            fb = r.fallback
            extra = (f"; fallback {fb.guess}: {fb.iterations} it, {fb.wall_s:.2f} s, "
                     f"{'converged' if fb.converged else 'NOT converged'}")
        guess = f" (+{r.guess_s:.2f} s guess)" if r.guess_s else ""
        lines.append(f"{name + ': ' if name else ''}{r.guess:>12s}  {r.iterations:3d} it  "
                     f"{r.wall_s:6.2f} s{guess}  {state}{extra}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- model runs
def resolve_settings(model_xc: str, model_basis: str, xc: str | None = None, basis: str | None = None,
                     override: bool = False, context: str = "the model",
                     override_flag: str = "--override") -> tuple[str, str]:
    """Functional and orbital basis of a calculation with a model's density.

    Defaults to the model's (``Predictor.xc`` / ``orbital_basis``). A requested value that
    differs raises :class:`MismatchError` (naming ``override_flag``) unless ``override``; a
    model that records none needs an explicit value (:class:`InputError`).
    """
    from .errors import MismatchError
    from .reference import _norm_basis, _norm_xc

    out = []
    for what, flag, have, want, norm in (("functional", "--xc", model_xc, xc, _norm_xc),
                                         ("orbital basis", "--basis", model_basis, basis, _norm_basis)):
        have = str(have or "")
        if want is None:
            if not have:
                raise InputError(f"{context} records no {what}; pass {flag}")
            want = have
        elif have and norm(have) != norm(want) and not override:
            raise MismatchError(f"{context} was trained on {what} {have!r}, the calculation asks for {want!r} "
                                f"(pass {override_flag} to use it anyway)")
        out.append(str(want))
    return out[0], out[1]


def _mae(values) -> float:
    vals = [abs(v) for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(vals)) if vals else float("nan")


def _add_forces(entry: dict, f: np.ndarray, ref_path: str | None) -> None:
    """Put forces (hartree/bohr) into a report entry, eV/Angstrom, and with a chkfile
    reference its analytic forces and the errors (meV/Angstrom)."""
    entry["forces_ev_per_angstrom"] = (f * HARTREE_BOHR_EV_ANGSTROM).tolist()
    if ref_path is not None:
        f0 = reference_forces(ref_path)
        entry["reference_forces_ev_per_angstrom"] = (f0 * HARTREE_BOHR_EV_ANGSTROM).tolist()
        dev = np.abs(f - f0) * HARTREE_BOHR_EV_ANGSTROM * 1000
        entry["errors"].update(force_mae_mev_per_angstrom=float(dev.mean()),
                               force_max_mev_per_angstrom=float(dev.max()))


def nscf_predictions(predictions, xc: str, orbital_basis: str, grid_level: int = 3,
                     override: bool = False, progress=None, forces_from=None,
                     force_step: float = FORCE_STEP_BOHR, *, pseudo: str | None = None, kmesh=None,
                     ke_cutoff: float | None = None, smearing: float | None = None,
                     coulomb_steps: int = 0) -> dict:
    """Non-self-consistent properties of predicted densities, compared with references.

    Parameters
    ----------
    predictions : iterable of densitylearn.predict.Prediction
        Coefficients, target, basis and structure. A structure whose ``source`` is a
        chkfile is compared with that reference: its density matrix goes through the same
        one diagonalisation on the same grid (``reference`` entry) and its stored SCF
        energy is reported too.
    xc, orbital_basis : str
        The calculation's functional and basis (:func:`resolve_settings`).
    grid_level : int
    override : bool
        Accept a reference computed with another functional or basis.
    progress : callable or None
        Called with each finished entry.
    forces_from : callable, optional
        A ``predict`` callable (``Predictor.predict``): adds :func:`harris_forces`
        (``forces_ev_per_angstrom``) and, for chkfile references, the analytic reference
        forces and the error ``force_mae_mev_per_angstrom`` (mean absolute component error) and
        ``force_max_mev_per_angstrom``.
    force_step : float
        Central-difference step, bohr.
    pseudo, kmesh, ke_cutoff
        Periodic structures without a chkfile reference: the calculation's pseudopotential,
        k-mesh (default gamma) and FFT cutoff (hartree; PySCF's default when None). A chkfile
        reference brings its own (see :func:`nscf_periodic_entry`).
    smearing : float, optional
        Periodic structures: Fermi-Dirac width (hartree); default the chkfile's, else 0.
    coulomb_steps : int
        Molecules: relax the predicted density's Coulomb potential first
        (:func:`nscf_properties`; 0, the default: one diagonalisation of the prediction).
        The references are evaluated as always (their SCF density matrix, one
        diagonalisation).

    Returns
    -------
    dict
        ``settings``, ``structures`` (per structure: name, n_atoms, ``n_fragments``
        (molecules: covalently separate pieces,
        :meth:`~densitylearn.structure.Structure.fragments`), ``prediction`` and
        ``reference`` records (:meth:`NSCFResult.record`), ``reference_e_tot_hartree``,
        ``errors`` with ``energy_mev_per_atom``, ``gap_mev``, ``dipole_debye`` (norm of the
        vector difference)) and ``summary`` (mean absolute errors over compared structures).
    """
    import os

    from .errors import MismatchError
    from .reference import _norm_basis, _norm_xc, load_reference

    check_xc(xc)
    n_relax = int(coulomb_steps)
    if n_relax < 0:
        raise InputError(f"coulomb_steps must be >= 0, got {coulomb_steps}")
    if n_relax and forces_from is not None:
        raise InputError("Harris forces are those of the one-shot energy; they cannot be combined with "
                         "Coulomb relaxation (coulomb_steps > 0)")
    entries = []
    for pred in predictions:
        s = pred.structure
        if s.is_periodic:
            if n_relax:
                raise InputError(f"{s.source or s.label}: structure {s.label} is periodic; the Coulomb "
                                 "relaxation is implemented for molecules only (use 0 Coulomb steps)")
            entry = nscf_periodic_entry(pred, xc, orbital_basis, pseudo=pseudo, kmesh=kmesh, ke_cutoff=ke_cutoff,
                                        override=override, forces_from=forces_from, force_step=force_step,
                                        smearing=smearing)
            entries.append(entry)
            if progress is not None:
                progress(entry)
            continue
        ref = None
        if s.source and str(s.source).endswith(".chk") and os.path.isfile(s.source):
            ref = load_reference(s.source)
            for what, have, want, norm in (("functional", ref.xc, xc, _norm_xc),
                                           ("orbital basis", ref.basis, orbital_basis, _norm_basis)):
                if have and norm(have) != norm(want) and not override:
                    raise MismatchError(f"{s.source}: reference {what} {have!r} differs from the calculation's "
                                        f"{want!r} (pass --override to compare anyway)")
            if not ref.structure.same_geometry(s):
                raise MismatchError(f"{s.source}: the reference geometry differs from structure {s.label}")
            mol = ref.mol
        else:
            mol = s.to_pyscf(basis=orbital_basis)
        res = nscf_properties(mol, pred.coefficients, pred.basis, pred.target, xc, grid_level=grid_level,
                              orbital_basis=orbital_basis, coulomb_steps=n_relax)
        entry = {"name": s.label, "n_atoms": int(len(s)), "n_fragments": int(s.fragments().max()) + 1,
                 "target": pred.target, "prediction": res.record(),
                 "reference": None, "reference_e_tot_hartree": None, "errors": None}
        if ref is not None:
            r0 = nscf_properties(mol, dm=ref.dm, xc=xc, grid_level=grid_level)
            entry["reference"] = r0.record()
            entry["reference_e_tot_hartree"] = float(ref.e_tot)
            entry["errors"] = {
                "energy_mev_per_atom": (res.energy - r0.energy) * HARTREE_EV * 1000 / len(s),
                "gap_mev": (res.gap - r0.gap) * HARTREE_EV * 1000,
                "dipole_debye": float(np.linalg.norm(res.dipole - r0.dipole)),
                "mo_energy_mae_mev": float(np.mean(np.abs(res.mo_energy - r0.mo_energy))) * HARTREE_EV * 1000}
        if forces_from is not None:
            _add_forces(entry, harris_forces(forces_from, s, xc, orbital_basis, step=force_step,
                                             grid_level=grid_level), s.source if ref is not None else None)
        entries.append(entry)
        if progress is not None:
            progress(entry)
    compared = [e["errors"] for e in entries if e["errors"]]
    summary = {"n": len(entries), "n_compared": len(compared)}
    if compared:
        for k in ("energy_mev_per_atom", "gap_mev", "dipole_debye", "mo_energy_mae_mev"):
            summary[f"mae_{k}"] = _mae([c.get(k) for c in compared])
        if any("band_energy_mae_mev" in c for c in compared):
            for k in ("direct_gap_mev", "band_energy_mae_mev"):
                summary[f"mae_{k}"] = _mae([c.get(k) for c in compared])
        if forces_from is not None:
            summary["mae_force_mev_per_angstrom"] = _mae([c["force_mae_mev_per_angstrom"] for c in compared])
    return {"settings": {"xc": xc, "orbital_basis": orbital_basis, "grid_level": int(grid_level),
                         "coulomb_steps": n_relax,
                         "units": "energy hartree (errors meV/atom), gap eV (errors meV), dipole Debye, "
                                  "forces eV/Angstrom (errors meV/Angstrom)",
                         "force_step_bohr": float(force_step) if forces_from is not None else None},
            "structures": entries, "summary": summary}


def format_nscf(report: dict) -> str:
    """A per-structure table and the summary line of :func:`nscf_predictions`."""
    lines = [f"{'structure':<24s} {'E_Harris/Ha':>16s} {'gap/eV':>8s} {'|mu|/D':>7s}"
             f" {'dE meV/at':>10s} {'dgap meV':>9s} {'dmu D':>7s}"]
    for e in report["structures"]:
        p, err = e["prediction"], e["errors"]
        if "dipole_norm_debye" not in p:  # periodic cell: no dipole
            cmp = (f" {err['energy_mev_per_atom']:+10.3f} {err['gap_mev']:+9.2f} {'-':>7s}"
                   if err else f" {'-':>10s} {'-':>9s} {'-':>7s}")
            lines.append(f"{e['name'][:24]:<24s} {p['energy_hartree']:16.8f} {p['gap_ev']:8.3f} {'-':>7s}{cmp}")
            continue
        cmp = (f" {err['energy_mev_per_atom']:+10.3f} {err['gap_mev']:+9.2f} {err['dipole_debye']:7.4f}"
               if err else f" {'-':>10s} {'-':>9s} {'-':>7s}")
        lines.append(f"{e['name'][:24]:<24s} {p['energy_hartree']:16.8f} {p['gap_ev']:8.3f} "
                     f"{p['dipole_norm_debye']:7.4f}{cmp}")
    s = report["summary"]
    if s.get("n_compared"):
        forces = (f", forces {s['mae_force_mev_per_angstrom']:.2f} meV/A"
                  if "mae_force_mev_per_angstrom" in s else "")
        dipole = f", dipole {s['mae_dipole_debye']:.4f} D" if np.isfinite(s["mae_dipole_debye"]) else ""
        bands = (f", band energies {s['mae_band_energy_mae_mev']:.2f} meV"
                 if "mae_band_energy_mae_mev" in s else "")
        n_relax = report.get("settings", {}).get("coulomb_steps") or 0
        relaxed = f" (after {n_relax} Coulomb steps)" if n_relax else ""
        lines.append(f"mean |error| over {s['n_compared']} references{relaxed}: energy {s['mae_energy_mev_per_atom']:.3f} meV/atom, "
                     f"gap {s['mae_gap_mev']:.2f} meV{dipole}{forces}{bands}")
    return "\n".join(lines)


def nscf_periodic_entry(pred, xc: str, orbital_basis: str, pseudo: str | None = None, kmesh=None,
                        ke_cutoff: float | None = None, override: bool = False, forces_from=None,
                        force_step: float = FORCE_STEP_BOHR, smearing: float | None = None) -> dict:
    """:func:`nscf_periodic` of one predicted cell, compared with its chkfile reference.

    With a periodic chkfile as the structure's ``source`` the calculation uses the
    reference's cell (orbital basis, pseudopotential, FFT mesh) and k-points, and the
    reference density matrices go through the same one diagonalisation (``reference``);
    otherwise the cell is built from ``orbital_basis``, ``pseudo`` (default: the SAED's),
    ``ke_cutoff`` and the gamma-centred ``kmesh`` (default gamma; ``"length:L"`` allowed, see
    :func:`densitylearn.reference.kmesh_for_structure`). The Fermi-Dirac
    ``smearing`` (hartree) defaults to the chkfile's (0 without one); another value than a
    chkfile's is a mismatch unless ``override``.

    Returns
    -------
    dict
        name, n_atoms, target, periodic (True), ``prediction`` and ``reference``
        (:meth:`PeriodicNSCFResult.record`), ``reference_e_tot_hartree`` and ``errors``:
        ``energy_mev_per_atom``, ``gap_mev``, ``direct_gap_mev``, ``band_energy_mae_mev``
        (occupied bands and the lowest empty band at every k-point) and
        ``band_energy_max_mev``. With ``forces_from`` (a ``predict`` callable):
        :func:`harris_forces_periodic` as ``forces_ev_per_angstrom`` and, with a chkfile
        reference, PySCF's analytic forces and the errors ``force_mae_mev_per_angstrom``
        and ``force_max_mev_per_angstrom``.
    """
    import os

    from .errors import MismatchError
    from .reference import _norm_basis, _norm_xc, kmesh_for_structure, load_reference

    s = pred.structure
    saed = pred.saed if pred.target == "difference" else None
    ref = None
    if s.source and str(s.source).endswith(".chk") and os.path.isfile(s.source):
        ref = load_reference(s.source)
        if not ref.is_periodic:
            raise InputError(f"{s.source}: a molecular reference for the periodic structure {s.label}")
        for what, have, want, norm in (("functional", ref.xc, xc, _norm_xc),
                                       ("orbital basis", ref.basis, orbital_basis, _norm_basis)):
            if have and norm(have) != norm(want) and not override:
                raise MismatchError(f"{s.source}: reference {what} {have!r} differs from the calculation's "
                                    f"{want!r} (pass --override to compare anyway)")
        if not ref.structure.same_geometry(s):
            raise MismatchError(f"{s.source}: the reference geometry differs from structure {s.label}")
        cell, kpts = ref.mol, ref.kpts
        if smearing is not None and abs(float(smearing) - ref.smearing) > 1e-12 and not override:
            raise MismatchError(f"{s.source}: reference smearing {ref.smearing} hartree differs from the "
                                f"requested {smearing} (pass --override to compare anyway)")
        if smearing is None:
            smearing = ref.smearing
    else:
        pp = pseudo if pseudo is not None else (saed.pseudo if saed is not None else None)
        if pp is None and pred.saed is not None:
            pp = pred.saed.pseudo
        cell = s.to_pyscf_cell(basis=orbital_basis, pseudo=pp, ke_cutoff=ke_cutoff)
        kpts = cell.make_kpts(list(kmesh_for_structure(kmesh if kmesh is not None else (1, 1, 1), s)))
    if saed is not None and saed.pseudo and ref is not None and ref.pseudo \
            and _norm_basis(saed.pseudo) != _norm_basis(ref.pseudo):
        raise InputError(f"{s.source}: pseudopotential {ref.pseudo!r}, the model's SAED uses {saed.pseudo!r}")
    smearing = float(smearing or 0.0)
    res = nscf_periodic(cell, kpts, pred.coefficients, pred.basis, pred.target, xc, saed=saed, smearing=smearing)
    entry = {"name": s.label, "n_atoms": int(len(s)), "target": pred.target, "periodic": True, "smearing": smearing,
             "prediction": res.record(), "reference": None, "reference_e_tot_hartree": None, "errors": None}
    if ref is not None:
        r0 = nscf_periodic(cell, kpts, dm=ref.dm, xc=xc, smearing=smearing)
        entry["reference"] = r0.record()
        entry["reference_e_tot_hartree"] = float(ref.e_tot)
        entry["errors"] = periodic_errors(res, r0)
    if forces_from is not None:
        _add_forces(entry, harris_forces_periodic(forces_from, s, cell, kpts, xc, step=force_step, saed=saed,
                                                  smearing=smearing),
                    s.source if ref is not None else None)
    return entry


def periodic_errors(res: PeriodicNSCFResult, ref: PeriodicNSCFResult) -> dict:
    """Errors of ``res`` against ``ref`` (same cell and k-points), meV and meV/atom.

    Band energies compared: every occupied band and the lowest empty band of the reference
    at each k-point.
    """
    mev = HARTREE_EV * 1000
    nocc = np.array([int((o > 0).sum()) for o in ref.occupations])
    sel = [np.arange(min(n + 1, ref.band_energies.shape[1])) for n in nocc]
    dev = np.concatenate([np.abs(res.band_energies[k, i] - ref.band_energies[k, i]) for k, i in enumerate(sel)])
    return {"energy_mev_per_atom": (res.energy - ref.energy) * mev / res.n_atoms,
            "gap_mev": (res.gap - ref.gap) * mev, "direct_gap_mev": (res.direct_gap - ref.direct_gap) * mev,
            "band_energy_mae_mev": float(dev.mean() * mev), "band_energy_max_mev": float(dev.max() * mev)}


def scf_predictions(predictions, xc: str, orbital_basis: str, guesses=PYSCF_GUESSES, grid_level: int = 3,
                    conv_tol: float = 1e-9, max_cycle: int = 50, progress=None,
                    guess_grid_level: int = GUESS_GRID_LEVEL, fit_saed_coulomb: bool = True,
                    guess_diis_start_cycle: int | None = GUESS_DIIS_START_CYCLE,
                    pyscf_diis_start_cycle: int | None = None, guess_mixing: float = GUESS_MIXING,
                    guess_mixing_steps: int = GUESS_MIXING_STEPS,
                    guess_coulomb_steps: int = GUESS_COULOMB_STEPS) -> dict:
    """SCF from each prediction's guess and from PySCF's ``guesses``: iterations and time.

    ``grid_level`` is the SCF's grid; the guess is built as :func:`guess_density_matrix`
    with ``guess_grid_level``, ``fit_saed_coulomb``, ``guess_mixing``,
    ``guess_mixing_steps`` and ``guess_coulomb_steps``. DIIS starts as in
    :func:`compare_guesses`.

    Returns a dict with ``settings``, ``structures`` (name, runs: :meth:`SCFRun.record`
    list, ours first) and ``summary`` (per guess: mean iterations incl. fallbacks, mean
    wall seconds incl. our guess time, number not converged; ``reduction_vs_minao``: 1 -
    ours/minao mean iterations when both ran).
    """
    check_xc(xc)
    for g in guesses:
        if g not in PYSCF_GUESSES + ("hcore", "1e", "mod_huckel"):
            raise InputError(f"unknown initial guess {g!r}; choose from {', '.join(PYSCF_GUESSES)}")
    entries = []
    for pred in predictions:
        s = pred.structure
        if s.is_periodic:
            raise InputError(f"structure {s.label}: SCF runs from a guess support molecules only, "
                             "not periodic cells")
        mol = s.to_pyscf(basis=orbital_basis)
        t0 = time.perf_counter()
        dm0 = guess_density_matrix(mol, pred.coefficients, pred.basis, pred.target, xc,
                                   grid_level=guess_grid_level, fit_saed_coulomb=fit_saed_coulomb,
                                   mixing=guess_mixing, mixing_steps=guess_mixing_steps,
                                   coulomb_steps=guess_coulomb_steps, orbital_basis=orbital_basis)
        runs = compare_guesses(mol, xc, dm0, guesses=guesses, guess_s=time.perf_counter() - t0,
                               guess_diis_start_cycle=guess_diis_start_cycle,
                               pyscf_diis_start_cycle=pyscf_diis_start_cycle,
                               grid_level=grid_level, conv_tol=conv_tol, max_cycle=max_cycle)
        entry = {"name": s.label, "n_atoms": int(len(s)), "runs": [r.record() for r in runs]}
        entries.append(entry)
        if progress is not None:
            progress(entry, runs)
    summary = {}
    for g in (OUR_GUESS, *guesses):
        rs = [r for e in entries for r in e["runs"] if r["guess"] == g]
        if rs:
            summary[g] = {"mean_iterations": float(np.mean([r["total_iterations"] for r in rs])),
                          "mean_wall_s": float(np.mean([r["wall_s"] + r["guess_s"] + (r["fallback"]["wall_s"]
                                                        if r["fallback"] else 0.0) for r in rs])),
                          "not_converged": int(sum(not r["converged"] for r in rs))}
    if OUR_GUESS in summary and "minao" in summary:
        summary["reduction_vs_minao"] = 1.0 - summary[OUR_GUESS]["mean_iterations"] / summary["minao"]["mean_iterations"]
    return {"settings": {"xc": xc, "orbital_basis": orbital_basis, "grid_level": int(grid_level),
                         "guess_grid_level": int(guess_grid_level), "fit_saed_coulomb": bool(fit_saed_coulomb),
                         "guess_mixing": float(guess_mixing), "guess_mixing_steps": int(guess_mixing_steps),
                         "guess_coulomb_steps": int(guess_coulomb_steps),
                         "conv_tol_hartree": float(conv_tol), "max_cycle": int(max_cycle),
                         "guess_diis_start_cycle": guess_diis_start_cycle,
                         "pyscf_diis_start_cycle": pyscf_diis_start_cycle},
            "structures": entries, "summary": summary}


def write_json(report: dict, path: str) -> None:
    """Write a report dict as JSON, crash-safe."""
    import json

    from .io_utils import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "w") as fh:
            json.dump(report, fh, indent=1, default=float)


# ----------------------------------------------------------------------------- periodic cells
#: Mesh points per block in the periodic grid loops.
PERIODIC_BLOCK = 4096


@dataclass(frozen=True, eq=False)
class PeriodicNSCFResult:
    """Properties of a periodic cell from one diagonalisation of ``F_k[rho_in]`` per k-point.

    Attributes
    ----------
    energy : float
        Harris-Foulkes energy per cell, hartree (PySCF's ``e_tot`` convention: electrons,
        Ewald ion-ion energy of the pseudo-ions).
    n_atoms : int
    band_energies : ndarray, shape (n_k, nmo)
        Eigenvalues of ``F_k`` (hartree), ascending per k-point.
    occupations : ndarray, shape (n_k, nmo)
        2 or 0: the ``n_k * n_electrons / 2`` lowest eigenvalues over the whole k-mesh are
        filled (PySCF's ``KRKS.get_occ``); Fermi-Dirac occupations between 0 and 2 with
        smearing. Band edges and gaps always come from the integer filling.
    kpts : ndarray, shape (n_k, 3)
        Absolute k-points, bohr^-1.
    vbm, cbm : float
        Highest occupied and lowest unoccupied band energy over the k-mesh, hartree (cbm is
        NaN when the basis has no empty band).
    direct_gap : float
        Smallest ``e_c(k) - e_v(k)`` at one k-point of the mesh, hartree.
    n_electrons : float
        Valence electrons of ``rho_in`` on the FFT mesh.
    components : dict[str, float]
        Harris terms per cell, hartree: ``band`` (k-averaged sum f eps), ``hartree``
        (1/2 int v_H rho), ``xc`` (E_xc), ``vxc_rho`` (int v_xc rho), ``nuclear`` (Ewald).
    xc : str
    mesh : tuple of int
        FFT mesh of the quadrature.
    source : str
        ``'coefficients:difference'``, ``'coefficients:total'`` or ``'density_matrix'``.
    """

    energy: float
    n_atoms: int
    band_energies: np.ndarray
    occupations: np.ndarray
    kpts: np.ndarray
    vbm: float
    cbm: float
    direct_gap: float
    n_electrons: float
    components: dict
    xc: str
    mesh: tuple
    source: str

    @property
    def gap(self) -> float:
        """Band gap over the k-mesh (indirect in general), hartree; <= 0 for a metal."""
        return self.cbm - self.vbm

    @property
    def energy_per_atom(self) -> float:
        """Harris energy per atom, hartree."""
        return self.energy / self.n_atoms

    def record(self) -> dict:
        """JSON-ready summary (plain floats and lists; units in the key names)."""
        return {"energy_hartree": float(self.energy), "energy_per_atom_hartree": float(self.energy_per_atom),
                "gap_ev": float(self.gap * HARTREE_EV), "direct_gap_ev": float(self.direct_gap * HARTREE_EV),
                "vbm_ev": float(self.vbm * HARTREE_EV), "cbm_ev": float(self.cbm * HARTREE_EV),
                "band_energies_hartree": self.band_energies.tolist(),
                "occupations": self.occupations.tolist(), "kpts_bohr_inv": self.kpts.tolist(),
                "n_electrons": float(self.n_electrons),
                "components_hartree": {k: float(v) for k, v in self.components.items()},
                "xc": self.xc, "mesh": [int(m) for m in self.mesh], "source": self.source}


def _is_cell(obj) -> bool:
    return hasattr(obj, "lattice_vectors") and hasattr(obj, "mesh")


def make_auxcell(cell, basis):
    """A :class:`pyscf.pbc.gto.Cell` with the auxiliary ``basis`` on ``cell``'s atoms and lattice.

    Its AO order is the basis layout (:meth:`AuxBasis.layout`); ``pbc_eval_gto`` gives the
    lattice-summed auxiliary functions (gamma point), so ``rho = chi @ c``.
    """
    from pyscf.pbc import gto as pbcgto

    aux = pbcgto.Cell()
    aux.atom = cell._atom
    aux.unit = "Bohr"
    aux.a = cell.lattice_vectors()
    aux.basis = basis.to_pyscf_basis()
    aux.mesh = cell.mesh
    aux.precision = cell.precision
    aux.dimension = 3
    aux.verbose = 0
    aux.spin = None
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        aux.build(dump_input=False, parse_arg=False)
    return aux


def saed_periodic_deriv(saed, numbers, positions, cell, points) -> np.ndarray:
    """Lattice-summed SAED and its gradient at ``points``, shape (4, n_points).

    Row 0 is the density (e/bohr^3, as :func:`densitylearn.grid.saed_periodic`), rows 1-3
    its Cartesian gradient (e/bohr^4), analytic: for ``w r^p exp(-b r^2)`` (p even) the
    gradient is ``2 d (p/2 r^(p-2) - b r^p) w exp(-b r^2)`` with ``d = r - R``.
    """
    from .grid import lattice_image_atoms

    z = np.asarray(numbers, dtype=np.int64)
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    cut = {int(x): float(saed.cutoff(int(x))) for x in set(z.tolist())}
    s_z, s_pos, _ = lattice_image_atoms(z, np.asarray(positions, dtype=np.float64), cell, pts, cut)
    out = np.zeros((4, len(pts)))
    for zz, x in zip(s_z, s_pos):
        p, b, w = saed.terms(int(zz))
        half = (p // 2).astype(np.int64)
        d = pts - x
        r2 = np.einsum("ij,ij->i", d, d)
        idx = np.nonzero(r2 < cut[int(zz)] ** 2)[0]
        if not len(idx):
            continue
        r2i = r2[idx, None]
        e = w * np.exp(-b * r2i)
        out[0, idx] += (e * r2i ** half).sum(1)
        # d/d(r2) of r2^h exp(-b r2) = (h r2^(h-1) - b r2^h) exp(-b r2); h = 0 has no first term
        dr2 = (e * (np.where(half > 0, half * r2i ** np.maximum(half - 1, 0), 0.0) - b * r2i ** half)).sum(1)
        out[1:, idx] += 2.0 * dr2[None, :] * d[idx].T
    return out


class _PeriodicInput:
    """rho_in of a cell on mesh points: density matrices per k, aux coefficients, SAED."""

    def __init__(self, cell, kpts, dm=None, coefficients=None, basis=None, saed=None, numbers=None,
                 positions=None):
        self.cell, self.kpts, self.dm = cell, kpts, dm
        self.c = None if coefficients is None else np.asarray(coefficients, dtype=np.float64)
        self.auxcell = None if self.c is None else make_auxcell(cell, basis)
        self.saed, self.numbers, self.positions = saed, numbers, positions

    def on_points(self, coords, ao_k, ncomp: int) -> np.ndarray:
        """rho (and its gradient for GGA) at ``coords``, shape (ncomp, n)."""
        from pyscf.pbc.dft import numint as pnumint

        n = len(coords)
        rho = np.zeros((ncomp, n))
        xctype = "LDA" if ncomp == 1 else "GGA"
        if self.dm is not None:
            for a, d in zip(ao_k, self.dm):
                r = pnumint.eval_rho(self.cell, a if ncomp > 1 else a[0], d, xctype=xctype, hermi=1)
                rho += np.asarray(r).real.reshape(ncomp, n)
            rho /= len(self.dm)
        if self.c is not None:
            name = "GTOval_sph" if ncomp == 1 else "GTOval_sph_deriv1"
            chi = np.asarray(self.auxcell.pbc_eval_gto(name, coords)).reshape(ncomp, n, -1)
            rho += chi @ self.c
        if self.saed is not None:
            rho += saed_periodic_deriv(self.saed, self.numbers, self.positions,
                                       self.cell.lattice_vectors(), coords)[:ncomp]
        return rho


def nscf_periodic(cell, kpts=None, coefficients=None, basis=None, target: str = "difference", xc: str = "pbe",
                  saed=None, *, dm=None, block: int = PERIODIC_BLOCK, smearing: float = 0.0) -> PeriodicNSCFResult:
    """Harris energy and band energies of a cell from one input density, one diagonalisation per k.

    ``rho_in`` (coefficients, plus the lattice-summed SAED for DCD, or density matrices per
    k-point) is evaluated with its gradient on the cell's uniform FFT mesh (PySCF's
    ``cell.get_uniform_grids``). The Kohn-Sham potential on the mesh is the Hartree
    potential by FFT Poisson, ``v_H(G) = 4 pi rho(G) / G^2`` with G = 0 removed (PySCF's
    ``tools.get_coulG``, as its FFTDF ``get_j``; the G = 0 terms of the pseudopotential and
    the ions are in PySCF's ``get_pp`` and Ewald energy), and v_xc from libxc through
    PySCF's ``eval_xc_eff``. ``F_k = h_core(k) + V(k)`` with PySCF's kinetic and GTH
    pseudopotential integrals (``KRKS.get_hcore``); ``F_k C = S_k C eps`` per k-point;
    occupations as PySCF's ``KRKS.get_occ``. The Harris-Foulkes energy per cell::

        E_H = (1/n_k) sum_k sum_i f_ik eps_ik - 1/2 int v_H rho_in - int v_xc rho_in + E_xc + E_Ewald

    (for GGA ``int v_xc rho`` includes ``2 vsigma |grad rho|^2``, the trace of the GGA
    potential matrix with the density), so the converged SCF density matrices reproduce
    PySCF's ``e_tot`` and its band energies. With ``smearing`` sigma > 0 the occupations are
    Fermi-Dirac, ``f = 2 / (1 + exp((eps - mu) / sigma))`` with one chemical potential mu
    over the k-mesh holding the electron count (PySCF's ``smearing`` addon), and the energy
    is the Harris-Mermin free energy ``E_H - sigma S``, ``S = -(2/n_k) sum [p ln p + (1 - p)
    ln(1 - p)]``, ``p = f / 2``: stationary at the smeared SCF density, where it equals
    PySCF's ``e_free``.

    Parameters
    ----------
    cell : pyscf.pbc.gto.Cell
        Built cell in the orbital basis and pseudopotential of the calculation.
    kpts : ndarray, shape (n_k, 3), optional
        Absolute k-points (bohr^-1); default the gamma point.
    coefficients : ndarray, shape (n_functions,), optional
        The home atoms' auxiliary coefficients (PySCF order of ``basis``).
    basis : AuxBasis
    target : {'difference', 'total'}
        ``'difference'``: the lattice-summed ``saed`` is added.
    xc : str
        LDA or GGA functional.
    saed : SAED, optional
        Pseudo-atom SAED for ``target='difference'`` (same pseudopotential as ``cell``).
    dm : ndarray, shape (n_k, nao, nao), optional
        Density matrices per k-point instead of coefficients.
    block : int
        Mesh points per block.
    smearing : float
        Fermi-Dirac width sigma, hartree (0: integer occupations).

    Returns
    -------
    PeriodicNSCFResult
    """
    import scipy.linalg
    from pyscf.pbc import dft as pbcdft
    from pyscf.pbc import tools as pbctools
    from pyscf.pbc.dft import numint as pnumint

    if not _is_cell(cell):
        raise InputError("periodic non-self-consistent properties need a pyscf.pbc Cell")
    xc = check_xc(xc)
    if cell.spin != 0 or cell.nelectron % 2:
        raise InputError(f"periodic non-self-consistent properties: closed-shell cells only "
                         f"({cell.nelectron} electrons, 2S={cell.spin})")
    kpts = np.zeros((1, 3)) if kpts is None else np.asarray(kpts, dtype=np.float64).reshape(-1, 3)
    nk = len(kpts)
    numbers = np.array([_nuclear_charge(cell.atom_symbol(i)) for i in range(cell.natm)])
    if (coefficients is None) == (dm is None):
        raise InputError("give either coefficients (with basis and target) or density matrices dm, not both")
    if dm is not None:
        d = np.asarray(dm)
        if d.ndim == 2:
            d = d[None]
        if d.shape != (nk, cell.nao, cell.nao):
            raise InputError(f"density matrices: shape {d.shape}, expected ({nk}, {cell.nao}, {cell.nao})")
        if not np.all(np.isfinite(d)):
            raise InputError("density matrices contain NaN or infinity")
        density = _PeriodicInput(cell, kpts, dm=0.5 * (d + d.conj().transpose(0, 2, 1)))
        source = "density_matrix"
    else:
        if target not in TARGETS:
            raise InputError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
        if basis is None:
            raise InputError("coefficients need their auxiliary basis (basis=AuxBasis)")
        c = basis.check_coefficients(numbers, coefficients)
        if target == "difference" and saed is None:
            raise InputError("difference-density coefficients of a cell need the pseudo-atom SAED (saed=...)")
        density = _PeriodicInput(cell, kpts, coefficients=c, basis=basis,
                                 saed=saed if target == "difference" else None, numbers=numbers,
                                 positions=cell.atom_coords())
        source = f"coefficients:{target}"

    ni = pnumint.KNumInt()
    xctype = ni._xc_type(xc)
    ncomp = 1 if xctype == "LDA" else 4
    deriv = 0 if xctype == "LDA" else 1
    mesh = tuple(int(m) for m in cell.mesh)
    coords = cell.get_uniform_grids(mesh)
    ng = len(coords)
    weight = cell.vol / ng

    # pass 1: rho_in on the mesh
    rho = np.empty((ncomp, ng))
    for p0 in range(0, ng, block):
        pts = coords[p0:p0 + block]
        ao_k = ni.eval_ao(cell, pts, kpts=kpts, deriv=deriv) if density.dm is not None else None
        if ao_k is not None and deriv == 0:
            ao_k = [a[None] for a in ao_k]
        rho[:, p0:p0 + block] = density.on_points(pts, ao_k, ncomp)
    n_elec = float(rho[0].sum() * weight)

    # potentials on the mesh
    coulg = pbctools.get_coulG(cell, mesh=mesh)
    v_h = pbctools.ifft(coulg * pbctools.fft(rho[0], mesh), mesh).real.reshape(-1)
    e_hartree = 0.5 * float(v_h @ rho[0]) * weight
    exc, vxc = ni.eval_xc_eff(xc, rho[0] if ncomp == 1 else rho, deriv=1, xctype=xctype, spin=0)[:2]
    vxc = np.asarray(vxc).reshape(ncomp, ng)
    e_xc = float((rho[0] * exc).sum() * weight)
    vxc_rho = float(np.sum(vxc * rho) * weight)
    wv = vxc * weight
    wv[0] += v_h * weight
    wv[0] *= 0.5  # symmetrised below

    # pass 2: V(k) = <phi_m^k | v_H + v_xc | phi_n^k>
    nao = cell.nao
    vmat = np.zeros((nk, nao, nao), dtype=np.complex128)
    for p0 in range(0, ng, block):
        pts = coords[p0:p0 + block]
        ao_k = ni.eval_ao(cell, pts, kpts=kpts, deriv=deriv)
        w = wv[:, p0:p0 + block]
        for k, a in enumerate(ao_k):
            a = np.asarray(a).reshape(ncomp, len(pts), nao)
            aow = np.einsum("xgi,xg->gi", a, w)
            vmat[k] += a[0].conj().T @ aow
    vmat = vmat + vmat.conj().transpose(0, 2, 1)

    mf = pbcdft.KRKS(cell, kpts)
    mf.xc = xc
    mf.verbose = 0
    hcore = np.asarray(mf.get_hcore(cell, kpts))
    ovlp = np.asarray(cell.pbc_intor("int1e_ovlp", hermi=1, kpts=kpts)).reshape(nk, nao, nao)
    eps = np.empty((nk, nao))
    for k in range(nk):
        fk = hcore[k] + vmat[k]
        eps[k] = scipy.linalg.eigh(0.5 * (fk + fk.conj().T), ovlp[k], eigvals_only=True)
    nocc = cell.nelectron * nk // 2
    fermi = np.sort(eps.ravel())[nocc - 1]
    occ = np.where(eps <= fermi, 2.0, 0.0)
    if int(round(occ.sum())) != 2 * nocc:  # degenerate at the Fermi level: fill in order
        flat = np.argsort(eps.ravel(), kind="stable")
        occ = np.zeros(eps.size)
        occ[flat[:nocc]] = 2.0
        occ = occ.reshape(eps.shape)
    # band edges and gaps always from the integer filling of the bands
    occd, empty = occ > 0, occ == 0
    smearing = float(smearing or 0.0)
    entropy = 0.0
    if smearing > 0:
        occ, entropy = fermi_dirac_occupations(eps, 2 * nocc, smearing)
        entropy /= nk
    band = float((occ * eps).sum() / nk)
    e_nuc = float(cell.energy_nuc())
    energy = band - e_hartree - vxc_rho + e_xc + e_nuc - smearing * entropy
    vbm = float(eps[occd].max())
    cbm = float(eps[empty].min()) if empty.any() else float("nan")
    direct = [eps[k][empty[k]].min() - eps[k][occd[k]].max() for k in range(nk)
              if empty[k].any() and occd[k].any()]
    return PeriodicNSCFResult(energy=float(energy), n_atoms=int(cell.natm), band_energies=eps, occupations=occ,
                              kpts=kpts, vbm=vbm, cbm=cbm,
                              direct_gap=float(min(direct)) if direct else float("nan"),
                              n_electrons=n_elec,
                              components={"band": band, "hartree": e_hartree, "xc": e_xc, "vxc_rho": vxc_rho,
                                          "nuclear": e_nuc, "entropy_term": -smearing * entropy},
                              xc=xc, mesh=mesh, source=source)


def fermi_dirac_occupations(eps: np.ndarray, n_electrons: float, sigma: float) -> tuple[np.ndarray, float]:
    """Closed-shell Fermi-Dirac occupations (0..2) of the levels ``eps`` (all k-points
    together) holding ``n_electrons``, with their entropy ``S = -2 sum [p ln p + (1-p)
    ln(1-p)]`` (p = occupation / 2, dimensionless, summed over the levels given).

    The chemical potential is found by bisection (Brent), as PySCF's ``smearing`` addon
    does."""
    import scipy.optimize
    import scipy.special

    e = np.asarray(eps, dtype=np.float64)

    def count(mu):
        return 2.0 * scipy.special.expit(-(e - mu) / sigma).sum() - n_electrons

    lo, hi = float(e.min()) - 50 * sigma - 1.0, float(e.max()) + 50 * sigma + 1.0
    if count(hi) < 0:
        raise InputError(f"Fermi-Dirac occupations: {n_electrons} electrons do not fit in {e.size} levels")
    mu = scipy.optimize.brentq(count, lo, hi, xtol=1e-15, rtol=4 * np.finfo(float).eps, maxiter=500)
    p = scipy.special.expit(-(e - mu) / sigma)
    s = -2.0 * float((scipy.special.xlogy(p, p) + scipy.special.xlogy(1 - p, 1 - p)).sum())
    return 2.0 * p, s


def _nuclear_charge(symbol: str) -> int:
    from pyscf import gto

    return int(gto.charge(symbol))
