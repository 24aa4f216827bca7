"""Sphinx configuration for the densitylearn documentation."""

import densitylearn

project = "densitylearn"
author = "densitylearn developers"
release = densitylearn.__version__
extensions = ["sphinx.ext.autodoc", "sphinx.ext.intersphinx", "sphinx.ext.mathjax"]
try:  # optional: numpydoc renders the docstrings' Parameters/Returns sections
    import numpydoc  # noqa: F401

    extensions.append("numpydoc")
except ImportError:
    extensions.append("sphinx.ext.napoleon")
intersphinx_mapping = {
    "python": ("https://docs.python.org/3", None),
    "numpy": ("https://numpy.org/doc/stable", None),
    "torch": ("https://pytorch.org/docs/stable", None),
    "pyscf": ("https://pyscf.org", None),
    "ase": ("https://wiki.fysik.dtu.dk/ase", None),
}
exclude_patterns = ["_build"]
html_theme = "alabaster"
