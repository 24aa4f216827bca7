"""TCD vs DCD on QM9: the Delta-SAED benchmark, one command
========================================================

Usage::

    python examples/qm9_delta_saed_benchmark.py --work qm9bench \\
        --train 1-119999:2000 --test 120000-133885:500 --sizes 100,1000,2000 \\
        [--epochs 200] [--device cuda] [--workers 4] [--auxbasis dl-dcd] \\
        [--max-train K] [--max-test M] [--enrich F:30] [--export models/] [--config train.json] [--parallel] \\
        [--init-from DIR]

``--max-train``/``--max-test`` keep the first K/M molecules of the seeded samples (same
molecules as a longer run with the same ``--train``/``--test``, so a run can grow).
``--enrich F:30`` adds 30 seeded training-range molecules that contain F (a uniform sample
of a few hundred holds almost none, and a model refuses elements it never saw);
``--enrich F:30,N3:40`` also adds 40 with at least three N atoms; ``NO2:K`` adds K with a
nitro group.
``--export DIR`` writes the TCD and DCD models of the largest size as slim model files
(``qm9-tcd.pt``, ``qm9-dcd.pt``) with a model card holding the held-out results; these are
the files shipped in ``densitylearn/pretrained``. ``--init-from DIR`` fine-tunes: each run
starts from the weights of ``DIR/qm9-tcd.pt`` or ``DIR/qm9-dcd.pt`` (e.g. the shipped pair,
when more data has been computed) instead of a fresh initialisation.

Steps (every one resumable: rerun the same command after an interruption):

1. reference DFT (PBE/def2-SVP, level-3 grid) for a seeded random sample of QM9 molecules
   from the training range (indices < 120000) and from the held-out range (>= 120000);
2. density fitting onto the auxiliary basis (``fit-basis``; floors only for the test set);
3. for every training-set size, a TCD and a DCD model with identical architecture, data
   and hyperparameters (``train`` with ``target`` total / difference); a size below the
   sample's trains on a seeded random subset of its training split, nested across sizes
   (work folders from before 2026-12-06 took the first N by QM9 index: rerun those with
   ``{"train_subset": "first"}`` in ``--config``);
4. predictions on the held-out molecules and ``evaluate`` against the exact reference
   densities (level-3 Becke grid);
5. a markdown table (mean / median eps_mae, the basis floor beside it, the fraction of
   held-out molecules on which DCD beats TCD), per-element errors, and a learning-curve
   plot ``learning_curve.png`` in the work folder; everything also in ``results.json``.

The held-out range is never trained or tuned on: validation splits come from the training
sample only.
"""

from __future__ import annotations

import argparse
import glob
import json
import os

import numpy as np


def sample(spec: str, seed: int) -> list[int]:
    """``A-B:N``: N seeded random QM9 indices from A..B that exist in QM9."""
    from densitylearn.structure import parse_index_range

    rng_part, n = spec.split(":")
    pool = np.array(parse_index_range(rng_part))
    rng = np.random.default_rng(seed)
    # Random order, not sorted: ``existing`` keeps the first n, which must be a uniform sample.
    return rng.choice(pool, size=min(int(n) * 2, len(pool)), replace=False).tolist(), int(n)


def existing(indices, n):
    """The first n indices of ``indices`` that exist in QM9 (3054 indices are absent)."""
    import csv

    from densitylearn.structure import _qm9_data_dir

    csv.field_size_limit(1 << 30)
    present = set()
    for f in sorted(glob.glob(os.path.join(_qm9_data_dir(), "qm9_part*.csv"))):
        with open(f, newline="") as fh:
            present.update(int(r["Index"]) for r in csv.DictReader(fh))
    return [i for i in indices if i in present][:n]


def enrichment(spec: str | None, seed: int, exclude) -> list[int]:
    """``X:K[,Y:L]``: K seeded random training-range QM9 molecules that contain element X;
    ``Xm:K`` (e.g. ``N3:40``) those with at least m atoms of X; ``NO2:K`` those with a
    nitro group (``N(=O)=O`` in QM9's SMILES).

    A uniform sample of a few hundred QM9 molecules holds almost no fluorine (1.5 % of
    QM9 contains F), so a model trained on it refuses every held-out F molecule; almost no
    molecules with three or more N atoms (6 % of the training range); and no nitro group:
    QM9's ordering puts 118 of its 139 nitro compounds in the held-out range (indices >=
    120000), 21 in the training range. These extra molecules come from the training range
    only and are added to the training set.
    """
    import ast
    import csv
    from collections import Counter

    from densitylearn.structure import QM9_HELDOUT_START, _qm9_data_dir

    if not spec:
        return []
    csv.field_size_limit(1 << 30)
    rows = []
    for f in sorted(glob.glob(os.path.join(_qm9_data_dir(), "qm9_part*.csv"))):
        with open(f, newline="") as fh:
            rows += [(int(r["Index"]), Counter(ast.literal_eval(r["Elements"])) + Counter(NO2=nitro_groups(r["SMILES"])))
                     for r in csv.DictReader(fh)]
    rows.sort()
    taken, out = set(exclude), []
    for k, (element, least, count) in enumerate(enrich_parts(spec)):
        pool = [i for i, els in rows if els[element] >= least and i < QM9_HELDOUT_START and i not in taken]
        rng = np.random.default_rng(seed + 100 + k)
        pick = rng.choice(pool, size=min(int(count), len(pool)), replace=False).tolist()
        taken.update(pick)
        out += pick
    return out


def nitro_groups(smiles: str) -> int:
    """Nitro groups in a QM9 SMILES string, which writes them ``N(=O)=O`` (or ``O=N(=O)``
    at the start), never in charge-separated form."""
    return smiles.count("N(=O)=O") + smiles.startswith("O=N(=O)")


def enrich_parts(spec: str) -> list[tuple[str, int, int]]:
    """``X:K[,Ym:L]`` -> [(element, at least this many atoms of it, molecules), ...]; QM9
    elements (or ``NO2``, nitro groups), m >= 1 and counts >= 1, else ValueError naming the part."""
    import re

    parts = []
    for part in spec.split(","):
        m = re.fullmatch(r"([HCNOF]|NO2)([1-9][0-9]*)?:([0-9]+)", part)
        if not m or int(m.group(3)) < 1:
            raise ValueError(f"{part!r}: expected ELEMENT:COUNT or ELEMENTm:COUNT with a QM9 element "
                             "(H C N O F) or NO2 (nitro groups), m >= 1 of it and a count >= 1, "
                             "e.g. F:30, N3:40 or NO2:20")
        parts.append((m.group(1), int(m.group(2) or 1), int(m.group(3))))
    return parts


def enrich_spec(spec: str) -> str:
    """argparse type of ``--enrich``: ``X:K[,Y:L]`` or ``Xm:K`` (at least m atoms of X)."""
    import argparse

    try:
        enrich_parts(spec)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return spec


def _train_job(job):
    """One training run in a worker process with its own thread budget."""
    import torch

    from densitylearn.train import train

    data, run, cfg, threads = job
    torch.set_num_threads(threads)
    train(data, run, cfg, progress=False)


def n_train(n: int, size: int, seed: int) -> int:
    """Molecules a run with ``max_train_structures=size`` trains on (the validation split
    comes out of the ``n`` sampled molecules first)."""
    from densitylearn.train import TrainConfig, split_indices

    train_idx, _ = split_indices(n, TrainConfig.val_fraction, seed)
    return min(size, len(train_idx))


def _init_file(args, target: str) -> str | None:
    lab = {"total": "tcd", "difference": "dcd"}[target]
    return os.path.join(args.init_from, f"qm9-{lab}.pt") if args.init_from else None


def _init_note(args, target: str) -> str:
    """Provenance of a fine-tuned model: the starting model and what it was trained on."""
    if not args.init_from:
        return ""
    from densitylearn.train import load_checkpoint

    path = _init_file(args, target)
    card = json.loads(load_checkpoint(path).get("card") or "{}")
    before = card.get("training_data", "")
    return (f"; fine-tuned from the weights of {os.path.basename(path)}"
            + (f", itself trained on {before}" if before else ""))


def export_largest(args, results, size, n_sample, n_test, reports):
    """Slim qm9-tcd.pt / qm9-dcd.pt of the largest run, with the held-out results as card."""
    from densitylearn.evaluate import write_plots
    from densitylearn.train import export_model

    os.makedirs(args.export, exist_ok=True)
    from ase.data import chemical_symbols

    from densitylearn.train import load_checkpoint

    run = results["runs"][-1]
    ck = load_checkpoint(os.path.join(args.work, f"run_difference_{size}_of_{n_sample}", "best.pt"))
    elements = " ".join(chemical_symbols[z] for z in ck["model"]["elements"])
    for target, lab in (("total", "TCD"), ("difference", "DCD")):
        other = "DCD" if lab == "TCD" else "TCD"
        card = {
            "name": f"qm9-{lab.lower()}",
            "target": target,
            "reference": "PBE/def2-SVP, restricted Kohn-Sham, PySCF level-3 grid (densitylearn compute)",
            "auxiliary_basis": args.auxbasis,
            "training_data": (f"{run['n_train']} QM9 molecules (seeded sample {args.train}, seed {args.seed}, "
                              f"first {n_sample - results['enriched']}"
                              + (f", plus {results['enriched']} seeded molecules from --enrich {args.enrich}"
                                 if results["enriched"] else "")
                              + "; validation split from the same sample; no index >= 120000)"
                              + _init_note(args, target)),
            "elements": elements,
            "heldout": {"molecules": n_test,
                        "sample": (f"{args.test} (seed {args.seed + 1}), first {results['test_indices']}, "
                                   f"less {results['test_skipped_elements']} with elements outside the training data"),
                        "eps_mae_mean_percent": run[lab]["mean"], "eps_mae_median_percent": run[lab]["median"],
                        f"{other}_eps_mae_mean_percent": run[other]["mean"],
                        "dcd_better_fraction": run["dcd_better_fraction"],
                        "fitting_floor_mean_percent": results["floor"][lab]["mean"]},
            "summary": (f"{lab} model trained on {run['n_train']} QM9 molecules (PBE/def2-SVP, {args.auxbasis}); "
                        f"held-out eps_mae {run[lab]['mean']:.2f} % mean on {n_test} molecules "
                        f"(floor {results['floor'][lab]['mean']:.2f} %)"),
            "script": "examples/qm9_delta_saed_benchmark.py",
            "citation": "Delta-SAED: arXiv:2510.00788v1",
        }
        src = os.path.join(args.work, f"run_{target}_{size}_of_{n_sample}", "best.pt")
        info = export_model(src, os.path.join(args.export, f"qm9-{lab.lower()}.pt"), card=card)
        print(f"exported {info['path']} ({info['bytes'] / 1e6:.2f} MB)")
        try:
            write_plots(reports[target], os.path.join(args.work, f"plots_{lab.lower()}_{size}"))
        except Exception as exc:  # plots are a convenience; the table and JSON are the result
            print(f"plots skipped: {exc}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", required=True)
    p.add_argument("--train", default="1-119999:1000")
    p.add_argument("--test", default="120000-133885:500")
    p.add_argument("--sizes", default="100,1000")
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--auxbasis", default="dl-dcd")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default=None, help="JSON with ModelConfig fields")
    p.add_argument("--config", default=None,
                   help="JSON with further TrainConfig fields (e.g. val_structures, lr); the same for TCD and DCD")
    p.add_argument("--max-train", type=int, default=None, help="use the first K molecules of the training sample")
    p.add_argument("--max-test", type=int, default=None, help="use the first M molecules of the held-out sample")
    p.add_argument("--enrich", default=None, type=enrich_spec,
                   help="X:K adds K seeded training-range molecules containing element X (e.g. F:30); "
                        "Xm:K those with at least m atoms of X (e.g. N3:40); NO2:K those with a nitro group; "
                        "comma-separated")
    p.add_argument("--parallel", action="store_true", help="train TCD and DCD at once, one process each")
    p.add_argument("--init-from", default=None, metavar="DIR",
                   help="fine-tune: start from DIR/qm9-tcd.pt and DIR/qm9-dcd.pt instead of fresh weights")
    p.add_argument("--export", default=None, help="write slim qm9-tcd.pt / qm9-dcd.pt of the largest size here")
    args = p.parse_args()
    if args.init_from:
        missing = [f for f in ("qm9-tcd.pt", "qm9-dcd.pt") if not os.path.isfile(os.path.join(args.init_from, f))]
        if missing:
            p.error(f"--init-from {args.init_from}: no {' or '.join(missing)} there")

    from densitylearn.evaluate import evaluate_file
    from densitylearn.predict import predict_files
    from densitylearn.preprocess import FitSettings, fit_basis
    from densitylearn.reference import compute_references
    from densitylearn.structure import QM9_HELDOUT_START, qm9_structures
    from densitylearn.train import TrainConfig, train

    os.makedirs(args.work, exist_ok=True)
    train_idx = existing(*sample(args.train, args.seed))
    test_idx = existing(*sample(args.test, args.seed + 1))
    train_idx, test_idx = train_idx[:args.max_train], test_idx[:args.max_test]
    extra = enrichment(args.enrich, args.seed, train_idx)
    train_idx = train_idx + extra
    assert max(train_idx) < QM9_HELDOUT_START <= min(test_idx), "training sample reaches the held-out range"
    sizes = sorted(int(s) for s in args.sizes.split(","))
    results = {"train_indices": len(train_idx), "enriched": len(extra), "test_indices": len(test_idx), "runs": []}

    chks = {}
    for name, idx in (("train", train_idx), ("test", test_idx)):
        refs = os.path.join(args.work, f"refs_{name}")
        compute_references(qm9_structures(idx), refs, workers=args.workers)
        chks[name] = [os.path.join(refs, f"qm9_{i:06d}.chk") for i in idx]
        # one dataset per sample size, so that a grown run never reuses a smaller fit
        data = os.path.join(args.work, f"{name}_{len(idx)}.h5")
        if not os.path.exists(data):
            fit_basis(chks[name], data,
                      FitSettings(auxbasis=args.auxbasis, floor_grid_level=3 if name == "test" else -1),
                      workers=args.workers)
    train_data = os.path.join(args.work, f"train_{len(train_idx)}.h5")
    test_data = os.path.join(args.work, f"test_{len(test_idx)}.h5")

    # held-out molecules with elements the training sample never had (e.g. F in a small
    # sample) are refused by the models: evaluate all on the same covered subset
    from densitylearn.data import CoefficientDataset
    from densitylearn.structure import structure_from_chk

    covered = set(int(z) for z in CoefficientDataset(train_data).elements)
    test_chks = [c for c in chks["test"] if set(int(z) for z in structure_from_chk(c).numbers) <= covered]
    names = {os.path.splitext(os.path.basename(c))[0] for c in test_chks}
    results["test_evaluated"] = len(test_chks)
    results["test_skipped_elements"] = len(chks["test"]) - len(test_chks)
    # floors: fit-basis scored the fits on level-3 grids against the exact densities
    tds = CoefficientDataset(test_data)
    keep = np.array([n in names for n in tds.column("name")])
    floor = {lab: {"mean": float(np.mean(tds.column(key)[keep])), "median": float(np.median(tds.column(key)[keep]))}
             for lab, key in (("TCD", "eps_mae_total"), ("DCD", "eps_mae_difference"))}
    model_cfg = json.loads(open(args.model).read()) if args.model else {}
    train_cfg = json.loads(open(args.config).read()) if args.config else {}
    for size in sizes:
        jobs = [(target, os.path.join(args.work, f"run_{target}_{size}_of_{len(train_idx)}"),
                 TrainConfig.from_dict(dict(train_cfg, target=target, max_epochs=args.epochs,
                                            batch_size=args.batch_size, device=args.device, seed=args.seed,
                                            max_train_structures=size, model=model_cfg,
                                            init_from=_init_file(args, target))))
                for target in ("total", "difference")]
        if args.parallel:  # TCD and DCD side by side, one process each (CPU machines)
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(2) as pool:
                list(pool.map(_train_job, [(train_data, run, cfg, max(1, (os.cpu_count() or 2) // 2))
                                           for _, run, cfg in jobs]))
        reports = {}
        for target, run, cfg in jobs:
            train(train_data, run, cfg)  # resumes to the end (no-op) after a parallel run
            pred = os.path.join(run, f"test_predictions_{len(test_idx)}.h5")
            if not os.path.exists(pred):
                predict_files(os.path.join(run, "best.pt"), test_chks, pred, device=args.device)
            reports[target] = evaluate_file(pred, progress=False)
        eps_t = np.array([r["eps_mae_total"] for r in reports["total"]["structures"]])
        eps_d = np.array([r["eps_mae_difference"] for r in reports["difference"]["structures"]])
        results["runs"].append({
            "size": size, "n_train": n_train(len(train_idx), size, args.seed),
            "TCD": reports["total"]["summary"]["TCD"], "DCD": reports["difference"]["summary"]["DCD"],
            "dcd_better_fraction": float(np.mean(eps_d < eps_t)),
            "per_element": {"TCD": reports["total"]["per_element"]["TCD"],
                            "DCD": reports["difference"]["per_element"]["DCD"]}})
        last_reports = reports
    results["floor"] = floor
    if args.export:
        export_largest(args, results, sizes[-1], len(train_idx), len(test_chks), last_reports)
    with open(os.path.join(args.work, "results.json"), "w") as fh:
        json.dump(results, fh, indent=1)

    print(f"held-out: {len(test_chks)} QM9 molecules (indices >= {QM9_HELDOUT_START}; "
          f"{results['test_skipped_elements']} more skipped: elements not in the training sample); "
          f"basis {args.auxbasis}")
    print("| training structures | TCD mean % | TCD median % | DCD mean % | DCD median % | DCD better on | "
          "floor TCD % | floor DCD % |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results["runs"]:
        print(f"| {r['n_train']} | {r['TCD']['mean']:.3f} | {r['TCD']['median']:.3f} | {r['DCD']['mean']:.3f} | "
              f"{r['DCD']['median']:.3f} | {100 * r['dcd_better_fraction']:.0f} % | "
              f"{floor['TCD']['mean']:.3f} | {floor['DCD']['mean']:.3f} |")
    plot_learning_curve(results, os.path.join(args.work, "learning_curve.png"))


def plot_learning_curve(results: dict, path: str) -> None:
    """Held-out mean eps_mae against the number of training molecules, floors dotted."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    for lab, col in (("TCD", "C0"), ("DCD", "C1")):
        ax.loglog([r["n_train"] for r in results["runs"]], [r[lab]["mean"] for r in results["runs"]], "o-",
                  color=col, label=lab)
        ax.axhline(results["floor"][lab]["mean"], ls=":", color=col)
    ax.set_xlabel("training molecules")
    ax.set_ylabel("held-out eps_mae (%)")
    ax.set_title("dotted: fitting floors", fontsize=9)
    ax.legend()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)

if __name__ == "__main__":
    main()
