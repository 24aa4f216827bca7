"""The :class:`Structure` record and the readers that produce it.

A structure is a plain, validated record: atomic numbers, positions in bohr, a cell in
bohr (all zeros for molecules), periodic flags, net charge and spin. Every reader (ASE
files, QM9 via ``qm9pack``, PySCF chkfiles) converts to it at the boundary, so the rest
of the package never has to ask which unit a coordinate is in.
"""

from __future__ import annotations

import ast
import csv
import importlib.util
import json
import os
import warnings
from dataclasses import dataclass, field

import numpy as np

from .errors import InputError
from .units import ANGSTROM_BOHR, BOHR_ANGSTROM

#: QM9 molecule indices at or above this value are the held-out evaluation range: never
#: train or tune on them.
QM9_HELDOUT_START = 120000

#: Closest allowed distance between two nuclei, bohr.
MIN_DISTANCE_BOHR = 0.2


#: Bond criterion of :meth:`Structure.fragments`: atoms closer than this times the sum of
#: their covalent radii are bonded (1.2 keeps hydrogen bonds and van der Waals contacts out).
FRAGMENT_BOND_SCALE = 1.2


@dataclass(frozen=True, eq=False)
class Structure:
    """One molecule or crystal.

    Attributes
    ----------
    numbers : ndarray, shape (n_atoms,), int64
        Atomic numbers.
    positions : ndarray, shape (n_atoms, 3), float64
        Cartesian positions in bohr.
    cell : ndarray, shape (3, 3), float64
        Lattice vectors as rows, bohr; all zeros for a molecule.
    pbc : ndarray, shape (3,), bool
        Periodic directions; all False for a molecule, all True for a crystal (partly
        periodic structures are refused). A crystal's cell must have a non-zero volume and
        no two atoms may be closer than :data:`MIN_DISTANCE_BOHR` through the images.
    charge : int
        Net charge in e (a cation has +1).
    spin : int
        Number of unpaired electrons, 2S (PySCF's ``mol.spin``).
    name : str
        Human-readable identifier used in messages and output files.
    source : str
        Where the structure came from (file path and frame, or ``qm9:INDEX``).
    """

    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray = field(default_factory=lambda: np.zeros((3, 3)))
    pbc: np.ndarray = field(default_factory=lambda: np.zeros(3, dtype=bool))
    charge: int = 0
    spin: int = 0
    name: str = ""
    source: str = ""

    def __post_init__(self):
        label = self.name or self.source or "structure"
        numbers = np.asarray(self.numbers, dtype=np.int64).reshape(-1)
        positions = np.asarray(self.positions, dtype=np.float64)
        cell = np.asarray(self.cell, dtype=np.float64)
        pbc = np.asarray(self.pbc, dtype=bool).reshape(-1)
        if positions.shape != (len(numbers), 3):
            raise InputError(f"{label}: positions have shape {positions.shape}, "
                             f"expected ({len(numbers)}, 3)")
        if len(numbers) == 0:
            raise InputError(f"{label}: structure has no atoms")
        if not np.all(np.isfinite(positions)):
            raise InputError(f"{label}: positions contain NaN or infinity")
        if np.any(numbers < 1) or np.any(numbers > 118):
            raise InputError(f"{label}: atomic numbers must lie in 1..118, got {sorted(set(numbers.tolist()))}")
        if cell.shape != (3, 3) or pbc.shape != (3,):
            raise InputError(f"{label}: cell must be 3x3 and pbc three flags")
        if not np.all(np.isfinite(cell)):
            raise InputError(f"{label}: cell contains NaN or infinity")
        if pbc.any():
            _check_cell(label, cell, pbc)
        n_elec = int(numbers.sum()) - int(self.charge)
        if n_elec < 0:
            raise InputError(f"{label}: charge {self.charge} exceeds the nuclear charge {numbers.sum()}")
        if self.spin < 0 or (n_elec - self.spin) % 2:
            raise InputError(f"{label}: spin 2S={self.spin} is impossible with {n_elec} electrons")
        if len(numbers) > 1 and not pbc.any():
            d = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
            d[np.diag_indices(len(numbers))] = np.inf
            if d.min() < MIN_DISTANCE_BOHR:
                i, j = np.unravel_index(np.argmin(d), d.shape)
                raise InputError(f"{label}: atoms {i} and {j} overlap ({d.min():.3f} bohr apart)")
        if pbc.any():
            _check_periodic_overlap(label, positions, cell)
        object.__setattr__(self, "numbers", numbers)
        object.__setattr__(self, "positions", positions)
        object.__setattr__(self, "cell", cell)
        object.__setattr__(self, "pbc", pbc)
        object.__setattr__(self, "charge", int(self.charge))
        object.__setattr__(self, "spin", int(self.spin))

    # ------------------------------------------------------------------ properties
    def __len__(self) -> int:
        return len(self.numbers)

    @property
    def n_electrons(self) -> int:
        """Number of electrons, sum(Z) - charge."""
        return int(self.numbers.sum()) - self.charge

    @property
    def is_periodic(self) -> bool:
        return bool(self.pbc.any())

    @property
    def symbols(self) -> list[str]:
        from ase.data import chemical_symbols

        return [chemical_symbols[z] for z in self.numbers]

    @property
    def label(self) -> str:
        return self.name or self.source or "structure"

    # ------------------------------------------------------------------ conversions
    def to_ase(self):
        """An :class:`ase.Atoms` in Angstrom, with charge and spin in ``atoms.info``."""
        from ase import Atoms

        atoms = Atoms(numbers=self.numbers, positions=self.positions * BOHR_ANGSTROM,
                      cell=self.cell * BOHR_ANGSTROM, pbc=self.pbc)
        atoms.info.update(charge=self.charge, spin=self.spin, name=self.name)
        return atoms

    def to_pyscf(self, basis: str = "def2-svp", verbose: int = 0, **kwargs):
        """A built :class:`pyscf.gto.Mole` (positions passed in bohr)."""
        from pyscf import gto

        if self.is_periodic:
            raise InputError(f"{self.label}: periodic structures cannot become a molecular Mole")
        mol = gto.Mole()
        mol.atom = [(int(z), tuple(p)) for z, p in zip(self.numbers, self.positions)]
        mol.unit = "Bohr"
        mol.basis = basis
        mol.charge = self.charge
        mol.spin = self.spin
        mol.verbose = verbose
        for k, v in kwargs.items():
            setattr(mol, k, v)
        try:
            mol.build()
        except (RuntimeError, KeyError, ValueError, AssertionError) as exc:
            raise InputError(f"{self.label}: PySCF cannot build this molecule with basis "
                             f"{basis!r}: {exc}") from None
        return mol

    def to_pyscf_cell(self, basis: str = "gth-dzvp", pseudo: str = "gth-pbe",
                      ke_cutoff: float | None = None, mesh=None, verbose: int = 0, **kwargs):
        """A built :class:`pyscf.pbc.gto.Cell` (positions and lattice passed in bohr).

        Parameters
        ----------
        basis : str
            Orbital basis (PySCF name; GTH bases go with GTH pseudopotentials).
        pseudo : str or None
            Pseudopotential (PySCF name, e.g. ``'gth-pbe'``); None for all-electron.
        ke_cutoff : float, optional
            Kinetic-energy cutoff of the FFT mesh, hartree (PySCF's default when None).
        mesh : sequence of 3 int, optional
            FFT mesh; overrides ``ke_cutoff``.
        """
        from pyscf.pbc import gto as pbcgto

        if not self.is_periodic:
            raise InputError(f"{self.label}: a molecule cannot become a periodic Cell")
        cell = pbcgto.Cell()
        cell.atom = [(int(z), tuple(p)) for z, p in zip(self.numbers, self.positions)]
        cell.a = self.cell
        cell.unit = "Bohr"
        cell.basis = basis
        if pseudo:
            cell.pseudo = pseudo
        cell.charge = self.charge
        cell.spin = self.spin
        cell.verbose = verbose
        if ke_cutoff is not None:
            cell.ke_cutoff = float(ke_cutoff)
        if mesh is not None:
            cell.mesh = [int(m) for m in mesh]
        for k, v in kwargs.items():
            setattr(cell, k, v)
        try:
            with warnings.catch_warnings():  # PySCF warns about coarse meshes and basis names
                warnings.simplefilter("ignore")
                cell.build()
        except (RuntimeError, KeyError, ValueError, AssertionError, TypeError) as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(f"{self.label}: PySCF cannot build this cell with basis {basis!r} and "
                             f"pseudopotential {pseudo!r}: {msg}") from None
        return cell

    def fragments(self, scale: float = FRAGMENT_BOND_SCALE) -> np.ndarray:
        """Covalently connected fragment of every atom, shape (n_atoms,), labels 0, 1, ...

        Two atoms are bonded when closer than ``scale`` times the sum of their covalent
        radii (``ase.data.covalent_radii``); fragments are the connected components, numbered
        in the order of their first atom. A hydrogen bond (H...O about 1.9 A against 1.16 A
        for ``scale = 1.2``) does not join two molecules, so the water dimer has two
        fragments and ethanol one. Molecules only (a periodic structure raises
        :class:`InputError`).
        """
        from ase.data import covalent_radii
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components
        from scipy.spatial import cKDTree

        if self.is_periodic:
            raise InputError(f"{self.label}: fragments are defined for molecules only")
        r = covalent_radii[self.numbers] * ANGSTROM_BOHR * float(scale)
        pairs = cKDTree(self.positions).query_pairs(2.0 * float(r.max()), output_type="ndarray")
        if len(pairs):
            d = np.linalg.norm(self.positions[pairs[:, 0]] - self.positions[pairs[:, 1]], axis=1)
            pairs = pairs[d < r[pairs[:, 0]] + r[pairs[:, 1]]]
        n = len(self)
        graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
        _, labels = connected_components(graph, directed=False)
        _, first = np.unique(labels, return_index=True)  # renumber by first atom
        order = np.argsort(np.argsort(first))
        return order[labels].astype(np.int64)

    def same_geometry(self, other: "Structure", atol: float = 1e-6) -> bool:
        """True when numbers, positions (to ``atol`` bohr), cell and pbc flags agree."""
        return (len(self) == len(other) and np.array_equal(self.numbers, other.numbers)
                and np.allclose(self.positions, other.positions, atol=atol, rtol=0)
                and np.array_equal(self.pbc, other.pbc)
                and np.allclose(self.cell, other.cell, atol=atol, rtol=0))


#: Smallest allowed ratio ``volume / (|a| |b| |c|)`` of a periodic cell (1 for a cube, 0
#: when the lattice vectors are coplanar).
MIN_CELL_SHAPE = 1e-4


def _check_cell(label: str, cell: np.ndarray, pbc: np.ndarray) -> None:
    """InputError unless ``cell`` is a proper 3-d lattice for the periodic flags ``pbc``."""
    lengths = np.linalg.norm(cell, axis=1)
    for i in range(3):
        if pbc[i] and lengths[i] < MIN_DISTANCE_BOHR:
            raise InputError(f"{label}: pbc is True along lattice vector {i + 1}, which has length "
                             f"{lengths[i]:.3g} bohr (pbc flags disagree with the cell)")
    if not pbc.all():
        raise InputError(f"{label}: partly periodic structures (pbc={pbc.astype(int).tolist()}, slabs "
                         "or wires) are not supported; use pbc along all three lattice vectors or none")
    vol = abs(float(np.linalg.det(cell)))
    if vol < 1e-6 or vol < MIN_CELL_SHAPE * float(np.prod(lengths)):
        raise InputError(f"{label}: the cell has (near) zero volume ({vol:.3g} bohr^3; lattice vectors "
                         "are coplanar)")


def _check_periodic_overlap(label: str, positions: np.ndarray, cell: np.ndarray) -> None:
    """InputError when two atoms, or an atom and its own image, are closer than
    :data:`MIN_DISTANCE_BOHR` under the minimum-image convention (any cell shape)."""
    from ase.geometry import get_distances, minkowski_reduce

    rcell, _ = minkowski_reduce(cell, pbc=True)
    shortest = float(np.linalg.norm(rcell, axis=1).min())
    if shortest < MIN_DISTANCE_BOHR:
        raise InputError(f"{label}: every atom overlaps its own periodic image (shortest lattice "
                         f"vector {shortest:.3f} bohr)")
    if len(positions) < 2:
        return
    _, d = get_distances(positions, cell=cell, pbc=True)
    d[np.diag_indices(len(positions))] = np.inf
    if d.min() < MIN_DISTANCE_BOHR:
        i, j = np.unravel_index(np.argmin(d), d.shape)
        raise InputError(f"{label}: atoms {i} and {j} overlap through the periodic images "
                         f"({d.min():.3f} bohr apart)")


def from_ase(atoms, name: str = "", source: str = "", charge: int | None = None,
             spin: int | None = None) -> Structure:
    """Convert an :class:`ase.Atoms` (Angstrom) to a :class:`Structure` (bohr).

    Charge and spin are taken from the arguments, else from ``atoms.info['charge']`` and
    ``atoms.info['spin']`` (2S), else 0 and the lowest spin for the electron count.
    """
    info = getattr(atoms, "info", {}) or {}
    numbers = atoms.get_atomic_numbers()
    if charge is None:
        charge = int(info.get("charge", 0))
    if spin is None:
        spin = info.get("spin", None)
        if spin is None:
            spin = (int(numbers.sum()) - charge) % 2
    pbc = np.asarray(atoms.get_pbc(), dtype=bool)
    cell = np.asarray(atoms.get_cell()[:], dtype=np.float64) * ANGSTROM_BOHR
    if not pbc.any():
        cell = np.zeros((3, 3))
    return Structure(numbers=numbers, positions=atoms.get_positions() * ANGSTROM_BOHR,
                     cell=cell, pbc=pbc, charge=charge, spin=int(spin),
                     name=name or info.get("name", ""), source=source)


def from_pyscf(mol, name: str = "", source: str = "") -> Structure:
    """Convert a :class:`pyscf.gto.Mole` to a :class:`Structure`."""
    return Structure(numbers=mol.atom_charges() + _ecp_core_charges(mol), positions=mol.atom_coords(unit="Bohr"),
                     charge=mol.charge, spin=mol.spin, name=name, source=source)


def _ecp_core_charges(mol) -> np.ndarray:
    """Electrons removed by ECPs per atom (zero for all-electron molecules)."""
    from pyscf import gto

    return np.array([gto.charge(mol.atom_symbol(i)) - mol.atom_charge(i) for i in range(mol.natm)],
                    dtype=np.int64)


def read_structures(path: str, index=":", charge: int | None = None,
                    spin: int | None = None) -> list[Structure]:
    """Read every frame of an ASE-readable file (xyz, extxyz, sdf, cif, POSCAR, ...).

    Structures are named ``STEM`` for single-frame files and ``STEM_FRAME`` otherwise.
    Raises :class:`InputError` naming the file when it cannot be read.
    """
    from ase.io import read

    if not os.path.exists(path):
        raise InputError(f"{path}: no such file")
    try:
        frames = read(path, index=index)
    except Exception as exc:  # ASE raises many types for malformed files
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: cannot read structures ({msg})") from None
    if not isinstance(frames, list):
        frames = [frames]
    if not frames:
        raise InputError(f"{path}: file contains no structures")
    stem = os.path.splitext(os.path.basename(path))[0]
    out = []
    for i, atoms in enumerate(frames):
        name = stem if len(frames) == 1 else f"{stem}_{i}"
        try:
            out.append(from_ase(atoms, name=name, source=f"{path}@{i}", charge=charge, spin=spin))
        except InputError as exc:
            msg = str(exc)
            raise InputError(msg if path in msg else f"{path}: frame {i}: {msg}") from None
    return out


# ---------------------------------------------------------------------------- QM9
def _qm9_data_dir() -> str:
    """Folder with qm9pack's CSV files, found without importing qm9pack.

    (qm9pack's ``__init__`` imports pandas and ``pkg_resources``, which we do not need.)
    """
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("QM9 geometries need the optional extra: pip install 'densitylearn[qm9]'")
    return os.path.join(list(spec.submodule_search_locations)[0], "data")


def parse_index_range(text: str) -> list[int]:
    """Parse ``"1-100,120000-120049,7"`` into a list of ints (ranges inclusive).

    The order is the order written (repeats dropped), so that a long job over a seeded
    random sample finishes a random part of it first, not the lowest indices.
    """
    out: dict[int, None] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                a, b = part.split("-", 1)
                out.update(dict.fromkeys(range(int(a), int(b) + 1)))
            else:
                out[int(part)] = None
        except ValueError:
            raise InputError(f"cannot parse QM9 index range {text!r}") from None
    return list(out)


def qm9_structures(indices) -> list[Structure]:
    """QM9 molecules by their QM9 index (1..133885; 3054 indices are absent in QM9).

    Geometries (B3LYP/6-31G(2df,p), Angstrom in the CSV) come from the ``qm9pack``
    package. Indices >= :data:`QM9_HELDOUT_START` are the held-out evaluation range.
    Missing indices raise :class:`InputError`. The molecules come in the order of
    ``indices`` (repeats dropped): ``densitylearn compute`` works through them in that
    order, so an interrupted run over a random sample has computed a random part of it.
    """
    order = list(dict.fromkeys(int(i) for i in indices))
    wanted = set(order)
    found: dict[int, Structure] = {}
    folder = _qm9_data_dir()
    csv.field_size_limit(1 << 30)
    from ase.data import atomic_numbers

    for fname in sorted(os.listdir(folder)):
        if not (fname.startswith("qm9_part") and fname.endswith(".csv")):
            continue
        with open(os.path.join(folder, fname), newline="") as fh:
            for row in csv.DictReader(fh):
                idx = int(row["Index"])
                if idx not in wanted:
                    continue
                symbols = ast.literal_eval(row["Elements"])
                xyz = np.array(ast.literal_eval(row["XYZ_Ang"]), dtype=np.float64)
                found[idx] = Structure(numbers=[atomic_numbers[s] for s in symbols],
                                       positions=xyz * ANGSTROM_BOHR, name=f"qm9_{idx:06d}",
                                       source=f"qm9:{idx}")
        if len(found) == len(wanted):
            break
    missing = sorted(wanted - set(found))
    if missing:
        raise InputError(f"QM9 indices not in the dataset: {missing[:10]}"
                         + (" ..." if len(missing) > 10 else ""))
    return [found[i] for i in order]


# ---------------------------------------------------------------------------- chkfiles
def structure_from_chk(path: str) -> Structure:
    """The structure stored in a PySCF chkfile (``mol`` record), in bohr.

    The Mole is rebuilt from its atoms rather than through ``pyscf.lib.chkfile.load_mol``
    (which may ``eval`` strings from the file): chkfiles are read as data.
    """
    import h5py

    try:
        with h5py.File(path, "r") as f:
            raw = f["mol"][()]
    except (OSError, KeyError) as exc:
        raise InputError(f"{path}: not a PySCF chkfile with a molecule ({exc})") from None
    try:
        d = json.loads(raw)
        from pyscf import gto

        atoms = d["_atom"]
        numbers = [gto.charge(a[0]) for a in atoms]
        pos = np.array([a[1] for a in atoms], dtype=np.float64)
        # _atom is stored in bohr
        name = os.path.splitext(os.path.basename(path))[0]
        cell = chk_cell(path, d)
        pbc = np.ones(3, dtype=bool) if cell is not None else np.zeros(3, dtype=bool)
        return Structure(numbers=numbers, positions=pos,
                         cell=cell if cell is not None else np.zeros((3, 3)), pbc=pbc,
                         charge=int(d.get("charge", 0)), spin=int(d.get("spin", 0)), name=name,
                         source=path)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{path}: cannot parse the molecule record ({type(exc).__name__}: {exc})") from None


#: Dataset in a chkfile's densitylearn group holding the lattice vectors (rows, bohr).
CHK_CELL_DATASET = "densitylearn/cell_bohr"


def chk_cell(path: str, record: dict):
    """Lattice vectors (3, 3) in bohr of a periodic chkfile, or None for a molecule.

    Read from :data:`CHK_CELL_DATASET` when densitylearn wrote the file, else from the
    ``a`` and ``unit`` fields of PySCF's Cell record (parsed as a literal, never evaluated).
    """
    import h5py

    with h5py.File(path, "r") as f:
        if CHK_CELL_DATASET in f:
            return np.asarray(f[CHK_CELL_DATASET][()], dtype=np.float64).reshape(3, 3)
    a = record.get("a")
    if a is None:
        return None
    if isinstance(a, str):
        a = ast.literal_eval(a)
    a = np.asarray(a, dtype=np.float64).reshape(3, 3)
    unit = str(record.get("unit", "angstrom")).strip("'\" ").lower()
    return a if unit.startswith(("b", "au")) else a * ANGSTROM_BOHR
