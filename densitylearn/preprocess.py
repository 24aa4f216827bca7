"""``fit-basis``: reference chkfiles -> coefficient dataset (TCD and DCD targets).

For each PySCF chkfile: rebuild the molecule and density matrix, build the SAED density
matrix with the same functional and orbital basis, fit both onto the auxiliary basis
(:func:`densitylearn.fitting.fit_reference`), measure both fitting floors on a Becke grid
and keep the result as a small part file. When every structure of the shard is done, the
parts are streamed into one HDF5 dataset (written atomically) and removed.

Crash safety: each part is written atomically under ``OUT.parts/``; rerunning the same
command skips finished parts, so a killed run resumes where it stopped and the final
file either does not exist or is complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass

import numpy as np

from .basis import AuxBasis
from .errors import DensityLearnError, InputError, MismatchError
from .io_utils import atomic_path, parse_shard


@dataclass(frozen=True)
class FitSettings:
    """Settings of a fit-basis run (all must agree across resumed parts)."""

    auxbasis: str = "def2-universal-jfit"
    metric: str = "coulomb"
    constrain: bool = True
    floor_grid_level: int = 3  # -1: do not compute fitting floors
    xc: str | None = None  # overrides / supplies the functional when chkfiles lack it
    periodic_rcond: float = 1e-10  # eigenvalue cut of grid fits of periodic chkfiles (gridfit.DEFAULT_RCOND)

    def key(self) -> str:
        """Fingerprint of the settings that shape a part file's numbers."""
        fields = [self.auxbasis, self.metric, self.constrain, self.floor_grid_level, self.xc]
        if self.periodic_rcond != 1e-10:  # the default leaves the keys of existing parts unchanged
            fields.append(self.periodic_rcond)
        payload = json.dumps(fields)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _part_name(chk: str) -> str:
    stem = os.path.splitext(os.path.basename(chk))[0]
    tag = hashlib.sha256(os.path.abspath(chk).encode()).hexdigest()[:8]
    return f"{stem}-{tag}.npz"


def fit_one(chk: str, settings: FitSettings, cache_dir: str | None = None) -> dict:
    """Fit one reference chkfile; returns a dataset record (see :mod:`densitylearn.data`)."""
    from .fitting import fit_reference, make_auxmol
    from .metrics import fitting_floors
    from .reference import load_reference
    from .saed import load_saed, saed_density_matrix

    ref = load_reference(chk)
    xc = settings.xc or ref.xc
    if not xc:
        raise InputError(f"{chk}: the chkfile does not record its functional; pass --xc")
    if ref.converged is False:
        raise InputError(f"{chk}: SCF not converged; refusing to fit it")
    if not ref.basis:
        raise InputError(f"{chk}: the chkfile does not name its orbital basis (given as explicit "
                         "shells); recompute it with densitylearn compute")
    if ref.is_periodic:
        return _fit_periodic(chk, ref, xc, settings, cache_dir)
    numbers = ref.structure.numbers
    basis = AuxBasis.load(settings.auxbasis, numbers, orbital_basis=ref.basis)
    saed = load_saed(sorted(set(numbers.tolist())), xc=xc, basis=ref.basis, cache_dir=cache_dir)
    dm_saed = saed_density_matrix(ref.mol, xc, cache_dir=cache_dir, basis=ref.basis)
    auxmol = make_auxmol(ref.mol, basis)
    fit = fit_reference(ref.mol, ref.dm, dm_saed, basis, metric=settings.metric,
                        constrain=settings.constrain, auxmol=auxmol)
    if settings.floor_grid_level >= 0:
        eps_t, eps_d = fitting_floors(ref.mol, ref.dm, basis, fit.total, fit.difference, saed,
                                      level=settings.floor_grid_level)
    else:  # floors skipped (large training sets): NaN in the dataset
        eps_t = eps_d = float("nan")
    s = ref.structure
    return {"numbers": s.numbers, "positions": s.positions, "cell": s.cell, "pbc": s.pbc,
            "charge": s.charge, "spin": s.spin, "energy": ref.e_tot,
            "eps_mae_total": eps_t, "eps_mae_difference": eps_d,
            "coef_total": fit.total, "coef_saed": fit.saed, "name": s.name,
            "source": os.path.abspath(chk), "xc": xc, "orbital_basis": ref.basis,
            "grid_level": ref.grid_level, "basis_hash": basis.hash, "saed_hash": saed.hash,
            "pseudo": ""}


def _fit_periodic(chk: str, ref, xc: str, settings: FitSettings, cache_dir) -> dict:
    """Fit a periodic reference on its FFT mesh (see :func:`fit_one`).

    The valence density of the density matrices (k-point average) is evaluated on the
    SCF's uniform FFT mesh and fitted by :func:`densitylearn.gridfit.fit_grid`: weighted
    least squares with lattice-summed auxiliary functions (an overlap-metric fit by
    quadrature; ``settings.metric`` does not apply), constrained to the valence electron
    count when ``settings.constrain``; the difference density uses the SAED of
    pseudo-atoms with the reference's pseudopotential, lattice-summed as well. The
    fitting floors are the relative L1 residuals on the same mesh (percent).
    """
    from .gridfit import GridDensity, fit_grid
    from .reference import periodic_density_on_mesh
    from .saed import load_saed

    s = ref.structure
    numbers = s.numbers
    basis = AuxBasis.load(settings.auxbasis, numbers, orbital_basis=ref.basis)
    saed = load_saed(sorted(set(numbers.tolist())), xc=xc, basis=ref.basis, cache_dir=cache_dir,
                     pseudo=ref.pseudo or None)
    values, axes = periodic_density_on_mesh(ref)
    grid = GridDensity(numbers=numbers, positions=s.positions, origin=np.zeros(3), axes=axes,
                       values=values, pbc=np.ones(3, dtype=bool), path=chk, fmt="chkfile")
    n_elec = float(ref.mol.nelectron)
    fit = fit_grid(grid, basis, saed=saed, electrons=n_elec if settings.constrain else None,
                   rcond=settings.periodic_rcond)
    return {"numbers": s.numbers, "positions": s.positions, "cell": s.cell, "pbc": s.pbc,
            "charge": s.charge, "spin": s.spin, "energy": ref.e_tot,
            "eps_mae_total": fit.residual_total.l1_percent,
            "eps_mae_difference": fit.residual_difference.l1_percent,
            "coef_total": fit.total, "coef_saed": fit.total - fit.difference, "name": s.name,
            "source": os.path.abspath(chk), "xc": xc, "orbital_basis": ref.basis,
            "grid_level": ref.grid_level, "basis_hash": basis.hash, "saed_hash": saed.hash,
            "pseudo": ref.pseudo}


def _write_part(path: str, rec: dict, key: str) -> None:
    arrays = {k: np.asarray(v) for k, v in rec.items()}
    arrays["settings_key"] = np.asarray(key)
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def _read_part(path: str) -> dict:
    with np.load(path, allow_pickle=False) as z:
        out = {k: z[k] for k in z.files}
    out["pseudo"] = out.get("pseudo", "")
    for k in ("name", "source", "xc", "orbital_basis", "basis_hash", "saed_hash", "settings_key", "pseudo"):
        out[k] = str(out[k])
    for k in ("charge", "spin", "grid_level"):
        out[k] = int(out[k])
    for k in ("energy", "eps_mae_total", "eps_mae_difference"):
        out[k] = float(out[k])
    return out


def _task(args):
    chk, settings, part, cache_dir, threads = args
    from pyscf import lib

    if threads:
        lib.num_threads(threads)
    try:
        rec = fit_one(chk, settings, cache_dir=cache_dir)
    except DensityLearnError as exc:
        return chk, None, str(exc)
    _write_part(part, rec, settings.key())
    return chk, part, None


def fit_basis(chks, out: str, settings: FitSettings = FitSettings(), workers: int = 1,
              shard: str | None = None, overwrite: bool = False, cache_dir: str | None = None,
              progress: bool = True, keep_going: bool = False) -> dict:
    """Fit every chkfile of this shard and write the dataset ``out``. Returns a summary dict.

    Parameters
    ----------
    chks : list of str
        PySCF chkfiles of reference calculations.
    out : str
        Dataset path (``.h5``). Parts live in ``out + '.parts'`` until the end.
    settings : FitSettings
    workers : int
        Processes; PySCF threads per process are cores // workers.
    shard : str, optional
        ``"i/n"``: only chkfiles k with k % n == i (sorted order), for job arrays; merge the
        shard files afterwards with ``densitylearn merge``.
    keep_going : bool
        Skip chkfiles that cannot be fitted (listed in the summary) instead of stopping.
    """
    from tqdm.auto import tqdm

    from .data import CoefficientDataset, make_header, write_dataset

    i_shard, n_shard = parse_shard(shard)
    chks = sorted({os.path.abspath(c) for c in chks})
    if not chks:
        raise InputError("fit-basis: no chkfiles given")
    missing = [c for c in chks if not os.path.isfile(c)]
    if missing:
        raise InputError(f"{missing[0]}: no such chkfile")
    chks = [c for k, c in enumerate(chks) if k % n_shard == i_shard]
    if os.path.exists(out) and not overwrite:
        raise InputError(f"{out}: exists; pass --overwrite to replace it or choose another --out")
    parts_dir = out + ".parts"
    os.makedirs(parts_dir, exist_ok=True)
    t0 = time.time()
    todo, parts = [], {}
    for c in chks:
        p = os.path.join(parts_dir, _part_name(c))
        parts[c] = p
        if not os.path.exists(p):
            todo.append(c)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = max(1, min(workers, len(todo) or 1))
    threads = max(1, cores // workers)
    jobs = [(c, settings, parts[c], cache_dir, threads) for c in todo]
    failed: list[tuple[str, str]] = []
    bar = tqdm(total=len(chks), initial=len(chks) - len(todo), desc="fit-basis", unit="mol",
               disable=not progress)
    if workers == 1:
        results = map(_task, jobs)
        pool = None
    else:
        import multiprocessing as mp

        from densitylearn.io_utils import exit_with_parent

        pool = mp.get_context("spawn").Pool(workers, initializer=exit_with_parent, initargs=(os.getpid(),))
        results = pool.imap_unordered(_task, jobs)
    try:
        for chk, part, err in results:
            bar.update(1)
            if err is not None:
                if not keep_going:
                    raise InputError(err)
                failed.append((chk, err))
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
    records = [_read_part(parts[c]) for c in chks if os.path.exists(parts[c])]
    if not records:
        raise InputError("fit-basis: no structure could be fitted")
    # every part must come from the same settings, functional, orbital basis and aux basis
    ref = records[0]
    for r in records:
        if r["settings_key"] != settings.key():
            raise MismatchError(f"{parts_dir}: {os.path.basename(r['source'])} was fitted with other "
                                f"settings; delete {parts_dir} or use the original options")
        for k in ("xc", "orbital_basis", "pseudo"):
            if r[k] != ref[k]:
                raise MismatchError(f"{r['source']}: {k} {r[k]!r} differs from {ref['source']} "
                                    f"({ref[k]!r}); all chkfiles of one dataset need the same settings")
    elements = sorted({int(z) for r in records for z in r["numbers"]})
    basis = AuxBasis.load(settings.auxbasis, elements, orbital_basis=ref["orbital_basis"])
    for r in records:
        if basis.subset(r["numbers"]).hash != r["basis_hash"]:
            raise MismatchError(f"{r['source']}: auxiliary basis changed since its part was written; "
                                f"delete {parts_dir} to refit")
    from .saed import load_saed

    periodic = bool(np.asarray(ref["pbc"]).any())
    if any(bool(np.asarray(r["pbc"]).any()) != periodic for r in records):
        raise MismatchError("fit-basis: molecules and periodic cells cannot share one dataset "
                            "(different fits and electron counts); fit them into separate files")
    saed = load_saed(elements, xc=ref["xc"], basis=ref["orbital_basis"], cache_dir=cache_dir,
                     pseudo=ref["pseudo"] or None)
    extra = {"floor_grid_level": settings.floor_grid_level}
    if periodic:
        extra = {"pseudo": ref["pseudo"], "floor_grid_level": -1,
                 "eps_mae_meaning": "relative L1 residual on the SCF's uniform FFT mesh, percent",
                 "periodic_fit": "grid least squares on the FFT mesh, lattice-summed functions",
                 "rcond": float(settings.periodic_rcond)}
    attrs = make_header(basis, kind="fit", targets=("total", "saed"), saed=saed,
                        metric="grid-l2" if periodic else settings.metric,
                        constrained=settings.constrain, xc=ref["xc"],
                        orbital_basis=ref["orbital_basis"], grid_level=ref["grid_level"],
                        extra=extra)
    n = write_dataset(out, attrs, records)
    shutil.rmtree(parts_dir, ignore_errors=True)
    summary = CoefficientDataset(out).summary()
    summary.update({"failed": failed, "wall_s": time.time() - t0, "out": out,
                    "dcd_better_fraction": float(np.mean([r["eps_mae_difference"] < r["eps_mae_total"]
                                                          for r in records]))})
    assert n == summary["structures"]
    return summary


def format_summary(s: dict) -> str:
    """Human-readable summary of :func:`fit_basis`."""
    lines = [f"wrote {s['out']}: {s['structures']} structures, {s['atoms_mean']:.1f} atoms and "
             f"{s['functions_per_structure_mean']:.0f} functions per structure "
             f"({s['functions_per_atom']:.1f} per atom)",
             (f"fitting floor eps_mae (mean): TCD {s['eps_mae_total_mean']:.3f} %, "
              f"DCD {s['eps_mae_difference_mean']:.3f} %; DCD lower on "
              f"{100 * s['dcd_better_fraction']:.0f} % of structures ({s['wall_s']:.1f} s)")
             if np.isfinite(s["eps_mae_total_mean"]) else f"fitting floors not computed ({s['wall_s']:.1f} s)"]
    for chk, err in s["failed"]:
        lines.append(f"skipped {chk}: {err}")
    return "\n".join(lines)
