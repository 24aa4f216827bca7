"""Structure helpers that are not covered by the readers' tests: covalent fragments."""
from __future__ import annotations

import numpy as np
import pytest

from densitylearn.errors import InputError
from densitylearn.structure import Structure
from densitylearn.units import ANGSTROM_BOHR

# water dimer (S22 geometry, Angstrom): the donor's H 1.95 A from the acceptor's O
WATER_DIMER = [(8, (-1.551007, -0.114520, 0.000000)), (1, (-1.934259, 0.762503, 0.000000)),
               (1, (-0.599677, 0.040712, 0.000000)), (8, (1.350625, 0.111469, 0.000000)),
               (1, (1.680398, -0.373741, -0.758561)), (1, (1.680398, -0.373741, 0.758561))]
ETHANOL = [(6, (-0.0012, 0.5464, 0.0000)), (6, (1.2256, -0.3405, 0.0000)),
           (8, (-1.1763, -0.2659, 0.0000)), (1, (0.0364, 1.1949, 0.8820)),
           (1, (0.0364, 1.1949, -0.8820)), (1, (2.1432, 0.2564, 0.0000)),
           (1, (1.2272, -0.9780, 0.8879)), (1, (1.2272, -0.9780, -0.8879)),
           (1, (-1.9411, 0.3162, 0.0000))]


def _structure(atoms, shift=None) -> Structure:
    z = np.array([a[0] for a in atoms])
    x = np.array([a[1] for a in atoms], dtype=float)
    if shift is not None:
        x = x + shift
    return Structure(numbers=z, positions=x * ANGSTROM_BOHR, name="test")


def test_fragments_split_hydrogen_bonded_molecules_not_covalent_ones():
    assert _structure(WATER_DIMER).fragments().tolist() == [0, 0, 0, 1, 1, 1]
    assert _structure(ETHANOL).fragments().tolist() == [0] * 9
    # ethanol and a water 3 A away, listed water first: numbered by first atom
    far = WATER_DIMER[3:] + [(z, tuple(np.add(x, (0.0, 0.0, 5.0)))) for z, x in ETHANOL]
    assert _structure(far).fragments().tolist() == [0] * 3 + [1] * 9
    # atoms interleaved between the two molecules keep their own fragment
    mixed = [WATER_DIMER[i] for i in (0, 3, 1, 4, 2, 5)]
    assert _structure(mixed).fragments().tolist() == [0, 1, 0, 1, 0, 1]
    # the C-O bond stretched from 1.43 to 1.79 A (past 1.2 x (0.76 + 0.66) = 1.70 A) breaks ethanol in two
    stretched = [(z, tuple(np.add(x, (-0.42, 0.0, 0.0)) if z == 8 or i == 8 else x))
                 for i, (z, x) in enumerate(ETHANOL)]
    assert _structure(stretched).fragments().max() == 1
    assert _structure([(2, (0.0, 0.0, 0.0))]).fragments().tolist() == [0]


def test_fragments_refuse_periodic_structures():
    s = Structure(numbers=[14, 14], positions=[[0, 0, 0], [2.6, 2.6, 2.6]], cell=np.eye(3) * 10.26,
                  pbc=[True] * 3, name="si2")
    with pytest.raises(InputError, match="si2: fragments are defined for molecules only"):
        s.fragments()
