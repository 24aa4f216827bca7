"""Random non-covalent dimers of training-range QM9 molecules, for intermolecular training data
============================================================================================

QM9 holds single molecules only, so a model trained on it has never seen one molecule's
density polarised by a neighbour at contact distance. The HOMO-LUMO gaps of the S22
complexes from such a model's density are off by 0.3-0.7 eV where the HOMO is a small
polar monomer's lone pair in a neighbour's field (docs/properties.rst). This script builds
dimers from QM9 molecules with indices < 120000 (never the held-out range) and no S22
geometry: one small monomer (1-3 heavy atoms) with a second of 1-6 heavy atoms, placed in
one of three ways, drawn per dimer:

* ``hbond`` (40 %): a polar H (bonded to N or O) of one monomer points at an N, O or F
  atom of the other, H...acceptor 1.75-2.5 Angstrom, the acceptor's molecule behind it;
* ``centroid`` (20 %): an H (a polar one where there is one) points at the other
  monomer's heavy-atom centroid (X-H...pi-like when that monomer is a ring), closest
  contact 0.75-1.0 of the van der Waals sum;
* ``random`` (40 %): random orientations and approach direction, closest contact
  0.75-1.05 of the van der Waals sum.

Every dimer keeps all other contacts at >= 0.7 of the van der Waals sum (Bondi radii).
Output: one extxyz file (Angstrom) whose frames ``densitylearn compute`` names
``STEM_FRAME``; each frame's info holds the two QM9 indices and the placement mode.
The draw is a function of ``--seed`` alone, and a larger ``-n`` extends a smaller one
(the first N frames are the same), so references computed from a prefix stay valid::

    python examples/qm9_dimers.py -n 400 --out dimers.xyz
    densitylearn compute dimers.xyz --out refs_dimers --workers 2
"""
from __future__ import annotations

import argparse
import ast
import csv
import glob
import os

import numpy as np

#: Bondi van der Waals radii (Angstrom) of the QM9 elements
VDW = {"H": 1.20, "C": 1.70, "N": 1.55, "O": 1.52, "F": 1.47}
MODES = (("hbond", 0.4), ("centroid", 0.2), ("random", 0.4))
MIN_OTHER_SCALE = 0.7


def monomers(max_heavy: int = 6):
    """Training-range QM9 molecules with at most ``max_heavy`` heavy atoms:
    {index: (symbols, positions in Angstrom)}."""
    from densitylearn.structure import QM9_HELDOUT_START, _qm9_data_dir

    csv.field_size_limit(1 << 30)
    out = {}
    for f in sorted(glob.glob(os.path.join(_qm9_data_dir(), "qm9_part*.csv"))):
        with open(f, newline="") as fh:
            for r in csv.DictReader(fh):
                i = int(r["Index"])
                if i >= QM9_HELDOUT_START:
                    continue
                sym = ast.literal_eval(r["Elements"])
                if sum(s != "H" for s in sym) <= max_heavy:
                    out[i] = (list(sym), np.array(ast.literal_eval(r["XYZ_Ang"]), dtype=float))
    return dict(sorted(out.items()))


def random_rotation(rng) -> np.ndarray:
    q = rng.normal(size=4)
    a, b, c, d = q / np.linalg.norm(q)
    return np.array([[a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
                     [2 * (b * c + a * d), a * a - b * b + c * c - d * d, 2 * (c * d - a * b)],
                     [2 * (b * d - a * c), 2 * (c * d + a * b), a * a - b * b - c * c + d * d]])


def contact_scales(sa, xa, sb, xb) -> np.ndarray:
    """d_ij / (r_i + r_j) for every pair between the two monomers."""
    d = np.linalg.norm(xa[:, None] - xb[None], axis=-1)
    r = np.array([VDW[s] for s in sa])[:, None] + np.array([VDW[s] for s in sb])[None]
    return d / r


def polar_h(sym, x) -> list[int]:
    """H atoms whose nearest neighbour is N or O (within 1.15 Angstrom)."""
    out = []
    for i, s in enumerate(sym):
        if s != "H":
            continue
        d = np.linalg.norm(x - x[i], axis=1)
        d[i] = np.inf
        j = int(np.argmin(d))
        if d[j] < 1.15 and sym[j] in ("N", "O"):
            out.append(i)
    return out


def bonded_partner(x, i) -> int:
    d = np.linalg.norm(x - x[i], axis=1)
    d[i] = np.inf
    return int(np.argmin(d))


def approach(sa, xa, sb, xb, origin, u, target_scale) -> np.ndarray | None:
    """Translate monomer B (already rotated, centred on its anchor point at 0) along
    origin + t u until its closest contact with A reaches ``target_scale``."""
    for t in np.arange(0.5, 12.0, 0.02):
        xt = xb + origin + t * u
        if contact_scales(sa, xa, sb, xt).min() >= target_scale:
            return xt
    return None


def place(mode, rng, sa, xa, sb, xb):
    """One placement of B relative to A, or None when this pair cannot take the mode."""
    heavy_b = np.array([s != "H" for s in sb])
    if mode == "hbond":
        donors = polar_h(sa, xa)
        acceptors = [j for j, s in enumerate(sb) if s in ("N", "O", "F")]
        if not donors or not acceptors:
            return None
        h = int(rng.choice(donors))
        y = int(rng.choice(acceptors))
        u = xa[h] - xa[bonded_partner(xa, h)]
        u /= np.linalg.norm(u)
        dist = rng.uniform(1.75, 2.5)
        for _ in range(300):
            xr = (xb - xb[y]) @ random_rotation(rng).T
            if len(sb) > 1:
                back = xr[heavy_b].mean(axis=0) if heavy_b.sum() > 1 else xr.mean(axis=0)
                if np.linalg.norm(back) > 1e-6 and np.dot(back / np.linalg.norm(back), u) < 0.5:
                    continue
            xt = xr + xa[h] + dist * u
            sc = contact_scales(sa, xa, sb, xt)
            sc[h, y] = np.inf
            if sc.min() >= MIN_OTHER_SCALE:
                return xt
        return None
    if mode == "centroid":
        hs = polar_h(sa, xa) or [i for i, s in enumerate(sa) if s == "H"]
        if not hs:
            return None
        h = int(rng.choice(hs))
        u = xa[h] - xa[bonded_partner(xa, h)]
        u /= np.linalg.norm(u)
        c = xb[heavy_b].mean(axis=0) if heavy_b.any() else xb.mean(axis=0)
        xr = (xb - c) @ random_rotation(rng).T
        return approach(sa, xa, sb, xr, xa[h], u, rng.uniform(0.75, 1.0))
    u = rng.normal(size=3)
    u /= np.linalg.norm(u)
    xr = (xb - xb.mean(axis=0)) @ random_rotation(rng).T
    return approach(sa, xa, sb, xr, xa.mean(axis=0), u, rng.uniform(0.75, 1.05))


def make_dimers(n: int, seed: int, pool=None):
    """The first ``n`` dimers of the seeded draw: a list of (symbols, positions, info)."""
    pool = pool if pool is not None else monomers()
    heavy = {i: sum(s != "H" for s in sym) for i, (sym, _) in pool.items()}
    small = [i for i in pool if heavy[i] <= 3]
    anyone = list(pool)
    names, probs = zip(*MODES)
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        mode = str(rng.choice(names, p=probs))
        xt = None
        while xt is None:  # new monomers until this mode fits them (an H-bond needs a donor and an acceptor)
            a = int(rng.choice(small))
            b = int(rng.choice(small if rng.random() < 0.35 else anyone))
            (sa, xa), (sb, xb) = pool[a], pool[b]
            if rng.random() < 0.5:  # the small monomer is the donor or the acceptor side
                (a, sa, xa), (b, sb, xb) = (b, sb, xb), (a, sa, xa)
            xa = xa - xa.mean(axis=0)
            xt = place(mode, rng, sa, xa, sb, xb)
        info = {"qm9_a": int(a), "qm9_b": int(b), "mode": mode,
                "min_contact_scale": round(float(contact_scales(sa, xa, sb, xt).min()), 3)}
        out.append((sa + sb, np.vstack([xa, xt]), info))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=400, help="number of dimers (default 400)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="extxyz file to write")
    args = p.parse_args(argv)
    if args.n < 1:
        p.error(f"-n must be >= 1, got {args.n}")
    import ase
    import ase.io

    frames = []
    for sym, x, info in make_dimers(args.n, args.seed):
        at = ase.Atoms(symbols=sym, positions=x)
        at.info.update(info)
        frames.append(at)
    tmp = args.out + ".tmp.xyz"
    ase.io.write(tmp, frames, format="extxyz")
    os.replace(tmp, args.out)
    modes = [f.info["mode"] for f in frames]
    print(f"wrote {args.out}: {len(frames)} dimers, {min(len(f) for f in frames)}-{max(len(f) for f in frames)} atoms; "
          + ", ".join(f"{m} {modes.count(m)}" for m, _ in MODES))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
