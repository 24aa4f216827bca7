"""Does cuEquivariance speed up the coefficient model? e3nn against cuEquivariance kernels
=======================================================================================

Usage::

    python examples/benchmark_cueq.py STRUCTURES... [--model qm9-dcd] [--device cuda]
        [--batch-sizes 16,64,256] [--dtype float32] [--methods uniform_1d,fused_tp]

STRUCTURES are ASE-readable files (e.g. an extxyz of QM9 molecules). For each backend the
same model (the shipped ``qm9-dcd`` by default, or any checkpoint) predicts the same
batches: inference (coefficients, ``torch.inference_mode``) and one training step (forward,
backward of a loss on the coefficients, AdamW step). The table gives molecules per second,
the ratio to e3nn, peak GPU memory, and the largest deviation of the coefficients from
e3nn's on the first batch (relative to the largest coefficient). Each time is the median of
``--repeat`` passes over all batches after one warm-up pass.
"""

import argparse
import copy
import statistics
import sys
import time
import warnings

import torch


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("structures", nargs="+")
    ap.add_argument("--model", default="qm9-dcd")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--batch-sizes", default="16,64,256")
    ap.add_argument("--methods", default="uniform_1d,fused_tp",
                    help="cuEquivariance methods to time besides e3nn")
    ap.add_argument("--max-structures", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")

    import densitylearn as dl
    from densitylearn import graph as G
    from densitylearn.cueq import cueq_available
    from densitylearn.predict import read_inputs

    dev = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    pred = dl.load_model(args.model, device=dev)
    structures = pred.check(read_inputs(args.structures))[:args.max_structures]
    n_atoms = sum(len(s.numbers) for s in structures) / len(structures)
    print(f"device {torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'cpu'}; model {args.model}; "
          f"{len(structures)} molecules, {n_atoms:.1f} atoms on average; {args.dtype}; "
          f"torch {torch.__version__}; cuEquivariance kernels: {cueq_available(kernels=True)}")
    backends = [("e3nn", None)] + [("cueq", m) for m in args.methods.split(",") if m]

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    rows = []
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        batches = [G.to_device(G.collate([pred._record(s) for s in structures[i:i + bs]], pred.basis), dev)
                   for i in range(0, len(structures), bs)]
        for b in batches:
            G.add_edges(b, pred.model.config.cutoff)
        ref = None
        base = {}
        for backend, method in backends:
            net = copy.deepcopy(pred.model).to(dtype)
            try:
                net.set_backend(backend, method)
                with torch.inference_mode():
                    first = net(batches[0])[G.COEFFICIENTS].double()
            except Exception as exc:  # a method the installed kernels do not offer
                print(f"batch {bs}, {backend} {method}: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
                continue
            if ref is None:
                ref = first
            dev_rel = float((first - ref).abs().max() / ref.abs().max())
            used = net.layers[0]._cueq[0].method if backend == "cueq" else "-"

            def infer():
                with torch.inference_mode():
                    for b in batches:
                        net(b)

            opt = torch.optim.AdamW(net.parameters(), lr=1e-4)

            def train_pass():
                for b in batches:
                    c = net(b)[G.COEFFICIENTS]
                    loss = c.square().mean()
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()

            res = {}
            for name, fn in (("inference", infer), ("training", train_pass)):
                fn()
                sync()
                if dev.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(dev)
                times = []
                for _ in range(args.repeat):
                    t = time.perf_counter()
                    fn()
                    sync()
                    times.append(time.perf_counter() - t)
                res[name] = len(structures) / statistics.median(times)
                res[name + "_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else float("nan")
            if backend == "e3nn":
                base = res
            rows.append((bs, f"{backend}" + (f" ({used})" if backend == "cueq" else ""), res, base, dev_rel))
            if dev.type == "cuda":
                torch.cuda.empty_cache()

    print()
    print("| batch | backend | inference mol/s | x e3nn | training mol/s | x e3nn | peak MB (train) | max dev. from e3nn |")
    print("|---|---|---|---|---|---|---|---|")
    for bs, name, res, base, dev_rel in rows:
        print(f"| {bs} | {name} | {res['inference']:.0f} | {res['inference'] / base['inference']:.2f} | "
              f"{res['training']:.0f} | {res['training'] / base['training']:.2f} | {res['training_mb']:.0f} | "
              f"{dev_rel:.1e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
