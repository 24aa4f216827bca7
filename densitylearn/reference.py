"""Reference Kohn-Sham calculations with PySCF, stored one chkfile per structure.

The reference level of the benchmark is PBE/def2-SVP on a level-3 Becke grid with PySCF
defaults otherwise (DESIGN section 5): restricted KS for closed shells (``spin == 0``),
unrestricted KS for open shells.

Periodic structures (all three pbc flags) run :mod:`pyscf.pbc.dft` restricted KS with GTH
pseudopotentials (gth-dzvp / gth-pbe / PBE by default) at the gamma point or on a k-point
mesh; their chkfiles add the settings :data:`PERIODIC_SETTINGS_KEYS` and the lattice, and
:func:`load_reference` returns per-k-point density matrices (:attr:`Reference.kpts`).

Three layers:

- :func:`run_reference` runs one SCF and returns a dict of plain results.
- :func:`compute_references` validates every structure up front, then computes the
  missing ones into ``out_dir/<structure name>.chk`` (atomically; existing files are
  skipped, so a killed run resumes) and returns a summary dict.
- :func:`load_reference` reads such a chkfile back as data (no ``eval``): the
  :class:`Structure`, a Mole rebuilt from the stored ``_atom``/``_basis`` in bohr, and the
  total density matrix.

Chkfile layout: PySCF's own ``mol`` (JSON) and ``scf`` (``e_tot``, ``mo_energy``,
``mo_coeff``, ``mo_occ``) records, plus an HDF5 group :data:`CHK_GROUP` whose attributes
record the settings (:data:`SETTINGS_KEYS`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass

import numpy as np

from .errors import DensityLearnError, InputError, MismatchError
from .structure import Structure
from .units import BOHR_ANGSTROM

#: HDF5 group in each chkfile that holds densitylearn's settings as attributes.
CHK_GROUP = "densitylearn"

#: Attributes written to :data:`CHK_GROUP` (all plain str / int / float / bool).
SETTINGS_KEYS = ("xc", "basis", "grid_level", "conv_tol", "max_cycle", "restricted",
                 "converged", "e_tot", "n_cycles", "wall_time_s", "name", "source",
                 "charge", "spin", "device", "densitylearn_version", "pyscf_version",
                 "created", "init_guess", "guess_s", "guess_fallback")

#: Extra attributes of periodic chkfiles: ``pseudo`` (PySCF name), ``kmesh`` (JSON list of
#: 3 ints, [1, 1, 1] = gamma point), ``ke_cutoff`` (hartree, -1 for PySCF's default),
#: ``mesh`` (JSON list, the FFT mesh used), ``smearing`` (Fermi-Dirac width, hartree; 0 =
#: integer occupations) and ``e_free`` (the Mermin free energy ``e_tot - smearing * S``,
#: hartree; equal to ``e_tot`` without smearing), ``multigrid`` (True when PySCF's multigrid
#: J/XC ran) and ``nkpts_ibz`` (k-points the SCF diagonalised: the irreducible wedge with
#: k-point symmetry, else the whole mesh; the orbitals in the file always cover the whole
#: mesh); the lattice is the dataset :data:`densitylearn.structure.CHK_CELL_DATASET` (bohr).
PERIODIC_SETTINGS_KEYS = ("pseudo", "kmesh", "ke_cutoff", "mesh", "smearing", "e_free",
                          "multigrid", "nkpts_ibz")

#: Default settings (the benchmark reference level).
DEFAULT_XC = "pbe"
DEFAULT_BASIS = "def2-svp"
DEFAULT_GRID_LEVEL = 3
DEFAULT_CONV_TOL = 1e-9      # PySCF's default
DEFAULT_MAX_CYCLE = 50       # PySCF's default

#: Defaults for periodic structures (pyscf.pbc, GTH pseudopotentials, PBE).
DEFAULT_PERIODIC_BASIS = "gth-dzvp"
DEFAULT_PSEUDO = "gth-pbe"
DEFAULT_KMESH = (1, 1, 1)

#: Suffix of the file an unconverged SCF is kept under, for inspection.
UNCONVERGED_SUFFIX = ".unconverged.chk"


@dataclass(frozen=True, eq=False)
class Reference:
    """A reference calculation read back from a chkfile.

    Attributes
    ----------
    structure : Structure
        The molecule (positions in bohr), named as the chkfile was written.
    mol : pyscf.gto.Mole
        Built Mole, rebuilt from the stored ``_atom`` (bohr) and ``_basis``.
    dm : ndarray, shape (nao, nao), float64
        Total (alpha + beta) AO density matrix, ``trace(dm @ S) == n_electrons``.
    e_tot : float
        Total energy, hartree.
    xc, basis : str
        Functional and orbital basis as recorded by densitylearn ('' for a foreign chkfile).
    grid_level : int
        Becke grid level of the SCF (-1 when unknown).
    converged : bool or None
        Whether the SCF converged (None for plain PySCF chkfiles, which do not record it).
    path : str
        The chkfile read.
    kpts : ndarray, shape (n_k, 3), or None
        Periodic references: the k-points (bohr^-1, absolute); ``dm`` then has shape
        (n_k, nao, nao) (complex) and ``mol`` is a :class:`pyscf.pbc.gto.Cell`. None for
        molecules.
    pseudo : str
        Pseudopotential of a periodic reference ('' for all-electron molecules).
    smearing : float
        Fermi-Dirac smearing width of a periodic reference, hartree (0: integer occupations).
    e_free : float or None
        Mermin free energy ``e_tot - smearing * S`` of a periodic reference (hartree; the
        functional the SCF minimised, equal to ``e_tot`` without smearing); None for
        molecules and for chkfiles that do not record it.
    """

    structure: Structure
    mol: object
    dm: np.ndarray
    e_tot: float
    xc: str
    basis: str
    grid_level: int
    converged: bool | None
    path: str
    kpts: np.ndarray | None = None
    pseudo: str = ""
    smearing: float = 0.0
    e_free: float | None = None

    @property
    def is_periodic(self) -> bool:
        return self.kpts is not None


# ---------------------------------------------------------------------------- helpers
def _norm_xc(xc: str) -> str:
    return str(xc).strip().lower().replace(" ", "")


def _norm_basis(basis: str) -> str:
    """PySCF treats basis names case-insensitively and ignores '-', '_' and spaces."""
    return str(basis).strip().lower().replace("-", "").replace("_", "").replace(" ", "")


def chk_path(out_dir: str, structure: Structure) -> str:
    """Final chkfile path of ``structure`` in ``out_dir``: ``out_dir/<name>.chk``."""
    return os.path.join(out_dir, f"{structure.name}.chk")


def unconverged_path(out_dir: str, structure: Structure) -> str:
    """Where an unconverged SCF of ``structure`` is kept: ``out_dir/<name>.unconverged.chk``."""
    return os.path.join(out_dir, f"{structure.name}{UNCONVERGED_SUFFIX}")


def check_xc(xc: str) -> None:
    """Raise :class:`InputError` unless PySCF (libxc) knows the functional ``xc``."""
    from pyscf.dft import libxc

    try:
        libxc.parse_xc(xc)
    except Exception as exc:
        raise InputError(f"unknown exchange-correlation functional {xc!r} ({exc})") from None


def check_basis(basis: str, numbers) -> None:
    """Raise :class:`InputError` unless ``basis`` exists for every element in ``numbers``."""
    from ase.data import chemical_symbols
    from pyscf import gto

    for z in sorted(set(int(z) for z in numbers)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                b = gto.basis.load(basis, chemical_symbols[z])
        except Exception as exc:
            raise InputError(f"basis {basis!r} is not available for {chemical_symbols[z]} ({exc})") from None
        if not b:
            raise InputError(f"basis {basis!r} is not available for {chemical_symbols[z]}")


def validate_structure(structure: Structure) -> None:
    """Checks beyond the :class:`Structure` constructor that compute needs.

    Raises :class:`InputError` naming the structure (its source gives file and frame).
    """
    where = f"{structure.source}: {structure.name}" if structure.source else structure.label
    if structure.is_periodic and structure.spin != 0:
        raise InputError(f"{where}: open-shell cells (2S={structure.spin}) are not supported; "
                         "periodic references are restricted Kohn-Sham")
    if not structure.name:
        raise InputError(f"{where}: structure has no name to name its chkfile")
    if os.sep in structure.name or structure.name.startswith("."):
        raise InputError(f"{where}: structure name {structure.name!r} cannot be a file name")
    if structure.spin > structure.n_electrons:
        raise InputError(f"{where}: spin 2S={structure.spin} is impossible with "
                         f"{structure.n_electrons} electrons")


def default_basis(structure: Structure, basis: str | None) -> str:
    """``basis``, or the default for the structure's kind (def2-svp / gth-dzvp) when None."""
    if basis:
        return basis
    return DEFAULT_PERIODIC_BASIS if structure.is_periodic else DEFAULT_BASIS


def parse_kmesh(text) -> tuple[int, int, int]:
    """``"2,2,2"`` (or a sequence of 3 ints) -> (2, 2, 2); InputError unless 3 positive ints."""
    try:
        if isinstance(text, str):
            vals = tuple(int(x) for x in text.replace("x", ",").split(","))
        else:
            vals = tuple(int(x) for x in text)
    except (TypeError, ValueError):
        raise InputError(f"k-point mesh must be three positive integers like 2,2,2, got {text!r}") from None
    if len(vals) != 3 or min(vals) < 1:
        raise InputError(f"k-point mesh must be three positive integers like 2,2,2, got {text!r}")
    return vals


#: Prefix of the per-cell k-mesh form ``length:L`` (see :func:`check_kmesh`).
KMESH_LENGTH_PREFIX = "length:"


def check_kmesh(kmesh):
    """Validate a k-mesh request: three positive integers, or ``"length:L"`` (L > 0, Angstrom).

    Returns (n1, n2, n3), or the normalised string ``"length:L"``, which
    :func:`kmesh_for_structure` turns into a mesh per cell.
    """
    if isinstance(kmesh, str) and kmesh.strip().lower().startswith(KMESH_LENGTH_PREFIX):
        text = kmesh.strip()[len(KMESH_LENGTH_PREFIX):]
        try:
            length = float(text)
        except ValueError:
            length = float("nan")
        if not (length > 0 and np.isfinite(length)):
            raise InputError(f"k-point length must be a positive number of Angstrom like length:20, "
                             f"got {kmesh!r}")
        return f"{KMESH_LENGTH_PREFIX}{length:g}"
    return parse_kmesh(kmesh)


def kmesh_for_structure(kmesh, structure: Structure) -> tuple[int, int, int]:
    """The k-mesh of one cell: ``kmesh`` itself, or for ``"length:L"`` the gamma-centred mesh
    ``n_i = max(1, ceil(L / |a_i|))`` with the lattice-vector lengths ``|a_i|`` in Angstrom,
    so that every cell gets about the same k-point density (``L / |a_i|`` points along each
    reciprocal vector).
    """
    kmesh = check_kmesh(kmesh)
    if isinstance(kmesh, tuple):
        return kmesh
    length = float(kmesh[len(KMESH_LENGTH_PREFIX):])
    if not structure.is_periodic:
        raise InputError(f"{structure.label}: a k-point length needs a periodic cell")
    lengths = np.linalg.norm(np.asarray(structure.cell, dtype=np.float64), axis=1) * BOHR_ANGSTROM
    return tuple(int(max(1, np.ceil(length / x - 1e-9))) for x in lengths)


def check_pseudo(pseudo: str, numbers) -> None:
    """Raise :class:`InputError` unless the pseudopotential ``pseudo`` covers every element."""
    from ase.data import chemical_symbols
    from pyscf.pbc.gto import pseudo as pbc_pseudo

    for z in sorted(set(int(z) for z in numbers)):
        try:
            p = pbc_pseudo.load(pseudo, chemical_symbols[z])
        except Exception as exc:
            raise InputError(f"pseudopotential {pseudo!r} is not available for {chemical_symbols[z]} "
                             f"({type(exc).__name__})") from None
        if not p:
            raise InputError(f"pseudopotential {pseudo!r} is not available for {chemical_symbols[z]}")


def _device_check(device: str) -> None:
    if device not in ("cpu", "cuda"):
        raise InputError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if device == "cuda":
        try:
            import gpu4pyscf  # noqa: F401
        except Exception:
            raise DensityLearnError("--device cuda needs gpu4pyscf, which is not importable: "
                                    "pip install 'densitylearn[gpu]'") from None


# ---------------------------------------------------------------------------- one SCF
def check_guess_structure(structure: Structure) -> None:
    """InputError unless ``structure`` can start from a model's guess (a closed-shell molecule)."""
    if structure.is_periodic or structure.spin != 0:
        kind = "a periodic cell" if structure.is_periodic else f"an open shell (2S={structure.spin})"
        raise InputError(f"structure {structure.label}: {kind}; SCF guesses from a model apply to "
                         "closed-shell molecules only")


def run_reference(structure: Structure, xc: str = DEFAULT_XC, basis: str | None = DEFAULT_BASIS,
                  grid_level: int = DEFAULT_GRID_LEVEL, conv_tol: float = DEFAULT_CONV_TOL,
                  max_cycle: int = DEFAULT_MAX_CYCLE, device: str = "cpu",
                  chkfile: str | None = None, verbose: int = 0,
                  return_objects: bool = False, pseudo: str = DEFAULT_PSEUDO,
                  kmesh=DEFAULT_KMESH, ke_cutoff: float | None = None, smearing: float = 0.0,
                  multigrid: bool = False, ksymmetry: bool = True, initial_guess=None) -> dict:
    """Run one Kohn-Sham SCF for a molecule or a crystal.

    Molecules: restricted KS when ``structure.spin == 0``, unrestricted otherwise.
    Crystals (``structure.is_periodic``): :mod:`pyscf.pbc.dft` restricted KS with the
    pseudopotential ``pseudo``, at the gamma point (``RKS``) when ``kmesh`` is (1, 1, 1),
    else ``KRKS`` on the Monkhorst-Pack mesh ``kmesh`` (gamma-centred, PySCF's
    ``cell.make_kpts``; ``"length:L"`` picks the mesh per cell, :func:`kmesh_for_structure`);
    densities on PySCF's FFT mesh (``ke_cutoff``). With ``ksymmetry`` the SCF diagonalises
    only the irreducible k-points (the cell's symmorphic point group and time reversal,
    PySCF's ``KPoints``; the same energy to about 2e-8 hartree per cell) and the chkfile
    holds the orbitals unfolded to the whole mesh. With ``multigrid`` the Coulomb and XC
    potentials come from PySCF's multigrid integration (``multigrid_numint``): about 2x
    faster on 1-2 atom Si cells, 2.5x slower on 8-atom BC8, energies within about 1e-7
    hartree per atom of the default FFT path (which :mod:`densitylearn.properties` uses).

    Parameters
    ----------
    structure : Structure
        A molecule or a fully periodic cell (positions and cell in bohr).
    xc, basis : str
        Functional (libxc name) and orbital basis (PySCF name); basis None picks
        def2-svp for molecules, gth-dzvp for cells.
    grid_level : int
        PySCF Becke grid level (0..9).
    conv_tol : float
        SCF energy convergence threshold, hartree.
    max_cycle : int
        Maximum SCF iterations.
    device : {'cpu', 'cuda'}
        'cuda' runs through gpu4pyscf.
    chkfile : str, optional
        Where PySCF writes the chkfile (``mol`` and ``scf`` records); None writes none.
        The densitylearn settings group is NOT added here (see :func:`write_settings`).
    return_objects : bool
        Also return the Mole and the SCF object under keys 'mol' and 'mf'.
    pseudo : str
        Pseudopotential of periodic structures (ignored for molecules).
    kmesh : sequence of 3 int
        k-point mesh of periodic structures (ignored for molecules).
    ke_cutoff : float, optional
        Kinetic-energy cutoff (hartree) of the FFT mesh of periodic structures; PySCF's
        default (from the basis and its precision) when None.
    smearing : float
        Fermi-Dirac smearing width (hartree) of periodic structures, 0 for integer
        occupations. Metals (beta-Sn Si, semimetallic BC8 Si) need it to converge; PySCF's
        ``smearing`` addon, occupations over the whole k-mesh with one chemical potential.
        Refused for molecules.
    initial_guess : callable, optional
        Closed-shell molecules only: ``initial_guess(structure, mol)`` returns the starting
        density matrix (nao, nao) of the SCF instead of PySCF's ``minao`` guess, e.g. a
        :class:`densitylearn.properties.ModelGuess`. Its attributes ``label`` (str, recorded
        as ``init_guess``) and ``diis_start_cycle`` (int, PySCF's ``mf.diis_start_cycle``
        for the run from the guess) are used. An SCF that does not converge from the guess
        is run again from PySCF's default guess, and the result says so (``guess_fallback``).

    Returns
    -------
    dict
        ``e_tot`` (hartree), ``converged``, ``n_cycles``, ``wall_time_s``, ``restricted``,
        ``xc``, ``basis``, ``grid_level``, ``conv_tol``, ``max_cycle``, ``device``, ``nao``,
        ``init_guess`` (``'minao'``, PySCF's default, or the label of ``initial_guess``),
        ``guess_s`` (seconds spent making the guess, included in ``wall_time_s``),
        ``guess_fallback`` (True when the run from the guess did not converge and the
        reference comes from a rerun from minao; ``n_cycles`` then counts both runs);
        periodic runs add ``pseudo``, ``kmesh``, ``ke_cutoff``, ``mesh``, ``smearing`` and
        ``e_free`` (hartree); plus ``mol`` and ``mf`` when ``return_objects``.
    """
    validate_structure(structure)
    _device_check(device)
    basis = default_basis(structure, basis)
    smearing = check_smearing(smearing)
    if initial_guess is not None:
        check_guess_structure(structure)
    if structure.is_periodic:
        return _run_periodic(structure, xc=xc, basis=basis, pseudo=pseudo, kmesh=kmesh,
                             ke_cutoff=ke_cutoff, conv_tol=conv_tol, max_cycle=max_cycle,
                             device=device, chkfile=chkfile, verbose=verbose,
                             return_objects=return_objects, grid_level=grid_level, smearing=smearing,
                             multigrid=multigrid, ksymmetry=ksymmetry)
    if smearing:
        raise InputError(f"{structure.label}: smearing applies to periodic structures only")
    from pyscf import dft

    t0 = time.perf_counter()
    mol = structure.to_pyscf(basis=basis, verbose=verbose)
    restricted = structure.spin == 0

    def new_mf():
        mf = dft.RKS(mol) if restricted else dft.UKS(mol)
        mf.xc = xc
        mf.grids.level = int(grid_level)
        mf.conv_tol = float(conv_tol)
        mf.max_cycle = int(max_cycle)
        mf.verbose = verbose
        if device == "cuda":
            mf = mf.to_gpu()
            # gpu4pyscf's chkfile support differs between versions: write it ourselves below.
            mf.chkfile = None
        else:
            mf.chkfile = chkfile if chkfile else None
        return mf

    mf = new_mf()
    label, guess_s, fallback, n_cycles = "minao", 0.0, False, 0
    if initial_guess is not None:
        tg = time.perf_counter()
        dm0 = initial_guess(structure, mol)
        guess_s = time.perf_counter() - tg
        label = str(initial_guess.label)
        mf.diis_start_cycle = int(initial_guess.diis_start_cycle)
        mf.kernel(dm0=dm0)
        if not mf.converged:  # never hidden: the reference then comes from PySCF's default guess
            fallback, n_cycles = True, int(getattr(mf, "cycles", 0))
            mf = new_mf()
            mf.kernel()
    else:
        mf.kernel()
    e_tot, converged = float(mf.e_tot), bool(mf.converged)
    n_cycles += int(getattr(mf, "cycles", -1))
    if device == "cuda":
        mf = mf.to_cpu()  # numpy orbitals for the chkfile and for callers
        if chkfile:
            from pyscf.scf import chkfile as scf_chkfile

            scf_chkfile.dump_scf(mol, chkfile, e_tot, mf.mo_energy, mf.mo_coeff, mf.mo_occ)
    out = dict(e_tot=e_tot, converged=converged,
               n_cycles=n_cycles, wall_time_s=time.perf_counter() - t0,
               restricted=restricted, xc=_norm_xc(xc), basis=str(basis).lower(),
               grid_level=int(grid_level), conv_tol=float(conv_tol), max_cycle=int(max_cycle),
               device=device, nao=int(mol.nao), init_guess=label, guess_s=float(guess_s),
               guess_fallback=fallback)
    if return_objects:
        out.update(mol=mol, mf=mf)
    return out


def check_smearing(smearing) -> float:
    """A smearing width as a float >= 0 (hartree); one-line error otherwise."""
    try:
        value = float(smearing or 0.0)
    except (TypeError, ValueError):
        raise InputError(f"smearing must be a number (hartree), got {smearing!r}") from None
    if not (np.isfinite(value) and value >= 0.0):
        raise InputError(f"smearing must be >= 0 hartree, got {smearing!r}")
    return value


def _run_periodic(structure: Structure, xc: str, basis: str, pseudo: str, kmesh, ke_cutoff,
                  conv_tol: float, max_cycle: int, device: str, chkfile, verbose: int,
                  return_objects: bool, grid_level: int, smearing: float = 0.0,
                  multigrid: bool = False, ksymmetry: bool = True) -> dict:
    """The periodic branch of :func:`run_reference` (see there)."""
    if device != "cpu":
        raise InputError(f"{structure.label}: periodic references run on the CPU only (--device cpu)")
    kmesh = kmesh_for_structure(kmesh, structure)
    from pyscf.pbc import dft as pbcdft

    t0 = time.perf_counter()
    cell = structure.to_pyscf_cell(basis=basis, pseudo=pseudo, ke_cutoff=ke_cutoff, verbose=verbose)
    kpts_sym = None
    if tuple(kmesh) == (1, 1, 1):
        mf = pbcdft.RKS(cell)
    elif ksymmetry:
        # Irreducible k-points: the point-group operations that keep the origin (symmorphic, so
        # no fractional translations that would force PySCF to change the FFT mesh) and time
        # reversal. The SCF runs on a copy of the cell with its symmetry built; the chkfile gets
        # the plain cell and the orbitals unfolded to the whole mesh (_dump_unfolded).
        scell = cell.copy(deep=False)
        scell.space_group_symmetry = True
        scell.symmorphic = True
        scell.build(dump_input=False, parse_arg=False)
        if [int(m) for m in scell.mesh] != [int(m) for m in cell.mesh]:  # never seen; be safe
            scell = cell
        kpts_sym = scell.make_kpts(list(kmesh), space_group_symmetry=scell is not cell,
                                   time_reversal_symmetry=True)
        if kpts_sym.nkpts_ibz == kpts_sym.nkpts:  # nothing to gain (e.g. a rattled cell, 2x2x1)
            kpts_sym = None
            mf = pbcdft.KRKS(cell, cell.make_kpts(list(kmesh)))
        else:
            mf = pbcdft.KRKS(scell, kpts_sym)
    else:
        mf = pbcdft.KRKS(cell, cell.make_kpts(list(kmesh)))
    mf.xc = xc
    if multigrid:
        # PySCF's multigrid J and XC (GTH cells): within ~1e-7 hartree per atom of the plain
        # FFT build on Si cells, faster only on small cells, so off by default
        mf = mf.multigrid_numint()
    mf.conv_tol = float(conv_tol)
    mf.max_cycle = int(max_cycle)
    mf.verbose = verbose
    mf.chkfile = chkfile if chkfile and kpts_sym is None else None
    if smearing > 0:
        mf = mf.smearing(sigma=smearing, method="fermi")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mf.kernel()
    e_free = float(mf.e_free) if smearing > 0 and getattr(mf, "e_free", None) is not None else float(mf.e_tot)
    if kpts_sym is not None and chkfile:
        _dump_unfolded(cell, chkfile, mf, kpts_sym)
    out = dict(e_tot=float(mf.e_tot), converged=bool(mf.converged),
               n_cycles=int(getattr(mf, "cycles", -1)), wall_time_s=time.perf_counter() - t0,
               restricted=True, xc=_norm_xc(xc), basis=str(basis).lower(),
               grid_level=int(grid_level), conv_tol=float(conv_tol), max_cycle=int(max_cycle),
               device=device, nao=int(cell.nao), pseudo=str(pseudo).lower() if pseudo else "",
               kmesh=list(kmesh), ke_cutoff=float(ke_cutoff) if ke_cutoff is not None else -1.0,
               mesh=[int(m) for m in cell.mesh], smearing=float(smearing), e_free=e_free,
               multigrid=bool(multigrid),
               nkpts_ibz=int(kpts_sym.nkpts_ibz) if kpts_sym is not None else int(np.prod(kmesh)))
    if return_objects:
        out.update(mol=cell, mf=mf)
    return out


def _dump_unfolded(cell, chkfile: str, mf, kpts_sym) -> None:
    """Write a k-point-symmetry SCF to ``chkfile`` as if it had run on the whole mesh: the
    plain cell, the orbitals, energies and occupations unfolded from the irreducible wedge
    (PySCF's ``KPoints.transform_*``) and every k-point, in PySCF's KSCF chkfile layout."""
    import h5py
    from pyscf.scf import chkfile as scf_chkfile

    mo_coeff = kpts_sym.transform_mo_coeff(mf.mo_coeff)
    mo_energy = kpts_sym.transform_mo_energy(mf.mo_energy)
    mo_occ = kpts_sym.transform_mo_occ(mf.mo_occ)
    scf_chkfile.dump_scf(cell, chkfile, float(mf.e_tot), mo_energy, mo_coeff, mo_occ)
    with h5py.File(chkfile, "a") as f:
        if "scf/kpts" in f:
            del f["scf/kpts"]
        f["scf/kpts"] = np.asarray(kpts_sym.kpts, dtype=np.float64)


def write_settings(path: str, structure: Structure, result: dict) -> None:
    """Write the :data:`CHK_GROUP` attributes of a chkfile from a :func:`run_reference` result."""
    import datetime

    import h5py
    import pyscf

    from . import __version__

    attrs = dict(xc=result["xc"], basis=result["basis"], grid_level=result["grid_level"],
                 conv_tol=result["conv_tol"], max_cycle=result["max_cycle"],
                 restricted=result["restricted"], converged=result["converged"],
                 e_tot=result["e_tot"], n_cycles=result["n_cycles"],
                 wall_time_s=float(result["wall_time_s"]), name=structure.name,
                 source=structure.source, charge=structure.charge, spin=structure.spin,
                 device=result["device"], densitylearn_version=__version__,
                 pyscf_version=pyscf.__version__, init_guess=result.get("init_guess", "minao"),
                 guess_s=float(result.get("guess_s", 0.0)), guess_fallback=bool(result.get("guess_fallback", False)),
                 created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    if structure.is_periodic:
        attrs.update(pseudo=result.get("pseudo", ""), kmesh=json.dumps(list(result["kmesh"])),
                     ke_cutoff=float(result.get("ke_cutoff", -1.0)),
                     mesh=json.dumps([int(m) for m in result["mesh"]]),
                     smearing=float(result.get("smearing", 0.0)), e_free=float(result.get("e_free", result["e_tot"])),
                     multigrid=bool(result.get("multigrid", False)),
                     nkpts_ibz=int(result.get("nkpts_ibz", int(np.prod(result["kmesh"])))))
    from .structure import CHK_CELL_DATASET

    with h5py.File(path, "a") as f:
        if CHK_GROUP in f:
            del f[CHK_GROUP]
        g = f.create_group(CHK_GROUP)
        for k, v in attrs.items():
            g.attrs[k] = v
        if structure.is_periodic:
            f[CHK_CELL_DATASET] = np.asarray(structure.cell, dtype=np.float64)


def read_settings(path: str) -> dict:
    """The :data:`CHK_GROUP` attributes of a chkfile as plain Python values ({} if absent).

    Raises :class:`InputError` when the file is not a readable HDF5 file.
    """
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if CHK_GROUP not in f:
                return {}
            raw = dict(f[CHK_GROUP].attrs)
    except OSError as exc:
        raise InputError(f"{path}: cannot read chkfile ({exc})") from None
    out = {}
    for k, v in raw.items():
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, np.generic):
            v = v.item()
        out[k] = v
    return out


def compute_one(structure: Structure, out_dir: str, xc: str = DEFAULT_XC,
                basis: str | None = DEFAULT_BASIS, grid_level: int = DEFAULT_GRID_LEVEL,
                conv_tol: float = DEFAULT_CONV_TOL, max_cycle: int = DEFAULT_MAX_CYCLE,
                device: str = "cpu", pseudo: str = DEFAULT_PSEUDO, kmesh=DEFAULT_KMESH,
                ke_cutoff: float | None = None, smearing: float = 0.0,
                skip_existing: bool = False, multigrid: bool = False, ksymmetry: bool = True,
                initial_guess=None) -> dict:
    """Compute one structure into ``out_dir/<name>.chk`` crash-safely.

    ``pseudo``, ``kmesh``, ``ke_cutoff`` and ``smearing`` apply to periodic structures (see
    :func:`run_reference`); ``basis`` None picks the default for the structure's kind;
    ``initial_guess`` as in :func:`run_reference`.

    PySCF writes into a temporary chkfile in ``out_dir``; the settings group is added, the
    file is fsynced and renamed with :func:`os.replace` to the final name when the SCF
    converged, else to ``<name>.unconverged.chk``. On an exception the temporary file is
    removed and nothing else is touched.

    With ``skip_existing``, a chkfile of the same settings that appeared after the job was
    queued (another worker, shard or machine writing into the same folder) is kept and the
    SCF is not run (``status`` 'skipped'); one of other settings raises
    :class:`MismatchError`.

    Returns
    -------
    dict
        ``status`` ('computed', 'unconverged' or 'skipped'), ``path`` and the
        :func:`run_reference` results (``e_tot``, ``n_cycles``, ``wall_time_s``, ...).
    """
    final = chk_path(out_dir, structure)
    if skip_existing and os.path.exists(final):
        why = _existing_mismatch(final, structure, xc, basis, grid_level, pseudo=pseudo, kmesh=kmesh,
                                 ke_cutoff=ke_cutoff, smearing=smearing)
        if why is not None:
            raise MismatchError(f"{final} appeared meanwhile and differs from this run ({why})")
        return {"status": "skipped", "path": final}
    os.makedirs(out_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{structure.name}.", suffix=".chk.tmp", dir=out_dir)
    os.close(fd)
    os.remove(tmp)  # PySCF creates it as HDF5; an empty file would only confuse is_hdf5
    try:
        res = run_reference(structure, xc=xc, basis=basis, grid_level=grid_level,
                            conv_tol=conv_tol, max_cycle=max_cycle, device=device, chkfile=tmp,
                            pseudo=pseudo, kmesh=kmesh, ke_cutoff=ke_cutoff, smearing=smearing,
                            multigrid=multigrid, ksymmetry=ksymmetry, initial_guess=initial_guess)
        write_settings(tmp, structure, res)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        dest = final if res["converged"] else unconverged_path(out_dir, structure)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    res["status"] = "computed" if res["converged"] else "unconverged"
    res["path"] = dest
    return res


# ---------------------------------------------------------------------------- many SCFs
def _existing_mismatch(path: str, structure: Structure, xc: str, basis: str | None,
                       grid_level: int, pseudo: str = DEFAULT_PSEUDO, kmesh=DEFAULT_KMESH,
                       ke_cutoff: float | None = None, smearing: float = 0.0) -> str | None:
    """Why the existing chkfile ``path`` does not match the request (None if it does)."""
    from .structure import structure_from_chk

    try:
        s = read_settings(path)
    except InputError as exc:
        return f"unreadable ({exc})"
    if not s:
        return "not written by densitylearn compute"
    diffs = []
    basis = default_basis(structure, basis)
    if _norm_xc(s.get("xc", "")) != _norm_xc(xc):
        diffs.append(f"xc={s.get('xc')}")
    if _norm_basis(s.get("basis", "")) != _norm_basis(basis):
        diffs.append(f"basis={s.get('basis')}")
    if structure.is_periodic:
        if _norm_basis(s.get("pseudo", "")) != _norm_basis(pseudo or ""):
            diffs.append(f"pseudo={s.get('pseudo')}")
        try:
            old_kmesh = tuple(json.loads(s.get("kmesh", "[]")))
        except ValueError:
            old_kmesh = ()
        if old_kmesh != tuple(kmesh_for_structure(kmesh, structure)):
            diffs.append(f"k-mesh {s.get('kmesh')}")
        want = float(ke_cutoff) if ke_cutoff is not None else -1.0
        if abs(float(s.get("ke_cutoff", -2.0)) - want) > 1e-9:
            diffs.append(f"ke_cutoff {s.get('ke_cutoff')}")
        if abs(float(s.get("smearing", 0.0)) - float(smearing or 0.0)) > 1e-12:
            diffs.append(f"smearing {s.get('smearing', 0.0)}")
    elif int(s.get("grid_level", -1)) != int(grid_level):
        diffs.append(f"grid level {s.get('grid_level')}")
    try:
        old = structure_from_chk(path)
    except InputError as exc:
        return f"unreadable ({exc})"
    if not old.same_geometry(structure):
        diffs.append("another geometry")
    if (old.charge, old.spin) != (structure.charge, structure.spin):
        diffs.append(f"charge {old.charge} spin {old.spin}")
    return ", ".join(diffs) or None


def prepare_structures(structures, xc: str = DEFAULT_XC, basis: str | None = DEFAULT_BASIS,
                       device: str = "cpu", pseudo: str = DEFAULT_PSEUDO,
                       kmesh=DEFAULT_KMESH) -> list[Structure]:
    """Validate a whole request before any SCF runs.

    Checks every structure (:func:`validate_structure`), that names are unique (they name
    the chkfiles), the functional, the basis for every element present (per kind of
    structure when ``basis`` is None), the pseudopotential and k-mesh of periodic ones, and
    the device. Raises :class:`InputError` at the first problem, naming file and structure.
    """
    structures = list(structures)
    if not structures:
        raise InputError("no structures to compute")
    seen: dict[str, Structure] = {}
    elements: dict[str, set[int]] = {}
    periodic: set[int] = set()
    for s in structures:
        validate_structure(s)
        if s.name in seen:
            raise InputError(f"two structures are named {s.name!r} ({seen[s.name].source} and "
                             f"{s.source}); their chkfiles would collide, rename one input")
        seen[s.name] = s
        elements.setdefault(default_basis(s, basis), set()).update(int(z) for z in s.numbers)
        if s.is_periodic:
            periodic.update(int(z) for z in s.numbers)
    check_xc(xc)
    for name, zs in elements.items():
        check_basis(name, sorted(zs))
    if periodic:
        check_kmesh(kmesh)
        if pseudo:
            check_pseudo(pseudo, sorted(periodic))
        if device != "cpu":
            raise InputError("periodic references run on the CPU only (--device cpu)")
    _device_check(device)
    return structures


def read_inputs(paths, charge: int | None = None, spin: int | None = None) -> list[Structure]:
    """Every frame of every file in ``paths`` (see :func:`densitylearn.structure.read_structures`).

    ``charge`` / ``spin`` override per-file values for all structures. Errors raised while
    building a structure name the file as well as the structure.
    """
    from .structure import read_structures

    out, seen = [], set()
    for path in paths:
        real = os.path.realpath(path)
        if real in seen:  # the same file given twice
            continue
        seen.add(real)
        try:
            out.extend(read_structures(path, charge=charge, spin=spin))
        except InputError as exc:
            msg = str(exc)
            if path not in msg:
                raise InputError(f"{path}: {msg}") from None
            raise
    return out


def _worker_init(n_threads: int, parent: int) -> None:
    from densitylearn.io_utils import exit_with_parent

    exit_with_parent(parent)
    from pyscf import lib

    lib.num_threads(max(1, n_threads))


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def compute_references(structures, out_dir: str, xc: str = DEFAULT_XC,
                       basis: str | None = DEFAULT_BASIS, grid_level: int = DEFAULT_GRID_LEVEL,
                       conv_tol: float = DEFAULT_CONV_TOL, max_cycle: int = DEFAULT_MAX_CYCLE,
                       device: str = "cpu", workers: int = 1, shard: tuple[int, int] = (0, 1),
                       overwrite: bool = False, progress: bool = True, log=None,
                       pseudo: str = DEFAULT_PSEUDO, kmesh=DEFAULT_KMESH,
                       ke_cutoff: float | None = None, smearing: float = 0.0,
                       multigrid: bool = False, ksymmetry: bool = True, initial_guess=None) -> dict:
    """Compute the reference chkfiles of many structures, resumably.

    All structures are validated first (:func:`prepare_structures`); one bad structure
    aborts the whole request before any SCF runs. Structure ``k`` (input order) belongs to
    shard ``k % n`` of ``shard = (i, n)``. A structure whose ``out_dir/<name>.chk`` exists
    is skipped, after checking that the file was computed with the same xc, basis, grid
    level, geometry, charge and spin: a mismatch raises :class:`MismatchError` unless
    ``overwrite`` (then it is recomputed and replaced atomically).

    Parameters
    ----------
    basis : str or None
        Orbital basis; None: def2-svp for molecules, gth-dzvp for periodic structures.
    pseudo, kmesh, ke_cutoff, smearing
        Settings of periodic structures (see :func:`run_reference`); for them the
        resumability check compares pseudo, k-mesh, ke_cutoff and smearing instead of the
        grid level.
    workers : int
        Processes; each sets ``pyscf.lib.num_threads(cores // workers)``. 1 runs in this
        process with PySCF's thread setting untouched.
    progress : bool
        Show a tqdm bar on stderr.
    log : file-like, optional
        Where per-structure messages go (default ``sys.stderr``).
    initial_guess : callable, optional
        SCF starting density matrices for the molecules (see :func:`run_reference`), e.g.
        :class:`densitylearn.properties.ModelGuess`; picklable when ``workers > 1``. Its
        ``check(structures)`` (when present) runs on the structures to compute before any
        SCF, and every one must be a closed-shell molecule. The existing-file check ignores
        how a reference was started: a converged SCF is the same reference either way.

    Returns
    -------
    dict
        ``computed``, ``skipped``, ``failed``, ``unconverged``, ``guess_fallback`` (lists of
        structure names; the last: SCFs that did not converge from ``initial_guess`` and were
        rerun from minao),
        ``errors`` (name -> one-line message), ``results`` (name -> result dict),
        ``wall_time_s``, ``n_total`` (structures in this shard), ``out_dir``.
    """
    from tqdm import tqdm

    t0 = time.perf_counter()
    log = log if log is not None else sys.stderr
    structures = prepare_structures(structures, xc=xc, basis=basis, device=device, pseudo=pseudo,
                                    kmesh=kmesh)
    i_shard, n_shard = shard
    if n_shard < 1 or not 0 <= i_shard < n_shard:
        raise InputError(f"shard {i_shard}/{n_shard}: need 0 <= i < n")
    mine = [s for k, s in enumerate(structures) if k % n_shard == i_shard]
    if check_smearing(smearing) and any(not st.is_periodic for st in mine):
        raise InputError("smearing applies to periodic structures only (a molecule is among the inputs)")
    workers = int(workers)
    if workers < 1:
        raise InputError(f"workers must be >= 1, got {workers}")

    todo, skipped, mismatched = [], [], []
    for s in mine:
        path = chk_path(out_dir, s)
        if not os.path.exists(path):
            todo.append(s)
            continue
        why = _existing_mismatch(path, s, xc, basis, grid_level, pseudo=pseudo, kmesh=kmesh,
                                 ke_cutoff=ke_cutoff, smearing=smearing)
        if why is None:
            skipped.append(s.name)
        elif overwrite:
            todo.append(s)
        else:
            mismatched.append((path, why))
    if initial_guess is not None and todo:
        for s in todo:
            check_guess_structure(s)
        if hasattr(initial_guess, "check"):
            initial_guess.check(todo)
    if mismatched:
        path, why = mismatched[0]
        more = f" (and {len(mismatched) - 1} more)" if len(mismatched) > 1 else ""
        raise MismatchError(f"{path} differs from this run ({why}; requested xc={xc} basis={basis or 'default'} "
                            f"grid level {grid_level}){more}: choose another --out, delete "
                            f"them, or pass --overwrite")

    summary = dict(computed=[], skipped=skipped, failed=[], unconverged=[], guess_fallback=[], errors={},
                   results={}, n_total=len(mine), out_dir=out_dir)
    kwargs = dict(xc=xc, basis=basis, grid_level=grid_level, conv_tol=conv_tol,
                  max_cycle=max_cycle, device=device, pseudo=pseudo, kmesh=kmesh,
                  ke_cutoff=ke_cutoff, smearing=check_smearing(smearing), skip_existing=not overwrite,
                  multigrid=bool(multigrid), ksymmetry=bool(ksymmetry), initial_guess=initial_guess)
    bar = tqdm(total=len(mine), initial=len(skipped), desc="compute", unit="mol",
               file=sys.stderr, disable=not progress, dynamic_ncols=True)

    def say(msg):
        if progress:
            bar.write(msg, file=log)
        else:
            print(msg, file=log, flush=True)

    def record(s, res=None, exc=None):
        if exc is not None:
            line = str(exc).splitlines()[0] if str(exc) else ""
            msg = f"{type(exc).__name__}: {line}" if not isinstance(exc, DensityLearnError) else line
            summary["failed"].append(s.name)
            summary["errors"][s.name] = msg
            say(f"densitylearn compute: {s.source or s.name}: {s.name} failed: {msg}")
        else:
            if res["status"] == "skipped":
                summary["skipped"].append(s.name)
                bar.update(1)
                return
            summary["results"][s.name] = res
            if res.get("guess_fallback"):
                summary["guess_fallback"].append(s.name)
                say(f"densitylearn compute: {s.source or s.name}: {s.name}: SCF did not converge from the "
                    f"{res['init_guess']} guess; reran from minao")
            if res["status"] == "computed":
                summary["computed"].append(s.name)
            else:
                summary["unconverged"].append(s.name)
                say(f"densitylearn compute: {s.source or s.name}: {s.name}: SCF not converged "
                    f"after {res['n_cycles']} cycles; kept as {res['path']}")
        bar.update(1)

    try:
        if todo:
            os.makedirs(out_dir, exist_ok=True)
        if workers == 1 or len(todo) <= 1:
            for s in todo:
                try:
                    res = compute_one(s, out_dir, **kwargs)
                except (KeyboardInterrupt, SystemExit):
                    raise
                except Exception as exc:
                    record(s, exc=exc)
                else:
                    record(s, res=res)
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor, as_completed

            n_threads = max(1, _available_cores() // workers)
            # spawn: forking a process that already ran OpenMP code can deadlock
            with ProcessPoolExecutor(max_workers=min(workers, len(todo)),
                                     mp_context=mp.get_context("spawn"),
                                     initializer=_worker_init, initargs=(n_threads, os.getpid())) as pool:
                futures = {pool.submit(compute_one, s, out_dir, **kwargs): s for s in todo}
                try:
                    for fut in as_completed(futures):
                        s = futures[fut]
                        try:
                            res = fut.result()
                        except Exception as exc:
                            record(s, exc=exc)
                        else:
                            record(s, res=res)
                except BaseException:
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
    finally:
        bar.close()
    summary["wall_time_s"] = time.perf_counter() - t0
    return summary


def format_summary(summary: dict) -> str:
    """One line: computed / skipped / failed / unconverged counts and wall time."""
    line = (f"densitylearn compute: {len(summary['computed'])} computed, "
            f"{len(summary['skipped'])} skipped (already present), "
            f"{len(summary['failed'])} failed, {len(summary['unconverged'])} unconverged "
            f"of {summary['n_total']} in {summary['wall_time_s']:.1f} s -> {summary['out_dir']}")
    if summary.get("guess_fallback"):
        line += f"; {len(summary['guess_fallback'])} rerun from minao after the model's guess did not converge"
    for key in ("failed", "unconverged", "guess_fallback"):
        names = summary.get(key, [])
        if names:
            line += f"; {key}: " + ", ".join(names[:20]) + (" ..." if len(names) > 20 else "")
    return line


# ---------------------------------------------------------------------------- reading
def _rebuild_mol(raw, path: str):
    """A built Mole from PySCF's JSON ``mol`` record, using only ``_atom`` (bohr) and ``_basis``.

    Never goes through :func:`pyscf.lib.chkfile.load_mol` (which may ``eval`` strings and
    returns a Mole whose ``_ecpbas`` breaks ``atom_ks``, DESIGN section 4).
    """
    from pyscf import gto

    try:
        d = json.loads(raw)
        mol = gto.Mole()
        mol.atom = [(str(a[0]), tuple(float(x) for x in a[1])) for a in d["_atom"]]
        mol.unit = "Bohr"
        mol.basis = d["_basis"]
        ecp = d.get("_ecp") or {}
        if ecp:
            mol.ecp = ecp
        mol.charge = int(d.get("charge", 0))
        mol.spin = int(d.get("spin", 0))
        mol.cart = bool(d.get("cart", False))
        mol.verbose = 0
        mol.build()
    except Exception as exc:
        raise InputError(f"{path}: cannot rebuild the molecule ({type(exc).__name__}: {exc})") from None
    return mol


def _rebuild_cell(raw, path: str, cell_bohr: np.ndarray, settings: dict):
    """A built :class:`pyscf.pbc.gto.Cell` from PySCF's JSON record of a Cell.

    Uses ``_atom`` (bohr), ``_basis`` and ``_pseudo`` (string forms parsed as Python
    literals, never evaluated), the lattice ``cell_bohr`` and the FFT mesh recorded in the
    densitylearn settings (else the record's).
    """
    import ast

    from pyscf.pbc import gto as pbcgto

    def literal(x):
        return ast.literal_eval(x) if isinstance(x, str) else x

    try:
        d = json.loads(raw)
        cell = pbcgto.Cell()
        cell.atom = [(str(a[0]), tuple(float(x) for x in a[1])) for a in d["_atom"]]
        cell.unit = "Bohr"
        cell.a = np.asarray(cell_bohr, dtype=np.float64)
        cell.basis = literal(d["_basis"])
        pp = literal(d.get("_pseudo") or {})
        if pp:
            cell.pseudo = pp
        mesh = settings.get("mesh")
        mesh = json.loads(mesh) if isinstance(mesh, str) and mesh else literal(d.get("mesh"))
        if mesh is not None:
            cell.mesh = [int(m) for m in mesh]
        cell.charge = int(d.get("charge", 0))
        cell.spin = int(d.get("spin", 0))
        cell.verbose = 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cell.build()
    except Exception as exc:
        raise InputError(f"{path}: cannot rebuild the periodic cell ({type(exc).__name__}: {exc})") from None
    return cell


def load_reference(path: str) -> Reference:
    """Read a reference chkfile as data (no ``eval``).

    Returns
    -------
    Reference
        Structure (named and sourced as when computed, when the densitylearn settings are
        present), the rebuilt Mole, the total density matrix ``dm`` (nao, nao) from
        ``mo_coeff``/``mo_occ`` (alpha + beta for UKS), ``e_tot`` and the settings.

    Raises :class:`InputError` naming the file when it is missing, truncated or lacks the
    ``mol`` / ``scf`` records.
    """
    import h5py

    from .structure import structure_from_chk

    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file")
    kpts = None
    try:
        with h5py.File(path, "r") as f:
            raw = f["mol"][()]
            mo_coeff = _chk_array(f, "scf/mo_coeff")
            mo_occ = np.asarray(_chk_array(f, "scf/mo_occ"), dtype=np.float64)
            e_tot = float(f["scf/e_tot"][()])
            if "scf/kpts" in f:
                kpts = np.asarray(f["scf/kpts"][()], dtype=np.float64).reshape(-1, 3)
            elif "scf/kpt" in f:
                kpts = np.asarray(f["scf/kpt"][()], dtype=np.float64).reshape(1, 3)
    except (OSError, KeyError) as exc:
        raise InputError(f"{path}: not a complete PySCF SCF chkfile ({exc})") from None
    settings = read_settings(path)
    structure = structure_from_chk(path)
    if settings.get("name") or settings.get("source"):
        structure = dataclasses.replace(structure, name=settings.get("name") or structure.name,
                                        source=settings.get("source") or structure.source)
    if structure.is_periodic:
        return _load_periodic(path, raw, structure, settings, mo_coeff, mo_occ, kpts, e_tot)
    mo_coeff = np.asarray(mo_coeff, dtype=np.float64)
    mol = _rebuild_mol(raw, path)
    if mo_coeff.ndim == 2:
        dm = (mo_coeff * mo_occ) @ mo_coeff.T
    elif mo_coeff.ndim == 3:
        dm = sum((c * o) @ c.T for c, o in zip(mo_coeff, mo_occ))
    else:
        raise InputError(f"{path}: mo_coeff has unexpected shape {mo_coeff.shape}")
    if dm.shape != (mol.nao, mol.nao):
        raise InputError(f"{path}: density matrix shape {dm.shape} does not match the basis "
                         f"({mol.nao} functions)")
    basis = str(settings.get("basis", ""))
    if not basis:  # a plain PySCF chkfile: the basis name the Mole was built with, if any
        try:
            stored = json.loads(raw).get("basis")
        except (ValueError, AttributeError):
            stored = None
        if isinstance(stored, str) and stored[:1] in "'\"" and stored[-1:] == stored[:1]:
            stored = stored[1:-1]  # PySCF stores the basis name as its repr
        basis = stored.lower() if isinstance(stored, str) and stored[:1] not in "{[" else ""
    converged = settings.get("converged", None)
    return Reference(structure=structure, mol=mol, dm=dm, e_tot=e_tot,
                     xc=str(settings.get("xc", "")), basis=basis,
                     grid_level=int(settings.get("grid_level", -1)),
                     converged=None if converged is None else bool(converged), path=path)


def _chk_array(f, key: str) -> np.ndarray:
    """A PySCF chkfile array; PySCF stores lists (per-k-point occupations of a smeared SCF)
    as a group ``<key>__from_list__`` of numbered members, stacked here."""
    if key in f:
        return np.asarray(f[key][()])
    group = f[key + "__from_list__"]  # KeyError when absent, as for a plain key
    return np.stack([np.asarray(group[k][()]) for k in sorted(group)])


def _load_periodic(path, raw, structure, settings, mo_coeff, mo_occ, kpts, e_tot) -> Reference:
    """The periodic branch of :func:`load_reference` (restricted KS at one or many k-points)."""
    cell = _rebuild_cell(raw, path, structure.cell, settings)
    if kpts is None:
        kpts = np.zeros((1, 3))
    # consumers that get only (cell, dm), such as metrics.reference_density, find the k-points here
    cell._densitylearn_kpts = kpts
    if mo_coeff.ndim == 2:  # gamma-point RKS: one real or complex coefficient matrix
        mo_coeff, mo_occ = mo_coeff[None], mo_occ[None]
    if mo_coeff.ndim != 3 or mo_coeff.shape[0] != len(kpts) or mo_occ.shape[0] != len(kpts):
        raise InputError(f"{path}: mo_coeff of shape {mo_coeff.shape} does not match {len(kpts)} "
                         "k-points (only restricted periodic references are supported)")
    dm = np.einsum("kpi,ki,kqi->kpq", mo_coeff, mo_occ, mo_coeff.conj())
    if dm.shape[1:] != (cell.nao, cell.nao):
        raise InputError(f"{path}: density matrix shape {dm.shape[1:]} does not match the basis "
                         f"({cell.nao} functions)")
    if np.abs(dm.imag).max() < 1e-14:
        dm = dm.real.copy()
    converged = settings.get("converged", None)
    basis = str(settings.get("basis", ""))
    if not basis:
        try:
            stored = json.loads(raw).get("basis")
        except (ValueError, AttributeError):
            stored = None
        if isinstance(stored, str) and stored[:1] in "'\"" and stored[-1:] == stored[:1]:
            stored = stored[1:-1]
        basis = stored.lower() if isinstance(stored, str) and stored[:1] not in "{[" else ""
    pseudo = str(settings.get("pseudo", ""))
    if not pseudo:
        try:
            stored = json.loads(raw).get("pseudo")
        except (ValueError, AttributeError):
            stored = None
        if isinstance(stored, str):
            stored = stored.strip("'\"")
            pseudo = stored.lower() if stored[:1] not in "{[" else ""
    return Reference(structure=structure, mol=cell, dm=dm, e_tot=e_tot,
                     xc=str(settings.get("xc", "")), basis=basis,
                     grid_level=int(settings.get("grid_level", -1)),
                     converged=None if converged is None else bool(converged), path=path,
                     kpts=kpts, pseudo=pseudo, smearing=float(settings.get("smearing", 0.0)),
                     e_free=float(settings["e_free"]) if "e_free" in settings else None)


def periodic_density_on_mesh(ref: Reference, mesh=None) -> tuple[np.ndarray, np.ndarray]:
    """The reference valence density of a periodic :class:`Reference` on a uniform mesh.

    Parameters
    ----------
    ref : Reference
        A periodic reference (``ref.is_periodic``).
    mesh : sequence of 3 int, optional
        Points along each lattice vector (default: the SCF's FFT mesh, ``ref.mol.mesh``).
        Point (i, j, k) lies at ``(i/n1, j/n2, k/n3) @ cell``.

    Returns
    -------
    values : ndarray, shape (n1, n2, n3)
        Density in e/bohr^3 (k-point average of the density matrices).
    axes : ndarray, shape (3, 3)
        Grid step vectors as rows, bohr (``cell[i] / n_i``).
    """
    if not ref.is_periodic:
        raise InputError(f"{ref.path}: not a periodic reference")
    cell = ref.mol
    mesh = [int(m) for m in (cell.mesh if mesh is None else mesh)]
    if len(mesh) != 3 or min(mesh) < 1:
        raise InputError(f"{ref.path}: mesh must be three positive integers, got {mesh}")
    axes = np.asarray(ref.structure.cell) / np.asarray(mesh, dtype=np.float64)[:, None]
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in mesh], indexing="ij"), -1).reshape(-1, 3)
    coords = idx.astype(np.float64) @ axes
    rho = cell_density(cell, ref.dm, coords, kpts=ref.kpts)
    return rho.reshape(mesh), axes


def cell_density(cell, dm, points, kpts=None, block: int = 16384) -> np.ndarray:
    """Density of a periodic reference at ``points`` (bohr), e/bohr^3, shape (n_points,).

    Parameters
    ----------
    cell : pyscf.pbc.gto.Cell
    dm : ndarray, shape (n_k, nao, nao) or (nao, nao)
        Spin-summed density matrices per k-point; the density is their average.
    points : ndarray, shape (n_points, 3)
    kpts : ndarray, shape (n_k, 3), optional
        k-points (bohr^-1); default: those :func:`load_reference` recorded on the cell,
        else the gamma point.
    """
    from pyscf.pbc.dft import numint as pbc_numint

    dm = np.asarray(dm)
    if dm.ndim == 2:
        dm = dm[None]
    if kpts is None:
        kpts = getattr(cell, "_densitylearn_kpts", None)
    kpts = np.zeros((1, 3)) if kpts is None else np.asarray(kpts, dtype=np.float64).reshape(-1, 3)
    if len(kpts) != dm.shape[0]:
        raise InputError(f"{dm.shape[0]} density matrices but {len(kpts)} k-points")
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    out = np.empty(len(points))
    ni = pbc_numint.KNumInt()
    for i in range(0, len(points), block):
        ao = ni.eval_ao(cell, points[i:i + block], kpts=kpts)  # per k-point: (n, nao)
        acc = sum(np.einsum("gp,pq,gq->g", a, d, a.conj()).real for a, d in zip(ao, dm))
        out[i:i + block] = acc / len(kpts)
    return out
