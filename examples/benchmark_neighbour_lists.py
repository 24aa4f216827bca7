"""
Benchmark: periodic neighbour lists, vesin vs ASE
=================================================

The model's periodic edges (:func:`densitylearn.graph.periodic_neighbour_list`) come from
vesin when it is installed and from ASE's ``primitive_neighbor_list`` otherwise. This
script times both, and matscipy's ``neighbour_list`` as a third peer when importable, on
rattled Si diamond cells from the 2-atom primitive cell to a few thousand atoms, at the
model cutoff of the allotrope study (8.5 bohr). It first checks that all backends return
the same set of (i, j, shift) edges, then prints the best of several calls in
milliseconds and the ratio to ASE.

Run::

    python examples/benchmark_neighbour_lists.py --cutoff 8.5 --max-repeat 6
"""

import argparse
import time

import numpy as np
from ase.build import bulk

from densitylearn.graph import periodic_neighbour_list
from densitylearn.units import ANGSTROM_BOHR


def best_ms(fn, repeat=5):
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * min(times)


def cells(max_repeat):
    a = bulk("Si", "diamond", a=5.431)
    a.rattle(0.05, seed=0)
    yield "primitive", a
    for n in range(1, max_repeat + 1):
        a = bulk("Si", "diamond", a=5.431, cubic=True).repeat((n, n, n))
        a.rattle(0.05, seed=n)
        yield f"{n}x{n}x{n} conventional", a


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--cutoff", type=float, default=8.5, help="bohr")
    p.add_argument("--max-repeat", type=int, default=6, help="largest n of the n x n x n conventional cells")
    args = p.parse_args(argv)
    try:
        from matscipy.neighbours import neighbour_list as matscipy_nl
    except ImportError:
        matscipy_nl = None
    print(f"cutoff {args.cutoff} bohr; best of 5 calls, milliseconds")
    print(f"{'cell':>22} {'atoms':>6} {'edges':>7} {'ase':>8} {'vesin':>8} {'ratio':>6} {'matscipy':>9}")
    for name, atoms in cells(args.max_repeat):
        pos, cell = atoms.positions * ANGSTROM_BOHR, atoms.cell.array * ANGSTROM_BOHR
        ref = periodic_neighbour_list(pos, cell, args.cutoff, backend="ase")
        got = periodic_neighbour_list(pos, cell, args.cutoff, backend="vesin")
        if not (np.array_equal(ref[0], got[0]) and np.array_equal(ref[1], got[1])):
            raise SystemExit(f"{name}: vesin and ASE edges differ")
        t_ase = best_ms(lambda: periodic_neighbour_list(pos, cell, args.cutoff, backend="ase"))
        t_vesin = best_ms(lambda: periodic_neighbour_list(pos, cell, args.cutoff, backend="vesin"))
        t_msp = float("nan")
        if matscipy_nl is not None:
            scaled = atoms.copy()
            scaled.set_cell(cell, scale_atoms=True)  # bohr throughout
            i, j, s = matscipy_nl("ijS", scaled, args.cutoff)
            if len(i) != ref[0].shape[1]:
                raise SystemExit(f"{name}: matscipy finds {len(i)} edges, ASE {ref[0].shape[1]}")
            t_msp = best_ms(lambda: matscipy_nl("ijS", scaled, args.cutoff))
        print(f"{name:>22} {len(atoms):6d} {ref[0].shape[1]:7d} {t_ase:8.2f} {t_vesin:8.3f} "
              f"{t_ase / t_vesin:6.1f} {t_msp:9.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
