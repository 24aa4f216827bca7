"""Fitting floors of auxiliary basis sets on PySCF chkfiles (TCD and Delta-SAED DCD)
=================================================================================

For every chkfile (PBE/def2-SVP reference, e.g. ``refs/qm9_*.chk``) and every
auxiliary basis this script measures, on a level-3 Becke grid against the exact density of
the chkfile's density matrix:

* **SAED alone**: eps_mae of rho_SAED (no fit at all);
* **TCD floor**: eps_mae of the Coulomb-metric fit of the total density matrix D,
  constrained to N electrons;
* **DCD floor**: eps_mae of (Coulomb fit of D - D_SAED, constrained to N - sum Z) + the
  analytic SAED density (evaluated exactly, here as the density of the block-diagonal SAED
  density matrix from :func:`densitylearn.saed.saed_density_matrix`).

with ``eps_mae = 100 * int |rho_fit - rho_ref| / int rho_ref`` (percent). It prints a
markdown table: basis, functions per atom (averaged over the molecules), mean and median
TCD and DCD floors, mean SAED-alone error.

Example (the table of ``docs/basis_sets.rst``)::

    python examples/benchmark_fitting_floors.py 'refs/qm9_12*.chk' \\
        'refs/qm9_13*.chk' \\
        --basis def2-universal-jfit --basis etb:2.0 --basis basis_sets/dl-dcd.nw

Security note: chkfiles are read with h5py and ``json.loads`` only (never
``pyscf.lib.chkfile.load_mol``, which can fall back to ``eval``).

The per-molecule reference data (grid, reference density, SAED density) can be cached in
``--cache DIR`` so that several bases or repeated runs do not recompute them; the helpers
are imported by ``examples/design_dcd_basis.py``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

import numpy as np

# run from a source checkout without installing: put the repository root on sys.path
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BLOCK = 8192  # grid points per AO-evaluation block (memory: BLOCK * n_functions * 8 bytes)


def load_chk(path):
    """(mol, dm) rebuilt from a PySCF chkfile: Mole from '_atom' (bohr) and '_basis'."""
    import h5py
    from pyscf import gto

    with h5py.File(path, "r") as f:
        meta = json.loads(f["mol"][()])
        c = f["scf/mo_coeff"][()]
        occ = f["scf/mo_occ"][()]
    basis = meta.get("_basis") or "def2-svp"
    mol = gto.M(atom=meta["_atom"], unit="Bohr", basis=basis, charge=meta.get("charge", 0),
                spin=meta.get("spin", 0), cart=bool(meta.get("cart", False)), verbose=0)
    if c.ndim == 3:  # unrestricted: sum spins
        dm = sum((c[s] * occ[s]) @ c[s].T for s in range(2))
    else:
        dm = (c * occ) @ c.T
    return mol, dm


class Reference:
    """Everything about one molecule that does not depend on the auxiliary basis."""

    def __init__(self, path, level=3, cache=None, xc="pbe"):
        from pyscf.dft import gen_grid

        from densitylearn.metrics import reference_density
        from densitylearn.saed import saed_density_matrix

        self.path = path
        self.name = os.path.basename(path).rsplit(".", 1)[0]
        self.mol, self.dm = load_chk(path)
        self.dm_saed = saed_density_matrix(self.mol, xc)
        cfile = os.path.join(cache, f"{self.name}_L{level}.npz") if cache else None
        if cfile and os.path.isfile(cfile):
            z = np.load(cfile)
            self.coords, self.weights, self.rho_ref, self.rho_saed = (
                z["coords"], z["weights"], z["rho_ref"], z["rho_saed"])
        else:
            grids = gen_grid.Grids(self.mol)
            grids.level = level
            grids.build()
            self.coords, self.weights = grids.coords, grids.weights
            self.rho_ref = reference_density(self.mol, self.dm, self.coords)
            self.rho_saed = reference_density(self.mol, self.dm_saed, self.coords)
            if cfile:
                os.makedirs(cache, exist_ok=True)
                np.savez(cfile + ".tmp.npz", coords=self.coords, weights=self.weights,
                         rho_ref=self.rho_ref, rho_saed=self.rho_saed)
                os.replace(cfile + ".tmp.npz", cfile)
        self.numbers = np.array([int(round(z)) for z in self.mol.atom_charges()])
        self.n_electrons = float(self.mol.nelectron)

    @property
    def saed_error(self):
        from densitylearn.metrics import eps_mae

        return eps_mae(self.rho_saed, self.rho_ref, self.weights)


def floors(ref: Reference, basis):
    """(TCD floor, DCD floor, functions per atom) of one molecule in one AuxBasis."""
    from densitylearn.fitting import (MetricSolver, electron_integrals, fit_coefficients,
                                      make_auxmol, metric_matrix, project_density_matrices)
    from densitylearn.metrics import eps_mae

    auxmol = make_auxmol(ref.mol, basis)
    b = project_density_matrices(ref.mol, auxmol, [ref.dm, ref.dm - ref.dm_saed], "coulomb")
    solver = MetricSolver(metric_matrix(auxmol, "coulomb"))
    q = electron_integrals(basis, ref.numbers)
    n_d = ref.n_electrons - float(ref.numbers.sum())
    c = fit_coefficients(b, solver, q, [ref.n_electrons, n_d])
    rho_t = np.empty(len(ref.coords))
    rho_d = np.empty(len(ref.coords))
    for i in range(0, len(ref.coords), BLOCK):
        ao = auxmol.eval_gto("GTOval_sph", ref.coords[i:i + BLOCK])
        r = ao @ c.T
        rho_t[i:i + BLOCK] = r[:, 0]
        rho_d[i:i + BLOCK] = r[:, 1]
    rho_d += ref.rho_saed
    return (eps_mae(rho_t, ref.rho_ref, ref.weights), eps_mae(rho_d, ref.rho_ref, ref.weights),
            auxmol.nao / ref.mol.natm)


def load_basis(spec, elements):
    from densitylearn.basis import AuxBasis

    return AuxBasis.load(spec, elements)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("chkfiles", nargs="+", help="chkfile paths or glob patterns")
    ap.add_argument("--basis", action="append", required=True,
                    help="auxiliary basis spec (PySCF name, etb:BETA, shipped name or .nw path); repeat")
    ap.add_argument("--level", type=int, default=3, help="Becke grid level (default 3)")
    ap.add_argument("--cache", default=None, help="folder for per-molecule grid/reference caches")
    ap.add_argument("--threads", type=int, default=1, help="PySCF threads (default 1)")
    ap.add_argument("--limit", type=int, default=0, help="use at most this many chkfiles (sorted)")
    ap.add_argument("--csv", default=None, help="also write per-molecule floors to this CSV")
    args = ap.parse_args(argv)

    from pyscf import lib

    lib.num_threads(args.threads)
    paths = sorted({p for pat in args.chkfiles for p in (glob.glob(pat) or [pat]) if p.endswith(".chk")})
    if args.limit:
        paths = paths[:args.limit]
    if not paths:
        sys.exit("no chkfiles")
    t0 = time.time()
    rows = {spec: [] for spec in args.basis}
    saed = []
    csv = []
    for k, p in enumerate(paths):
        ref = Reference(p, level=args.level, cache=args.cache)
        saed.append(ref.saed_error)
        for spec in args.basis:
            basis = load_basis(spec, sorted(set(ref.numbers)))
            t, d, nf = floors(ref, basis)
            rows[spec].append((t, d, nf))
            csv.append(f"{ref.name},{spec},{nf:.2f},{t:.5f},{d:.5f},{saed[-1]:.4f}")
        print(f"[{k + 1}/{len(paths)}] {ref.name} ({time.time() - t0:.0f} s) "
              + " ".join(f"{s}: {rows[s][-1][0]:.3f}/{rows[s][-1][1]:.3f}" for s in args.basis),
              file=sys.stderr, flush=True)
    if args.csv:
        with open(args.csv, "w") as fh:
            fh.write("molecule,basis,functions_per_atom,tcd_floor,dcd_floor,saed_alone\n")
            fh.write("\n".join(csv) + "\n")
    print(f"{len(paths)} molecules, level-{args.level} Becke grid, Coulomb metric, "
          f"PBE/def2-SVP; mean SAED-alone error {np.mean(saed):.2f} %\n")
    print("| basis | functions/atom | TCD mean % | TCD median % | DCD mean % | DCD median % | SAED alone % |")
    print("|---|---|---|---|---|---|---|")
    for spec in args.basis:
        a = np.array(rows[spec])
        print(f"| {os.path.basename(spec)} | {a[:, 2].mean():.1f} | {a[:, 0].mean():.3f} | "
              f"{np.median(a[:, 0]):.3f} | {a[:, 1].mean():.3f} | {np.median(a[:, 1]):.3f} | "
              f"{np.mean(saed):.2f} |")


if __name__ == "__main__":
    main()
