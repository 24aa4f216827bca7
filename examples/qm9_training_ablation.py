"""Training ablations: what limits a QM9 density model (training error, held-out error, variants)
===============================================================================================

Usage, one variant per call (calls can run side by side, one thread each)::

    python examples/qm9_training_ablation.py --work qm9bench --data train_130.h5 --name base
    python examples/qm9_training_ablation.py --work qm9bench --data train_130.h5 --name overlap \\
        --config '{"loss": "overlap"}'
    python examples/qm9_training_ablation.py --work qm9bench --data train_130.h5 --name wide \\
        --config '{"model": {"hidden_irreps": "128x0e+64x1o+32x2e+16x3o+16x4e"}}'
    python examples/qm9_training_ablation.py --work qm9bench --data train_130.h5 --name n45 \\
        --config '{"max_train_structures": 45}'
    python examples/qm9_training_ablation.py --work qm9bench --report

Each call trains one model from scratch on ``--data`` (a fitted training-range dataset, e.g.
the benchmark's ``WORK/train_<size>.h5``; the validation split is the library's seeded one)
for ``--epochs`` with the base settings below, overridden by ``--config`` (a JSON
:class:`~densitylearn.train.TrainConfig` fragment; ``"model"`` holds
:class:`~densitylearn.model.ModelConfig` fields). It then scores the best-validation model

* on its own training molecules (level-1 Becke grids against ``WORK/refs_train/<name>.chk``:
  the training error), and
* on the held-out molecules ``WORK/refs_test/*.chk`` (level-3 grids, as in
  :doc:`/pretrained`), optionally limited to the first ``--max-test``,

and, if ``--test-fit`` names the fitted held-out dataset, the Coulomb-norm error of the
predicted coefficients against the Coulomb fits, per electron (``e^T J e / N`` in hartree,
``e = c_pred - c_fit``): the error an SCF guess or a Coulomb matrix sees.

``max_train_structures`` makes a learning-curve point: the model trains on N molecules of
the training split (same validation molecules), and its training error is scored over those
N only. They are a seeded random subset (``train_subset: "random"``, nested across N for one
seed); ``"train_subset": "first"`` takes the first N in the dataset's order instead (by name,
so the lowest QM9 indices: smaller molecules), as the runs before 2026-12-06 did.

A training error close to the held-out error with both far above the fitting floor says the
model underfits (capacity or optimisation); a training error near the floor with a large
held-out error says it overfits (data). The run folder holds the checkpoints, the training
log and ``result.json``; a killed run resumes from ``last.pt`` when called again, and a
finished one is not retrained. ``--report`` prints one row per finished variant.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

BASE = {"val_structures": 6, "val_grid_level": 1, "patience": 10000, "batch_size": 8, "seed": 0}


def coulomb_error_per_electron(pred_path: str, fit_path: str) -> list[float]:
    """``e^T J e / N`` (hartree) of every predicted structure against its Coulomb fit."""
    from densitylearn import graph as G
    from densitylearn.data import CoefficientDataset
    from densitylearn.fitting import structure_metric

    fit = CoefficientDataset(fit_path)
    by_name = {str(fit[i]["name"]): fit[i] for i in range(len(fit))}
    pred = CoefficientDataset(pred_path)
    out = []
    for i in range(len(pred)):
        r = pred[i]
        f = by_name.get(str(r["name"]))
        if f is None:
            continue
        e = G.record_target(r, "difference") - G.record_target(f, "difference")
        J = structure_metric(fit.basis, f["numbers"], f["positions"], "coulomb")
        out.append(float(e @ J @ e) / float(f["numbers"].sum()))
    if not out:
        raise SystemExit(f"error: {fit_path}: no structure of {pred_path} in it (names differ)")
    return out


def run_variant(args) -> None:
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from densitylearn.data import CoefficientDataset
    from densitylearn.evaluate import evaluate_file
    from densitylearn.predict import load_model, predict_files
    from densitylearn.train import TrainConfig, split_indices, train, training_subset

    run = os.path.join(args.work, "ablation", args.name)
    result_path = os.path.join(run, "result.json")
    if os.path.exists(result_path):
        print(f"{args.name}: already finished ({result_path})")
        return
    extra = json.loads(args.config)
    cfg = TrainConfig.from_dict(dict(BASE, max_epochs=args.epochs, target=args.target, device=args.device, **extra))
    data = args.data if os.path.isabs(args.data) else os.path.join(args.work, args.data)
    ds = CoefficientDataset(data)
    tr, _ = split_indices(len(ds), cfg.val_fraction, cfg.seed)
    tr = training_subset(tr, cfg)  # a learning-curve point: the training error is over these only
    names = list(ds.column("name"))
    train_chks = [os.path.join(args.work, "refs_train", f"{names[i]}.chk") for i in tr]
    test_chks = sorted(glob.glob(os.path.join(args.work, "refs_test", "*.chk")))[: args.max_test]
    missing = [c for c in train_chks if not os.path.exists(c)]
    if missing or not test_chks:  # checked before training, not after an hour of it
        raise SystemExit(f"error: {args.work}: " + (f"{len(missing)} training reference(s) missing, e.g. {missing[0]}"
                                                     if missing else "no held-out chkfiles in refs_test/"))
    summary = train(data, run, cfg, progress=False)
    best = os.path.join(run, "best.pt")
    n_params = sum(p.numel() for p in load_model(best, device="cpu").model.parameters())
    out = {"name": args.name, "target": args.target, "epochs": summary["epochs"], "n_params": n_params,
           "best_val": summary["best_val_eps_mae"], "time_s": summary["time_spent_s"], "config": cfg.to_dict()}
    label = "DCD" if args.target == "difference" else "TCD"
    for part, chks, level in (("heldout", test_chks, 3), ("train", train_chks, 1)):
        pred = os.path.join(run, f"pred_{part}.h5")
        if not os.path.exists(pred):
            predict_files(best, chks, pred, device=args.device, progress=False)
        report = evaluate_file(pred, grid_level=level, progress=False)
        out[part] = report["summary"][label]
        out[part + "_per_structure"] = [r[f"eps_mae_{args.target}"] for r in report["structures"]]
        if part == "heldout" and args.test_fit and args.target == "difference":
            fit = args.test_fit if os.path.isabs(args.test_fit) else os.path.join(args.work, args.test_fit)
            vals = coulomb_error_per_electron(pred, fit)
            out["heldout_coulomb_per_electron"] = {"mean": float(np.mean(vals)), "median": float(np.median(vals))}
    tmp = result_path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(out, fh, indent=1)
    os.replace(tmp, result_path)
    print(f"{args.name}: val {out['best_val']:.3f} %, train {out['train']['mean']:.3f} %, "
          f"held-out {out['heldout']['mean']:.3f} %")


def report(work: str) -> None:
    rows = []
    for path in sorted(glob.glob(os.path.join(work, "ablation", "*", "result.json"))):
        with open(path) as fh:
            rows.append(json.load(fh))
    if not rows:
        raise SystemExit(f"error: {work}/ablation: no finished variant (no */result.json)")
    head = (f"{'variant':<14} {'target':<10} {'params':>8} {'epochs':>6} {'val %':>6} {'train %':>8} "
            f"{'held-out %':>10} {'median %':>8} {'J err/e Ha':>10} {'time s':>7}")
    print(head)
    print("-" * len(head))
    for r in rows:
        cj = r.get("heldout_coulomb_per_electron", {}).get("mean")
        print(f"{r['name']:<14} {r['target']:<10} {r.get('n_params', 0):>8} {r['epochs']:>6} {r['best_val']:>6.3f} "
              f"{r['train']['mean']:>8.3f} {r['heldout']['mean']:>10.3f} {r['heldout']['median']:>8.3f} "
              f"{(f'{cj:.2e}' if cj is not None else '--'):>10} {r['time_s']:>7.0f}")
    print("\nval: validation eps_mae (level 1); train: training molecules (level 1); held-out: level 3;"
          "\nJ err/e: Coulomb-norm error per electron against the held-out Coulomb fits")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", required=True, help="benchmark work folder (refs_train/, refs_test/, datasets)")
    p.add_argument("--data", help="fitted training dataset (relative to --work unless absolute)")
    p.add_argument("--name", help="variant name (run folder WORK/ablation/NAME)")
    p.add_argument("--target", default="difference", choices=("difference", "total"))
    p.add_argument("--epochs", type=int, default=150)
    p.add_argument("--config", default="{}", help="JSON TrainConfig fragment over the base settings")
    p.add_argument("--max-test", type=int, default=40, help="first M held-out chkfiles (default: %(default)s)")
    p.add_argument("--test-fit", default=None, help="fitted held-out dataset for the Coulomb-norm error "
                   "(relative to --work unless absolute)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--report", action="store_true", help="print the table of finished variants")
    args = p.parse_args(argv)
    if args.report:
        report(args.work)
        return 0
    if not args.data or not args.name:
        p.error("--data and --name are required unless --report")
    if args.epochs < 1 or args.threads < 1 or args.max_test < 1:
        p.error("--epochs, --threads and --max-test must be >= 1")
    try:
        json.loads(args.config)
    except json.JSONDecodeError as exc:
        p.error(f"--config: not JSON ({exc})")
    from densitylearn.errors import DensityLearnError

    try:
        run_variant(args)
    except DensityLearnError as exc:  # a bad config key, an unreadable dataset or chkfile: one line
        sys.exit(f"qm9_training_ablation: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
