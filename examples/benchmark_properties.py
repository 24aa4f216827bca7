"""Properties and SCF guesses from predicted densities: TCD vs DCD models side by side
=====================================================================================

Usage::

    python examples/benchmark_properties.py --dcd qm9-dcd --tcd qm9-tcd REFS/*.chk \\
        [--scf 10] [--s22 4 --work s22work] [--coulomb-steps 8] [--saed] [--fitted] [--json properties.json]

For every reference chkfile (held-out QM9 molecules, PBE/def2-SVP), both models' predicted
densities go through one Kohn-Sham diagonalisation (``densitylearn nscf``): the
Harris-Foulkes energy, the HOMO-LUMO gap and the dipole moment are compared with the same
quantities from the reference density matrix. For the first ``--scf`` molecules, an SCF
runs from each model's guess and from PySCF's default ``minao`` guess (``densitylearn
scf``): iterations and wall time, ours including the prediction and the guess Fock build.

``--coulomb-steps N`` adds, for every model, the properties after relaxing the predicted
density's Coulomb potential by N steps (``densitylearn nscf --coulomb-steps``; V_xc held at
the prediction's). ``--saed`` adds the SAED alone (the DCD model's basis with zero
coefficients) as a control: what the same route gives without a model. ``--fitted`` adds
the other end, each model's *fitted* reference densities
(:meth:`densitylearn.predict.Predictor.fitted`: what a perfect model on that auxiliary
basis would predict), the floor of the route for each target.

``--s22 N`` adds the N smallest S22 dimers (``ase.collections.s22``; 6-30 atoms, larger
than most QM9 molecules and intermolecular) with reference DFT computed first (resumable,
in ``--work``).

Goals (issue 6): Harris energy MAE <= 1 meV/atom, gap MAE <= 43 meV, >= 50 % fewer SCF
iterations than minao, >= 30 % less wall time including the prediction.
"""

from __future__ import annotations

import argparse
import os
import time


def s22_references(n: int, work: str) -> list[str]:
    """Reference chkfiles of the ``n`` smallest S22 dimers (computed if missing)."""
    from ase.collections import s22

    from densitylearn.reference import compute_references
    from densitylearn.structure import from_ase

    names = sorted(s22.names, key=lambda k: (len(s22[k]), k))[:n]
    structures = [from_ase(s22[k], name=f"s22_{k}") for k in names]
    out = os.path.join(work, "refs_s22")
    compute_references(structures, out, progress=False)
    return [os.path.join(out, f"s22_{k}.chk") for k in names]


def run_set(label: str, chks: list[str], models: dict, n_scf: int, device: str, coulomb_steps: int = 0) -> dict:
    from dataclasses import replace

    import numpy as np

    from densitylearn.predict import load_model, read_inputs
    from densitylearn.properties import nscf_predictions, scf_predictions

    structures = read_inputs(chks)
    out = {"set": label, "n": len(structures), "models": {}}
    for k, (lab, name) in enumerate(models.items()):
        predictor = load_model(name, device=device)
        t0 = time.perf_counter()
        preds = predictor.predict(structures)
        t_pred = (time.perf_counter() - t0) / max(len(structures), 1)
        if lab == "SAED":  # the control: the SAED alone, no model
            preds = [replace(p, coefficients=np.zeros_like(p.coefficients)) for p in preds]
        if lab.startswith("fitted"):  # the floor: the reference density fitted like the model's target
            preds = [predictor.fitted(c) for c in chks]
        entry = {"predict_s_per_structure": t_pred}
        for key, steps in (("", 0), ("_relaxed", coulomb_steps)) if coulomb_steps else (("", 0),):
            t0 = time.perf_counter()
            nscf = nscf_predictions(preds, predictor.xc, predictor.orbital_basis, coulomb_steps=steps)
            entry[f"nscf{key}"] = nscf["summary"]
            entry[f"nscf{key}_s_per_structure"] = (time.perf_counter() - t0) / max(len(structures), 1)
            entry[f"per_structure{key}"] = [{"name": e["name"], **(e["errors"] or {})} for e in nscf["structures"]]
        if n_scf and lab in ("TCD", "DCD"):
            # PySCF's minao guess runs once per structure (with the first model)
            scf = scf_predictions(preds[:n_scf], predictor.xc, predictor.orbital_basis,
                                  guesses=("minao",) if k == 0 else ())
            # our wall time includes this structure's share of the prediction
            for e in scf["structures"]:
                for r in e["runs"]:
                    if r["guess"] == "densitylearn":
                        r["guess_s"] += t_pred
            entry["scf"] = scf
        out["models"][lab] = entry
    return out


def scf_table(res: dict) -> list[str]:
    """Iterations and wall time: minao (run with the first model) and each model's guess."""
    rows = []
    runs = {lab: res["models"][lab].get("scf") for lab in res["models"]}
    minao = [r for lab in runs if runs[lab] for e in runs[lab]["structures"] for r in e["runs"]
             if r["guess"] == "minao"]
    if not minao:
        return rows
    it0 = sum(r["total_iterations"] for r in minao) / len(minao)
    t0 = sum(r["wall_s"] for r in minao) / len(minao)
    rows.append(f"| minao (PySCF default) | {it0:.1f} | -- | {t0:.1f} | -- | "
                f"{sum(not r['converged'] for r in minao)} |")
    for lab, scf in runs.items():
        if not scf:
            continue
        ours = [r for e in scf["structures"] for r in e["runs"] if r["guess"] == "densitylearn"]
        it = sum(r["total_iterations"] for r in ours) / len(ours)
        t = sum(r["wall_s"] + r["guess_s"] + (r["fallback"]["wall_s"] if r["fallback"] else 0.0)
                for r in ours) / len(ours)
        rows.append(f"| {lab} model | {it:.1f} | {100 * (1 - it / it0):.0f} % | {t:.1f} | "
                    f"{100 * (1 - t / t0):.0f} % | {sum(not r['converged'] for r in ours)} |")
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("chkfiles", nargs="*", help="reference chkfiles (held-out molecules)")
    p.add_argument("--dcd", default="qm9-dcd", help="DCD model: checkpoint or built-in name")
    p.add_argument("--tcd", default="qm9-tcd", help="TCD model: checkpoint or built-in name")
    p.add_argument("--scf", type=int, default=10, help="SCF comparisons on the first N structures of each set")
    p.add_argument("--s22", type=int, default=0, help="add the N smallest S22 dimers")
    p.add_argument("--work", default="properties_work", help="folder for the S22 references")
    p.add_argument("--coulomb-steps", type=int, default=0, metavar="N",
                   help="also the properties after N Coulomb-relaxation steps (densitylearn nscf --coulomb-steps)")
    p.add_argument("--saed", action="store_true", help="add the SAED alone (zero DCD coefficients) as a control")
    p.add_argument("--fitted", action="store_true",
                   help="add both models' fitted reference densities (the floor of a perfect model on each basis)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if args.coulomb_steps < 0:
        p.error(f"--coulomb-steps must be >= 0, got {args.coulomb_steps}")

    models = {"TCD": args.tcd, "DCD": args.dcd}
    if args.saed:
        models["SAED"] = args.dcd
    if args.fitted:
        models.update({"fitted TCD": args.tcd, "fitted DCD": args.dcd})
    sets = []
    if args.chkfiles:
        sets.append(run_set("held-out QM9", sorted(args.chkfiles), models, args.scf, args.device, args.coulomb_steps))
    if args.s22:
        sets.append(run_set("S22 dimers", s22_references(args.s22, args.work), models, args.scf, args.device,
                            args.coulomb_steps))
    if not sets:
        p.error("give reference chkfiles and/or --s22 N")

    print("| set | model | n | Harris energy MAE (meV/atom) | gap MAE (meV) | dipole MAE (D) | nscf s |")
    print("|---|---|---|---|---|---|---|")
    for res in sets:
        for lab, m in res["models"].items():
            for key, how in (("", ""), ("_relaxed", f", {args.coulomb_steps} Coulomb steps")):
                if f"nscf{key}" not in m:
                    continue
                s = m[f"nscf{key}"]
                print(f"| {res['set']} | {lab}{how} | {s['n_compared']} | {s['mae_energy_mev_per_atom']:.2f} | "
                      f"{s['mae_gap_mev']:.1f} | {s['mae_dipole_debye']:.3f} | {m[f'nscf{key}_s_per_structure']:.1f} |")
    for res in sets:
        rows = scf_table(res)
        if rows:
            n = len(next(iter(res["models"].values()))["scf"]["structures"])
            print(f"\nSCF from the guess, {res['set']} ({n} structures; wall time per SCF, ours including "
                  "prediction and guess)")
            print("| guess | mean iterations | fewer than minao | mean wall s | less than minao | not converged |")
            print("|---|---|---|---|---|---|")
            print("\n".join(rows))
    if args.json:
        from densitylearn.properties import write_json

        write_json({"sets": sets}, args.json)


if __name__ == "__main__":
    main()
