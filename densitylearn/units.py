"""Units: the one owner of length and density conversions.

Internally densitylearn works in atomic units: lengths in bohr, densities in e/bohr^3,
energies in hartree. Conversions happen at the boundary (structure readers, cube/CHGCAR
writers, ASE). We use PySCF's value of the bohr radius so that a geometry converted here
and one converted by PySCF agree bit for bit (ASE's value differs at 7e-10 relative).
"""

#: Bohr radius in Angstrom (PySCF's ``pyscf.lib.parameters.BOHR``).
BOHR_ANGSTROM = 0.52917721092

#: Angstrom in bohr.
ANGSTROM_BOHR = 1.0 / BOHR_ANGSTROM

#: Hartree in electronvolt (PySCF's ``pyscf.data.nist.HARTREE2EV``).
HARTREE_EV = 27.21138602

#: Debye per atomic unit of dipole, e * bohr (PySCF's ``AU2DEBYE``).
AU_DEBYE = 2.5417464157449032


def angstrom_to_bohr(x):
    """Convert lengths (any array-like) from Angstrom to bohr."""
    return x * ANGSTROM_BOHR


def bohr_to_angstrom(x):
    """Convert lengths (any array-like) from bohr to Angstrom."""
    return x * BOHR_ANGSTROM
