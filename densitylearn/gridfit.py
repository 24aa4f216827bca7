"""Fit densities given on uniform grids (cube files, VASP CHGCAR) onto an auxiliary basis.

Other codes hand out densities on uniform grids; this module turns them into coefficients
of an :class:`~densitylearn.basis.AuxBasis` (PySCF order), optionally as the Delta-SAED
difference density, so they can serve as training targets or be compared with our fits.

Reading
-------
* Gaussian cube files (:func:`read_cube`): bohr and e/bohr^3 (a negative voxel count in
  the header means Angstrom, as Gaussian defines it; such lengths are converted). Values
  run with the third axis fastest. Molecular by default; ``pbc=True`` treats the grid as
  one periodic cell with lattice vectors ``n_i * axis_i`` (the CASTEP convention of a
  repeated last plane is not supported).
* VASP CHGCAR / CHG (:func:`read_chgcar`): the file stores ``rho * V_cell`` with rho in
  e/Angstrom^3 and V_cell in Angstrom^3, the first axis fastest, points at fractional
  coordinates ``(i/N1, j/N2, k/N3)``. We divide by the cell volume and multiply by
  ``BOHR_ANGSTROM**3`` (1 e/Angstrom^3 = 0.148185 e/bohr^3); lengths become bohr. Only the
  first (total) density block is read; a spin-polarised file's magnetisation block and the
  PAW augmentation occupancies are ignored. A plain CHGCAR is the *valence pseudo* density
  (for PAW, AECCAR0 + AECCAR2 is the all-electron one): its electron count is NELECT, not
  sum(Z), and the all-electron SAED is not its prior.

Fitting
-------
With ``A_iP = chi_P(r_i)`` on the N grid points and the volume element ``dV`` as weight,
the coefficients minimise ``sum_i dV (rho_i - sum_P A_iP c_P)^2`` (a grid-quadrature
overlap-metric fit), optionally with ``q . c = N_e`` (``q_P = int chi_P``, analytic).
``A^T dV A`` and ``A^T dV b`` are accumulated in float64 over blocks of points, so memory
is bounded by ``budget`` values, whatever the grid size; basis values come from
:func:`densitylearn.grid.evaluate_basis`. The normal matrix is scaled to unit diagonal and
Cholesky-factorised; when its estimated reciprocal condition number falls below ``rcond``
(functions the grid cannot resolve, such as core functions much steeper than the grid
spacing), it is diagonalised and directions with eigenvalues below ``rcond * max`` are
dropped (minimum-norm solution); functions that no grid point sees get zero. The number
of such directions is reported as ``unresolved``.

With an SAED (``saed=``), the difference density ``rho - rho_SAED`` is fitted too (same
normal matrix, second right-hand side; count ``N_e - sum Z``): the Delta-SAED target.
With ``saed_coefficients=`` (the SAED's own Coulomb-metric fit, :func:`saed_coulomb_fit`)
the total density is that difference fit plus the SAED fit, the decomposition of
``fit-basis`` datasets (total = difference + SAED), instead of its own least squares. For
all-electron cubes this is the better total target (the default of
:func:`fit_grid_file` with ``difference=True`` on molecules): a least-squares fit of the
total density on grid points is dominated by the points next to the nuclei, and its
error depends on where they fall (PBE/def2-SVP H2O on dl-dcd: 1.1-2.1 % eps_mae on
0.1-0.2 bohr cubes, against 1.06-1.10 % for difference + SAED fit and 1.01 % for the
Coulomb fit of the density matrix; measurements in the user guide, "Densities from other
codes").

Periodic cells: functions are lattice sums, ``chi~_P(r) = sum_T chi_P(r - R_P - T)``.
Image atoms whose largest screening radius (:func:`densitylearn.grid.shell_radii`, values
below 1e-12) reaches the grid are tiled, their basis values are computed like any atom's
and added onto the columns of their home atom; SAED images are tiled the same way. Per
block of points, an atom (home or image) is evaluated only with the shells whose radius
reaches the block (``evaluate_basis`` on a sub-basis), which makes lattice sums over
hundreds of images about 3x cheaper than evaluating every shell.

Residual (:class:`GridResidual`): on the input grid, ``100 % * sum |rho_fit - rho| dV /
sum rho dV``, both grid electron counts ``sum rho dV``, the analytic electron count of the
fit, and ``max |rho_fit - rho|``. For a difference fit ``rho_fit`` includes the SAED, so
both residuals are relative to the total density. The fitted densities on the grid come
from the same lattice-summed basis values as the fit (a second pass over the blocks).

Measured (PySCF 2.14, one CPU thread; cases as in ``tests/test_gridfit.py``)
-----------------------------------------------------------------------------
* Exactness. H2O, density from known coefficients on a small resolvable basis (s/p/d,
  exponents 0.3 to 6 bohr^-2), 0.2 bohr box with 4 bohr margin (103,730 points): the
  coefficients come back to 6e-13 from the in-memory grid and to 1.3e-6 through a cube
  file written by :mod:`densitylearn.cube` (its 6 significant digits); 0.3 s.
  Si diamond (2-atom fcc primitive cell, non-orthogonal), 24^3 CHGCAR written by ASE
  (11 significant digits), lattice sums over 126 image atoms: 2e-11; 0.5 s.
* Cost: Si conventional cell (8 atoms), 36^3 CHGCAR, def2-universal-jfit (408
  functions, 612 image atoms), total and difference fits: about 15 s on one CPU thread
  (basis values 2 x 5 s, SAED 4 s) and 0.3 GB above the imports at the default
  ``budget``; time grows linearly with the number of points.
* A real density: PBE/def2-SVP water (level-1 SCF grid) on a cube of 0.2 bohr spacing and
  4 bohr margin (103,730 points; the grid sum gives 9.985 electrons), fitted onto
  def2-universal-jfit (71 functions), unconstrained / constrained to 10 electrons:

  ============================================  ==============  ====================
  fit                                           L1 on the cube  eps_mae, Becke lvl 3
  ============================================  ==============  ====================
  grid least squares (this module), TCD         1.62 / 1.54 %   1.67 / 1.57 %
  grid least squares, DCD (+ analytic SAED)     1.43 / 1.41 %   1.46 / 1.45 %
  Coulomb-metric fit (:mod:`.fitting`), TCD     1.47 / 1.47 %   1.49 / 1.48 %
  Coulomb-metric fit, DCD (+ analytic SAED)     1.32 / 1.32 %   1.34 / 1.34 %
  ============================================  ==============  ====================

  The grid fit minimises the L2 error on the grid (an overlap-metric fit by quadrature),
  so its L1 error is about 10 % above the Coulomb fit's, in line with the overlap metric
  giving slightly higher L1 floors than the Coulomb metric (design notes, section 2). A
  0.1 bohr cube (812,268 points, 5 s) moves these numbers by at most 0.06 percentage
  points, so 0.2 bohr already resolves this basis. The Coulomb fit needs the density
  matrix; the grid fit needs only the cube.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field

import numpy as np

from .basis import AuxBasis
from .errors import InputError, MismatchError
from .units import ANGSTROM_BOHR, BOHR_ANGSTROM

#: Default relative eigenvalue cut of the unit-diagonal normal matrix (see module docstring).
DEFAULT_RCOND = 1e-10

#: Largest number of float64 values one block of basis values may hold (8 MiB; the
#: evaluator's temporaries make the working memory about 30x that, measured).
DEFAULT_BUDGET = 1 << 20

#: Grid formats :func:`read_grid` understands.
FORMATS = ("cube", "chgcar")

#: Tolerance (bohr) when comparing a grid file's atoms with a given structure.
STRUCTURE_ATOL = 1e-3


# ----------------------------------------------------------------------------- records
@dataclass(eq=False)
class GridDensity:
    """A density on a uniform grid with its atoms (all lengths bohr, values e/bohr^3).

    Attributes
    ----------
    numbers : ndarray, shape (n_atoms,), int64
    positions : ndarray, shape (n_atoms, 3)
        Bohr.
    origin : ndarray, shape (3,)
        Position of grid point (0, 0, 0), bohr.
    axes : ndarray, shape (3, 3)
        Step vectors as rows, bohr: point (i, j, k) is ``origin + i a0 + j a1 + k a2``.
    values : ndarray, shape (n1, n2, n3)
        Density in e/bohr^3, C order (index (i, j, k)).
    pbc : ndarray, shape (3,), bool
        Periodic directions; the cell is ``shape[i] * axes[i]``.
    path : str
        File it came from (named in every error message).
    fmt : str
        ``'cube'``, ``'chgcar'`` or ``'array'``.
    """

    numbers: np.ndarray
    positions: np.ndarray
    origin: np.ndarray
    axes: np.ndarray
    values: np.ndarray
    pbc: np.ndarray = field(default_factory=lambda: np.zeros(3, dtype=bool))
    path: str = "<array>"
    fmt: str = "array"

    def __post_init__(self):
        where = self.path
        self.numbers = np.asarray(self.numbers, dtype=np.int64).reshape(-1)
        self.positions = np.asarray(self.positions, dtype=np.float64)
        self.origin = np.asarray(self.origin, dtype=np.float64).reshape(-1)
        self.axes = np.asarray(self.axes, dtype=np.float64)
        self.values = np.asarray(self.values, dtype=np.float64)
        self.pbc = np.asarray(self.pbc, dtype=bool).reshape(-1)
        if len(self.numbers) == 0:
            raise InputError(f"{where}: the grid file has no atoms")
        if np.any(self.numbers < 1) or np.any(self.numbers > 118):
            raise InputError(f"{where}: atomic numbers must lie in 1..118, got "
                             f"{sorted(set(self.numbers.tolist()))}")
        if self.positions.shape != (len(self.numbers), 3) or not np.all(np.isfinite(self.positions)):
            raise InputError(f"{where}: atom positions must be finite with shape ({len(self.numbers)}, 3)")
        if self.origin.shape != (3,) or self.axes.shape != (3, 3) or self.pbc.shape != (3,):
            raise InputError(f"{where}: origin must have 3 components, axes be 3x3 and pbc 3 flags")
        if not (np.all(np.isfinite(self.origin)) and np.all(np.isfinite(self.axes))):
            raise InputError(f"{where}: grid origin or axes contain NaN or infinity")
        if self.values.ndim != 3 or min(self.values.shape) < 1:
            raise InputError(f"{where}: grid values must form a non-empty 3-d array, got {self.values.shape}")
        if self.volume_element < 1e-12:
            what = "cell" if self.pbc.any() else "grid"
            raise InputError(f"{where}: zero-volume {what} (grid step vectors are zero or coplanar)")
        if not np.all(np.isfinite(self.values)):
            n_bad = int((~np.isfinite(self.values)).sum())
            raise InputError(f"{where}: density contains NaN or infinity ({n_bad} of {self.values.size} values)")

    @property
    def shape(self) -> tuple:
        return tuple(int(n) for n in self.values.shape)

    @property
    def n_points(self) -> int:
        return int(self.values.size)

    @property
    def volume_element(self) -> float:
        """``abs(det(axes))``, bohr^3 (the quadrature weight of every point)."""
        return float(abs(np.linalg.det(self.axes)))

    @property
    def cell(self) -> np.ndarray:
        """Lattice vectors as rows, bohr: ``shape[i] * axes[i]``."""
        return np.asarray(self.shape, dtype=np.float64)[:, None] * self.axes

    @property
    def name(self) -> str:
        return os.path.splitext(os.path.basename(self.path))[0] if self.fmt != "array" else "grid"

    def electrons(self) -> float:
        """Grid electron count, ``sum rho dV``."""
        return float(self.values.sum() * self.volume_element)

    def points(self, i: slice, j: slice, k: slice) -> np.ndarray:
        """Coordinates (bohr) of the block ``values[i, j, k]``, shape (n, 3), C order."""
        idx = np.meshgrid(np.arange(self.shape[0])[i], np.arange(self.shape[1])[j],
                          np.arange(self.shape[2])[k], indexing="ij")
        ijk = np.stack([g.reshape(-1) for g in idx], axis=1).astype(np.float64)
        return self.origin[None, :] + ijk @ self.axes

    def structure(self, charge: int = 0, spin: int | None = None):
        """The atoms as a :class:`~densitylearn.structure.Structure` (cell only when periodic)."""
        from .structure import Structure

        n_elec = int(self.numbers.sum()) - int(charge)
        return Structure(numbers=self.numbers, positions=self.positions,
                         cell=self.cell if self.pbc.any() else np.zeros((3, 3)), pbc=self.pbc,
                         charge=int(charge), spin=n_elec % 2 if spin is None else int(spin),
                         name=self.name, source=self.path)


@dataclass
class GridResidual:
    """How well a fit reproduces the grid (all on the input grid).

    Attributes
    ----------
    l1_percent : float
        ``100 * sum |rho_fit - rho| dV / sum rho dV``.
    electrons_grid : float
        ``sum rho dV`` of the input density.
    electrons_grid_fit : float
        ``sum rho_fit dV``.
    electrons_fit : float
        Analytic integral of the fitted density over all space (``q . c``, plus the SAED's
        analytic count for a difference fit).
    max_abs_error : float
        ``max |rho_fit - rho|``, e/bohr^3.
    """

    l1_percent: float
    electrons_grid: float
    electrons_grid_fit: float
    electrons_fit: float
    max_abs_error: float

    def as_dict(self) -> dict:
        return {k: float(v) for k, v in self.__dict__.items()}


@dataclass
class GridFitResult:
    """Coefficients fitted to a grid and the residuals.

    Attributes
    ----------
    total : ndarray, shape (n_functions,)
        Coefficients of rho (home atoms' functions, PySCF order).
    difference : ndarray or None
        Coefficients of rho - rho_SAED (only with an SAED).
    residual_total, residual_difference : GridResidual (or None)
        See :class:`GridResidual`; the difference residual includes the SAED.
    electrons : float or None
        Electron count the total fit was constrained to (None: unconstrained).
    unresolved : int
        Basis directions the grid could not determine (dropped or unsupported).
    n_points, n_functions, n_images : int
        Grid points, coefficients, and periodic image atoms used (0 for molecules).
    """

    total: np.ndarray
    difference: np.ndarray | None
    residual_total: GridResidual
    residual_difference: GridResidual | None
    electrons: float | None
    unresolved: int
    n_points: int
    n_functions: int
    n_images: int
    wall_s: float = 0.0

    def report(self) -> dict:
        """JSON-able summary."""
        out = {"n_points": self.n_points, "n_functions": self.n_functions, "n_images": self.n_images,
               "unresolved": self.unresolved, "electrons_constraint": self.electrons,
               "wall_s": self.wall_s, "total": self.residual_total.as_dict()}
        if self.residual_difference is not None:
            out["difference"] = self.residual_difference.as_dict()
        return out


# ----------------------------------------------------------------------------- readers
def _numbers_from_text(text: str, path: str, what: str) -> np.ndarray:
    """Whitespace-separated floats; InputError naming ``path`` on anything else."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy warns (and stops) at unparsable tokens
        try:
            return np.fromstring(text, sep=" ")
        except (ValueError, DeprecationWarning):
            bad = next((t for t in text.split() if not _is_float(t)), "?")
            raise InputError(f"{path}: {what} contains a non-numeric value {bad[:20]!r}") from None


def _is_float(tok: str) -> bool:
    try:
        float(tok)
        return True
    except ValueError:
        return False


def _check_count(vals: np.ndarray, shape, path: str) -> np.ndarray:
    n = int(np.prod(shape))
    if vals.size != n:
        dims = "x".join(str(int(s)) for s in shape)
        raise InputError(f"{path}: grid has {vals.size} values, but the header's {dims} grid needs {n}")
    return vals


def read_cube(path: str, pbc: bool = False) -> GridDensity:
    """Read a Gaussian cube file (one field per point) as a :class:`GridDensity`.

    Parameters
    ----------
    path : str
    pbc : bool
        Treat the grid as one periodic cell (lattice vectors ``n_i * axis_i``).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file")
    try:
        with open(path) as fh:
            head = [fh.readline() for _ in range(6)]
            f3 = head[2].split()
            n_atoms = int(f3[0])
            origin = np.array([float(x) for x in f3[1:4]])
            n_val = int(f3[4]) if len(f3) > 4 else 1
            shape, axes, angstrom = [], [], []
            for line in head[3:6]:
                f = line.split()
                n = int(f[0])
                shape.append(abs(n))
                angstrom.append(n < 0)
                axes.append([float(x) for x in f[1:4]])
            atoms = [fh.readline().split() for _ in range(abs(n_atoms))]
            numbers = [int(float(a[0])) for a in atoms]
            positions = np.array([[float(x) for x in a[2:5]] for a in atoms], dtype=np.float64)
            if n_atoms < 0:  # orbital cubes: a line of dataset ids follows the atoms
                ids = fh.readline().split()
                n_ids = int(ids[0])
                while len(ids) - 1 < n_ids:
                    more = fh.readline().split()
                    if not more:
                        break
                    ids += more
                n_val = max(n_val, n_ids)
            body = fh.read()
    except (ValueError, IndexError) as exc:
        raise InputError(f"{path}: not a readable cube file (malformed header: {exc})") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a cube file (binary content)") from None
    if n_val != 1:
        raise InputError(f"{path}: the cube holds {n_val} fields per point; fit-grid fits one density")
    if positions.shape != (abs(n_atoms), 3):
        raise InputError(f"{path}: truncated atom block in the cube header")
    if any(angstrom) and not all(angstrom):
        raise InputError(f"{path}: voxel counts mix bohr (positive) and Angstrom (negative) units")
    if min(shape) < 1:
        raise InputError(f"{path}: grid shape {shape} has an empty axis")
    axes = np.array(axes)
    if all(angstrom):  # Gaussian: negative counts mean lengths in Angstrom
        origin, axes, positions = (x * ANGSTROM_BOHR for x in (origin, axes, positions))
    vals = _check_count(_numbers_from_text(body, path, "the grid"), shape, path)
    return GridDensity(numbers=numbers, positions=positions, origin=origin, axes=axes,
                       values=vals.reshape(shape), pbc=np.full(3, bool(pbc)), path=path, fmt="cube")


def read_chgcar(path: str) -> GridDensity:
    """Read a VASP CHGCAR/CHG (first density block) as a :class:`GridDensity` in bohr, e/bohr^3."""
    import ase.io.vasp as aiv

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file")
    try:
        with open(path) as fh:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                atoms = aiv.read_vasp_configuration(fh)
            line = fh.readline()
            while line and not line.split():  # blank line(s) before the grid dimensions
                line = fh.readline()
            shape_vasp = [int(x) for x in line.split()[:3]]
            if len(shape_vasp) != 3:
                raise ValueError("no grid dimensions after the structure")
            n = int(np.prod(shape_vasp))
            dims = [str(x) for x in shape_vasp]
            # collect n values; what follows (augmentation occupancies, a magnetisation
            # block, the next ionic step of a CHG) is not part of the total density
            lines, count = [], 0
            for line in fh:
                toks = line.split()
                if count >= n:
                    if not toks:
                        continue
                    if toks != dims and all(_is_float(t) for t in toks):
                        count += len(toks)  # more values than the header's grid holds
                    break
                lines.append(line)
                count += len(toks)
    except (ValueError, IndexError, KeyError, RuntimeError, AssertionError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: not a readable CHGCAR ({msg})") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a CHGCAR (binary content)") from None
    if min(shape_vasp) < 1:
        raise InputError(f"{path}: grid shape {shape_vasp} has an empty axis")
    if count > int(np.prod(shape_vasp)):
        dims = "x".join(str(x) for x in shape_vasp)
        raise InputError(f"{path}: the density block has more values than the header's {dims} "
                         f"grid holds ({int(np.prod(shape_vasp))})")
    vals = _numbers_from_text("".join(lines), path, "the density block")
    cell_a = np.asarray(atoms.get_cell()[:], dtype=np.float64)
    volume_a = abs(float(np.linalg.det(cell_a)))
    if volume_a < 1e-9:
        raise InputError(f"{path}: zero-volume cell (lattice vectors are zero or coplanar)")
    vals = _check_count(vals, shape_vasp, path)
    # file: rho(e/A^3) * V(A^3), first index fastest -> (N1, N2, N3) array in C order
    rho = vals.reshape(shape_vasp[::-1]).T / volume_a * BOHR_ANGSTROM ** 3
    cell = cell_a * ANGSTROM_BOHR
    axes = cell / np.asarray(shape_vasp, dtype=np.float64)[:, None]
    return GridDensity(numbers=atoms.get_atomic_numbers(), positions=atoms.get_positions() * ANGSTROM_BOHR,
                       origin=np.zeros(3), axes=axes, values=np.ascontiguousarray(rho),
                       pbc=np.ones(3, dtype=bool), path=path, fmt="chgcar")


def guess_format(path: str) -> str:
    """``'cube'`` for ``*.cube``/``*.cub``, ``'chgcar'`` for names with CHG/CHGCAR/AECCAR."""
    base = os.path.basename(path)
    low = base.lower()
    if low.endswith((".cube", ".cub")):
        return "cube"
    if "chg" in low or "aeccar" in low or "parchg" in low:
        return "chgcar"
    raise InputError(f"{path}: cannot tell the grid format from the name; pass --format cube or chgcar")


def read_grid(path: str, fmt: str | None = None, pbc: bool | None = None, structure=None) -> GridDensity:
    """Read a density grid (cube or CHGCAR) and optionally check it against a structure.

    Parameters
    ----------
    path : str
    fmt : {'cube', 'chgcar'}, optional
        Default: from the file name (:func:`guess_format`).
    pbc : bool, optional
        For cubes: periodic cell (default False). CHGCAR grids are always periodic;
        ``pbc=False`` is an error for them.
    structure : str or Structure, optional
        A structure file (any ASE-readable format) or record the grid's atoms must match
        (same elements in the same order, positions within 1e-3 bohr, modulo the lattice
        for periodic grids): :class:`MismatchError` otherwise.
    """
    path = os.fspath(path)
    fmt = (fmt or guess_format(path)).lower()
    if fmt not in FORMATS:
        raise InputError(f"{path}: unknown grid format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "cube":
        grid = read_cube(path, pbc=bool(pbc))
    else:
        if pbc is False:
            raise InputError(f"{path}: a CHGCAR is periodic; it cannot be fitted as a molecule")
        grid = read_chgcar(path)
    if structure is not None:
        check_structure(grid, structure)
    return grid


def check_structure(grid: GridDensity, structure) -> None:
    """:class:`MismatchError` unless ``structure`` has the grid's atoms (see :func:`read_grid`)."""
    from .structure import Structure, read_structures

    if isinstance(structure, Structure):
        s, where = structure, structure.label
    else:
        frames = read_structures(os.fspath(structure))
        if len(frames) != 1:
            raise InputError(f"{structure}: expected one structure, found {len(frames)}")
        s, where = frames[0], os.fspath(structure)
    if len(s) != len(grid.numbers) or not np.array_equal(s.numbers, grid.numbers):
        raise MismatchError(f"{grid.path}: atoms {_formula(grid.numbers)} disagree with {where} "
                            f"({_formula(s.numbers)}, in file order)")
    d = s.positions - grid.positions
    if grid.pbc.any():
        frac = d @ np.linalg.inv(grid.cell)
        frac[:, grid.pbc] -= np.round(frac[:, grid.pbc])
        d = frac @ grid.cell
    err = np.linalg.norm(d, axis=1)
    if err.max() > STRUCTURE_ATOL:
        i = int(np.argmax(err))
        raise MismatchError(f"{grid.path}: atom {i} lies {err[i]:.4f} bohr from its position in {where}")
    if grid.pbc.any() and s.is_periodic and not np.allclose(s.cell, grid.cell, atol=STRUCTURE_ATOL, rtol=0):
        raise MismatchError(f"{grid.path}: the cell differs from the one in {where}")


def _formula(numbers) -> str:
    from ase.data import chemical_symbols

    return "".join(chemical_symbols[int(z)] for z in numbers)


# ----------------------------------------------------------------------------- images
def lattice_images(grid: GridDensity, radii: dict):
    """Atoms plus the periodic images whose functions reach the grid.

    Parameters
    ----------
    grid : GridDensity
    radii : dict[int, float]
        Reach (bohr) of each element's functions.

    Returns
    -------
    numbers : ndarray (m,), positions : ndarray (m, 3), home : ndarray (m,) int
        Home atoms first (``home[:n_atoms] == arange(n_atoms)``), then images; ``home`` is
        the index of the atom each image copies. Only periodic directions are tiled. An
        image is kept when, along every lattice direction, its distance from the slab
        spanned by the grid is below its reach (a superset of the images within reach).
    """
    n = len(grid.numbers)
    home = np.arange(n)
    if not grid.pbc.any():
        return grid.numbers, grid.positions, home
    cell = grid.cell
    inv = np.linalg.inv(cell)
    vol = abs(np.linalg.det(cell))
    # distance between the lattice planes spanned by the other two vectors
    heights = np.array([vol / np.linalg.norm(np.cross(cell[(i + 1) % 3], cell[(i + 2) % 3]))
                        for i in range(3)])
    corners = np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)], dtype=np.float64)
    corners = grid.origin + (corners * (np.asarray(grid.shape) - 1)) @ grid.axes
    fc = corners @ inv
    flo, fhi = fc.min(0), fc.max(0)
    fpos = grid.positions @ inv
    rmax = max(float(radii[int(z)]) for z in grid.numbers)
    ranges = []
    for i in range(3):
        if grid.pbc[i]:
            m = int(math.ceil(rmax / heights[i] + (fhi[i] - flo[i]) + np.abs(fpos[:, i]).max() + 1))
            ranges.append(np.arange(-m, m + 1))
        else:
            ranges.append(np.array([0]))
    shifts = np.stack(np.meshgrid(*ranges, indexing="ij"), axis=-1).reshape(-1, 3)
    shifts = shifts[np.any(shifts != 0, axis=1)]
    reach = np.array([float(radii[int(z)]) for z in grid.numbers])
    f = fpos[:, None, :] + shifts[None, :, :].astype(np.float64)  # (n, n_shift, 3)
    gap = np.clip(flo - f, 0, None) + np.clip(f - fhi, 0, None)
    keep = np.all(gap * heights <= reach[:, None, None], axis=2)
    a_idx, s_idx = np.nonzero(keep)
    img_pos = grid.positions[a_idx] + shifts[s_idx].astype(np.float64) @ cell
    return (np.concatenate([grid.numbers, grid.numbers[a_idx]]),
            np.concatenate([grid.positions, img_pos]), np.concatenate([home, a_idx]))


# ----------------------------------------------------------------------------- fitting
def _blocks(shape, n_target: int):
    """Compact (i, j, k) slices of about ``n_target`` points covering the grid."""
    b = max(1, int(round(n_target ** (1.0 / 3.0))))
    steps = [min(s, b) for s in shape]
    # spend the unused budget of short axes on the others
    for _ in range(2):
        for ax in range(3):
            other = np.prod([steps[o] for o in range(3) if o != ax])
            steps[ax] = int(min(shape[ax], max(1, n_target // other)))
    for i0 in range(0, shape[0], steps[0]):
        for j0 in range(0, shape[1], steps[1]):
            for k0 in range(0, shape[2], steps[2]):
                yield (slice(i0, i0 + steps[0]), slice(j0, j0 + steps[1]), slice(k0, k0 + steps[2]))


def _gap2(positions, pts):
    """Squared distance of each position from the bounding box of ``pts``."""
    lo, hi = pts.min(0), pts.max(0)
    gap = np.clip(lo[None, :] - positions, 0, None) + np.clip(positions - hi[None, :], 0, None)
    return np.einsum("ij,ij->i", gap, gap)


def _near(positions, reach, pts):
    return np.nonzero(_gap2(positions, pts) < reach * reach)[0]


class _ShellScreen:
    """Per element, the sub-bases of the k shells with the largest screening radii.

    An atom at distance g from a block of points only needs its shells with radius > g;
    :func:`densitylearn.grid.evaluate_basis` is unscreened, so it is called with the
    sub-basis of those shells, and the columns are mapped back to the full layout.
    """

    def __init__(self, basis: AuxBasis, zs):
        from .grid import shell_radii

        self.radii, self.subs = {}, {}
        for z in zs:
            shells = basis.shells(z)
            r = shell_radii(basis, z)
            starts = np.concatenate([[0], np.cumsum([sh.n_functions for sh in shells])])
            order = np.argsort(-r, kind="stable")
            self.radii[z] = r[order]  # descending
            for k in range(1, len(shells) + 1):
                sel = np.sort(order[:k])  # file order is l-sorted, so the sub-basis keeps it
                sub = AuxBasis(basis.name, {z: [shells[i] for i in sel]})
                cols = np.concatenate([np.arange(starts[i], starts[i + 1]) for i in sel])
                width = max(sum(len(shells[i].exponents) for i in sel), len(cols))
                self.subs[(z, k)] = (sub, cols, width)

    def needed(self, z: int, gap2: np.ndarray) -> np.ndarray:
        """Number of shells (largest radii first) that reach points at squared distance gap2."""
        r = self.radii[z]
        return (r[None, :] ** 2 > gap2[:, None]).sum(1)


def _solve(nmat, rhs, q, counts, rcond):
    """Solve the (optionally count-constrained) normal equations; see the module docstring.

    Returns (coefficients (k, n), unresolved directions).
    """
    import scipy.linalg
    from scipy.linalg import lapack

    n = nmat.shape[0]
    d = np.diag(nmat).copy()
    dmax = float(d.max()) if n else 0.0
    if not dmax > 0:
        raise InputError("no basis function reaches any grid point")
    sup = np.nonzero(d > dmax * 1e-14)[0]
    s = 1.0 / np.sqrt(d[sup])
    m = nmat[np.ix_(sup, sup)] * s[:, None] * s[None, :]
    m = 0.5 * (m + m.T)
    unresolved = n - len(sup)
    cho = None
    try:
        cho = scipy.linalg.cho_factor(m, lower=False, check_finite=False)
        est, info = lapack.dpocon(cho[0], float(np.abs(m).sum(0).max()))
        if info != 0 or not est >= rcond:
            cho = None
    except np.linalg.LinAlgError:
        pass
    if cho is None:  # ill-conditioned: drop the directions the grid cannot resolve
        w, v = np.linalg.eigh(m)
        keep = w > rcond * w.max()
        unresolved += int((~keep).sum())
        w, v = w[keep], v[:, keep]

    def solve(x):
        if cho is not None:
            return scipy.linalg.cho_solve(cho, x, check_finite=False)
        return v @ ((v.T @ x) / (w[:, None] if x.ndim == 2 else w))

    def pinv(x):  # x: (n,) or (n, k) in the original variables
        xs = x[sup] * (s[:, None] if x.ndim == 2 else s)
        y = solve(xs) * (s[:, None] if x.ndim == 2 else s)
        out = np.zeros(x.shape)
        out[sup] = y
        return out

    c = pinv(rhs.T).T  # (k, n)
    if counts is not None:
        u = pinv(q)
        qu = float(q @ u)
        if not qu > 0:
            raise InputError("cannot constrain the electron count: no s function is resolved by the grid")
        lam = (np.asarray(counts, dtype=np.float64) - c @ q) / qu
        c = c + lam[:, None] * u[None, :]
    return c, unresolved


def fit_grid(grid: GridDensity, basis: AuxBasis, saed=None, electrons: float | None = None,
             rcond: float = DEFAULT_RCOND, device=None, budget: int = DEFAULT_BUDGET,
             saed_coefficients: np.ndarray | None = None) -> GridFitResult:
    """Least-squares fit of a grid density onto ``basis`` (see the module docstring).

    Parameters
    ----------
    grid : GridDensity
    basis : AuxBasis
        Must cover the grid's elements.
    saed : densitylearn.saed.SAED, optional
        Also fit the difference density rho - rho_SAED (lattice-summed for periodic grids).
    electrons : float, optional
        Constrain the total fit to integrate (analytically) to this many electrons; the
        difference fit then integrates to ``electrons - sum Z``.
    rcond : float
        Relative eigenvalue cut of the unit-diagonal normal matrix.
    device : str or torch.device, optional
        Where basis values and the normal matrix are computed (default CPU); float64.
    budget : int
        Largest number of float64 values in one block of basis values.
    saed_coefficients : ndarray, shape (n_functions,), optional
        The SAED in ``basis`` (:func:`saed_coulomb_fit`; needs ``saed``). The total density
        is then the difference fit plus these coefficients instead of its own least squares
        on the grid: the core is carried by the analytic SAED fit, and the grid fit only
        describes the smooth difference (see the module docstring). Its residual is
        measured on the grid like any total fit.

    Returns
    -------
    GridFitResult
    """
    import time

    import torch

    from .fitting import electron_integrals
    from .grid import evaluate_basis, shell_radii

    t0 = time.time()
    where = grid.path
    for z in sorted(set(grid.numbers.tolist())):
        basis.shells(z)  # MismatchError naming the basis if an element is missing
    if saed is not None:
        saed._check_structure(grid.numbers, grid.positions, None)
    if saed_coefficients is not None and saed is None:
        raise ValueError("saed_coefficients needs the saed it was fitted from")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    dt = torch.float64
    zs = sorted(set(grid.numbers.tolist()))
    radii = {z: float(shell_radii(basis, z).max()) for z in zs}
    reach = dict(radii)
    if saed is not None:
        reach = {z: max(radii[z], float(saed.cutoff(z))) for z in zs}
    img_z, img_pos, img_home = lattice_images(grid, reach)
    n_images = len(img_z) - len(grid.numbers)
    off = basis.layout(grid.numbers)
    n_fun = int(off[-1])
    img_reach = np.array([radii[int(z)] for z in img_z])
    screen = _ShellScreen(basis, zs)
    n_block = int(np.clip(budget // max(n_fun, 1), 64, 1 << 16))
    dv = grid.volume_element

    def block_matrix(pts):
        """Lattice-summed basis values at ``pts``, (n_pts, n_fun) tensor; None if all zero."""
        gap2 = _gap2(img_pos, pts)
        near = np.nonzero(gap2 < img_reach * img_reach)[0]
        if len(near) == 0:
            return None
        pts_t = torch.as_tensor(pts, dtype=dt, device=dev)
        a = torch.zeros(len(pts), n_fun, dtype=dt, device=dev)
        for z in zs:
            atoms_z = near[img_z[near] == z]
            if len(atoms_z) == 0:
                continue
            need = screen.needed(z, gap2[atoms_z])
            for k in np.unique(need):
                if k == 0:
                    continue
                sub, cols, width = screen.subs[(z, int(k))]
                group = atoms_z[need == k]
                per = max(1, budget // max(1, len(pts) * width))
                for s0 in range(0, len(group), per):
                    sel = group[s0:s0 + per]
                    vals = evaluate_basis(sub, img_z[sel], img_pos[sel], pts_t, dtype=dt, device=dev)
                    idx = np.concatenate([off[img_home[i]] + cols for i in sel])
                    a.index_add_(1, torch.as_tensor(idx, device=dev), vals)
        return a

    nmat = torch.zeros(n_fun, n_fun, dtype=dt, device=dev)
    n_rhs = 2 if saed is not None else 1
    rhs = torch.zeros(n_rhs, n_fun, dtype=dt, device=dev)
    saed_grid = np.empty(grid.shape) if saed is not None else None
    for blk in _blocks(grid.shape, n_block):
        pts = grid.points(*blk)
        b = [grid.values[blk].reshape(-1)]
        if saed is not None:
            near_s = _near(img_pos, np.array([reach[int(z)] for z in img_z]), pts)
            sv = saed.evaluate(img_z[near_s], img_pos[near_s], pts) if len(near_s) else np.zeros(len(pts))
            saed_grid[blk] = sv.reshape(saed_grid[blk].shape)
            b.append(b[0] - sv)
        a = block_matrix(pts)
        if a is None:
            continue
        nmat += a.T @ a
        rhs += (a.T @ torch.as_tensor(np.stack(b, 1), dtype=dt, device=dev)).T
    nmat = nmat.cpu().numpy() * dv
    rhs = rhs.cpu().numpy() * dv
    q = electron_integrals(basis, grid.numbers)
    counts = None
    if electrons is not None:
        counts = [float(electrons)]
        if saed is not None:
            counts.append(float(electrons) - saed.electron_count(grid.numbers))
    try:
        coef, unresolved = _solve(nmat, rhs, q, counts, rcond)
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None
    if saed_coefficients is not None:
        sc = np.asarray(saed_coefficients, dtype=np.float64)
        if sc.shape != (n_fun,):
            raise ValueError(f"saed_coefficients has shape {sc.shape}, the basis has {n_fun} functions")
        coef[0] = coef[1] + sc

    # residuals on the grid, both targets in one pass over the same block matrices
    coef_t = torch.as_tensor(coef.T, dtype=dt, device=dev)  # (n_fun, k)
    acc = np.zeros((coef.shape[0], 3))  # per target: sum |err|, sum rho_fit, max |err|
    rho_sum = 0.0
    for blk in _blocks(grid.shape, n_block):
        pts = grid.points(*blk)
        rho = grid.values[blk].reshape(-1)
        a = block_matrix(pts)
        fit = (a @ coef_t).cpu().numpy().T if a is not None else np.zeros((coef.shape[0], len(pts)))
        if saed is not None:
            fit[1] += saed_grid[blk].reshape(-1)
        err = np.abs(fit - rho[None, :])
        rho_sum += float(rho.sum())
        acc[:, 0] += err.sum(1)
        acc[:, 1] += fit.sum(1)
        acc[:, 2] = np.maximum(acc[:, 2], err.max(1))

    def residual(i):
        n_fit = float(q @ coef[i]) + (saed.electron_count(grid.numbers) if i == 1 else 0.0)
        return GridResidual(l1_percent=float(100.0 * acc[i, 0] / rho_sum) if rho_sum > 0 else float("nan"),
                            electrons_grid=rho_sum * dv, electrons_grid_fit=float(acc[i, 1] * dv),
                            electrons_fit=n_fit, max_abs_error=float(acc[i, 2]))

    res_t = residual(0)
    res_d = residual(1) if saed is not None else None
    return GridFitResult(total=coef[0], difference=coef[1] if saed is not None else None,
                         residual_total=res_t, residual_difference=res_d,
                         electrons=None if electrons is None else float(electrons),
                         unresolved=int(unresolved), n_points=grid.n_points, n_functions=n_fun,
                         n_images=int(n_images), wall_s=time.time() - t0)



# ----------------------------------------------------------------------------- files
def saed_coulomb_fit(basis: AuxBasis, numbers, positions, xc: str = "pbe", ref_basis: str = "def2-svp",
                     cache_dir: str | None = None) -> np.ndarray:
    """Coulomb-metric fit of a molecule's all-electron SAED onto ``basis``.

    The fit ``fit-basis`` makes of the SAED density matrix (:func:`densitylearn.saed.saed_density_matrix`
    at ``xc``/``ref_basis``), constrained to sum(Z) electrons: with it, a grid fit's total
    density is ``difference + saed`` (``total = difference + saed`` in ``fit-basis`` datasets).

    Parameters
    ----------
    basis : AuxBasis
    numbers : array-like, shape (n_atoms,)
    positions : array-like, shape (n_atoms, 3)
        Bohr.

    Returns
    -------
    ndarray, shape (n_functions,)
    """
    from pyscf import gto

    from .fitting import (MetricSolver, electron_integrals, fit_coefficients, make_auxmol, metric_matrix,
                          project_density_matrices)
    from .saed import saed_density_matrix

    numbers = np.asarray(numbers, dtype=np.int64)
    mol = gto.M(atom=[(int(z), tuple(float(x) for x in r)) for z, r in zip(numbers, np.asarray(positions))],
                unit="Bohr", basis=ref_basis, charge=0, spin=int(numbers.sum()) % 2, verbose=0)
    auxmol = make_auxmol(mol, basis)
    b = project_density_matrices(mol, auxmol, [saed_density_matrix(mol, xc, cache_dir=cache_dir, basis=ref_basis)])
    c = fit_coefficients(b, MetricSolver(metric_matrix(auxmol)), electron_integrals(basis, numbers),
                         [float(numbers.sum())])
    return np.asarray(c[0], dtype=np.float64)


#: How ``fit_grid_file`` makes the total density of a difference fit (``total_fit``).
TOTAL_FITS = ("auto", "saed", "grid")


def fit_grid_file(path: str, basis: str, out: str, *, fmt: str | None = None, pbc: bool | None = None,
                  structure=None, difference: bool = False, xc: str = "pbe",
                  ref_basis: str = "def2-svp", electrons=None, charge: int = 0, spin: int | None = None,
                  rcond: float = DEFAULT_RCOND, device=None, overwrite: bool = False,
                  cache_dir: str | None = None, pseudo: str | None = None,
                  total_fit: str = "auto") -> tuple[GridFitResult, dict]:
    """Read a grid file, fit it, and write a one-structure coefficient dataset ``out``.

    Parameters
    ----------
    path, fmt, pbc, structure
        As in :func:`read_grid`.
    basis : str
        Auxiliary basis specification (:meth:`AuxBasis.load`; ``etb:BETA`` uses ``ref_basis``).
    out : str
        Dataset (``.h5``, :mod:`densitylearn.data` schema), written atomically. Targets:
        ``total``, plus ``difference`` (rho - rho_SAED) with ``difference=True``, which also
        records the SAED. ``eps_mae_total`` / ``eps_mae_difference`` hold the relative L1
        residual on the input grid (not a Becke-grid floor; the header says so). The
        record's ``source`` is ``FORMAT:ABSPATH`` (``cube:/...``), not a chkfile path, so
        training validation falls back to the fitted density and ``evaluate`` asks for
        ``--reference`` instead of opening the grid file as a chkfile.
    difference : bool
        Also fit rho - rho_SAED, SAED from neutral atoms at ``xc``/``ref_basis``.
    electrons : float, 'auto' or None
        Electron-count constraint of the total fit; ``'auto'`` is sum(Z) - charge (for
        all-electron densities; a VASP valence density needs NELECT).
    charge, spin : int
        Recorded with the structure (spin defaults to the lowest for the electron count).
    pseudo : str, optional
        GTH pseudopotential of the SAED atoms (valence densities of GTH references; see
        :func:`densitylearn.saed.load_saed`); ``electrons='auto'`` then counts valence
        electrons.
    total_fit : {'auto', 'saed', 'grid'}
        How the ``total`` target is made when ``difference`` is set: ``'saed'`` is the
        difference fit plus the Coulomb-metric fit of the SAED (:func:`saed_coulomb_fit`;
        molecular all-electron grids only), ``'grid'`` its own least squares on the grid.
        ``'auto'`` (default) is ``'saed'`` where it applies, else ``'grid'``. On
        all-electron cubes the grid's own total fit is dominated by the core and loses
        accuracy on fine grids (module docstring); the SAED route does not.

    Returns
    -------
    (GridFitResult, dict)
        The fit and a JSON-able report (also what :func:`format_report` prints).
    """
    from .data import make_header, write_dataset

    if os.path.exists(out) and not overwrite:
        raise InputError(f"{out}: exists; pass --overwrite to replace it or choose another --out")
    grid = read_grid(path, fmt=fmt, pbc=pbc, structure=structure)
    if total_fit not in TOTAL_FITS:
        raise InputError(f"total_fit must be one of {', '.join(TOTAL_FITS)}, got {total_fit!r}")
    saed_route = difference and not pseudo and not grid.pbc.any()
    if total_fit == "saed" and not saed_route:
        raise InputError(f"{path}: --total-fit saed needs --difference on a molecular all-electron grid "
                         "(no --pseudo, no periodic cell)")
    if total_fit == "grid":
        saed_route = False
    try:
        struct = grid.structure(charge=charge, spin=spin)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None
    if isinstance(electrons, str):
        if electrons.strip().lower() != "auto":
            try:
                electrons = float(electrons)
            except ValueError:
                raise InputError(f"--electrons expects a number or 'auto', got {electrons!r}") from None
        elif pseudo:
            from .saed import valence_electrons

            electrons = float(sum(valence_electrons(int(z), pseudo) for z in struct.numbers) - struct.charge)
        else:
            electrons = float(struct.n_electrons)
    if electrons is not None and not (np.isfinite(electrons) and electrons > 0):
        raise InputError(f"{path}: electron count must be positive, got {electrons}")
    from .errors import DensityLearnError

    try:
        aux = AuxBasis.load(basis, grid.numbers, orbital_basis=ref_basis)
        saed = None
        if difference:
            from .saed import load_saed

            saed = load_saed(sorted(set(grid.numbers.tolist())), xc=xc, basis=ref_basis, cache_dir=cache_dir,
                             pseudo=pseudo)
    except DensityLearnError as exc:
        raise type(exc)(f"{path}: {' '.join(str(exc).split())}") from None  # one line
    saed_coef = None
    if saed_route:
        try:
            saed_coef = saed_coulomb_fit(aux, grid.numbers, grid.positions, xc=xc, ref_basis=ref_basis,
                                         cache_dir=cache_dir)
        except DensityLearnError as exc:
            raise type(exc)(f"{path}: {' '.join(str(exc).split())}") from None
    fit = fit_grid(grid, aux, saed=saed, electrons=electrons, rcond=rcond, device=device,
                   saed_coefficients=saed_coef)
    total_how = "difference+saed-coulomb-fit" if saed_route else "grid-l2"
    targets = ("total", "difference") if difference else ("total",)
    attrs = make_header(aux, kind="fit", targets=targets, saed=saed, metric="grid-l2",
                        constrained=electrons is not None, xc=xc if difference else None,
                        orbital_basis=ref_basis if difference else None, grid_level=-1,
                        extra={"source_format": grid.fmt,
                               "grid_shape": json.dumps(list(grid.shape)),
                               "grid_pbc": json.dumps(grid.pbc.tolist()),
                               "eps_mae_meaning": "relative L1 residual on the input uniform grid, percent",
                               "total_fit": total_how,
                               "rcond": float(rcond), **({"pseudo": str(pseudo).lower()} if pseudo else {})})
    rec = {"numbers": struct.numbers, "positions": struct.positions, "cell": struct.cell, "pbc": struct.pbc,
           "charge": struct.charge, "spin": struct.spin, "name": struct.name,
           "source": f"{grid.fmt}:{os.path.abspath(path)}", "coef_total": fit.total,
           "eps_mae_total": fit.residual_total.l1_percent,
           "eps_mae_difference": (fit.residual_difference.l1_percent if difference else float("nan"))}
    if difference:
        rec["coef_difference"] = fit.difference
    write_dataset(out, attrs, [rec])
    report = {"file": os.path.abspath(path), "format": grid.fmt, "out": os.path.abspath(out),
              "basis": aux.name, "grid_shape": list(grid.shape), "pbc": grid.pbc.tolist(),
              "spacing_bohr": [float(x) for x in np.linalg.norm(grid.axes, axis=1)],
              "difference": bool(difference), "xc": xc if difference else None,
              "ref_basis": ref_basis if difference else None, "total_fit": total_how, **fit.report()}
    return fit, report


def format_report(r: dict) -> str:
    """Human-readable residual summary of :func:`fit_grid_file`."""
    shape = "x".join(str(n) for n in r["grid_shape"])
    kind = "periodic" if any(r["pbc"]) else "molecular"
    lines = [f"{r['file']}: {r['format']} grid {shape} ({kind}, {r['n_points']} points), "
             f"basis {r['basis']} ({r['n_functions']} functions"
             + (f", {r['n_images']} periodic images" if r["n_images"] else "") + ")"]
    rows = [("TCD", r["total"])]
    if r.get("total_fit", "grid-l2") != "grid-l2":
        lines.append("  TCD = DCD fit + Coulomb fit of the SAED (--total-fit grid: the grid's own least squares)")
    if "difference" in r:
        rows.append(("DCD+SAED", r["difference"]))
    for label, t in rows:
        lines.append(f"  {label:8s} L1 residual {t['l1_percent']:.4f} %  max |err| {t['max_abs_error']:.3e} e/bohr^3  "
                     f"electrons: grid {t['electrons_grid']:.4f}, fit on grid {t['electrons_grid_fit']:.4f}, "
                     f"fit analytic {t['electrons_fit']:.4f}")
    if r.get("electrons_constraint") is not None:
        lines.append(f"  constrained to {r['electrons_constraint']:.4f} electrons")
    if r["unresolved"]:
        lines.append(f"  note: {r['unresolved']} basis directions are not resolved by this grid "
                     "(minimum-norm solution there; a finer grid or a basis without steep functions avoids it)")
    if r["difference"] and r["format"] == "chgcar":
        lines.append("  note: the SAED is all-electron; a plain CHGCAR holds the valence pseudo density")
    lines.append(f"wrote {r['out']} ({r['wall_s']:.1f} s)")
    return "\n".join(lines)
