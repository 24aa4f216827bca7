"""Sphinx configuration for the densitylearn documentation.

Build (from the repository root; the gallery examples run, a few minutes on a laptop CPU)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html

Environment switches (see ``docs/building_docs.rst``):

``DENSITYLEARN_DOCS_OFFLINE=1``
    No intersphinx: links to Python, NumPy, PyTorch, PySCF, e3nn and ASE render as plain
    text instead of failing the ``-W`` build on unreachable inventories.
``DENSITYLEARN_DOCS_INVENTORIES=DIR``
    Read ``DIR/<name>.inv`` (e.g. ``numpy.inv``) before the network, for offline builds
    that still link.
``DENSITYLEARN_DOCS_PLOT_GALLERY=0``
    Do not execute the gallery examples (pages show code only).
``DENSITYLEARN_EXAMPLES_DIR``
    Work folder of the examples (default: ``densitylearn-examples`` in the temp folder).
"""

import os
import sys

import densitylearn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "_ext"))

project = "densitylearn"
author = "densitylearn developers"
copyright = "densitylearn developers, MIT license"
release = densitylearn.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
    "densitylearn_cli",
]

exclude_patterns = ["_build", "auto_examples/*.ipynb", "auto_examples/*.py", "auto_examples/*.zip",
                    "auto_examples/*.md5", "auto_examples/*.pickle", "auto_examples/*.json"]
html_theme = "alabaster"
html_theme_options = {"description": "Delta-SAED machine-learned electron densities",
                      "fixed_sidebar": True}
pygments_style = "sphinx"

# ---------------------------------------------------------------- API reference
autodoc_default_options = {"members": True, "member-order": "bysource"}
autodoc_typehints = "none"          # types live in the numpydoc Parameters sections
autodoc_mock_imports = []
autosummary_generate = False        # module pages are written by hand in docs/api/
numpydoc_show_class_members = False  # autodoc :members: lists them once
numpydoc_class_members_toctree = False
# Types in Parameters/Returns link to the projects' docs (through intersphinx) when they are
# known names; other words stay plain text.
numpydoc_xref_param_type = True
numpydoc_xref_ignore = "all"
numpydoc_xref_aliases = {
    "Tensor": "torch.Tensor",
    "torch.Tensor": "torch.Tensor",
    "torch.dtype": "torch.dtype",
    "torch.device": "torch.device",
    "Mole": "pyscf.gto.mole.Mole",
    "pyscf.gto.Mole": "pyscf.gto.mole.Mole",
    "Atoms": "ase.Atoms",
    "ase.Atoms": "ase.Atoms",
    "Irreps": "e3nn.o3.Irreps",
    "AuxBasis": "densitylearn.basis.AuxBasis",
    "SAED": "densitylearn.saed.SAED",
    "Structure": "densitylearn.structure.Structure",
    "Prediction": "densitylearn.predict.Prediction",
    "Predictor": "densitylearn.predict.Predictor",
    "DensityModel": "densitylearn.model.DensityModel",
    "ModelConfig": "densitylearn.model.ModelConfig",
    "TrainConfig": "densitylearn.train.TrainConfig",
    "FitSettings": "densitylearn.preprocess.FitSettings",
    "FitResult": "densitylearn.fitting.FitResult",
    "Reference": "densitylearn.reference.Reference",
    "NSCFResult": "densitylearn.properties.NSCFResult",
    "SCFRun": "densitylearn.properties.SCFRun",
    "CoefficientDataset": "densitylearn.data.CoefficientDataset",
}

# ---------------------------------------------------------------- intersphinx
#: Inventories of the projects we link to (name -> documentation root).
INTERSPHINX_URLS = {
    "python": "https://docs.python.org/3/",
    "numpy": "https://numpy.org/doc/stable/",
    "torch": "https://docs.pytorch.org/docs/stable/",
    "pyscf": "https://pyscf.org/",
    "e3nn": "https://docs.e3nn.org/en/stable/",
    "ase": "https://docs.ase-lib.org/",
}
OFFLINE = os.environ.get("DENSITYLEARN_DOCS_OFFLINE", "").strip().lower() not in ("", "0", "false", "no")
INVENTORIES = os.environ.get("DENSITYLEARN_DOCS_INVENTORIES", "")


def _locations(name):
    local = os.path.join(INVENTORIES, f"{name}.inv") if INVENTORIES else ""
    if OFFLINE:
        return (local,) if local and os.path.isfile(local) else ()
    return (local, None) if local and os.path.isfile(local) else (None,)


intersphinx_mapping = {name: (url, _locations(name)) for name, url in INTERSPHINX_URLS.items()
                       if _locations(name)}
intersphinx_timeout = 30
# numpydoc's built-in aliases use :ref: and :term: roles into the Python and NumPy docs;
# those warn when unresolved, so without the inventory they become plain text.
import re  # noqa: E402

import numpydoc.xref  # noqa: E402

for _alias, _target in numpydoc.xref.DEFAULT_LINKS.items():
    _project = re.search(r"[`<](\w+):", _target)
    if re.match(r":(ref|term):", _target) and _project and _project.group(1) not in intersphinx_mapping:
        numpydoc_xref_aliases.setdefault(_alias, _alias)
if OFFLINE:
    print(f"densitylearn docs: offline build, intersphinx links to "
          f"{sorted(set(INTERSPHINX_URLS) - set(intersphinx_mapping)) or 'nothing'} disabled")

# ---------------------------------------------------------------- gallery
os.environ.setdefault("DENSITYLEARN_EXAMPLES_DIR", os.path.join(
    __import__("tempfile").gettempdir(), "densitylearn-examples"))
PLOT_GALLERY = os.environ.get("DENSITYLEARN_DOCS_PLOT_GALLERY", "1").strip().lower() not in ("0", "false", "no")

sphinx_gallery_conf = {
    "examples_dirs": os.path.join(HERE, "..", "examples"),
    "gallery_dirs": "auto_examples",
    # only the short plot_* scripts run at build time; the benchmarks are shown, not run
    "filename_pattern": r"[\\/]plot_",
    "ignore_pattern": r"__init__\.py|[\\/]_",
    "within_subsection_order": "gallery_order.ExamplesFirst",
    "plot_gallery": "True" if PLOT_GALLERY else "False",
    "abort_on_example_error": False,
    "only_warn_on_example_error": False,
    "download_all_examples": False,
    "remove_config_comments": True,
    "capture_repr": (),
    "reset_modules": ("matplotlib",),
    "min_reported_time": 1,
    "show_memory": False,
    "write_computation_times": True,
}
