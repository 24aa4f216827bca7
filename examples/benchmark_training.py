"""Training throughput of the coefficient model (structures per second)
====================================================================

Usage::

    python examples/benchmark_training.py DATA.h5 [--device cpu|cuda] [--batch-size 16]
        [--steps 10] [--target difference] [--loss coulomb] [--threads N] [--amp]

Times full optimisation steps (collate, forward, metric-weighted density loss, backward,
AdamW step) on structures of the given fit-basis dataset with the default model
configuration, and prints structures/s, the estimated time of one epoch of 100k QM9
molecules, and on CUDA the peak GPU memory per batch. The per-structure metric matrices
are computed once beforehand (as the trainer caches them) and not timed.
"""

import argparse
import time

import numpy as np
import torch

from densitylearn import graph as G
from densitylearn.data import CoefficientDataset
from densitylearn.model import DensityModel, ModelConfig, count_parameters
from densitylearn.train import MetricCache, density_loss


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--target", default="difference")
    p.add_argument("--loss", default="coulomb", choices=("coulomb", "overlap", "mse"))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast of the network (CUDA), as TrainConfig.amp")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    ds = CoefficientDataset(args.data)
    gds = G.GraphDataset(ds, args.target)
    model = DensityModel(ModelConfig(), ds.basis, args.target, elements=ds.elements)
    model.fit_normalisation(gds)
    model = model.to(device=device, dtype=dtype)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    cache = MetricCache(ds.basis, args.loss) if args.loss != "mse" else None
    rng = np.random.default_rng(0)
    batches = [rng.choice(len(ds), size=min(args.batch_size, len(ds)), replace=False)
               for _ in range(args.steps + 2)]
    recs = {int(i): ds[int(i)] for b in batches for i in b}
    mats = {i: torch.as_tensor(cache.get(i, r["numbers"], r["positions"]), device=device, dtype=dtype)
            for i, r in recs.items()} if cache else None

    def step(idx):
        records = [recs[int(i)] for i in idx]
        batch = G.to_device(gds.collate(records), device, dtype)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=args.amp and device.type == "cuda"):
            out = model(batch)
        out = {**out, G.COEFFICIENTS: out[G.COEFFICIENTS].to(dtype)}
        loss = density_loss(out[G.COEFFICIENTS], batch[G.TARGET_COEFFICIENTS], batch[G.COEF_OFFSETS].tolist(),
                            [mats[int(i)] for i in idx] if mats else None, batch[G.N_ELECTRONS])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for idx in batches[:2]:  # warm-up
        step(idx)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    n = 0
    for idx in batches[2:]:
        step(idx)
        n += len(idx)
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    atoms = np.mean([len(r["numbers"]) for r in recs.values()])
    print("| device | dtype | amp | params | batch | atoms/structure | structures/s | epoch of 100k (h) | peak GPU MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    mem = f"{torch.cuda.max_memory_allocated() / 2**20:.0f}" if device.type == "cuda" else "-"
    print(f"| {device} ({torch.get_num_threads()} threads) | {args.dtype} | {'bf16' if args.amp else '-'} | "
          f"{count_parameters(model)} | "
          f"{args.batch_size} | {atoms:.1f} | {n / dt:.2f} | {1e5 / (n / dt) / 3600:.2f} | {mem} |")


if __name__ == "__main__":
    main()
