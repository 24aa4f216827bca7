"""Batches of structures as neighbour graphs: the model's input format.

A batch is a plain ``dict[str, Tensor]`` (NequIP's ``AtomicDataDict`` style) whose keys are
the constants below. Atoms of all structures are concatenated; ``BATCH`` says which
structure each atom belongs to. Coefficient vectors are concatenated per structure in
the basis's PySCF order (:meth:`~densitylearn.basis.AuxBasis.layout`), so a batch plus
the model's ``COEFFICIENTS`` output is also a valid input of
:func:`densitylearn.grid.evaluate_density_batch` (the key names agree).

Edges: ``EDGE_INDEX[0]`` is the centre atom i (messages are summed there),
``EDGE_INDEX[1]`` the neighbour j, ``EDGE_VEC = positions[j] - positions[i]`` (bohr). Both
directions of every pair are present; no self edges. Only molecules are supported for
now: a periodic structure raises :class:`~densitylearn.errors.InputError` (the cell and
pbc flags are carried in the batch so that periodic images can be added later).
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
#: (n_struct,) float: electrons, sum(Z) - charge.
N_ELECTRONS = "n_electrons"
#: (2, n_edges) int64: (centre i, neighbour j) of each directed edge, global atom indices.
EDGE_INDEX = "edge_index"
#: (n_edges, 3) float, bohr: positions[j] - positions[i].
EDGE_VEC = "edge_vec"
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


def add_edges(batch: dict, cutoff: float) -> dict:
    """Add :data:`EDGE_INDEX`, :data:`EDGE_VEC` and :data:`EDGE_CUTOFF` to ``batch`` (in place).

    Raises :class:`InputError` if any structure is periodic.
    """
    if PBC in batch and bool(torch.as_tensor(batch[PBC]).any()):
        bad = torch.nonzero(torch.as_tensor(batch[PBC]).any(-1)).flatten().tolist()
        raise InputError(f"structures {bad} of the batch are periodic: periodic neighbour lists "
                         "are not implemented yet (molecules only)")
    pos = batch[POSITIONS]
    edge_index = neighbour_list(pos, batch[BATCH], batch[N_ATOMS], cutoff)
    batch[EDGE_INDEX] = edge_index
    batch[EDGE_VEC] = pos[edge_index[1]] - pos[edge_index[0]]
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
        bohr, optional ``cell``, ``pbc``, ``charge``, ``spin`` and ``coef_<target>``).
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
        if pbc.any():
            raise InputError(f"structure {name} is periodic (pbc={pbc.tolist()}): periodic "
                             "neighbour lists are not implemented yet (molecules only)")
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
        cells.append(np.asarray(rec.get("cell", np.zeros((3, 3))), dtype=np.float64).reshape(3, 3))
        pbcs.append(pbc)
        charges.append(float(rec.get("charge", 0)))
        spins.append(int(rec.get("spin", 0)))
        n_fun.append(nf)
    z_all = np.concatenate(numbers)
    n_atoms = np.array([len(z) for z in numbers], dtype=np.int64)
    charge = np.array(charges)
    n_elec = np.array([float(z.sum()) for z in numbers]) - charge
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
