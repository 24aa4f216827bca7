"""Gaussian cube files of densities (bohr, e/bohr^3), readable by VMD, VESTA and ASE.

Cube grids are for looking at densities, not for integrating them (near nuclei a uniform
grid is a poor quadrature); metrics use Becke grids (:mod:`densitylearn.metrics`).
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
