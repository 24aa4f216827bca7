"""Si allotropes: TCD vs DCD on allotropes the models never saw
===============================================================

The paper's transferability experiment on crystals, one command. Reference DFT of Si
allotropes (``pyscf.pbc``, PBE, GTH pseudopotentials), density fitting on the FFT mesh, a
TCD and a DCD model with identical architecture, data and hyperparameters trained on some
allotropes (and their rattled and strained variants), then, on allotropes held out of
training entirely:

* eps_mae of the predicted valence densities on the FFT mesh, with the fitting floor;
* non-self-consistent (one diagonalisation) band energies, band gaps and Harris energies
  per atom from the predicted densities, against the SCF;
* optionally Harris forces by central differences against PySCF's analytic forces.

Rattled variants of the training allotropes with other seeds than the training variants
(``--interp-variants``) separate interpolation (a known phase, a new geometry) from
transfer (a new phase). Errors are compared with the paper's chemical-accuracy lines:
1 meV/atom, 43 meV (gaps) and 30 meV/Angstrom.

Usage::

    python examples/si_allotrope_study.py --work si_study \\
        --train diamond,lonsdaleite,beta_sn,bct5 --test bc8,st12 \\
        --variants 6 --interp-variants 1 --test-variants 1 --epochs 300 --parallel

Every step is resumable (rerun the same command). Results: ``WORK/results.json``, a
markdown table on stdout and ``WORK/allotrope_errors.png``. The structures come from
``examples/si_allotropes.py`` (published crystal structures, sources there).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))

#: The paper's chemical-accuracy lines.
ACCURACY = {"energy_mev_per_atom": 1.0, "gap_mev": 43.0, "force_mev_per_angstrom": 30.0}


def _allotropes():
    sys.path.insert(0, HERE)
    import si_allotropes

    return si_allotropes


def structure_sets(args) -> dict:
    """{'train': [Atoms], 'interp': [Atoms], 'test': [Atoms]} (Angstrom, named)."""
    mod = _allotropes()
    train, interp, test = [], [], []
    for k, name in enumerate(args.train.split(",")):
        ideal = mod.build(name)
        # variants of the conventional cell (more atoms per cell: more varied local geometries),
        # repeated up to --min-variant-atoms (simple hexagonal has one atom per cell)
        base = mod.build(name, primitive=not args.conventional_variants)
        if getattr(args, "min_variant_atoms", 0):
            base = mod.supercell(base, args.min_variant_atoms)
        train += [ideal] + mod.variants(base, args.variants, args.rattle, args.strain, seed=args.seed + 1000 * k)
        # interpolation set: the same phase, other seeds, never trained on
        for a in mod.variants(base, args.interp_variants, args.rattle, args.strain, seed=args.seed + 1000 * k + 500):
            a.info["name"] = a.info["name"].replace("_v", "_t")
            interp.append(a)
    for k, name in enumerate(args.test.split(",")):
        ideal = mod.build(name)
        test += [ideal] + mod.variants(ideal, args.test_variants, args.rattle, args.strain,
                                       seed=args.seed + 1000 * (k + 50))
    return {"train": train, "interp": interp, "test": test}


def _amplitudes(text: str) -> tuple:
    """``"0.05,0.1"`` -> (0.05, 0.1): positive rattle amplitudes, Angstrom."""
    import argparse

    try:
        vals = tuple(float(x) for x in text.split(","))
    except ValueError:
        vals = ()
    if not vals or min(vals) < 0:
        raise argparse.ArgumentTypeError(f"comma-separated non-negative amplitudes, got {text!r}")
    return vals


def _say(text: str) -> None:
    """One progress line on stderr with the wall-clock time: the study runs for hours."""
    import time

    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def _train_job(job):
    import torch

    from densitylearn.train import train

    data, run, cfg, threads = job
    torch.set_num_threads(threads)
    train(data, run, cfg, progress=False)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", required=True)
    p.add_argument("--train", default="diamond,lonsdaleite,beta_sn,bct5", help="training allotropes")
    p.add_argument("--test", default="bc8,st12", help="held-out allotropes (never trained or validated on)")
    p.add_argument("--variants", type=int, default=6, help="rattled/strained training variants per allotrope")
    p.add_argument("--interp-variants", type=int, default=1,
                   help="rattled/strained variants of the training allotropes kept out of training")
    p.add_argument("--test-variants", type=int, default=1, help="rattled/strained variants per held-out allotrope")
    p.add_argument("--rattle", type=_amplitudes, default=(0.05,),
                   help="displacement standard deviation, Angstrom; a comma list (0.05,0.1) is cycled "
                        "over the variants")
    p.add_argument("--min-variant-atoms", type=int, default=0,
                   help="repeat the cell of the training and interpolation variants up to this many atoms")
    p.add_argument("--workers", type=int, default=1, help="processes of the reference DFT and the fits")
    p.add_argument("--strain", type=float, default=0.03, help="largest strain component")
    p.add_argument("--conventional-variants", action="store_true",
                   help="build the training and interpolation variants from conventional cells")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--basis", default="gth-dzvp")
    p.add_argument("--kmesh", default="length:10",
                   help="N1,N2,N3 for every cell, or length:L for n_i = ceil(L / |a_i|) per cell (Angstrom)")
    p.add_argument("--ke-cutoff", type=float, default=40.0)
    p.add_argument("--smearing", type=float, default=0.003,
                   help="Fermi-Dirac width, hartree, for every structure (metallic beta-Sn and bct5, "
                        "semimetallic BC8 need one to converge)")
    p.add_argument("--auxbasis", default="etb:1.5",
                   help="auxiliary basis (default: even-tempered from the orbital basis, no core functions)")
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--config", default=None, help="JSON with further TrainConfig fields, the same for TCD and DCD")
    p.add_argument("--model", default=None, help="JSON with ModelConfig fields")
    p.add_argument("--parallel", action="store_true", help="train TCD and DCD at once, one process each")
    p.add_argument("--forces", default="", help="comma-separated structure names to compute Harris forces for")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)

    from densitylearn import cli
    from densitylearn.evaluate import evaluate_file
    from densitylearn.predict import predict_files
    from densitylearn.preprocess import FitSettings, fit_basis
    from densitylearn.reference import compute_references
    from densitylearn.structure import from_ase
    from densitylearn.train import TrainConfig, train

    os.makedirs(args.work, exist_ok=True)
    sets = structure_sets(args)
    chks, data = {}, {}
    for part in ("train", "interp", "test"):
        if not sets[part]:  # --interp-variants 0: no interpolation set
            continue
        refs = os.path.join(args.work, f"refs_{part}")
        _say(f"reference DFT, {part}: {len(sets[part])} cells in {refs}")
        # "length:L" gives every cell its own mesh (densitylearn.reference.kmesh_for_structure):
        # about the same k-point density for all, so that small and large cells of one phase
        # have equally converged densities
        compute_references([from_ase(a, name=a.info["name"]) for a in sets[part]], refs, basis=args.basis,
                           kmesh=args.kmesh, ke_cutoff=args.ke_cutoff, smearing=args.smearing,
                           workers=args.workers, progress=False)
        chks[part] = [os.path.join(refs, f"{a.info['name']}.chk") for a in sets[part]]
        missing = [c for c in chks[part] if not os.path.isfile(c)]
        if missing:
            raise SystemExit(f"reference DFT failed for {', '.join(os.path.basename(m) for m in missing)}")
        data[part] = os.path.join(args.work, f"{part}.h5")
        if not os.path.exists(data[part]):
            _say(f"density fitting, {part}: {data[part]}")
            fit_basis(chks[part], data[part], FitSettings(auxbasis=args.auxbasis), workers=args.workers,
                      progress=False)

    model_cfg = json.loads(open(args.model).read()) if args.model else {}
    train_cfg = json.loads(open(args.config).read()) if args.config else {}
    jobs = [(target, os.path.join(args.work, f"run_{target}"),
             TrainConfig.from_dict(dict(train_cfg, target=target, max_epochs=args.epochs, batch_size=args.batch_size,
                                        device=args.device, seed=args.seed, model=model_cfg)))
            for target in ("total", "difference")]
    if args.parallel:
        _say("training TCD and DCD in parallel")
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(2) as pool:
            list(pool.map(_train_job, [(data["train"], run, cfg, max(1, (os.cpu_count() or 2) // 2))
                                       for _, run, cfg in jobs]))
    results = {"settings": dict(vars(args)), "structures": {}}
    rows = results["structures"]
    floors = {}
    from densitylearn.data import CoefficientDataset

    for part in data:  # fit-basis scored its fits on the FFT mesh: the floors
        ds = CoefficientDataset(data[part])
        for name, t, d in zip(ds.column("name"), ds.column("eps_mae_total"), ds.column("eps_mae_difference")):
            floors[str(name)] = (float(t), float(d))
    # the ideal training allotropes (trained on): the origin of the relative energies
    chks["seen"] = [c for c in chks["train"] if "_v" not in os.path.basename(c)]
    force_names = set(filter(None, args.forces.split(",")))
    for target, run, cfg in jobs:
        _say(f"{target} model: training (resumes; a no-op once done), predictions and NSCF")
        train(data["train"], run, cfg, progress=False)  # resumes to the end (no-op) after a parallel run
        model = os.path.join(run, "best.pt")
        for part in ("seen", "interp", "test"):
            if not chks.get(part):
                continue
            pred = os.path.join(run, f"pred_{part}.h5")
            if not os.path.exists(pred):
                predict_files(model, chks[part], pred, device=args.device, progress=False)
            for r in evaluate_file(pred, progress=False)["structures"]:
                row = rows.setdefault(r["name"], {"set": part})
                row[f"eps_{target}"] = r[f"eps_mae_{target}"]
                row["floor_total"], row["floor_difference"] = floors[r["name"]]
            for chk in chks[part]:
                name = os.path.splitext(os.path.basename(chk))[0]
                out = os.path.join(run, f"nscf_{name}.json")
                if not os.path.exists(out):
                    extra = ["--forces"] if name in force_names else []
                    if cli.main(["nscf", model, chk, "--json", out, "--quiet", "--device", args.device, *extra]) != 0:
                        raise SystemExit(f"nscf failed for {chk}")
                entry = json.load(open(out))["structures"][0]
                rows[name][f"nscf_{target}"] = entry["errors"]
                rows[name]["n_atoms"] = entry["n_atoms"]
                rows[name]["reference_gap_ev"] = entry["reference"]["gap_ev"]
                rows[name][f"energy_per_atom_{target}_hartree"] = entry["prediction"]["energy_per_atom_hartree"]
                rows[name]["reference_energy_per_atom_hartree"] = entry["reference"]["energy_per_atom_hartree"]
                if "forces_ev_per_angstrom" in entry:
                    # the forces on a cell sum to zero; what is left is the mesh's "egg-box" error
                    net = np.abs(np.sum(entry["forces_ev_per_angstrom"], axis=0)).max() * 1000
                    rows[name][f"net_force_{target}_mev_per_angstrom"] = float(net)
                    rows[name]["max_reference_force_mev_per_angstrom"] = float(
                        np.abs(entry["reference_forces_ev_per_angstrom"]).max() * 1000)
    relative_energies(results)
    with open(os.path.join(args.work, "results.json"), "w") as fh:
        json.dump(results, fh, indent=1)
    print_table(results)
    print_relative(results)
    plot(results, os.path.join(args.work, "allotrope_errors.png"))
    return 0


def relative_energies(results: dict, origin: str = "diamond") -> None:
    """Energy per atom relative to ideal ``origin`` (SCF, and each model's NSCF against the
    same model's NSCF of ``origin``): the allotrope energy ordering, meV/atom.

    Needs ``origin`` among the evaluated structures: the ideal training allotropes are
    evaluated as the ``seen`` set."""
    from densitylearn.units import HARTREE_EV

    rows = results["structures"]
    if origin not in rows:
        return
    o = rows[origin]
    mev = HARTREE_EV * 1000
    for r in rows.values():
        rel = {"reference": (r["reference_energy_per_atom_hartree"] - o["reference_energy_per_atom_hartree"]) * mev}
        for target in ("total", "difference"):
            key = f"energy_per_atom_{target}_hartree"
            rel[target] = (r[key] - o[key]) * mev
        r["relative_to_diamond_mev_per_atom"] = rel


def print_table(results: dict) -> None:
    print("| structure | set | atoms | gap eV | eps TCD % | eps DCD % | floor TCD/DCD % | energy TCD / DCD meV/atom "
          "| gap TCD / DCD meV | bands MAE TCD / DCD meV | forces MAE TCD / DCD meV/A |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in sorted(results["structures"].items(), key=lambda kv: (kv[1]["set"], kv[0])):
        t, d = r.get("nscf_total", {}), r.get("nscf_difference", {})
        f = (f"{t['force_mae_mev_per_angstrom']:.1f} / {d['force_mae_mev_per_angstrom']:.1f} "
             f"(net {r['net_force_total_mev_per_angstrom']:.1f} / {r['net_force_difference_mev_per_angstrom']:.1f}, "
             f"largest reference {r['max_reference_force_mev_per_angstrom']:.0f})"
             if "force_mae_mev_per_angstrom" in t and "force_mae_mev_per_angstrom" in d else "-")
        print(f"| {name} | {r['set']} | {r.get('n_atoms', '-')} | {r.get('reference_gap_ev', float('nan')):.3f} | "
              f"{r['eps_total']:.2f} | {r['eps_difference']:.2f} | "
              f"{r['floor_total']:.2f} / {r['floor_difference']:.2f} | "
              f"{t['energy_mev_per_atom']:+.2f} / {d['energy_mev_per_atom']:+.2f} | "
              f"{t['gap_mev']:+.1f} / {d['gap_mev']:+.1f} | "
              f"{t['band_energy_mae_mev']:.1f} / {d['band_energy_mae_mev']:.1f} | {f} |")
    for part in ("seen", "interp", "test"):
        sel = [r for r in results["structures"].values() if r["set"] == part]
        if not sel:
            continue
        line = []
        for key, unit in (("energy_mev_per_atom", "meV/atom"), ("gap_mev", "meV"), ("band_energy_mae_mev", "meV"),
                          ("force_mae_mev_per_angstrom", "meV/A")):
            have = [r for r in sel if key in r["nscf_total"] and key in r["nscf_difference"]]
            if have:
                line.append(f"{key} {np.mean([abs(r['nscf_total'][key]) for r in have]):.2f} / "
                            f"{np.mean([abs(r['nscf_difference'][key]) for r in have]):.2f} {unit}")
        line.append(f"eps {np.mean([r['eps_total'] for r in sel]):.2f} / "
                    f"{np.mean([r['eps_difference'] for r in sel]):.2f} %")
        better = sum(r["eps_difference"] < r["eps_total"] for r in sel)
        print(f"{part} ({len(sel)} structures), mean |error| TCD / DCD: " + "; ".join(line)
              + f"; DCD lower eps on {better} of {len(sel)}")


def print_relative(results: dict) -> None:
    """Energies per atom relative to ideal diamond: SCF against each model's NSCF."""
    rows = [(n, r) for n, r in results["structures"].items()
            if "relative_to_diamond_mev_per_atom" in r and "_v" not in n and "_t" not in n]
    if not rows:
        return
    print("| allotrope | set | SCF meV/atom | TCD NSCF | DCD NSCF |")
    print("|---|---|---|---|---|")
    for name, r in sorted(rows, key=lambda kv: kv[1]["relative_to_diamond_mev_per_atom"]["reference"]):
        rel = r["relative_to_diamond_mev_per_atom"]
        print(f"| {name} | {r['set']} | {rel['reference']:+.1f} | {rel['total']:+.1f} | {rel['difference']:+.1f} |")


def plot(results: dict, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    order = {"test": 0, "interp": 1, "seen": 2}
    rows = sorted(results["structures"].items(), key=lambda kv: (order[kv[1]["set"]], kv[0]))
    names = [n for n, _ in rows]
    x = np.arange(len(names))
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    panels = (("eps", "eps_mae (%)", None), ("energy_mev_per_atom", "|Harris energy error| (meV/atom)", 1.0),
              ("gap_mev", "|gap error| (meV)", 43.0))
    for ax, (key, label, line) in zip(axes, panels):
        for off, target, lab in ((-0.2, "total", "TCD"), (0.2, "difference", "DCD")):
            vals = [r[f"eps_{target}"] if key == "eps" else abs(r[f"nscf_{target}"][key]) for _, r in rows]
            ax.bar(x + off, vals, width=0.4, label=lab)
        if key == "eps":
            ax.plot(x, [r["floor_difference"] for _, r in rows], "k_", markersize=12, label="DCD floor")
        if line is not None:
            ax.axhline(line, color="k", ls=":", lw=1, label="chemical accuracy")
        ax.set_xticks(x, names, rotation=60, ha="right", fontsize=8)
        ax.set_ylabel(label)
        ax.set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.suptitle("held-out allotropes (left), unseen variants of training allotropes, ideal training allotropes (right)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
