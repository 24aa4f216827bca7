"""Si allotropes from published crystal structures, with rattled and strained variants
=====================================================================================

Builds silicon allotropes with ASE's space-group builder (:func:`ase.spacegroup.crystal`,
primitive cells by default) from the crystallographic data below, writes them (and seeded
rattled and strained variants for training) as extended XYZ, and optionally runs
``densitylearn compute`` and ``densitylearn fit-basis`` on a chosen subset. Lengths in
Angstrom here (ASE's unit); densitylearn converts to bohr when it reads the files.

=============  ==========  ============================================  ==========================
allotrope      group       Wyckoff positions                             lattice (Angstrom)
=============  ==========  ============================================  ==========================
diamond        Fd-3m 227   8a (0, 0, 0) (origin choice 1)                a = 5.431020511 [1]
lonsdaleite    P6_3/mmc    4f (1/3, 2/3, 1/16)                           a = a_d / sqrt 2,
               194                                                       c = 2 a_d / sqrt 3 [2]
beta-Sn        I4_1/amd    4a (0, 0, 0) (origin choice 1)                a = 4.686, c = 2.585 [3]
               141
BC8            Ia-3 206    16c (x, x, x), x = 0.1003                     a = 6.636 [4]
Si136          Fd-3m 227   8a (1/8, 1/8, 1/8); 32e x = 0.2179;           a = 14.62 [5]
                           96g (x, x, z) x = 0.1826, z = 0.3702
                           (origin choice 2)
Si46           Pm-3n 223   6c (1/4, 0, 1/2); 16i x = 0.1847;             a = 10.19 [6]
                           24k (0, y, z) y = 0.3088, z = 0.1173
ST12           P4_32_12    4a (x, x, 0) x = 0.0849;                      a = 5.51889,
               96          8b (0.1752, 0.3792, 0.2742)                   c/a = 1.25999974633 [7]
bct5           I4/mmm 139  4e (0, 0, z) z = 0.181                        a = 3.34916,
                                                                         c/a = 1.94217355994 [8]
sh (Si-V)      P6/mmm 191  1a (0, 0, 0)                                  a = 2.547, c = 2.380 [9]
=============  ==========  ============================================  ==========================

Sources:

1. Diamond Si: the CODATA 2018 lattice parameter of silicon, a = 543.1020511 pm (22.5 C,
   vacuum).
2. Lonsdaleite (hexagonal diamond, Si-IV): the ideal hexagonal-diamond geometry with the
   bond length of [1] (a = a_d / sqrt 2, c = 2 a_d / sqrt 3, z = 1/16, so every bond is
   sqrt(3) a_d / 4 = 2.352 Angstrom); a construction, not a measured structure
   (the hexagonal phase was reported by Besson et al., Phys. Rev. Lett. 59, 473 (1987)).
3. beta-Sn Si (Si-II, at about 12 GPa): J. C. Jamieson, Science 139, 762 (1963).
4. BC8 (Si-III): J. S. Kasper and S. M. Richards, Acta Cryst. 17, 752 (1964).
5. Type-II clathrate Si136 (guest-free): A. Gryko et al., Phys. Rev. B 62, R7707 (2000),
   lattice parameter; framework positions of the type-II clathrate structure.
6. Type-I clathrate Si46: the Si framework of Na8Si46 with the guests removed (a guest-free
   Si46 has not been made): J. S. Kasper, P. Hagenmuller, M. Pouchard and C. Cros,
   Science 150, 1713 (1965), lattice parameter and framework positions.
7. ST12 (Si-IX): the parameters of the AFLOW Library of Crystallographic Prototypes,
   prototype A_tP12_96_ab (M. J. Mehl et al., Comp. Mat. Sci. 136, S1 (2017)), which
   cites J. Crain et al., Phys. Rev. B 49, 5329 (1994). Four-fold coordinated with bonds
   of 2.28, 2.40 and 2.55 Angstrom: a strongly distorted tetrahedral network.
8. bct5 (a predicted five-fold coordinated phase): AFLOW prototype A_tI4_139_e (same
   reference as [7]; its z1 = 0.819 in primitive-vector coordinates is the 4e site
   z = 1 - 0.819 used here), from L. L. Boyer et al., Phys. Rev. Lett. 67, 715 (1991).
   One bond of 2.355 and four of 2.533 Angstrom per atom.
9. Simple hexagonal Si-V (metallic, stable at about 16-38 GPa): the lattice parameters
   measured at 17.9 GPa (ruby scale) by S. Anzellini, M. T. Wharmby, F. Miozzi,
   A. Kleppe, D. Daisenberger and H. Wilhelm, Sci. Rep. 9, 15537 (2019), Table 6. One atom
   per cell; eight neighbours, two along c (2.380) and six in the plane (2.547 Angstrom).

The positional parameters of BC8 and of the two clathrates are checked here only by
geometry (``tests/test_periodic_e2e.py``): every atom is four-fold coordinated with bonds
of 2.30-2.39 Angstrom. The site sets agree with the published prototype descriptions (BC8:
Ia-3 16c only; Si136: Fd-3m 8a, 32e, 96g; Si46: Pm-3n, three framework sites). Si46 is
usually written with 6d (1/4, 1/2, 0) and 24k (0, 0.1173, 0.3088); the description above is
its y <-> z mirror image. Because the group is centrosymmetric this is the same crystal,
with identical bond lengths, which was checked with ase.spacegroup. The numerical values
(x, y, z, a) still have to be compared with the cited papers before publishing numbers
built on them.

Left out (parameters not pinned down well enough from the literature at hand): R8 (R-3,
Si-XII). The ST12 and bct5 values were read from the AFLOW prototype library's own
parameter listing, not from the original papers.

Usage::

    python examples/si_allotropes.py --out si_allotropes --variants 4 --rattle 0.03 --strain 0.02
    python examples/si_allotropes.py --out si_allotropes --compute diamond,lonsdaleite \\
        --basis gth-dzvp --kmesh 2,2,2 --ke-cutoff 40 --auxbasis etb:1.5

writes ``OUT/<name>.extxyz`` (the structure, then its variants), ``OUT/all.extxyz`` and,
with ``--compute``, chkfiles in ``OUT/chk`` and the coefficient dataset ``OUT/si.h5``.
The full allotrope DFT takes hours on a CPU; the 2-atom diamond cell takes seconds.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

#: Lattice parameter of diamond Si, Angstrom (CODATA 2018).
A_DIAMOND = 5.431020511

#: name -> keyword arguments of ase.spacegroup.crystal (see the module docstring).
ALLOTROPES = {
    "diamond": dict(basis=[(0.0, 0.0, 0.0)], spacegroup=227, setting=1,
                    cellpar=[A_DIAMOND, A_DIAMOND, A_DIAMOND, 90, 90, 90]),
    "lonsdaleite": dict(basis=[(1 / 3, 2 / 3, 1 / 16)], spacegroup=194, setting=1,
                        cellpar=[A_DIAMOND / np.sqrt(2), A_DIAMOND / np.sqrt(2), 2 * A_DIAMOND / np.sqrt(3),
                                 90, 90, 120]),
    "beta_sn": dict(basis=[(0.0, 0.0, 0.0)], spacegroup=141, setting=1, cellpar=[4.686, 4.686, 2.585, 90, 90, 90]),
    "bc8": dict(basis=[(0.1003, 0.1003, 0.1003)], spacegroup=206, setting=1, cellpar=[6.636, 6.636, 6.636, 90, 90, 90]),
    "si136": dict(basis=[(0.125, 0.125, 0.125), (0.2179, 0.2179, 0.2179), (0.1826, 0.1826, 0.3702)],
                  spacegroup=227, setting=2, cellpar=[14.62, 14.62, 14.62, 90, 90, 90]),
    "si46": dict(basis=[(0.25, 0.0, 0.5), (0.1847, 0.1847, 0.1847), (0.0, 0.3088, 0.1173)],
                 spacegroup=223, setting=1, cellpar=[10.19, 10.19, 10.19, 90, 90, 90]),
    "st12": dict(basis=[(0.0849, 0.0849, 0.0), (0.1752, 0.3792, 0.2742)], spacegroup=96, setting=1,
                 cellpar=[5.51889, 5.51889, 5.51889 * 1.25999974633, 90, 90, 90]),
    "bct5": dict(basis=[(0.0, 0.0, 1 - 0.819)], spacegroup=139, setting=1,
                 cellpar=[3.34916, 3.34916, 3.34916 * 1.94217355994, 90, 90, 90]),
    "sh": dict(basis=[(0.0, 0.0, 0.0)], spacegroup=191, setting=1, cellpar=[2.547, 2.547, 2.380, 90, 90, 120]),
}

#: Atoms per conventional cell, from the Wyckoff multiplicities (a check of the builder).
CONVENTIONAL_ATOMS = {"diamond": 8, "lonsdaleite": 4, "beta_sn": 4, "bc8": 16, "si136": 136, "si46": 46,
                      "st12": 12, "bct5": 4, "sh": 1}

#: Structures with four-fold (tetrahedral) coordination and bonds of 2.30-2.39 Angstrom
#: (ST12 is four-fold coordinated too, with a wider bond spread).
TETRAHEDRAL = ("diamond", "lonsdaleite", "bc8", "si136", "si46")


def build(name: str, primitive: bool = True):
    """One allotrope as ``ase.Atoms`` (Angstrom), named in ``atoms.info['name']``.

    ``primitive`` gives ASE's primitive cell (diamond 2 atoms, BC8 8, Si136 34); otherwise
    the conventional cell.
    """
    from ase.spacegroup import crystal

    if name not in ALLOTROPES:
        raise KeyError(f"unknown allotrope {name!r}; choose from {', '.join(ALLOTROPES)}")
    spec = ALLOTROPES[name]
    atoms = crystal(["Si"] * len(spec["basis"]), primitive_cell=primitive, **spec)
    atoms.info["name"] = name
    return atoms


def build_all(names=None, primitive: bool = True) -> dict:
    """{name: Atoms} of ``names`` (default all of :data:`ALLOTROPES`)."""
    return {n: build(n, primitive) for n in (names or ALLOTROPES)}


def variants(atoms, n: int, rattle=0.03, strain: float = 0.02, seed: int = 0) -> list:
    """``n`` seeded variants of ``atoms``: each a random symmetric strain (components uniform
    in [-strain, strain]) of the cell with scaled positions kept, then Gaussian displacements
    of standard deviation ``rattle`` Angstrom (a sequence of amplitudes is cycled over the
    variants: variant ``i`` gets ``rattle[i % len(rattle)]``). Named ``<name>_v<i>``."""
    amplitudes = [float(rattle)] if np.isscalar(rattle) else [float(r) for r in rattle]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(int(n)):
        a = atoms.copy()
        e = rng.uniform(-strain, strain, size=(3, 3))
        e = 0.5 * (e + e.T)
        a.set_cell(a.cell[:] @ (np.eye(3) + e), scale_atoms=True)
        a.positions += rng.normal(scale=amplitudes[i % len(amplitudes)], size=a.positions.shape)
        a.info = {"name": f"{atoms.info.get('name', 'si')}_v{i}"}  # no longer the space group
        out.append(a)
    return out


def supercell(atoms, min_atoms: int):
    """``atoms`` repeated along its lattice vectors until it holds at least ``min_atoms``
    atoms; each step adds one repeat along the currently shortest repeated lattice vector
    (sh, 1 atom, to 8: 1x1x2, 2x1x2, 2x2x2). Keeps ``info['name']``."""
    reps = np.ones(3, dtype=int)
    lengths = np.linalg.norm(atoms.cell[:], axis=1)
    while len(atoms) * reps.prod() < int(min_atoms):
        reps[np.argmin(lengths * reps)] += 1
    out = atoms.repeat(tuple(int(r) for r in reps))
    out.info = dict(atoms.info)
    return out


def write_structures(out: str, names=None, n_variants: int = 0, rattle: float = 0.03, strain: float = 0.02,
                     seed: int = 0) -> list[str]:
    """Write ``out/<name>.extxyz`` per allotrope and ``out/all.extxyz``; returns the per-allotrope files."""
    from ase.io import write

    os.makedirs(out, exist_ok=True)
    paths, everything = [], []
    for k, (name, atoms) in enumerate(build_all(names).items()):
        frames = [atoms] + variants(atoms, n_variants, rattle, strain, seed=seed + 1000 * k)
        path = os.path.join(out, f"{name}.extxyz")
        write(path, frames, format="extxyz")
        paths.append(path)
        everything.extend(frames)
    write(os.path.join(out, "all.extxyz"), everything, format="extxyz")
    return paths


def compute_and_fit(paths, out: str, basis: str = "gth-szv", kmesh: str = "1,1,1", ke_cutoff: float | None = None,
                    auxbasis: str = "def2-universal-jkfit") -> str:
    """``densitylearn compute`` (pyscf.pbc, GTH) then ``fit-basis`` on ``paths``; returns the dataset."""
    import glob

    from densitylearn import cli

    chk = os.path.join(out, "chk")
    args = ["compute", *paths, "--out", chk, "--basis", basis, "--kmesh", kmesh, "--no-progress"]
    if ke_cutoff is not None:
        args += ["--ke-cutoff", str(ke_cutoff)]
    if cli.main(args) != 0:
        raise SystemExit("densitylearn compute failed")
    data = os.path.join(out, "si.h5")
    if cli.main(["fit-basis", *sorted(glob.glob(os.path.join(chk, "*.chk"))), "--out", data,
                 "--auxbasis", auxbasis, "--quiet"]) != 0:
        raise SystemExit("densitylearn fit-basis failed")
    return data


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="si_allotropes", help="output folder")
    p.add_argument("--only", default=None, help="comma-separated allotropes (default: all)")
    p.add_argument("--variants", type=int, default=0, help="rattled and strained variants per allotrope")
    p.add_argument("--rattle", type=float, default=0.03, help="displacement standard deviation, Angstrom")
    p.add_argument("--strain", type=float, default=0.02, help="largest strain component")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compute", default=None, metavar="NAMES",
                   help="comma-separated allotropes to run densitylearn compute and fit-basis on")
    p.add_argument("--basis", default="gth-szv", help="orbital basis of compute (default: %(default)s)")
    p.add_argument("--kmesh", default="1,1,1", help="k-mesh of compute (default: %(default)s)")
    p.add_argument("--ke-cutoff", type=float, default=None, help="FFT cutoff of compute, hartree")
    p.add_argument("--auxbasis", default="def2-universal-jkfit", help="auxiliary basis of fit-basis")
    args = p.parse_args(argv)
    names = args.only.split(",") if args.only else None
    paths = write_structures(args.out, names, args.variants, args.rattle, args.strain, args.seed)
    for path in paths:
        print(f"wrote {path}")
    if args.compute:
        chosen = set(args.compute.split(","))
        unknown = chosen - set(ALLOTROPES)
        if unknown:
            raise SystemExit(f"unknown allotrope {sorted(unknown)[0]!r}")
        subset = [q for q in paths if os.path.basename(q).split(".")[0] in chosen]
        print(f"wrote {compute_and_fit(subset, args.out, args.basis, args.kmesh, args.ke_cutoff, args.auxbasis)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
