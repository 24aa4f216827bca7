"""Fitting densities from other codes: accuracy where the exact answer is known
============================================================================

``densitylearn fit-grid`` fits a density given on a uniform grid (a cube file from any
code, a VASP CHGCAR) onto an auxiliary basis by weighted least squares. This script
measures how close that comes to the best fit of the same basis when the exact density is
known: a PySCF PBE/def2-SVP density is written to a cube file (6 significant digits, as
cube files store them), read back and fitted, and the result is compared with the
Coulomb-metric fit of the SCF density matrix (what ``fit-basis`` does; it needs the
density matrix, which other codes do not hand out).

For each molecule, auxiliary basis and cube spacing it prints the L1 residual on the
cube and eps_mae on a level-3 Becke grid against the exact density of

* the total density (TCD) fitted by its own least squares on the cube (``fit-grid
  --total-fit grid``),
* the total density as the difference fit plus the Coulomb fit of the SAED (the default
  of ``fit-grid --difference`` on molecular cubes),
* the Delta-SAED difference fit with the analytic SAED added back (DCD),

the Coulomb fit's eps_mae beside them, the basis directions the cube could not resolve and
the fit time. ``--on-nucleus`` shifts the box so that the first atom sits on a grid point,
as it does in many cube files.

Usage::

    python examples/grid_fit_accuracy.py --molecules h2o,nh3 --spacings 0.2,0.1 \\
        --bases def2-universal-jfit,dl-dcd

A few minutes on one CPU core (the 0.1 bohr cubes hold about 0.8 million points).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

# molecules (Angstrom): the small real molecules of the test suite
MOLECULES = {
    "h2o": "O 0 0 0.117; H 0 0.757 -0.467; H 0 -0.757 -0.467",
    "nh3": "N 0 0 0.112; H 0 0.938 -0.262; H 0.812 -0.469 -0.262; H -0.812 -0.469 -0.262",
    "ch4": "C 0 0 0; H 0.629 0.629 0.629; H -0.629 -0.629 0.629; H -0.629 0.629 -0.629; H 0.629 -0.629 -0.629",
}


def scf(atoms: str):
    """PBE/def2-SVP, level-3 grid (the defaults of ``densitylearn compute``)."""
    from pyscf import dft, gto

    mol = gto.M(atom=atoms, basis="def2-svp", verbose=0)
    mf = dft.RKS(mol, xc="pbe")
    mf.grids.level = 3
    mf.kernel()
    if not mf.converged:
        raise SystemExit(f"SCF did not converge for {atoms}")
    return mol, mf.make_rdm1()


def measure(name: str, mol, dm, basis_name: str, spacing: float, margin: float, work: str,
            saed_cache=None, on_nucleus: bool = False) -> dict:
    from densitylearn.basis import AuxBasis
    from densitylearn.cube import write_cube
    from densitylearn.fitting import fit_reference
    from densitylearn.grid import becke_grid, evaluate_density, uniform_box
    from densitylearn.gridfit import fit_grid, read_cube, saed_coulomb_fit
    from densitylearn.metrics import eps_mae, reference_density
    from densitylearn.saed import load_saed, saed_density_matrix

    numbers = np.array([int(round(z)) for z in mol.atom_charges()])
    pos = mol.atom_coords()
    origin, axes, shape, pts = uniform_box(numbers, pos, spacing=spacing, margin=margin)
    if on_nucleus:  # the first atom on a grid point
        origin = pos[0] - np.round((pos[0] - origin) / spacing) * spacing
        idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
        pts = origin + idx * spacing
    path = os.path.join(work, f"{name}_{spacing:g}.cube")
    write_cube(path, numbers, pos, origin, axes, reference_density(mol, dm, pts).reshape(tuple(shape)))

    basis = AuxBasis.load(basis_name, sorted(set(numbers.tolist())))
    saed = load_saed(sorted(set(numbers.tolist())), xc="pbe", basis="def2-svp", cache_dir=saed_cache)
    t0 = time.perf_counter()
    fit = fit_grid(read_cube(path), basis, saed=saed, electrons=float(mol.nelectron))
    wall = time.perf_counter() - t0
    total_saed = fit.difference + saed_coulomb_fit(basis, numbers, pos, cache_dir=saed_cache)

    bp, bw = becke_grid(mol, level=3)
    rho = reference_density(mol, dm, bp)

    def eps(c, with_saed=False):
        return eps_mae(evaluate_density(basis, numbers, pos, c, bp, saed=saed if with_saed else None).numpy(),
                       rho, bw)

    coul = fit_reference(mol, dm, saed_density_matrix(mol, "pbe", cache_dir=saed_cache), basis)
    return {"molecule": name, "basis": basis_name, "spacing": spacing, "points": fit.n_points,
            "functions": fit.n_functions, "l1_cube": fit.residual_total.l1_percent,
            "eps_grid_t": eps(fit.total), "eps_saed_t": eps(total_saed), "eps_grid_d": eps(fit.difference, True),
            "eps_coul_t": eps(coul.total), "eps_coul_d": eps(coul.total - coul.saed, True),
            "unresolved": fit.unresolved, "wall_s": wall}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--molecules", default="h2o,nh3", help=f"comma list of {', '.join(MOLECULES)}")
    p.add_argument("--bases", default="def2-universal-jfit,dl-dcd")
    p.add_argument("--spacings", default="0.2,0.1", help="cube spacings, bohr")
    p.add_argument("--margin", type=float, default=5.0, help="box margin around the atoms, bohr")
    p.add_argument("--on-nucleus", action="store_true", help="put the first atom on a grid point")
    p.add_argument("--saed-cache", default=None)
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for name in args.molecules.split(","):
            if name not in MOLECULES:
                raise SystemExit(f"unknown molecule {name!r}: choose from {', '.join(MOLECULES)}")
            mol, dm = scf(MOLECULES[name])
            for basis_name in args.bases.split(","):
                for spacing in (float(s) for s in args.spacings.split(",")):
                    rows.append(measure(name, mol, dm, basis_name, spacing, args.margin, work, args.saed_cache,
                                         args.on_nucleus))
                    r = rows[-1]
                    print(f"done {name} {basis_name} {spacing:g} bohr ({r['wall_s']:.1f} s)", flush=True)
    print("| molecule | basis | spacing bohr | points | L1 on cube % | eps_mae TCD grid fit / DCD fit + SAED fit "
          "/ Coulomb fit % | eps_mae DCD grid fit / Coulomb fit % | unresolved | fit s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['molecule']} | {r['basis']} ({r['functions']}) | {r['spacing']:g} | {r['points']:,} | "
              f"{r['l1_cube']:.2f} | {r['eps_grid_t']:.3f} / {r['eps_saed_t']:.3f} / {r['eps_coul_t']:.3f} | "
              f"{r['eps_grid_d']:.3f} / {r['eps_coul_d']:.3f} | {r['unresolved']} | {r['wall_s']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
