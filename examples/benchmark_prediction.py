"""
Benchmark: prediction throughput (molecules per second)
=======================================================

Times what a user of a trained model waits for, on the structures of a fit-basis dataset
(repeated to ``--n`` molecules):

* coefficient prediction with :meth:`densitylearn.predict.Predictor.predict` (structure
  conversion and checks, graph building, the network, copying the coefficients back), at
  several batch sizes;
* prediction plus the total density (SAED added for DCD) on each molecule's level-3 Becke
  grid: the grid from PySCF (CPU), the density with
  :func:`densitylearn.grid.evaluate_density_batch` for many molecules at once. The grid
  generation is reported separately, because a user evaluating repeatedly on the same
  molecules builds it once.

The network is the default architecture; with ``--model`` a trained checkpoint is used,
otherwise an untrained one with the same layers (the weights do not change the cost).

Run::

    python examples/benchmark_prediction.py DATA.h5 --device cpu --threads 2
    python examples/benchmark_prediction.py DATA.h5 --device cuda --n 4096
"""

import argparse
import time

import numpy as np
import torch

from densitylearn import _triton_grid
from densitylearn import graph as G
from densitylearn.data import CoefficientDataset
from densitylearn.grid import (BATCH_COEFFICIENTS, BATCH_N_ATOMS, BATCH_N_POINTS, BATCH_NUMBERS,
                               BATCH_POINTS, BATCH_POSITIONS, becke_grid, evaluate_density_batch)
from densitylearn.model import DensityModel, ModelConfig
from densitylearn.predict import Predictor, load_model
from densitylearn.structure import Structure


def untrained_predictor(ds, target, device):
    model = DensityModel(ModelConfig(), ds.basis, target, elements=ds.elements)
    model.fit_normalisation(G.GraphDataset(ds, target))
    model = model.to(device).eval()
    saed = ds.saed if target == "difference" else None
    return Predictor(model=model, target=target, saed=saed, xc="", orbital_basis="",
                     checkpoint="(untrained)", description={}, device=device)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser(description="prediction throughput")
    ap.add_argument("data", help="fit-basis dataset, or (with --model) any ASE-readable structure file: "
                                 "its structures are predicted")
    ap.add_argument("--model", help="trained checkpoint (default: untrained default architecture)")
    ap.add_argument("--target", default="difference", choices=("difference", "total"))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--n", type=int, default=512, help="molecules to predict")
    ap.add_argument("--batch-sizes", default="16,64,256")
    ap.add_argument("--grid-molecules", type=int, default=64, help="molecules for the density-on-grid timing")
    ap.add_argument("--grid-level", type=int, default=3)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        from pyscf import lib

        lib.num_threads(args.threads)
    device = torch.device(args.device)
    if args.data.endswith(".h5"):
        ds = CoefficientDataset(args.data)
        pred = load_model(args.model, device=device) if args.model else untrained_predictor(ds, args.target, device)
        base = []
        for i in range(len(ds)):
            r = ds[i]
            base.append(Structure(numbers=np.asarray(r["numbers"]), positions=np.asarray(r["positions"]),
                                  name=str(r.get("name", i))))
        basis_name = ds.basis.name
    else:
        if not args.model:
            ap.error("a structure file needs --model")
        from densitylearn.predict import read_inputs

        pred = load_model(args.model, device=device)
        base = pred.check(read_inputs([args.data]))
        basis_name = pred.basis.name
    mols = [base[i % len(base)] for i in range(args.n)]
    atoms = np.mean([len(s.numbers) for s in mols])
    dev_name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device {dev_name}; {args.n} molecules, {atoms:.1f} atoms on average; basis {basis_name}; "
          f"target {pred.target}; model {pred.checkpoint}")

    print("\n| batch size | molecules/s (coefficients) | s total | peak GPU MB |")
    print("|---|---|---|---|")
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        pred.predict(mols[:bs], batch_size=bs)  # warm-up
        sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        out = pred.predict(mols, batch_size=bs)
        sync(device)
        dt = time.perf_counter() - t
        mem = f"{torch.cuda.max_memory_allocated() / 2**20:.0f}" if device.type == "cuda" else "-"
        print(f"| {bs} | {len(out) / dt:.1f} | {dt:.2f} | {mem} |", flush=True)

    # prediction + density on Becke grids
    gm = mols[:args.grid_molecules]
    t = time.perf_counter()
    grids = [becke_grid((s.numbers, s.positions), level=args.grid_level)[0] for s in gm]
    t_grid = time.perf_counter() - t
    n_pts = sum(len(g) for g in grids)
    # the same grids built with torch on the device (densitylearn.becke), checked against PySCF's
    from densitylearn.becke import becke_grid_torch

    becke_grid_torch(gm[0].numbers, gm[0].positions, level=args.grid_level, device=device)  # warm-up
    sync(device)
    t = time.perf_counter()
    tgrids = [becke_grid_torch(s.numbers, s.positions, level=args.grid_level, device=device) for s in gm]
    sync(device)
    t_tgrid = time.perf_counter() - t
    w_ref = sum(float(becke_grid((s.numbers, s.positions), level=args.grid_level)[1].sum()) for s in gm[:4])
    w_tst = sum(float(w.sum()) for _, w in tgrids[:4])
    assert abs(w_tst - w_ref) < 1e-9 * abs(w_ref), (w_tst, w_ref)
    bs = max(int(b) for b in args.batch_sizes.split(","))

    def predict_and_evaluate(with_saed=True):
        ps = pred.predict(gm, batch_size=bs)
        batch = {BATCH_NUMBERS: np.concatenate([s.numbers for s in gm]),
                 BATCH_POSITIONS: torch.as_tensor(np.concatenate([s.positions for s in gm]), device=device),
                 BATCH_COEFFICIENTS: torch.as_tensor(np.concatenate([p.coefficients for p in ps]), device=device),
                 BATCH_POINTS: torch.as_tensor(np.concatenate(grids), device=device),
                 BATCH_N_ATOMS: np.array([len(s.numbers) for s in gm]),
                 BATCH_N_POINTS: np.array([len(g) for g in grids])}
        with torch.no_grad():
            rho = evaluate_density_batch(pred.basis, batch, saed=pred.saed if with_saed else None)
        sync(device)
        return rho

    def timed(fn):
        fn()  # warm-up
        t = time.perf_counter()
        out = fn()
        return time.perf_counter() - t, out

    dt, rho = timed(predict_and_evaluate)
    assert torch.isfinite(rho).all()
    dt_nosaed, _ = timed(lambda: predict_and_evaluate(False))
    dt_pred, _ = timed(lambda: pred.predict(gm, batch_size=bs))
    print(f"\nprediction + float64 density on level-{args.grid_level} Becke grids, {len(gm)} molecules, "
          f"{n_pts / len(gm):.0f} points each ({'fused Triton' if _triton_grid.available(device) else 'torch'} "
          f"grid path):")
    print("| step | molecules/s | s |")
    print("|---|---|---|")
    print(f"| Becke grid generation (PySCF, CPU) | {len(gm) / t_grid:.1f} | {t_grid:.3f} |")
    print(f"| coefficient prediction alone | {len(gm) / dt_pred:.1f} | {dt_pred:.3f} |")
    print(f"| prediction + density without the SAED | {len(gm) / dt_nosaed:.1f} | {dt_nosaed:.3f} |")
    print(f"| prediction + total density (SAED added) | {len(gm) / dt:.1f} | {dt:.3f} |")
    print(f"| all, grid generation included | {len(gm) / (dt + t_grid):.1f} | {dt + t_grid:.3f} |")
    print(f"| Becke grid generation (densitylearn.becke, torch, {device.type}) | {len(gm) / t_tgrid:.1f} | "
          f"{t_tgrid:.3f} |")
    print(f"| all, torch grid generation included | {len(gm) / (dt + t_tgrid):.1f} | {dt + t_tgrid:.3f} |")

if __name__ == "__main__":
    main()
