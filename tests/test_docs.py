"""The documentation builds with warnings as errors, the example gallery executed.

Runs ``sphinx -W --keep-going`` on copies of ``docs/`` and ``examples/`` in a temporary
folder (the source tree stays clean), offline (``DENSITYLEARN_DOCS_OFFLINE=1``: no
intersphinx downloads, CI has no internet), with the examples' work folder and the SAED
cache in temporary folders. A few minutes on two CPU cores: every ``plot_*`` example runs
real PySCF and trains tiny models.
"""

import os
import shutil
import subprocess
import sys
import zlib

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS, EXAMPLES = os.path.join(ROOT, "docs"), os.path.join(ROOT, "examples")

pytestmark = pytest.mark.skipif(not os.path.isfile(os.path.join(DOCS, "conf.py")),
                                reason="needs a source checkout with docs/")


def _sphinx_build(tmp_path, **env_overrides):
    """Copy docs/ and examples/ into tmp_path, build HTML with -W; return the output folder."""
    for mod in ("sphinx", "sphinx_gallery", "numpydoc", "matplotlib"):
        pytest.importorskip(mod)
    src = tmp_path / "src"
    shutil.copytree(DOCS, src / "docs", ignore=shutil.ignore_patterns(
        "_build", "auto_examples", "sg_execution_times.rst", "__pycache__"))
    shutil.copytree(EXAMPLES, src / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "html"
    env = dict(os.environ, DENSITYLEARN_DOCS_OFFLINE="1", DENSITYLEARN_DOCS_PLOT_GALLERY="1",
               DENSITYLEARN_EXAMPLES_DIR=str(tmp_path / "work"), MPLBACKEND="Agg")
    env.pop("DENSITYLEARN_DOCS_INVENTORIES", None)
    env.update(env_overrides)
    proc = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html", "-q",
                           "-d", str(tmp_path / "doctrees"), str(src / "docs"), str(out)],
                          env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, f"sphinx failed:\n{proc.stdout[-5000:]}\n{proc.stderr[-10000:]}"
    return out


@pytest.mark.slow
def test_docs_build_with_warnings_as_errors_and_gallery_executed(tmp_path):
    from densitylearn.cli import COMMANDS

    out = _sphinx_build(tmp_path)

    # every executed example produced its page and at least one figure
    plots = sorted(f[:-3] for f in os.listdir(EXAMPLES) if f.startswith("plot_") and f.endswith(".py"))
    assert len(plots) >= 6
    images = os.listdir(out / "_images")
    for name in plots:
        assert (out / "auto_examples" / f"{name}.html").is_file(), name
        assert any(img.startswith(f"sphx_glr_{name}_0") for img in images), f"{name} made no figure"
    # the benchmark scripts are shown, not run
    page = (out / "auto_examples" / "qm9_delta_saed_benchmark.html").read_text()
    assert "qm9_delta_saed_benchmark.py" in page
    # the CLI reference covers every subcommand, the API reference every public module
    cli = (out / "cli.html").read_text()
    for name in COMMANDS:
        assert f"densitylearn {name}" in cli, name
    for mod in ("basis", "saed", "reference", "fitting", "data", "grid", "metrics", "evaluate", "cube",
                "model", "train", "predict", "properties", "structure", "gridfit", "becke", "graph"):
        assert f'id="module-densitylearn.{mod}"' in (out / "api" / f"{mod}.html").read_text(), mod
    assert (out / "citing.html").is_file()


def _inventory(path, project, lines):
    """A Sphinx objects.inv (format 2) with the given entries."""
    head = (f"# Sphinx inventory version 2\n# Project: {project}\n# Version: 0\n"
            "# The remainder of this file is compressed using zlib.\n")
    path.write_bytes(head.encode() + zlib.compress("".join(x + "\n" for x in lines).encode()))


def test_offline_build_links_through_local_inventories(tmp_path):
    """DENSITYLEARN_DOCS_INVENTORIES: the intersphinx path of an online build, without network."""
    inv = tmp_path / "inv"
    inv.mkdir()
    _inventory(inv / "numpy.inv", "NumPy", [
        "numpy.ndarray py:class 1 reference/generated/numpy.ndarray.html#$ -",
        "array_like std:term -1 glossary.html#term-array_like -",
        "arrays.scalars std:label -1 reference/arrays.scalars.html#$ Scalars"])
    _inventory(inv / "torch.inv", "PyTorch", ["torch.Tensor py:class 1 tensors.html#$ -"])
    out = _sphinx_build(tmp_path, DENSITYLEARN_DOCS_INVENTORIES=str(inv), DENSITYLEARN_DOCS_PLOT_GALLERY="0")
    assert 'href="https://numpy.org/doc/stable/reference/generated/numpy.ndarray.html' in \
        (out / "api" / "metrics.html").read_text()
    assert 'href="https://docs.pytorch.org/docs/stable/tensors.html#torch.Tensor"' in \
        (out / "api" / "grid.html").read_text()
    # projects without an inventory stay plain text, never a broken link
    assert "https://pyscf.org/" not in (out / "api" / "fitting.html").read_text()
