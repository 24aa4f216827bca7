"""
Predicting a density and writing a cube file
============================================

A trained checkpoint predicts the difference-density coefficients of a new structure in
one call; :class:`~densitylearn.predict.Prediction` adds the analytic SAED back, evaluates
the total density anywhere, counts its electrons analytically and writes Gaussian cube
files (bohr, e/bohr^3) for visualisation programs (VESTA, VMD, Avogadro, ASE).

The command-line equivalent::

    densitylearn predict run_dcd/best.pt water.xyz --out pred.h5 --cube cubes

The model is the tiny one trained in :ref:`sphx_glr_auto_examples_plot_03_train_model.py`
(it is trained first if it is missing).
"""

# %%
import os
import runpy
import tempfile

import matplotlib.pyplot as plt
import numpy as np
from ase.build import molecule
from ase.io.cube import read_cube

import densitylearn
from densitylearn.grid import becke_grid
from densitylearn.metrics import eps_mae, reference_density
from densitylearn.reference import run_reference
from densitylearn.structure import from_ase
from densitylearn.units import angstrom_to_bohr

WORK = os.environ.get("DENSITYLEARN_EXAMPLES_DIR", os.path.join(tempfile.gettempdir(), "densitylearn-examples"))
MODEL = os.path.join(WORK, "run_dcd", "best.pt")
if not os.path.exists(MODEL):  # train it as in example 3
    here = os.path.dirname(os.path.abspath(__file__)) if "__file__" in globals() else os.getcwd()
    runpy.run_path(os.path.join(here, "plot_03_train_model.py"))

# %%
# Predict
# -------
# Inputs can be :class:`ase.Atoms` (Angstrom), densitylearn Structures or PySCF Moles.
# Here: water at its equilibrium geometry, which the model never saw (it was trained on
# distorted copies).
model = densitylearn.load_model(MODEL, device="cpu")
print(f"model: target {model.target}, basis {model.basis.name}, elements {model.elements}")
water = from_ase(molecule("H2O"), name="water")  # or pass the ase.Atoms directly
[pred] = model.predict(water)
print(f"{pred.coefficients.size} coefficients; electrons (analytic): {pred.electron_count():.6f}")

# %%
# How good is it? Compare with a PBE/def2-SVP calculation on a Becke grid.
ref = run_reference(water, xc="pbe", basis="def2-svp", return_objects=True)
points, weights = becke_grid(ref["mol"], level=3)
rho_ref = reference_density(ref["mol"], ref["mf"].make_rdm1(), points)
rho_pred = pred.density(points)
rho_saed = model.saed.evaluate(pred.structure.numbers, pred.structure.positions, points)
print(f"eps_mae: model {eps_mae(rho_pred, rho_ref, weights):.2f} %, "
      f"SAED alone {eps_mae(rho_saed, rho_ref, weights):.2f} %")

# %%
# Cube files
# ----------
# ``write_cube`` writes ``water.total.cube`` and, for a DCD model, ``water.difference.cube``
# on a uniform box (spacing and margin in bohr). ASE reads them back (positions in
# Angstrom; the values stay in e/bohr^3).
cubes = pred.write_cube(os.path.join(WORK, "cubes"), spacing=0.2, margin=3.0)
for kind, path in cubes.items():
    print(f"{kind:>10}: {path} ({os.path.getsize(path) / 1e6:.1f} MB)")

fig, axes = plt.subplots(1, 2, figsize=(10, 4))
for ax, kind in zip(axes, ["total", "difference"]):
    with open(cubes[kind]) as fh:
        cube = read_cube(fh)
    data = cube["data"]
    origin = angstrom_to_bohr(np.asarray(cube["origin"]))
    step = angstrom_to_bohr(np.diag(cube["spacing"]))
    # the plane of grid points closest to the molecular plane x = 0
    i = int(round((0.0 - origin[0]) / step[0]))
    slab = data[i].T  # rows: z, columns: y
    extent = (origin[1], origin[1] + step[1] * (data.shape[1] - 1),
              origin[2], origin[2] + step[2] * (data.shape[2] - 1))
    if kind == "total":
        im = ax.imshow(np.log10(np.clip(slab, 1e-3, None)), origin="lower", extent=extent, cmap="viridis")
        label = "log$_{10}$ density (e/bohr$^3$)"
    else:
        im = ax.imshow(slab, origin="lower", extent=extent, cmap="RdBu_r", vmin=-0.1, vmax=0.1)
        label = "difference density (e/bohr$^3$)"
    ax.set_title(f"{os.path.basename(cubes[kind])}, x = {origin[0] + i * step[0]:.2f} bohr")
    ax.set_xlabel("y (bohr)")
    ax.set_ylabel("z (bohr)")
    fig.colorbar(im, ax=ax, shrink=0.85, label=label)
fig.tight_layout()
plt.show()
