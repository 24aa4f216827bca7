"""``evaluate``: density errors of a coefficient file against the reference DFT densities.

Works on a fit-basis dataset (then the numbers are the basis's fitting floors) and on a
prediction file (same schema; then they are the model's errors). For every structure the
reference density comes from the chkfile's density matrix (never from its fit) on a Becke
grid (periodic cells: on the reference's uniform FFT mesh, with lattice sums); each target present is reconstructed (difference-density coefficients plus the
analytic SAED for DCD) and compared through :mod:`densitylearn.metrics`.
"""

from __future__ import annotations

import json
import os

import numpy as np

from .errors import InputError, MismatchError
from .metrics import (DEFAULT_GRID_LEVEL, RADIAL_BINS, eps_mae, per_element_eps, radial_error_profile,
                      reference_density, relative_gain)

#: Targets evaluated, with the label used in tables.
LABELS = {"total": "TCD", "difference": "DCD"}


def _targets(ds) -> list[str]:
    out = []
    if "total" in ds.targets:
        out.append("total")
    if "difference" in ds.targets or {"total", "saed"} <= set(ds.targets):
        out.append("difference")
    return out


def _reference_map(paths) -> dict:
    """Structure name -> chkfile for explicitly given references."""
    out = {}
    for p in paths or []:
        out[os.path.splitext(os.path.basename(p))[0]] = p
    return out


def _evaluate_cell(ds, i, rec, ref, targets, saed, path) -> dict:
    """One periodic structure: eps_mae on the reference's uniform FFT mesh (lattice sums).

    The valence reference density comes from the chkfile's density matrices; the
    coefficients are evaluated with :func:`densitylearn.grid.evaluate_density_periodic`.
    Per-element and radial profiles need an atom-centred grid and are not reported.
    """
    import torch

    from .grid import evaluate_density_periodic
    from .reference import periodic_density_on_mesh

    rho_ref, axes = periodic_density_on_mesh(ref)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in rho_ref.shape], indexing="ij"), -1).reshape(-1, 3)
    points = idx.astype(np.float64) @ axes
    rho_ref = rho_ref.reshape(-1)
    weights = np.full(len(points), abs(float(np.linalg.det(axes))))
    row = {"name": rec["name"], "n_atoms": int(len(rec["numbers"])), "reference": ref.path,
           "grid": "fft-mesh " + "x".join(str(n) for n in ref.mol.mesh)}
    for t in targets:
        coef = ds.basis.check_coefficients(rec["numbers"], ds.coefficients(i, t),
                                           label=f"{path}: structure {rec['name']}")
        with torch.no_grad():
            rho = evaluate_density_periodic(ds.basis, rec["numbers"], rec["positions"], rec["cell"], coef,
                                            points, saed=saed if t == "difference" else None).cpu().numpy()
        row[f"eps_mae_{t}"] = eps_mae(rho, rho_ref, weights)
    if len(targets) == 2:
        row["relative_gain"] = float(relative_gain(row["eps_mae_total"], row["eps_mae_difference"]))
    return row


#: Reference densities on Becke grids kept between evaluations in one process (several
#: models scored on the same held-out set), keyed by chkfile, its mtime and the grid level.
_REFERENCE_CACHE: dict = {}
_REFERENCE_CACHE_SIZE = 64


def _reference_on_grid(chk: str, ref, grid_level: int):
    """(points, weights, atom_index, rho_ref) of a molecular reference; cached."""
    from .grid import becke_grid

    key = (os.path.abspath(chk), os.path.getmtime(chk), int(grid_level))
    if key not in _REFERENCE_CACHE:
        points, weights, atom_index = becke_grid(ref.mol, level=grid_level, return_atoms=True)
        if len(_REFERENCE_CACHE) >= _REFERENCE_CACHE_SIZE:
            _REFERENCE_CACHE.pop(next(iter(_REFERENCE_CACHE)))
        entry = (points, weights, atom_index, reference_density(ref.mol, ref.dm, points))
        for a in entry:
            a.setflags(write=False)  # shared between evaluations: never modified in place
        _REFERENCE_CACHE[key] = entry
    return _REFERENCE_CACHE[key]


def evaluate_file(path: str, references=None, grid_level: int = DEFAULT_GRID_LEVEL,
                  expect_auxbasis: str | None = None, progress: bool = True, limit: int | None = None) -> dict:
    """Evaluate every structure of a coefficient file. Returns a JSON-able report dict.

    Parameters
    ----------
    path : str
        Coefficient dataset or prediction file.
    references : list of str, optional
        Reference chkfiles, matched to structures by file stem = structure name; by default
        the chkfile paths stored in the file (``source``) are used.
    grid_level : int
        Becke grid level of the metric.
    expect_auxbasis : str, optional
        Auxiliary basis the caller expects; a different basis in the file is an error.
    limit : int, optional
        Evaluate only the first ``limit`` structures.
    """
    import torch
    from ase.data import chemical_symbols
    from tqdm.auto import tqdm

    from .basis import AuxBasis
    from .data import CoefficientDataset
    from .grid import evaluate_density
    from .reference import load_reference
    from .structure import Structure

    ds = CoefficientDataset(path)
    if expect_auxbasis is not None:
        wanted = AuxBasis.load(expect_auxbasis, ds.basis.elements,
                               orbital_basis=ds.attrs.get("orbital_basis") or "def2-svp")
        ds.basis.require_same(wanted, context=path)
    targets = _targets(ds)
    saed = ds.saed
    if "difference" in targets and saed is None:
        raise MismatchError(f"{path}: difference coefficients but no SAED recorded")
    refs = _reference_map(references)
    n = len(ds) if limit is None else min(limit, len(ds))
    rows, per_el_acc, radial_acc = [], {t: {} for t in targets}, {t: {} for t in targets}
    for i in tqdm(range(n), desc="evaluate", unit="mol", disable=not progress):
        rec = ds[i]
        name = rec["name"]
        chk = refs.get(name) or rec["source"]
        if not chk or not os.path.isfile(chk):
            raise InputError(f"{path}: structure {name}: reference chkfile {chk!r} not found; pass --reference")
        ref = load_reference(chk)
        mine = Structure(numbers=rec["numbers"], positions=rec["positions"], cell=rec["cell"], pbc=rec["pbc"],
                         name=name)
        if not mine.same_geometry(ref.structure, atol=1e-6):
            raise MismatchError(f"{path}: structure {name}: geometry differs from its reference {chk}")
        if mine.is_periodic:
            rows.append(_evaluate_cell(ds, i, rec, ref, targets, saed, path))
            continue
        points, weights, atom_index, rho_ref = _reference_on_grid(chk, ref, grid_level)
        row = {"name": name, "n_atoms": int(len(rec["numbers"])), "reference": chk}
        for t in targets:
            coef = ds.basis.check_coefficients(rec["numbers"], ds.coefficients(i, t),
                                               label=f"{path}: structure {name}")
            with torch.no_grad():
                rho = evaluate_density(ds.basis, rec["numbers"], rec["positions"], coef, points,
                                       saed=saed if t == "difference" else None).cpu().numpy()
            row[f"eps_mae_{t}"] = eps_mae(rho, rho_ref, weights)
            # per element: [integrated |error|, reference electrons] (e), so that reports of
            # several files can be merged into exact per-element eps_mae
            row[f"per_element_{t}"] = {}
            for z, (err, ref_n) in per_element_eps(rho, rho_ref, weights, atom_index,
                                                   rec["numbers"]).items():
                row[f"per_element_{t}"][chemical_symbols[z]] = [float(err), float(ref_n)]
                acc = per_el_acc[t].setdefault(z, [0.0, 0.0])
                acc[0] += err
                acc[1] += ref_n
            for z, prof in radial_error_profile(rho, rho_ref, weights, atom_index, points,
                                                rec["numbers"], rec["positions"]).items():
                acc = radial_acc[t].setdefault(z, [np.zeros(len(RADIAL_BINS) - 1), 0])
                acc[0] += prof[0]
                acc[1] += prof[1]
        if len(targets) == 2:
            row["relative_gain"] = float(relative_gain(row["eps_mae_total"], row["eps_mae_difference"]))
        rows.append(row)
    report = {"file": os.path.abspath(path), "kind": ds.kind, "auxbasis": ds.basis.name,
              "grid_level": grid_level, "targets": [LABELS[t] for t in targets], "structures": rows,
              "summary": {}, "per_element": {}, "radial_profiles": {
                  "bins_bohr": RADIAL_BINS.tolist(),
                  "units": "abs error per atom per bohr of radius, e/bohr"}}
    for t in targets:
        e = np.array([r[f"eps_mae_{t}"] for r in rows])
        report["summary"][LABELS[t]] = _stats(e)
        report["per_element"][LABELS[t]] = {chemical_symbols[z]: 100.0 * a / b
                                            for z, (a, b) in sorted(per_el_acc[t].items())}
        report["radial_profiles"][LABELS[t]] = {
            chemical_symbols[z]: (a / max(cnt, 1) / np.diff(RADIAL_BINS)).tolist()
            for z, (a, cnt) in sorted(radial_acc[t].items())}
    if len(targets) == 2:
        g = np.array([r["relative_gain"] for r in rows])
        report["summary"]["relative_gain"] = _stats(g)
        report["summary"]["dcd_better_fraction"] = float(np.mean(g > 0))
    return report


def write_cubes(path: str, folder: str, references=None, spacing: float = 0.2, margin: float = 4.0,
                limit: int | None = None) -> int:
    """Cube files per structure: total and error densities (and the difference density for
    DCD coefficients) on a uniform box; periodic cells get cube and CHGCAR files of their
    own uniform grid (no error density). Returns the number of files written."""
    from .cube import density_cubes
    from .data import CoefficientDataset
    from .reference import load_reference
    from .metrics import reference_density

    ds = CoefficientDataset(path)
    refs = _reference_map(references)
    target = "difference" if "difference" in _targets(ds) else "total"
    n = 0
    for i in range(len(ds) if limit is None else min(limit, len(ds))):
        rec = ds[i]
        if np.asarray(rec["pbc"]).any():  # a cell: its own uniform grid, cube and CHGCAR
            from .cube import density_cell_files

            n += len(density_cell_files(folder, rec["name"], ds.basis, rec["numbers"], rec["positions"],
                                        rec["cell"], ds.coefficients(i, target),
                                        saed=ds.saed if target == "difference" else None, spacing=spacing))
            continue
        chk = refs.get(rec["name"]) or rec["source"]
        reference = None
        if chk and os.path.isfile(chk):
            ref = load_reference(chk)
            reference = lambda pts, ref=ref: reference_density(ref.mol, ref.dm, pts)  # noqa: E731
        written = density_cubes(folder, rec["name"], ds.basis, rec["numbers"], rec["positions"],
                                ds.coefficients(i, target), saed=ds.saed if target == "difference" else None,
                                reference=reference, spacing=spacing, margin=margin)
        n += len(written)
    return n


def _stats(x) -> dict:
    x = np.asarray(x, dtype=np.float64)
    return {"mean": float(x.mean()), "median": float(np.median(x)), "p5": float(np.percentile(x, 5)),
            "p95": float(np.percentile(x, 95)), "n": int(len(x))}


def format_report(report: dict, max_rows: int = 40) -> str:
    """Per-structure table and summary as text."""
    labels = report["targets"]
    keys = [("eps_mae_total" if lab == "TCD" else "eps_mae_difference") for lab in labels]
    head = f"{'structure':<24} {'atoms':>5} " + " ".join(f"{lab + ' eps %':>11}" for lab in labels)
    if len(labels) == 2:
        head += f" {'gain':>7}"
    lines = [head]
    for r in report["structures"][:max_rows]:
        line = f"{r['name'][:24]:<24} {r['n_atoms']:>5} " + " ".join(f"{r[k]:>11.3f}" for k in keys)
        if len(labels) == 2:
            line += f" {r['relative_gain']:>7.2f}"
        lines.append(line)
    if len(report["structures"]) > max_rows:
        lines.append(f"... {len(report['structures']) - max_rows} more in the JSON report")
    lines.append("")
    for lab in labels:
        s = report["summary"][lab]
        lines.append(f"{lab}: eps_mae mean {s['mean']:.3f} %, median {s['median']:.3f} %, "
                     f"5-95 % [{s['p5']:.3f}, {s['p95']:.3f}] over {s['n']} structures")
        pe = report["per_element"][lab]
        lines.append(f"{lab} per element: " + ", ".join(f"{el} {v:.3f} %" for el, v in pe.items()))
    if len(labels) == 2:
        s = report["summary"]
        lines.append(f"DCD better than TCD on {100 * s['dcd_better_fraction']:.0f} % of structures; "
                     f"relative gain median {s['relative_gain']['median']:.2f}")
    return "\n".join(lines)


def write_plots(report: dict, folder: str) -> list[str]:
    """PNG plots: violin of the DCD-vs-TCD relative gain, per-element bars, radial profiles."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("plots need matplotlib: pip install 'densitylearn[plot]'") from None
    from .io_utils import atomic_path

    os.makedirs(folder, exist_ok=True)
    written = []

    def save(fig, name):
        path = os.path.join(folder, name)
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
        plt.close(fig)
        written.append(path)

    labels = report["targets"]
    if len(labels) == 2:
        g = [r["relative_gain"] for r in report["structures"]]
        fig, ax = plt.subplots(figsize=(4, 4))
        ax.violinplot(g, showmedians=True)
        ax.axhline(0.0, color="k", lw=0.8)
        ax.set_ylabel("relative gain (eps_TCD - eps_DCD) / eps_TCD")
        ax.set_xticks([1], [f"{len(g)} structures"])
        ax.set_title(f"DCD better on {100 * report['summary']['dcd_better_fraction']:.0f} %")
        save(fig, "relative_gain_violin.png")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    els = sorted({el for lab in labels for el in report["per_element"][lab]})
    width = 0.8 / len(labels)
    for k, lab in enumerate(labels):
        vals = [report["per_element"][lab].get(el, np.nan) for el in els]
        ax.bar(np.arange(len(els)) + k * width, vals, width, label=lab)
    ax.set_xticks(np.arange(len(els)) + 0.4 - width / 2, els)
    ax.set_ylabel("eps_mae per element (%)")
    ax.legend()
    save(fig, "per_element.png")
    bins = np.asarray(report["radial_profiles"]["bins_bohr"])
    centres = np.sqrt(bins[1:] * bins[:-1])
    fig, axes = plt.subplots(1, len(els), figsize=(3.2 * len(els), 3), squeeze=False)
    for ax, el in zip(axes[0], els):
        for lab in labels:
            prof = report["radial_profiles"][lab].get(el)
            if prof is not None:
                prof = np.asarray(prof, dtype=float)
                ax.loglog(centres, np.where(prof > 0, prof, np.nan), label=lab)  # empty bins: gaps
        ax.set_title(el)
        ax.set_xlabel("distance from nucleus (bohr)")
    axes[0][0].set_ylabel("|error| per atom (e/bohr)")
    axes[0][0].legend()
    save(fig, "radial_error_profiles.png")
    return written


def write_json(report: dict, path: str) -> None:
    from .io_utils import atomic_path

    with atomic_path(path, suffix=".json") as tmp:
        with open(tmp, "w") as fh:
            json.dump(report, fh, indent=1)
