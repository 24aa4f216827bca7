"""Gaussian cube files and VASP CHGCAR files of densities, readable by VMD, VESTA and ASE.

Cube files are bohr and e/bohr^3. A CHGCAR stores ``rho * V_cell`` with rho in e/Angstrom^3
and V_cell in Angstrom^3, the first grid index fastest, points at ``(i/n1, j/n2, k/n3) @
cell`` (:func:`write_chgcar`; :func:`densitylearn.gridfit.read_chgcar` reads it back).

Cube grids are for looking at densities, not for integrating them (near nuclei a uniform
grid is a poor quadrature); molecular metrics use Becke grids (:mod:`densitylearn.metrics`).
For periodic cells (:func:`density_cell_files`) the grid is the cell's own uniform grid.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError
from .io_utils import atomic_path


def write_cube(path: str, numbers, positions, origin, axes, values, comment: str = "") -> None:
    """Write one volumetric field as a cube file, atomically.

    Parameters
    ----------
    path : str
    numbers : array-like, shape (n_atoms,)
    positions : array-like, shape (n_atoms, 3)
        Bohr.
    origin : array-like, shape (3,)
        Bohr.
    axes : array-like, shape (3, 3)
        Step vectors as rows, bohr.
    values : array-like, shape (n1, n2, n3)
        Field values (e/bohr^3 for densities), C order with the first axis slowest.
    comment : str
        Second header line.
    """
    numbers = np.asarray(numbers, dtype=np.int64).reshape(-1)
    positions = np.asarray(positions, dtype=np.float64).reshape(len(numbers), 3)
    values = np.asarray(values, dtype=np.float64)
    axes = np.asarray(axes, dtype=np.float64).reshape(3, 3)
    if values.ndim != 3:
        raise InputError(f"{path}: cube values must be a 3-d array, got shape {values.shape}")
    if not np.all(np.isfinite(values)):
        raise InputError(f"{path}: cube values contain NaN or infinity")
    lines = ["densitylearn cube file (bohr, e/bohr^3)", comment.replace("\n", " ")[:200],
             f"{len(numbers):5d} {origin[0]:12.6f} {origin[1]:12.6f} {origin[2]:12.6f}"]
    for n, ax in zip(values.shape, axes):
        lines.append(f"{n:5d} {ax[0]:12.6f} {ax[1]:12.6f} {ax[2]:12.6f}")
    for z, p in zip(numbers, positions):
        lines.append(f"{z:5d} {float(z):12.6f} {p[0]:12.6f} {p[1]:12.6f} {p[2]:12.6f}")
    body = []
    flat = values.reshape(-1, values.shape[2])
    for row in flat:  # each (i, j) column of n3 values, six per line
        for k in range(0, len(row), 6):
            body.append(" ".join(f"{v:13.5E}" for v in row[k:k + 6]))
    with atomic_path(path, suffix=".cube") as tmp:
        with open(tmp, "w") as fh:
            fh.write("\n".join(lines) + "\n" + "\n".join(body) + "\n")


def density_cubes(folder: str, name: str, basis, numbers, positions, coefficients, *,
                  saed=None, reference=None, spacing: float = 0.2, margin: float = 4.0) -> dict:
    """Write total, difference and (with a reference) error density cubes for one structure.

    Parameters
    ----------
    folder, name : str
        Files are ``folder/name.total.cube``, ``name.difference.cube`` (only when ``saed`` is
        given, i.e. the coefficients are a difference density) and ``name.error.cube``.
    basis : AuxBasis
    numbers, positions : arrays
        Atoms; positions in bohr.
    coefficients : array, shape (n_functions,)
        Difference-density coefficients when ``saed`` is given, total-density otherwise.
    saed : SAED, optional
    reference : callable, optional
        ``reference(points) -> rho_ref`` (e/bohr^3); the error cube is predicted - reference.

    Returns
    -------
    dict
        Kind -> path written.
    """
    import os

    from .grid import evaluate_density, uniform_box

    origin, axes, shape, points = uniform_box(numbers, positions, spacing=spacing, margin=margin)
    rho_fit = evaluate_density(basis, numbers, positions, coefficients, points).cpu().numpy()
    written = {}
    if saed is not None:
        total = rho_fit + saed.evaluate(numbers, positions, points)
        fields = {"total": total, "difference": rho_fit}
    else:
        total = rho_fit
        fields = {"total": total}
    if reference is not None:
        fields["error"] = total - np.asarray(reference(points))
    for kind, values in fields.items():
        path = os.path.join(folder, f"{name}.{kind}.cube")
        write_cube(path, numbers, positions, origin, axes, values.reshape(tuple(shape)),
                   comment=f"{name} {kind} density, auxiliary basis {basis.name}")
        written[kind] = path
    return written


def write_chgcar(path: str, numbers, positions, cell, values, comment: str = "") -> None:
    """Write a density on a cell's uniform grid as a VASP CHGCAR, atomically.

    Parameters
    ----------
    path : str
    numbers : array-like, shape (n_atoms,)
    positions : array-like, shape (n_atoms, 3)
        Bohr.
    cell : array-like, shape (3, 3)
        Lattice vectors as rows, bohr.
    values : array-like, shape (n1, n2, n3)
        Density in e/bohr^3 at ``(i/n1, j/n2, k/n3) @ cell`` (C order, index (i, j, k)).
    comment : str
        First line of the file.
    """
    import io

    from ase import Atoms
    from ase.io.vasp import write_vasp

    from .units import BOHR_ANGSTROM

    numbers = np.asarray(numbers, dtype=np.int64).reshape(-1)
    positions = np.asarray(positions, dtype=np.float64).reshape(len(numbers), 3)
    cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 3:
        raise InputError(f"{path}: CHGCAR values must be a 3-d array, got shape {values.shape}")
    if not np.all(np.isfinite(values)):
        raise InputError(f"{path}: CHGCAR values contain NaN or infinity")
    volume_a = abs(float(np.linalg.det(cell))) * BOHR_ANGSTROM ** 3
    if volume_a < 1e-9:
        raise InputError(f"{path}: zero-volume cell")
    atoms = Atoms(numbers=numbers, positions=positions * BOHR_ANGSTROM, cell=cell * BOHR_ANGSTROM,
                  pbc=True)
    head = io.StringIO()
    write_vasp(head, atoms, direct=True)
    head_lines = head.getvalue().rstrip("\n").split("\n")
    head_lines[0] = comment.replace("\n", " ")[:200] or head_lines[0]  # the POSCAR label line
    # e/bohr^3 -> e/Angstrom^3, times the volume; the first index runs fastest
    flat = (values / BOHR_ANGSTROM ** 3 * volume_a).ravel(order="F")
    lines = [" ".join(f"{v: .11E}" for v in flat[k:k + 5]) for k in range(0, len(flat), 5)]
    dims = " ".join(f"{n:5d}" for n in values.shape)
    with atomic_path(path, suffix=".CHGCAR") as tmp:
        with open(tmp, "w") as fh:
            fh.write("\n".join(head_lines) + "\n\n" + dims + "\n" + "\n".join(lines) + "\n")


def density_cell_files(folder: str, name: str, basis, numbers, positions, cell, coefficients, *,
                       saed=None, shape=None, spacing: float = 0.2,
                       formats=("cube", "chgcar")) -> dict:
    """Write the density of a periodic cell on its uniform grid, with lattice sums.

    Parameters
    ----------
    folder, name : str
        Files are ``folder/name.total.cube`` and ``folder/name.total.CHGCAR`` (and
        ``name.difference.*`` when ``saed`` is given, i.e. the coefficients are a
        difference density).
    basis : AuxBasis
    numbers, positions, cell : arrays
        Atoms and lattice vectors (rows), bohr.
    coefficients : array, shape (n_functions,)
        The home atoms' coefficients (difference density when ``saed`` is given).
    saed : SAED, optional
    shape : sequence of 3 int, optional
        Grid points along each lattice vector (default: spacing at most ``spacing`` bohr).
    formats : tuple of {'cube', 'chgcar'}

    Returns
    -------
    dict
        ``(kind, format)`` -> path written.
    """
    import os

    from .grid import cell_grid, cell_grid_shape, evaluate_density_periodic, saed_periodic

    bad = [f for f in formats if f not in ("cube", "chgcar")]
    if bad:
        raise InputError(f"unknown density file format {bad[0]!r} (expected cube or chgcar)")
    shape = cell_grid_shape(cell, spacing) if shape is None else np.asarray(shape, dtype=np.int64)
    axes, points = cell_grid(cell, shape)
    rho = evaluate_density_periodic(basis, numbers, positions, cell, coefficients,
                                    points).detach().cpu().numpy()
    fields = {"total": rho}
    if saed is not None:
        fields = {"total": rho + saed_periodic(saed, numbers, positions, cell, points), "difference": rho}
    written = {}
    for kind, values in fields.items():
        values = values.reshape(tuple(int(n) for n in shape))
        comment = f"{name} {kind} density, auxiliary basis {basis.name}"
        for fmt in formats:
            if fmt == "cube":
                path = os.path.join(folder, f"{name}.{kind}.cube")
                write_cube(path, numbers, positions, np.zeros(3), axes, values, comment=comment)
            else:
                path = os.path.join(folder, f"{name}.{kind}.CHGCAR")
                write_chgcar(path, numbers, positions, cell, values, comment=comment)
            written[(kind, fmt)] = path
    return written
