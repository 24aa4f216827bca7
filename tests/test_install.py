"""The installed package (not the source tree) ships every module and the basis files."""

import os
import subprocess
import sys

import densitylearn

SOURCE = os.path.dirname(os.path.abspath(densitylearn.__file__))

PROBE = r"""
import os, densitylearn, densitylearn.cli
from densitylearn.basis import shipped_basis_names
from densitylearn.predict import available_models
root = os.path.dirname(os.path.abspath(densitylearn.__file__))
mods = sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root)
              for f in fs if f.endswith('.py'))
print(repr((mods, shipped_basis_names(), available_models())))
"""


def test_installed_package_has_all_modules_and_basis_sets(tmp_path):
    # run from an empty folder so the source checkout is not on sys.path
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, capture_output=True, text=True,
                         check=True)
    mods, names, models = eval(out.stdout)
    source_mods = sorted(os.path.relpath(os.path.join(d, f), SOURCE) for d, _, fs in os.walk(SOURCE)
                         for f in fs if f.endswith(".py"))
    assert set(source_mods) <= set(mods), sorted(set(source_mods) - set(mods))
    assert "dl-dcd" in names
    assert {"qm9-dcd", "qm9-tcd"} <= set(models)  # the pretrained models are installed too
    help_text = subprocess.run([sys.executable, "-m", "densitylearn.cli", "--help"], cwd=tmp_path,
                               capture_output=True, text=True, check=True).stdout
    for cmd in ("compute", "fit-basis", "evaluate", "train", "predict", "quickstart"):
        assert cmd in help_text
