"""Batches of structures as neighbour graphs: the model's input format.

A batch is a plain ``dict[str, Tensor]`` (NequIP's ``AtomicDataDict`` style) whose keys are
the constants below. Atoms of all structures are concatenated; ``BATCH`` says which
structure each atom belongs to. Coefficient vectors are concatenated per structure in
the basis's PySCF order (:meth:`~densitylearn.basis.AuxBasis.layout`), so a batch plus
the model's ``COEFFICIENTS`` output is also a valid input of
:func:`densitylearn.grid.evaluate_density_batch` (the key names agree).

Edges: ``EDGE_INDEX[0]`` is the centre atom i (messages are summed there),
``EDGE_INDEX[1]`` the neighbour j, ``EDGE_VEC = positions[j] - positions[i] + S @ cell``
(bohr), where the integer lattice shift ``S`` (:data:`EDGE_SHIFT`) names the periodic image
of j (zero for molecules). Both directions of every pair are present; no self edges, but
in a small cell an atom is linked to its own images (i == j, S != 0), and one pair may be
linked through several images. Periodic structures must be periodic along all three
lattice vectors (the :class:`~densitylearn.structure.Structure` contract); their neighbour
lists come from `vesin <https://github.com/Luthaf/vesin>`_ when it is installed
(``pip install "densitylearn[fast]"``; 20-40x faster on Si cells, see
``examples/benchmark_neighbour_lists.py``) and otherwise from
:func:`ase.neighborlist.primitive_neighbor_list`; both give the same edges, sorted the same
way (any cell shape, any cutoff relative to the cell).
"""

from __future__ import annotations

import numpy as np
import torch

from .basis import AuxBasis
from .errors import InputError

# ----------------------------------------------------------------------------- keys
#: (n_atoms,) int64: atomic numbers, all structures concatenated.
NUMBERS = "numbers"
#: (n_atoms, 3) float, bohr: positions.
POSITIONS = "positions"
#: (n_atoms,) int64: index of the structure each atom belongs to (0..n_struct-1, sorted).
BATCH = "batch"
#: (n_struct,) int64: atoms per structure.
N_ATOMS = "n_atoms"
#: (n_struct + 1,) int64: atom offsets of the structures (``ATOM_PTR[s]:ATOM_PTR[s+1]``).
ATOM_PTR = "atom_ptr"
#: (n_struct, 3, 3) float, bohr: cell vectors as rows (zeros for molecules).
CELL = "cell"
#: (n_struct, 3) bool: periodic directions.
PBC = "pbc"
#: (n_struct,) float: net charge (e).
CHARGE = "charge"
#: (n_struct,) int64: 2S, number of unpaired electrons.
SPIN = "spin"
#: (n_struct,) float: electrons, sum(Z) - charge, or the record's ``n_electrons`` when it
#: has one (valence electrons of pseudopotential references).
N_ELECTRONS = "n_electrons"
#: (2, n_edges) int64: (centre i, neighbour j) of each directed edge, global atom indices.
EDGE_INDEX = "edge_index"
#: (n_edges, 3) float, bohr: positions[j] - positions[i] + EDGE_SHIFT @ cell.
EDGE_VEC = "edge_vec"
#: (n_edges, 3) int64: lattice shift S of the neighbour's image (zeros for molecules).
EDGE_SHIFT = "edge_shift"
#: () float, bohr: the cutoff the edges were built with.
EDGE_CUTOFF = "edge_cutoff"
#: (n_struct,) int64: coefficients per structure.
N_FUNCTIONS = "n_functions"
#: (n_struct + 1,) int64: offsets of each structure's block in the concatenated coefficients.
COEF_OFFSETS = "coef_offsets"
#: (n_atoms + 1,) int64: offsets of each atom's block in the concatenated coefficients.
ATOM_COEF_OFFSETS = "atom_coef_offsets"
#: (sum n_functions,) float: reference coefficients of the batch's target, PySCF order.
TARGET_COEFFICIENTS = "target_coefficients"
#: (sum n_functions,) float: predicted coefficients, PySCF order (the model's output; the
#: same key as :data:`densitylearn.grid.BATCH_COEFFICIENTS`).
COEFFICIENTS = "coefficients"
#: (sum n_functions,) float: predicted coefficients in e3nn's harmonic convention.
COEFFICIENTS_E3NN = "coefficients_e3nn"

#: Targets a batch can carry: the total density and the Delta-SAED difference density.
GRAPH_TARGETS = ("total", "difference")


# ----------------------------------------------------------------------------- edges
def neighbour_list(positions: torch.Tensor, batch: torch.Tensor, n_atoms: torch.Tensor,
                   cutoff: float) -> torch.Tensor:
    """All ordered pairs (i, j), i != j, of atoms of one structure with ``|r_j - r_i| <= cutoff``.

    Vectorised over the whole batch (no Python loop over structures); memory is
    O(sum n_atoms^2), which suits molecules up to a few thousand atoms.

    Parameters
    ----------
    positions : Tensor, shape (n_atoms, 3)
        Bohr.
    batch : Tensor, shape (n_atoms,)
        Structure index of each atom, sorted (atoms of a structure are contiguous).
    n_atoms : Tensor, shape (n_struct,)
        Atoms per structure (``bincount(batch)``).
    cutoff : float
        Bohr.

    Returns
    -------
    Tensor, shape (2, n_edges), int64
        (centre, neighbour) indices, sorted by centre.
    """
    if not cutoff > 0:
        raise InputError(f"cutoff must be positive, got {cutoff}")
    device = positions.device
    n_atoms = n_atoms.to(device=device, dtype=torch.long)
    batch = batch.to(device=device, dtype=torch.long)
    start = torch.cumsum(n_atoms, 0) - n_atoms  # first atom of each structure
    size = n_atoms[batch]  # (n_atoms,): size of the atom's structure
    centre = torch.repeat_interleave(torch.arange(len(batch), device=device), size)
    # position of each candidate pair inside its centre's run of candidates
    run_start = torch.repeat_interleave(torch.cumsum(size, 0) - size, size)
    neighbour = start[batch][centre] + (torch.arange(len(centre), device=device) - run_start)
    keep = centre != neighbour
    centre, neighbour = centre[keep], neighbour[keep]
    d2 = (positions[neighbour] - positions[centre]).pow(2).sum(-1)
    keep = d2 <= cutoff * cutoff
    return torch.stack([centre[keep], neighbour[keep]])


def _vesin():
    try:
        import vesin
    except ImportError:
        return None
    return vesin


def periodic_neighbour_list(positions, cell, cutoff: float, backend: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Directed edges of one fully periodic structure, with the neighbours' lattice shifts.

    Parameters
    ----------
    positions : array-like, shape (n_atoms, 3)
        Bohr (need not lie inside the cell).
    cell : array-like, shape (3, 3)
        Lattice vectors as rows, bohr.
    cutoff : float
        Bohr.
    backend : {"auto", "vesin", "ase"}
        ``auto``: vesin when installed, else ASE's ``primitive_neighbor_list``.

    Returns
    -------
    edge_index : ndarray, shape (2, n_edges), int64
        (centre i, neighbour j), local indices, sorted by centre, then neighbour, then shift.
    shifts : ndarray, shape (n_edges, 3), int64
        S such that ``positions[j] + S @ cell`` is the image of j within ``cutoff`` of i.
    """
    if not cutoff > 0:
        raise InputError(f"cutoff must be positive, got {cutoff}")
    if backend not in ("auto", "vesin", "ase"):
        raise InputError(f"unknown neighbour-list backend {backend!r} (auto, vesin, ase)")
    pos = np.ascontiguousarray(positions, dtype=np.float64)
    box = np.ascontiguousarray(cell, dtype=np.float64)
    vesin = _vesin() if backend != "ase" else None
    if backend == "vesin" and vesin is None:
        raise InputError('neighbour-list backend "vesin" is not installed (pip install "densitylearn[fast]")')
    if vesin is not None:
        i, j, shift = vesin.NeighborList(cutoff=float(cutoff), full_list=True).compute(
            points=pos, box=box, periodic=True, quantities="ijS")
    else:
        from ase.neighborlist import primitive_neighbor_list

        i, j, shift = primitive_neighbor_list("ijS", np.ones(3, dtype=bool), box, pos, float(cutoff),
                                              self_interaction=False)
    i, j = np.asarray(i, dtype=np.int64), np.asarray(j, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64).reshape(-1, 3)
    order = np.lexsort((shift[:, 2], shift[:, 1], shift[:, 0], j, i))
    return np.stack([i[order], j[order]]), shift[order]


def build_edges(positions: torch.Tensor, batch: torch.Tensor, n_atoms: torch.Tensor, cutoff: float,
                cell: torch.Tensor | None = None, pbc: torch.Tensor | None = None):
    """Edges of a whole batch: molecules through :func:`neighbour_list`, periodic structures
    through :func:`periodic_neighbour_list` (one call per periodic structure).

    Parameters
    ----------
    positions : Tensor, shape (n_atoms, 3)
        Bohr.
    batch, n_atoms
        As in :func:`neighbour_list`.
    cutoff : float
        Bohr.
    cell : Tensor, shape (n_struct, 3, 3), optional
        Bohr; needed when any structure is periodic.
    pbc : Tensor, shape (n_struct, 3) bool, optional
        Periodic flags (None: all molecules).

    Returns
    -------
    edge_index : Tensor, shape (2, n_edges), int64
        Global (centre, neighbour) indices, sorted by centre.
    shifts : Tensor, shape (n_edges, 3), int64
        Lattice shifts of the neighbours (zeros for molecules).
    """
    device = positions.device
    n_atoms = n_atoms.to(device=device, dtype=torch.long)
    batch = batch.to(device=device, dtype=torch.long)
    periodic = torch.zeros(len(n_atoms), dtype=torch.bool, device=device) if pbc is None \
        else torch.as_tensor(pbc, device=device).reshape(len(n_atoms), 3).any(-1)
    edge_index = neighbour_list(positions, batch, n_atoms, cutoff)
    if not bool(periodic.any()):
        return edge_index, torch.zeros(edge_index.shape[1], 3, dtype=torch.long, device=device)
    if cell is None:
        raise InputError("periodic structures in the batch but no cell")
    edge_index = edge_index[:, ~periodic[batch[edge_index[0]]]]
    shifts = [torch.zeros(edge_index.shape[1], 3, dtype=torch.long, device=device)]
    parts = [edge_index]
    start = torch.cumsum(n_atoms, 0) - n_atoms
    pos_np = positions.detach().cpu().double().numpy()
    cell_np = torch.as_tensor(cell).detach().cpu().double().numpy().reshape(-1, 3, 3)
    for s in torch.nonzero(periodic).flatten().tolist():
        a0, a1 = int(start[s]), int(start[s] + n_atoms[s])
        e, sh = periodic_neighbour_list(pos_np[a0:a1], cell_np[s], cutoff)
        parts.append(torch.as_tensor(e + a0, device=device))
        shifts.append(torch.as_tensor(sh, device=device))
    edge_index = torch.cat(parts, 1)
    shift = torch.cat(shifts, 0)
    order = torch.argsort(edge_index[0], stable=True)
    return edge_index[:, order], shift[order]


def edge_vectors(positions: torch.Tensor, edge_index: torch.Tensor, shifts: torch.Tensor | None = None,
                 cell: torch.Tensor | None = None, batch: torch.Tensor | None = None) -> torch.Tensor:
    """``positions[j] - positions[i] + shifts @ cell[batch[i]]``, shape (n_edges, 3), bohr.

    Differentiable with respect to ``positions`` (and ``cell``); without shifts the plain
    molecular difference vectors.
    """
    vec = positions[edge_index[1]] - positions[edge_index[0]]
    if shifts is None or shifts.numel() == 0 or not bool((shifts != 0).any()):
        return vec
    if cell is None:
        raise InputError("edges with lattice shifts need the cell")
    cell = torch.as_tensor(cell, device=positions.device).to(positions.dtype).reshape(-1, 3, 3)
    if batch is None:
        batch = torch.zeros(positions.shape[0], dtype=torch.long, device=positions.device)
    cell_e = cell[batch[edge_index[0]]]
    return vec + torch.einsum("ek,ekx->ex", shifts.to(positions.dtype), cell_e)


def add_edges(batch: dict, cutoff: float) -> dict:
    """Add :data:`EDGE_INDEX`, :data:`EDGE_SHIFT`, :data:`EDGE_VEC` and :data:`EDGE_CUTOFF`
    to ``batch`` (in place), with periodic images for periodic structures."""
    pos = batch[POSITIONS]
    edge_index, shift = build_edges(pos, batch[BATCH], batch[N_ATOMS], cutoff,
                                    cell=batch.get(CELL), pbc=batch.get(PBC))
    batch[EDGE_INDEX] = edge_index
    batch[EDGE_SHIFT] = shift
    batch[EDGE_VEC] = edge_vectors(pos, edge_index, shift, batch.get(CELL), batch[BATCH])
    batch[EDGE_CUTOFF] = torch.tensor(float(cutoff), dtype=torch.float64)
    return batch


# ----------------------------------------------------------------------------- collate
def record_target(record: dict, target: str) -> np.ndarray:
    """The reference coefficients of ``target`` from a dataset record (PySCF order).

    ``'difference'`` is read from ``coef_difference`` or derived as total - saed.
    """
    if target not in GRAPH_TARGETS:
        raise InputError(f"unknown target {target!r} (expected one of {', '.join(GRAPH_TARGETS)})")
    if "coef_" + target in record:
        return np.asarray(record["coef_" + target])
    if target == "difference" and "coef_total" in record and "coef_saed" in record:
        return np.asarray(record["coef_total"]) - np.asarray(record["coef_saed"])
    name = record.get("name", "")
    raise InputError(f"structure {name!r}: no {target!r} coefficients in the record")


def collate(records, basis: AuxBasis, target: str | None = None, cutoff: float | None = None,
            dtype: torch.dtype = torch.float64) -> dict:
    """Concatenate dataset records into one batch (see the key constants).

    Parameters
    ----------
    records : sequence of dict
        :class:`~densitylearn.data.CoefficientDataset` records (``numbers``, ``positions``
        bohr, optional ``cell``, ``pbc``, ``charge``, ``spin``, ``n_electrons`` and
        ``coef_<target>``).
    basis : AuxBasis
        Fixes the coefficient layout; every element must be covered.
    target : {'total', 'difference'}, optional
        If given, :data:`TARGET_COEFFICIENTS` is filled from the records (length checked).
    cutoff : float, optional
        If given (bohr), edges are added with :func:`add_edges`; otherwise the model
        builds them with its own cutoff.
    dtype : torch.dtype
        Floating dtype of positions, cell and target coefficients (float64 by default: the
        model casts to its own dtype after forming edge vectors).

    Returns
    -------
    dict[str, Tensor]
    """
    records = list(records)
    if not records:
        raise InputError("collate: no structures")
    numbers, positions, cells, pbcs, charges, spins, n_fun, coefs = [], [], [], [], [], [], [], []
    for k, rec in enumerate(records):
        name = rec.get("name", "") or f"#{k}"
        z = np.asarray(rec["numbers"], dtype=np.int64).reshape(-1)
        if len(z) == 0:
            raise InputError(f"structure {name}: no atoms")
        pos = np.asarray(rec["positions"], dtype=np.float64)
        if pos.shape != (len(z), 3) or not np.all(np.isfinite(pos)):
            raise InputError(f"structure {name}: positions must be finite with shape ({len(z)}, 3), "
                             f"got {pos.shape}")
        pbc = np.asarray(rec.get("pbc", np.zeros(3, bool)), dtype=bool).reshape(3)
        cell = np.asarray(rec.get("cell", np.zeros((3, 3))), dtype=np.float64).reshape(3, 3)
        if pbc.any():
            if not pbc.all():
                raise InputError(f"structure {name}: partly periodic structures (pbc={pbc.tolist()}) "
                                 "are not supported")
            vol = abs(float(np.linalg.det(cell)))
            if not np.all(np.isfinite(cell)) or vol < 1e-6:
                raise InputError(f"structure {name}: periodic with a zero-volume cell")
        missing = sorted({int(x) for x in z} - set(basis.elements))
        if missing:
            raise InputError(f"structure {name}: element Z={missing[0]} is not covered by "
                             f"auxiliary basis {basis.name} (covers {list(basis.elements)})")
        nf = int(basis.layout(z)[-1])
        if target is not None:
            c = record_target(rec, target)
            if c.shape != (nf,):
                raise InputError(f"structure {name}: {c.shape} {target} coefficients, basis "
                                 f"{basis.name} expects ({nf},)")
            coefs.append(c)
        numbers.append(z)
        positions.append(pos)
        cells.append(cell)
        pbcs.append(pbc)
        charges.append(float(rec.get("charge", 0)))
        spins.append(int(rec.get("spin", 0)))
        n_fun.append(nf)
    z_all = np.concatenate(numbers)
    n_atoms = np.array([len(z) for z in numbers], dtype=np.int64)
    charge = np.array(charges)
    # a record may carry its own count (valence electrons of pseudopotential references)
    n_elec = np.array([float(rec["n_electrons"]) if rec.get("n_electrons") is not None
                       else float(z.sum()) - c for rec, z, c in zip(records, numbers, charges)])
    out = {
        NUMBERS: torch.as_tensor(z_all),
        POSITIONS: torch.as_tensor(np.concatenate(positions), dtype=dtype),
        BATCH: torch.as_tensor(np.repeat(np.arange(len(records)), n_atoms)),
        N_ATOMS: torch.as_tensor(n_atoms),
        ATOM_PTR: torch.as_tensor(np.concatenate([[0], np.cumsum(n_atoms)]).astype(np.int64)),
        CELL: torch.as_tensor(np.stack(cells), dtype=dtype),
        PBC: torch.as_tensor(np.stack(pbcs)),
        CHARGE: torch.as_tensor(charge, dtype=dtype),
        SPIN: torch.as_tensor(np.array(spins, dtype=np.int64)),
        N_ELECTRONS: torch.as_tensor(n_elec, dtype=dtype),
        N_FUNCTIONS: torch.as_tensor(np.array(n_fun, dtype=np.int64)),
        COEF_OFFSETS: torch.as_tensor(np.concatenate([[0], np.cumsum(n_fun)]).astype(np.int64)),
        ATOM_COEF_OFFSETS: torch.as_tensor(basis.layout(z_all)),
    }
    if target is not None:
        out[TARGET_COEFFICIENTS] = torch.as_tensor(np.concatenate(coefs), dtype=dtype)
    if cutoff is not None:
        add_edges(out, cutoff)
    return out


def to_device(batch: dict, device=None, dtype: torch.dtype | None = None) -> dict:
    """A copy of ``batch`` on ``device`` with floating tensors cast to ``dtype`` (if given)."""
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device=device, dtype=dtype if (dtype is not None and v.is_floating_point()) else None)
        out[k] = v
    return out


# ----------------------------------------------------------------------------- dataset
class GraphDataset(torch.utils.data.Dataset):
    """A torch ``Dataset`` over a :class:`~densitylearn.data.CoefficientDataset`.

    Items are the dataset's records (numpy arrays); :meth:`collate` (picklable, usable as
    a DataLoader ``collate_fn``) turns a list of them into a batch carrying
    :data:`TARGET_COEFFICIENTS` for ``target``.

    Parameters
    ----------
    dataset : CoefficientDataset or str
        The coefficient file (or an opened reader).
    target : {'total', 'difference'}
    basis : AuxBasis, optional
        Expected basis (checked against the file's); default the file's own.
    cutoff : float, optional
        If given, batches include edges built with this cutoff (bohr).
    indices : sequence of int, optional
        A subset of structures (e.g. a training split).
    """

    def __init__(self, dataset, target: str, basis: AuxBasis | None = None, cutoff: float | None = None,
                 indices=None, dtype: torch.dtype = torch.float64):
        from .data import CoefficientDataset

        if target not in GRAPH_TARGETS:
            raise InputError(f"unknown target {target!r} (expected one of {', '.join(GRAPH_TARGETS)})")
        if not isinstance(dataset, CoefficientDataset):
            dataset = CoefficientDataset(dataset, expect_basis=basis)
        elif basis is not None:
            dataset.basis.require_same(basis, context=dataset.path)
        available = set(dataset.targets)
        if target not in available and not (target == "difference" and {"total", "saed"} <= available):
            raise InputError(f"{dataset.path}: no {target!r} coefficients (file has {', '.join(dataset.targets)})")
        self.dataset = dataset
        self.target = target
        self.basis = basis if basis is not None else dataset.basis
        self.cutoff = cutoff
        self.dtype = dtype
        self.indices = np.arange(len(dataset)) if indices is None else np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        return self.dataset[int(self.indices[i])]

    def collate(self, records) -> dict:
        """Batch of ``records`` (a DataLoader ``collate_fn``)."""
        return collate(records, self.basis, self.target, self.cutoff, self.dtype)
