"""K-point convergence of the Si allotrope energies
================================================

Self-consistent PBE energies per atom of the ideal Si allotropes of
``examples/si_allotropes.py`` (primitive cells) on gamma-centred k-meshes of growing
k-point length ``L`` (``n_i = ceil(L / |a_i|)``, the ``--kmesh length:L`` form of
``densitylearn compute``), relative to diamond on the same ``L``. It shows how long ``L``
must be before the energy ordering of the phases means anything, and what a training set
built on a shorter ``L`` gets wrong.

Settings are those of ``examples/si_allotrope_study.py``: PBE, gth-dzvp/gth-pbe, 40
hartree FFT cutoff, Fermi-Dirac smearing 0.003 hartree (energies are Mermin free
energies). The SCF uses the cell's k-point symmetry (irreducible k-points only); with
``--multigrid`` also PySCF's multigrid Coulomb/XC integration, about 2x faster on the 1-2
atom cells but 2.5x slower on the 8-atom BC8 cell (measured here), within 1e-7 hartree per
atom of the plain FFT path: far below the meV/atom differences of interest.

Usage::

    python examples/si_kpoint_convergence.py --out si_kconv --lengths 10,15,20,25 \\
        --only diamond,lonsdaleite,beta_sn,bct5,sh,bc8,st12 --workers 2

Resumable: every finished SCF is one line of ``OUT/energies.jsonl``; a rerun skips it.
``--report`` only prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HARTREE_MEV = 27211.386245988


def _one(job):
    """One SCF (run in a worker process): returns the record for energies.jsonl."""
    name, length, basis, ke_cutoff, smearing, multigrid = job
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from si_allotropes import build

    from densitylearn.reference import kmesh_for_structure, run_reference
    from densitylearn.structure import from_ase

    s = from_ase(build(name), name=name)
    kmesh = kmesh_for_structure(f"length:{length}", s)
    t0 = time.perf_counter()
    r = run_reference(s, xc="pbe", basis=basis, kmesh=kmesh, ke_cutoff=ke_cutoff, smearing=smearing,
                      multigrid=multigrid and kmesh != (1, 1, 1), ksymmetry=True, max_cycle=100)
    return dict(name=name, length=length, natoms=len(s), kmesh=list(kmesh), nkpts_ibz=r["nkpts_ibz"],
                e_free_per_atom=r["e_free"] / len(s), e_tot_per_atom=r["e_tot"] / len(s),
                converged=r["converged"], cycles=r["n_cycles"], multigrid=r["multigrid"],
                wall_s=round(time.perf_counter() - t0, 1), basis=basis, ke_cutoff=ke_cutoff,
                smearing=smearing)


def read_records(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def report(records: list[dict]) -> str:
    """Markdown table: E - E_diamond (meV/atom) per phase and L, and each phase's own change
    from one L to the next."""
    e = {(r["name"], r["length"]): r for r in records if r["converged"]}
    names = list(dict.fromkeys(r["name"] for r in records))
    lengths = sorted({r["length"] for r in records})
    lines = ["| phase | " + " | ".join(f"L={L:g}: mesh, E-E_dia" for L in lengths) + " |",
             "|---|" + "---|" * len(lengths)]
    for n in names:
        cells = []
        for L in lengths:
            r, d = e.get((n, L)), e.get(("diamond", L))
            if r is None:
                cells.append("-")
                continue
            rel = f"{(r['e_free_per_atom'] - d['e_free_per_atom']) * HARTREE_MEV:+.1f}" if d else "?"
            cells.append(f"{'x'.join(map(str, r['kmesh']))}, {rel}")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines += ["", "Change of each phase's own energy per atom from the previous L (meV/atom):", "",
              "| phase | " + " | ".join(f"{a:g}->{b:g}" for a, b in zip(lengths, lengths[1:])) + " |",
              "|---|" + "---|" * max(1, len(lengths) - 1)]
    for n in names:
        cells = []
        for a, b in zip(lengths, lengths[1:]):
            ra, rb = e.get((n, a)), e.get((n, b))
            cells.append(f"{(rb['e_free_per_atom'] - ra['e_free_per_atom']) * HARTREE_MEV:+.1f}"
                         if ra and rb else "-")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    top = lengths[-1] if lengths else None
    rel = {}
    for (n, L), r in e.items():
        d = e.get(("diamond", L))
        if d is not None:
            rel[(n, L)] = (r["e_free_per_atom"] - d["e_free_per_atom"]) * HARTREE_MEV
    if len(lengths) > 1:
        lines += ["", f"Error of E - E_diamond against L = {top:g} (meV/atom):", "",
                  "| phase | " + " | ".join(f"L={L:g}" for L in lengths[:-1]) + " |",
                  "|---|" + "---|" * (len(lengths) - 1)]
        for n in names:
            if n == "diamond":
                continue
            cells = [f"{rel[(n, L)] - rel[(n, top)]:+.1f}" if (n, L) in rel and (n, top) in rel else "-"
                     for L in lengths[:-1]]
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="si_kconv")
    p.add_argument("--lengths", default="10,15,20", help="k-point lengths L, Angstrom")
    p.add_argument("--only", default="diamond,lonsdaleite,beta_sn,bct5,sh,bc8,st12",
                   help="allotropes (names of examples/si_allotropes.py)")
    p.add_argument("--basis", default="gth-dzvp")
    p.add_argument("--ke-cutoff", type=float, default=40.0)
    p.add_argument("--smearing", type=float, default=0.003)
    p.add_argument("--multigrid", action="store_true",
                   help="PySCF's multigrid Coulomb/XC on k-meshes (faster on small cells only)")
    p.add_argument("--workers", type=int, default=1, help="processes (one thread each when > 1)")
    p.add_argument("--report", action="store_true", help="print the table of OUT/energies.jsonl and stop")
    args = p.parse_args(argv)

    path = os.path.join(args.out, "energies.jsonl")
    if args.report:
        print(report(read_records(path)))
        return 0
    try:
        lengths = [float(x) for x in args.lengths.split(",")]
    except ValueError:
        raise SystemExit(f"--lengths: comma-separated numbers, got {args.lengths!r}") from None
    if not lengths or min(lengths) <= 0:
        raise SystemExit("--lengths: positive numbers of Angstrom")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from si_allotropes import ALLOTROPES

    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in ALLOTROPES]
    if unknown:
        raise SystemExit(f"unknown allotropes {', '.join(unknown)}; choose from {', '.join(ALLOTROPES)}")
    os.makedirs(args.out, exist_ok=True)
    done = {(r["name"], r["length"]) for r in read_records(path)}
    # small cells and short lengths first, so a partial run already gives whole columns
    jobs = [(n, L, args.basis, args.ke_cutoff, args.smearing, args.multigrid)
            for L in sorted(lengths) for n in names if (n, L) not in done]

    def save(rec):
        with open(path, "a") as fh:  # one short line per record: a killed run loses at most that line
            fh.write(json.dumps(rec) + "\n")
        print(f"{rec['name']} L={rec['length']:g} {rec['kmesh']} ({rec['nkpts_ibz']} irreducible): "
              f"{rec['e_free_per_atom']:.8f} Ha/atom, {rec['cycles']} cycles, {rec['wall_s']} s", flush=True)

    if args.workers <= 1:
        for job in jobs:
            save(_one(job))
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        os.environ["OMP_NUM_THREADS"] = "1"
        with ProcessPoolExecutor(args.workers, mp_context=mp.get_context("spawn")) as pool:
            for fut in as_completed([pool.submit(_one, j) for j in jobs]):
                save(fut.result())
    print(report(read_records(path)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
