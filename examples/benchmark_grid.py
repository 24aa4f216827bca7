"""
Benchmark: densities on grids, densitylearn (torch) vs PySCF ``eval_gto``
=========================================================================

Evaluates rho(r) = sum_P c_P chi_P(r) with :func:`densitylearn.grid.evaluate_density`
and with PySCF (``mol.eval_gto('GTOval_sph', points) @ c`` in point blocks) on the same
basis, coefficients and points, for one water molecule on a level-3 Becke grid and for
water boxes (random orientations on a cubic lattice, ~3 A apart) with atom-centred random
points. Prints a table of

* basis-function values per second, counted dense-equivalent (n_points * n_functions /
  time; our evaluator screens, so it computes far fewer values for big systems),
* points per second, the ratio to PySCF on the same CPU, time and peak memory
  (``torch.cuda.max_memory_allocated`` on GPU, process peak RSS on CPU).

On CUDA it also times PySCF on the CPU and gpu4pyscf's ``eval_ao`` when importable. For
large systems PySCF is timed on a subset of the points (marked ``*``) and scaled: its cost
per point is independent of the number of points.

Run::

    python examples/benchmark_grid.py --max-atoms 600 --device cpu
    python examples/benchmark_grid.py --max-atoms 5000 --device cuda
"""

# %%
import argparse
import os
import resource
import time

import numpy as np
import torch

from densitylearn.basis import AuxBasis
from densitylearn.grid import becke_grid, evaluate_density, shell_radii
from densitylearn.units import ANGSTROM_BOHR

WATER = np.array([[0.0, 0.0, 0.1173], [0.0, 0.7572, -0.4692], [0.0, -0.7572, -0.4692]]) * ANGSTROM_BOHR


def water_box(n_molecules, spacing_angstrom=3.0, seed=0):
    """Water molecules in random orientations on a cubic lattice; (numbers, positions bohr)."""
    rng = np.random.default_rng(seed)
    k = int(np.ceil(n_molecules ** (1 / 3) - 1e-9))
    sites = np.stack(np.meshgrid(*[np.arange(k)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n_molecules]
    pos = []
    for s in sites:
        q, r = np.linalg.qr(rng.normal(size=(3, 3)))
        q = q * np.sign(np.diag(r))
        if np.linalg.det(q) < 0:
            q[:, 0] *= -1
        pos.append(WATER @ q.T + s * spacing_angstrom * ANGSTROM_BOHR)
    return np.tile([8, 1, 1], n_molecules), np.concatenate(pos)


def atom_centred_points(positions, per_atom, seed=1):
    """Random points around each atom, radii log-uniform in [0.02, 8] bohr (Becke-like)."""
    rng = np.random.default_rng(seed)
    n = len(positions) * per_atom
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    r = np.exp(rng.uniform(np.log(0.02), np.log(8.0), size=(n, 1)))
    return np.repeat(positions, per_atom, axis=0) + d * r


def needed_values(basis, numbers, positions, points):
    """Basis-function values within their shells' screening radius (what must be computed)."""
    from scipy.spatial import cKDTree

    tree = cKDTree(points)
    total = 0
    for z in np.unique(numbers):
        at = positions[numbers == z]
        for shell, rad in zip(basis.shells(z), shell_radii(basis, z)):
            total += shell.n_functions * int(tree.query_ball_point(at, rad, return_length=True).sum())
    return total


def timeit(fn, repeat, sync=None):
    fn()
    if sync:
        sync()
    best = np.inf
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        if sync:
            sync()
        best = min(best, time.perf_counter() - t)
    return best


def pyscf_density(aux, c, pts, block=4096):
    out = np.empty(len(pts))
    for i in range(0, len(pts), block):
        out[i:i + block] = aux.eval_gto("GTOval_sph", pts[i:i + block]) @ c
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--basis", default="def2-universal-jfit")
    ap.add_argument("--max-atoms", type=int, default=600)
    ap.add_argument("--points-per-atom", type=int, default=300)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    ap.add_argument("--threads", type=int, default=1, help="CPU threads for torch and PySCF")
    ap.add_argument("--pyscf-max-values", type=float, default=3e8,
                    help="time PySCF on a point subset beyond this many dense values")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--chunk-size", type=int, default=None)
    ap.add_argument("--skip-pyscf", action="store_true", help="time only densitylearn (chunk-size sweeps)")
    ap.add_argument("--no-triton", action="store_true", help="CUDA: the torch path instead of the fused kernels")
    args = ap.parse_args()

    from pyscf import gto, lib

    if args.no_triton:
        os.environ["DENSITYLEARN_NO_TRITON"] = "1"
    from densitylearn import _triton_grid

    torch.set_num_threads(args.threads)
    lib.num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else None
    try:
        from gpu4pyscf.dft import numint as g4numint
        import cupy
    except Exception:  # noqa: BLE001 - optional
        g4numint = None
    basis = AuxBasis.load(args.basis, [1, 8])
    rng = np.random.default_rng(2)

    systems = [("H2O Becke L3", *water_box(1), None)]
    sizes = [n for n in (4, 16, 64, 256, 1024, 4096) if 3 * n <= args.max_atoms]
    if args.max_atoms // 3 >= 1 and args.max_atoms // 3 not in sizes:
        sizes.append(args.max_atoms // 3)
    for n in sizes:
        systems.append((f"{n} H2O box", *water_box(n), args.points_per_atom))

    print(f"basis {basis.name}; device {device} ({torch.cuda.get_device_name() if cuda else 'CPU'}), "
          f"{args.dtype}; threads {args.threads}; "
          f"{'fused Triton kernels' if _triton_grid.available(device) else 'torch path'}")
    hdr = (f"{'system':>16} {'atoms':>6} {'points':>9} {'nfunc':>7} | {'ours s':>8} {'ours val/s':>11} "
           f"{'ours pt/s':>10} {'need val/s':>10} {'peak MB':>8} | {'pyscf s':>9} {'pyscf val/s':>11} {'pyscf pt/s':>10} "
           f"| {'speedup':>7} {'max|diff|':>9}")
    extra = " | gpu4pyscf val/s" if (cuda and g4numint is not None) else ""
    print(hdr + extra)
    print("-" * (len(hdr) + len(extra)))
    for name, z, pos, per_atom in systems:
        pts = becke_grid((z, pos), level=3)[0] if per_atom is None else atom_centred_points(pos, per_atom)
        nf = int(basis.layout(z)[-1])
        c = rng.normal(size=nf) * 0.1
        c_t = torch.tensor(c, dtype=dtype, device=device)
        p_t = torch.tensor(pts, dtype=dtype, device=device)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        with torch.no_grad():
            t_ours = timeit(lambda: evaluate_density(basis, z, pos, c_t, p_t, chunk_size=args.chunk_size),
                            args.repeat, sync)
            rho = evaluate_density(basis, z, pos, c_t, p_t, chunk_size=args.chunk_size).cpu().numpy()
        peak = (torch.cuda.max_memory_allocated() if cuda
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**20

        aux = gto.M(atom=[(int(a), tuple(p)) for a, p in zip(z, pos)], unit="Bohr",
                    basis=basis.to_pyscf_basis(), spin=int(z.sum()) % 2, verbose=0)
        sub = len(pts)
        if len(pts) * nf > args.pyscf_max_values:
            sub = max(1000, int(args.pyscf_max_values // nf))
        idx = rng.choice(len(pts), size=sub, replace=False) if sub < len(pts) else np.arange(len(pts))
        if args.skip_pyscf:
            t_py = diff = float("nan")
        else:
            t_py = timeit(lambda: pyscf_density(aux, c, pts[idx]), 1) * len(pts) / sub
            diff = np.abs(pyscf_density(aux, c, pts[idx]) - rho[idx]).max()
        dense = len(pts) * nf
        need = needed_values(basis, z, pos, pts)
        mark = "*" if sub < len(pts) else " "
        line = (f"{name:>16} {len(z):>6} {len(pts):>9} {nf:>7} | {t_ours:8.3f} {dense / t_ours:11.3e} "
                f"{len(pts) / t_ours:10.3e} {need / t_ours:10.3e} {peak:8.0f} | {t_py:8.3f}{mark} {dense / t_py:11.3e} "
                f"{len(pts) / t_py:10.3e} | {t_py / t_ours:7.2f} {diff:9.1e}")
        if cuda and g4numint is not None:
            try:
                gmol = aux
                cp = cupy.asarray(pts[idx])
                t_g = timeit(lambda: g4numint.eval_ao(gmol, cp), args.repeat,
                             cupy.cuda.runtime.deviceSynchronize) * len(pts) / sub
                line += f" | {dense / t_g:11.3e}"
            except Exception as exc:  # noqa: BLE001
                line += f" | failed ({type(exc).__name__})"
        print(line, flush=True)
    print("val/s: dense-equivalent basis-function values per second (n_points * n_functions / time);\n"
          "need val/s: values inside the screening radii (what a screened code must compute) per second;\n"
          "* PySCF timed on a random point subset and scaled; max|diff| on that subset (e/bohr^3).")


if __name__ == "__main__":
    main()
