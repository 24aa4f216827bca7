"""Density error metrics, defined once.

``eps_mae = 100 % * int |rho_hat - rho_ref| dr / int rho_ref dr``, integrated on an
atom-centred Becke grid (level 3 by default) against the exact reference density of the
chkfile's density matrix (never against its fit). Both densities are all-electron, in
e/bohr^3; for a difference-density (DCD) prediction ``rho_hat`` already includes the
analytic SAED.

The relative gain of DCD over TCD for one structure is
``(eps_TCD - eps_DCD) / eps_TCD`` (positive when the difference density is better).
"""

from __future__ import annotations

import numpy as np

#: Becke grid level used for metrics unless stated otherwise.
DEFAULT_GRID_LEVEL = 3


def eps_mae(rho_hat, rho_ref, weights) -> float:
    """Integrated absolute error relative to the electron count, in percent.

    Parameters
    ----------
    rho_hat, rho_ref : array-like, shape (n_points,)
        Predicted (or fitted) and reference densities, e/bohr^3.
    weights : array-like, shape (n_points,)
        Quadrature weights, bohr^3.
    """
    rho_hat = np.asarray(rho_hat, dtype=np.float64)
    rho_ref = np.asarray(rho_ref, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    return float(100.0 * np.sum(w * np.abs(rho_hat - rho_ref)) / np.sum(w * rho_ref))


def relative_gain(eps_tcd, eps_dcd):
    """(eps_TCD - eps_DCD) / eps_TCD, elementwise."""
    eps_tcd = np.asarray(eps_tcd, dtype=np.float64)
    return (eps_tcd - np.asarray(eps_dcd, dtype=np.float64)) / eps_tcd


def reference_density(mol, dm, points, block: int = 16384, kpts=None) -> np.ndarray:
    """Density of an orbital-basis density matrix at points (PySCF), shape (n_points,).

    Parameters
    ----------
    mol : pyscf.gto.Mole or pyscf.pbc.gto.Cell
        For a Cell the atomic orbitals are lattice sums (Bloch functions at ``kpts``).
    dm : ndarray, shape (nao, nao), or (n_k, nao, nao) for a Cell
        Spin-summed density matrix (per k-point for a Cell; the density is their average).
    points : ndarray, shape (n_points, 3)
        Bohr.
    kpts : ndarray, shape (n_k, 3), optional
        k-points of a Cell's density matrices (bohr^-1); default: the ones
        :func:`densitylearn.reference.load_reference` recorded on the Cell, else gamma.
    """
    points = np.asarray(points, dtype=np.float64)
    if hasattr(mol, "lattice_vectors"):  # a pyscf.pbc Cell
        from .reference import cell_density

        return cell_density(mol, dm, points, kpts=kpts, block=block)
    from pyscf.dft import numint

    out = np.empty(len(points))
    # dm = V diag(lam) V^T keeps only its non-zero eigenpairs (the occupied space: about a
    # fifth of the basis for def2-SVP), so rho = sum_k lam_k (ao . v_k)^2 costs a thin
    # product instead of ao @ dm; any symmetric dm works, fractional or negative lam too
    dm = np.asarray(dm, dtype=np.float64)
    lam, vec = np.linalg.eigh(0.5 * (dm + dm.T))
    keep = np.abs(lam) > 1e-12 * max(1.0, float(np.abs(lam).max(initial=0.0)))
    lam, vec = lam[keep], np.ascontiguousarray(vec[:, keep])
    for i in range(0, len(points), block):
        ao = numint.eval_ao(mol, points[i:i + block])
        out[i:i + block] = (ao @ vec) ** 2 @ lam
    return out


def fitting_floors(mol, dm, basis, coef_total, coef_difference, saed, level: int = DEFAULT_GRID_LEVEL,
                   rho_ref=None, grid=None) -> tuple[float, float]:
    """eps_mae of the fitted TCD and of the fitted DCD plus analytic SAED, percent.

    Returns ``(eps_total, eps_difference)``.
    """
    from .grid import becke_grid, evaluate_density

    points, weights = grid if grid is not None else becke_grid(mol, level=level)
    if rho_ref is None:
        rho_ref = reference_density(mol, dm, points)
    numbers = np.array([int(round(z)) for z in mol.atom_charges()])
    positions = mol.atom_coords(unit="Bohr")
    rho_t = evaluate_density(basis, numbers, positions, coef_total, points).cpu().numpy()
    rho_d = evaluate_density(basis, numbers, positions, coef_difference, points, saed=saed).cpu().numpy()
    return eps_mae(rho_t, rho_ref, weights), eps_mae(rho_d, rho_ref, weights)


#: Radial bins (bohr) of the error profiles around each nucleus, logarithmic.
RADIAL_BINS = np.concatenate([[0.0], np.geomspace(0.02, 10.0, 19)])


def per_element_eps(rho_hat, rho_ref, weights, atom_index, numbers) -> dict:
    """Per-element absolute error and reference electrons through the Becke partition.

    Each Becke-grid point belongs to the atom whose atom-centred grid it came from; its
    weight already carries that atom's Becke cell function, so summing over an atom's points
    integrates over its Becke cell.

    Returns
    -------
    dict
        Z -> (``int |rho_hat - rho_ref|`` over the element's cells, ``int rho_ref`` over them), in e.
        ``100 * err / ref`` is the element's eps_mae in percent.
    """
    numbers = np.asarray(numbers)
    atom_index = np.asarray(atom_index)
    keep = atom_index >= 0
    err = np.bincount(atom_index[keep], weights=(weights * np.abs(rho_hat - rho_ref))[keep],
                      minlength=len(numbers))
    ref = np.bincount(atom_index[keep], weights=(weights * rho_ref)[keep], minlength=len(numbers))
    out = {}
    for z in np.unique(numbers):
        m = numbers == z
        out[int(z)] = (float(err[m].sum()), float(ref[m].sum()))
    return out


def radial_error_profile(rho_hat, rho_ref, weights, atom_index, points, numbers, positions,
                         bins=RADIAL_BINS) -> dict:
    """Absolute error around each element as a function of the distance from its nuclei.

    Returns
    -------
    dict
        Z -> (sum over the element's atoms of ``int |error|`` in each radial bin of its Becke
        cell (shape (len(bins) - 1,), e), number of atoms of Z). Divide by the atom count and
        the bin widths for e/bohr per atom.
    """
    numbers = np.asarray(numbers)
    atom_index = np.asarray(atom_index)
    keep = atom_index >= 0
    a = atom_index[keep]
    r = np.linalg.norm(np.asarray(points)[keep] - np.asarray(positions)[a], axis=1)
    e = (weights * np.abs(rho_hat - rho_ref))[keep]
    b = np.clip(np.searchsorted(bins, r, side="right") - 1, 0, len(bins) - 2)
    out = {}
    for z in np.unique(numbers):
        m = numbers[a] == z
        out[int(z)] = (np.bincount(b[m], weights=e[m], minlength=len(bins) - 1),
                       int((numbers == z).sum()))
    return out
