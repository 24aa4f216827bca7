"""The main job on an embedded default, a few minutes on a laptop CPU.

Four small molecules (water, ammonia, methane, ethanol): PBE/def2-SVP reference DFT with
PySCF, spherically averaged atomic densities (SAED), density fitting of the total (TCD)
and difference (DCD = total - SAED) densities onto the auxiliary basis, and a table of
fitting floors (eps_mae on a level-3 Becke grid against the exact DFT density), then the
shipped pretrained models (``qm9-tcd`` and ``qm9-dcd``, identical but for the target)
predict the four densities: a table of their eps_mae against DFT, TCD beside DCD, cube
files of the predicted densities and a plot. Everything lands under --out; rerunning
reuses finished work.
"""

HELP = "run the embedded default end to end (references, SAED, fitting, floors, pretrained models)"

#: The shipped models the last step compares (identical architecture and data; target differs).
MODELS = {"TCD": "qm9-tcd", "DCD": "qm9-dcd"}

#: The embedded molecules (xyz, Angstrom).
MOLECULES = {
    "water": "O 0.0000 0.0000 0.1173\nH 0.0000 0.7572 -0.4692\nH 0.0000 -0.7572 -0.4692",
    "ammonia": ("N 0.0000 0.0000 0.1162\nH 0.0000 0.9397 -0.2711\nH 0.8138 -0.4699 -0.2711\n"
                "H -0.8138 -0.4699 -0.2711"),
    "methane": ("C 0.0000 0.0000 0.0000\nH 0.6291 0.6291 0.6291\nH -0.6291 -0.6291 0.6291\n"
                "H -0.6291 0.6291 -0.6291\nH 0.6291 -0.6291 -0.6291"),
    "ethanol": ("C -0.0017 -0.0037 0.0024\nC 1.5135 0.0026 0.0047\nO -0.4963 1.3361 -0.0130\n"
                "H -0.3808 -0.5322 0.8838\nH -0.3798 -0.5190 -0.8906\nH 1.8936 1.0262 0.0104\n"
                "H 1.8968 -0.5093 -0.8881\nH 1.8935 -0.5073 0.8997\nH -1.4563 1.3076 -0.0081"),
}


def add_arguments(p):
    p.add_argument("--out", default="quickstart", help="output folder (default: %(default)s)")
    p.add_argument("--auxbasis", default="dl-dcd",
                   help="auxiliary basis for the fits (default: %(default)s, shipped with densitylearn)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default: 1)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def write_structures(folder: str) -> str:
    """Write the embedded molecules as one multi-frame xyz file; returns its path."""
    import os

    from ..io_utils import atomic_path

    path = os.path.join(folder, "molecules.xyz")
    text = "".join(f"{len(xyz.splitlines())}\n{name}\n{xyz}\n" for name, xyz in MOLECULES.items())
    with atomic_path(path) as tmp:
        with open(tmp, "w") as fh:
            fh.write(text)
    return path


def run(args):
    import dataclasses
    import os

    from ..data import CoefficientDataset
    from ..preprocess import FitSettings, fit_basis, format_summary
    from ..reference import compute_references
    from ..reference import format_summary as compute_summary
    from ..structure import from_ase

    os.makedirs(args.out, exist_ok=True)
    xyz_path = write_structures(args.out)
    structures = [dataclasses.replace(from_ase(_atoms(xyz)), name=name, source=xyz_path)
                  for name, xyz in MOLECULES.items()]
    refs = os.path.join(args.out, "references")
    print("1/3 reference DFT (PBE/def2-SVP, PySCF)")
    summary = compute_references(structures, refs, workers=args.workers, progress=not args.quiet)
    print(compute_summary(summary))
    if summary["failed"] or summary["unconverged"]:
        return 1
    print(f"2/3 SAED and density fitting onto {args.auxbasis}")
    out = os.path.join(args.out, "fits.h5")
    chks = [os.path.join(refs, f"{name}.chk") for name in MOLECULES]
    s = fit_basis(chks, out, FitSettings(auxbasis=args.auxbasis), workers=args.workers,
                  overwrite=True, progress=not args.quiet)
    ds = CoefficientDataset(out)
    names, et, ed = ds.column("name"), ds.column("eps_mae_total"), ds.column("eps_mae_difference")
    print(f"\n{'molecule':<10} {'atoms':>5} {'TCD floor %':>12} {'DCD floor %':>12}")
    for i in range(len(ds)):
        print(f"{names[i]:<10} {len(ds[i]['numbers']):>5} {et[i]:>12.3f} {ed[i]:>12.3f}")
    print()
    print(format_summary(s))
    from ..evaluate import evaluate_file, write_cubes, write_plots

    print("\nper-element errors, radial error profiles and plots (densitylearn evaluate)")
    report = evaluate_file(out, progress=not args.quiet)
    plots = write_plots(report, os.path.join(args.out, "plots"))
    cubes = os.path.join(args.out, "cubes")
    write_cubes(out, cubes, spacing=0.25)
    for lab in report["targets"]:
        pe = report["per_element"][lab]
        print(f"{lab} per element: " + ", ".join(f"{el} {v:.3f} %" for el, v in pe.items()))
    print(f"cube files (total, difference = DCD, error vs DFT): {cubes}/")
    print("plots: " + ", ".join(plots))
    return _pretrained_step(args, chks, {n: (et[i], ed[i]) for i, n in enumerate(names)})


def _pretrained_step(args, chks, floors) -> int:
    """3/3: the shipped TCD and DCD models on the same molecules, against the DFT densities."""
    import os

    from ..evaluate import evaluate_file, write_cubes
    from ..predict import available_models, load_model, predict_files

    missing = [m for m in MODELS.values() if m not in available_models()]
    if missing:
        print(f"\n3/3 skipped: the pretrained models {', '.join(missing)} are not installed "
              "(densitylearn/pretrained/*.pt)")
        return 0
    print("\n3/3 prediction with the pretrained models " + " and ".join(MODELS.values()))
    card = load_model(MODELS["DCD"], device="cpu").description.get("card") or {}
    if card.get("summary"):
        print("   " + card["summary"])
    errors = {}
    for lab, name in MODELS.items():
        pred = os.path.join(args.out, f"predicted_{lab.lower()}.h5")
        predict_files(name, chks, pred, device="cpu", progress=False)
        report = evaluate_file(pred, progress=False)
        key = "eps_mae_total" if lab == "TCD" else "eps_mae_difference"
        errors[lab] = {r["name"]: r[key] for r in report["structures"]}
    cubes = os.path.join(args.out, "cubes_predicted")
    write_cubes(os.path.join(args.out, "predicted_dcd.h5"), cubes, spacing=0.25)
    names = list(errors["DCD"])
    print(f"\n{'molecule':<10} {'TCD model %':>12} {'DCD model %':>12} {'TCD floor %':>12} {'DCD floor %':>12}")
    for n in names:
        print(f"{n:<10} {errors['TCD'][n]:>12.3f} {errors['DCD'][n]:>12.3f} {floors[n][0]:>12.3f} {floors[n][1]:>12.3f}")
    better = sum(errors["DCD"][n] < errors["TCD"][n] for n in names)
    print(f"the DCD model is more accurate than the TCD model on {better} of {len(names)} molecules "
          "(eps_mae on a level-3 Becke grid against the exact DFT density; the floors are the errors of "
          "the basis fit of the exact density itself)")
    print(f"cube files of the DCD model's prediction (total, difference, error vs DFT): {cubes}/")
    plot = _plot_models(errors, floors, os.path.join(args.out, "plots", "pretrained_tcd_vs_dcd.png"))
    if plot:
        print(f"plot: {plot}")
    return 0


def _plot_models(errors, floors, path):
    """Grouped bars: TCD and DCD model errors per molecule, floors as ticks. None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    import os

    import numpy as np

    from ..io_utils import atomic_path

    names = list(errors["DCD"])
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for k, (lab, col) in enumerate((("TCD", "C0"), ("DCD", "C1"))):
        ax.bar(x + (k - 0.5) * 0.38, [errors[lab][n] for n in names], 0.38, color=col, label=f"{lab} model")
        ax.plot(x + (k - 0.5) * 0.38, [floors[n][k] for n in names], "_", color="k", ms=14,
                label="fitting floor" if k == 0 else None)
    ax.set_xticks(x, names)
    ax.set_ylabel("eps_mae vs DFT (%)")
    ax.legend(frameon=False)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def _atoms(xyz: str):
    from ase import Atoms

    symbols, positions = [], []
    for line in xyz.splitlines():
        sym, *xyz3 = line.split()
        symbols.append(sym)
        positions.append([float(v) for v in xyz3])
    return Atoms(symbols=symbols, positions=positions)

