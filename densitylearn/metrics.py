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


def reference_density(mol, dm, points, block: int = 16384) -> np.ndarray:
    """Density of an orbital-basis density matrix at points (PySCF), shape (n_points,).

    Parameters
    ----------
    mol : pyscf.gto.Mole
    dm : ndarray, shape (nao, nao)
        Spin-summed density matrix.
    points : ndarray, shape (n_points, 3)
        Bohr.
    """
    from pyscf.dft import numint

    points = np.asarray(points, dtype=np.float64)
    out = np.empty(len(points))
    for i in range(0, len(points), block):
        ao = numint.eval_ao(mol, points[i:i + block])
        out[i:i + block] = numint.eval_rho(mol, ao, dm, xctype="LDA")
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
