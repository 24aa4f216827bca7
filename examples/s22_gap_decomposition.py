"""One-shot gaps of the S22 dimers taken apart: monomer densities against the intermolecular polarization
=========================================================================================================

The one-shot route (one diagonalisation of the predicted density's Kohn-Sham Fock matrix)
reaches the 43 meV gap line on held-out QM9 molecules but not on the S22 dimers
(:doc:`/properties`). This script asks which part of the predicted density is to blame.
For every dimer it splits the structure into its two molecules
(:meth:`densitylearn.structure.Structure.fragments`), computes their own references at
the dimer geometry (PBE/def2-SVP, like the dimer's) and writes each density, in the
model's auxiliary basis, as

    c(dimer) = c(monomer A) + c(monomer B) + c(polarization)

for the reference (the density-fitted SCF densities: c_pol is what forming the complex
does to the monomers' densities) and for the model (monomers predicted alone; c_pol is
what the model adds when it sees both). The one-shot gap is then evaluated for densities
that mix the two:

* ``fitted reference``: exact monomers + exact polarization, the dimer's own fitted
  density (the basis's floor for this route);
* ``no polarization``: the fitted reference monomers, without polarization;
* ``exact monomers + model polarization``;
* ``model monomers + exact polarization``,

beside the model's own one-shot gap (errors of the Harris energy and the dipole are kept
in the JSON file too). It also reports the polarization densities'
Coulomb norms, ``|c_pol|_J = sqrt(c^T J c)`` with J the auxiliary Coulomb metric, their
ratio (model / reference) and cosine in that metric. Errors are against the dimer's SCF
(the reference density matrix through the same one diagonalisation, as everywhere in
:func:`densitylearn.properties.nscf_predictions`). A TCD model (``--model qm9-tcd``) works
the same way on total-density coefficients: the SAED is a sum over atoms, so the
polarization is the same density in both representations and the two models' predictions
of it compare directly.

Run (resumable: computed references and finished dimers are kept)::

    python examples/s22_gap_decomposition.py --work s22 -n 22 --json s22_gap_decomposition.json

About 2 minutes per large dimer on one CPU thread (six one-shot evaluations); the
44 monomer references take about 4 minutes on two cores (``--workers 2``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

CASES = ("model", "fitted_reference", "no_polarization", "exact_monomers+model_polarization",
         "model_monomers+exact_polarization")


def monomers(dimer):
    """The dimer's two molecules as structures (atoms in the dimer's order), and their atom indices."""
    from densitylearn.errors import InputError
    from densitylearn.structure import Structure

    lab = dimer.fragments()
    if lab.max() != 1:
        raise InputError(f"{dimer.source or dimer.label}: structure {dimer.label} has {lab.max() + 1} "
                         "covalent fragments, not two")
    parts = []
    for f in range(2):
        atoms = np.nonzero(lab == f)[0]
        parts.append((Structure(numbers=dimer.numbers[atoms], positions=dimer.positions[atoms],
                                name=f"{dimer.name}__m{f}"), atoms))
    return parts


def decompose(predictor, pred, monomer_chks) -> dict:
    """Polarization norms and the one-shot gap errors of the mixed densities of one dimer."""
    from densitylearn.fitting import structure_metric
    from densitylearn.predict import read_inputs
    from densitylearn.properties import nscf_properties
    from densitylearn.reference import load_reference
    from densitylearn.units import HARTREE_EV

    s = pred.structure
    nf = [predictor.basis.n_functions(int(z)) for z in s.numbers]
    off = np.concatenate([[0], np.cumsum(nf)])
    c_ref = predictor.fitted(s.source).coefficients
    ref_mono, model_mono = np.zeros_like(c_ref), np.zeros_like(c_ref)
    for (_, atoms), chk in zip(monomers(s), monomer_chks):
        idx = np.concatenate([np.arange(off[a], off[a + 1]) for a in atoms])
        ref_mono[idx] = predictor.fitted(chk).coefficients
        model_mono[idx] = predictor.predict(read_inputs([chk]))[0].coefficients
    pol_ref, pol_model = c_ref - ref_mono, pred.coefficients - model_mono
    metric = structure_metric(predictor.basis, s.numbers, s.positions)

    def norm(v):
        return float(np.sqrt(max(v @ metric @ v, 0.0)))

    row = {"name": s.label, "n_atoms": len(s), "polarization_norm_reference": norm(pol_ref),
           "polarization_norm_model": norm(pol_model),
           "polarization_cosine": float(pol_model @ metric @ pol_ref) / max(norm(pol_model) * norm(pol_ref), 1e-300),
           "polarization_error_norm": norm(pol_model - pol_ref), "monomer_error_norm": norm(model_mono - ref_mono)}
    densities = dict(zip(CASES, (pred.coefficients, c_ref, ref_mono, ref_mono + pol_model, model_mono + pol_ref)))
    ref = load_reference(s.source)
    r0 = nscf_properties(ref.mol, dm=ref.dm, xc=predictor.xc)  # the SCF density, one diagonalisation
    for case, c in densities.items():
        r = nscf_properties(ref.mol, c, predictor.basis, predictor.target, predictor.xc,
                            orbital_basis=predictor.orbital_basis)
        row[case] = {"energy_mev_per_atom": (r.energy - r0.energy) * HARTREE_EV * 1000 / len(s),
                     "gap_mev": (r.gap - r0.gap) * HARTREE_EV * 1000,
                     "dipole_debye": float(np.linalg.norm(r.dipole - r0.dipole))}
    return row


def table(rows) -> str:
    head = ["model", "fitted ref.", "no pol.", "exact mono. + model pol.", "model mono. + exact pol."]
    widths = [max(len(h), 7) for h in head]
    lines = ["gap error, meV (one diagonalisation, against the dimer's SCF)",
             f"{'dimer':<40s} {'atoms':>5s} " + " ".join(f"{h:>{w}s}" for h, w in zip(head, widths))
             + f" {'|pol| model/ref':>15s} {'cos':>6s}"]
    for r in rows:
        ratio = r["polarization_norm_model"] / max(r["polarization_norm_reference"], 1e-300)
        lines.append(f"{r['name'][:40]:<40s} {r['n_atoms']:5d} "
                     + " ".join(f"{r[c]['gap_mev']:+{w}.0f}" for c, w in zip(CASES, widths))
                     + f" {ratio:15.2f} {r['polarization_cosine']:6.2f}")
    if rows:
        mae = [np.mean([abs(r[c]["gap_mev"]) for r in rows]) for c in CASES]
        hit = [sum(abs(r[c]["gap_mev"]) < 43 for r in rows) for c in CASES]
        lines.append(f"{'MAE':<40s} {'':5s} " + " ".join(f"{m:{w}.1f}" for m, w in zip(mae, widths)))
        lines.append(f"{'# < 43 meV':<40s} {'':5s} " + " ".join(f"{h:{w}d}" for h, w in zip(hit, widths))
                     + f"   (of {len(rows)})")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", required=True, help="folder for the references (refs_s22/, refs_s22_monomers/)")
    p.add_argument("-n", type=int, default=22, help="the N smallest S22 dimers (default: %(default)s)")
    p.add_argument("--model", default="qm9-dcd",
                   help="model, DCD or TCD (default: %(default)s; the SAED is additive over atoms, so the "
                        "polarization is the same density for both)")
    p.add_argument("--workers", type=int, default=1, help="reference calculations in parallel")
    p.add_argument("--json", default=None, help="results file (kept and extended on a rerun)")
    args = p.parse_args(argv)

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from benchmark_properties import s22_references

    from densitylearn.predict import load_model, read_inputs
    from densitylearn.properties import write_json
    from densitylearn.reference import compute_references

    predictor = load_model(args.model)
    chks = s22_references(args.n, args.work)
    dimers = read_inputs(chks)
    mono_dir = os.path.join(args.work, "refs_s22_monomers")
    parts = [monomers(d) for d in dimers]
    compute_references([m for pair in parts for m, _ in pair], mono_dir, workers=args.workers, progress=False)
    rows = []
    if args.json and os.path.exists(args.json):
        with open(args.json) as fh:
            previous = json.load(fh)
        if previous.get("model") != predictor.checkpoint:
            p.error(f"{args.json} holds the results of model {previous.get('model')}, not {predictor.checkpoint}; "
                    "give another --json")
        rows = previous["dimers"]
    done = {r["name"] for r in rows}
    for pred, pair in zip(predictor.predict(dimers), parts):
        if pred.structure.label in done:
            continue
        rows.append(decompose(predictor, pred, [os.path.join(mono_dir, f"{m.name}.chk") for m, _ in pair]))
        print(f"{pred.structure.label}: done", flush=True)
        if args.json:
            write_json({"model": predictor.checkpoint, "dimers": rows}, args.json)
    order = {d.label: k for k, d in enumerate(dimers)}
    print(table(sorted((r for r in rows if r["name"] in order), key=lambda r: order[r["name"]])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
