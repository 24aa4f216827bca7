"""Auxiliary basis sets shipped with densitylearn (NWChem format, one file per basis).

Installed as the package ``densitylearn.basis_sets``; look files up with
:func:`densitylearn.basis.shipped_basis_path`.
"""
