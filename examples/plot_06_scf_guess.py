"""
SCF from a fitted or predicted density instead of minao
=======================================================

A density gives a Kohn-Sham Fock matrix (Coulomb potential straight from the auxiliary
coefficients, exchange-correlation on the DFT grid); one diagonalisation turns it into a
density matrix that PySCF can start its SCF from
(:func:`~densitylearn.properties.guess_density_matrix`). By default a few cheap mixing
steps (density-fitted Coulomb matrix, coarse grid) follow before the density matrix is
handed over. How many SCF iterations does that save against PySCF's default ``minao``
guess?

Three guesses per molecule, all PBE/def2-SVP with ``conv_tol`` 1e-9 hartree:

* ``minao``: PySCF's superposition of minimal-basis atomic densities (the default);
* *fitted DCD*: the converged density itself, fitted onto def2-universal-jfit as a
  difference density plus the analytic SAED. This needs the answer first, so it is not a
  practical guess: it shows the best a model in this basis could do. It is used one-shot
  (``mixing_steps=0, coulomb_steps=0``): the mixing steps move a density towards the cheap
  Hamiltonian's own solution, which helps a predicted density but not one that is already
  converged;
* *predicted DCD*: the tiny model of
  :ref:`sphx_glr_auto_examples_plot_03_train_model.py`.

The command-line equivalent of the predicted-guess runs::

    densitylearn scf water.xyz ammonia.xyz --model run_dcd/best.pt --guesses minao
"""

# %%
import os
import runpy
import tempfile

import matplotlib.pyplot as plt
import numpy as np
from ase.build import molecule

import densitylearn
from densitylearn.basis import AuxBasis
from densitylearn.fitting import fit_reference
from densitylearn.properties import compare_guesses, guess_density_matrix
from densitylearn.reference import run_reference
from densitylearn.saed import saed_density_matrix
from densitylearn.structure import from_ase

WORK = os.environ.get("DENSITYLEARN_EXAMPLES_DIR", os.path.join(tempfile.gettempdir(), "densitylearn-examples"))
MODEL = os.path.join(WORK, "run_dcd", "best.pt")
if not os.path.exists(MODEL):  # train it as in example 3
    here = os.path.dirname(os.path.abspath(__file__)) if "__file__" in globals() else os.getcwd()
    runpy.run_path(os.path.join(here, "plot_03_train_model.py"))
model = densitylearn.load_model(MODEL, device="cpu")
jfit = AuxBasis.load("def2-universal-jfit", [1, 6, 7, 8])

# %%
# Run the SCFs
# ------------
iterations = {}
for formula, name in [("H2O", "water"), ("NH3", "ammonia"), ("CH4", "methane")]:
    structure = from_ase(molecule(formula), name=name)
    ref = run_reference(structure, xc="pbe", basis="def2-svp", conv_tol=1e-10, return_objects=True)
    mol, dm = ref["mol"], ref["mf"].make_rdm1()
    dm_saed = saed_density_matrix(mol, "pbe")
    fit = fit_reference(mol, dm, dm_saed, jfit)
    dm_fitted = guess_density_matrix(mol, fit.difference, jfit, target="difference", xc="pbe", dm_saed=dm_saed,
                                     mixing_steps=0, coulomb_steps=0)
    [pred] = model.predict(structure)
    dm_pred = guess_density_matrix(mol, pred.coefficients, model.basis, target=model.target, xc="pbe",
                                   dm_saed=dm_saed)
    runs = {"minao": compare_guesses(mol, "pbe", guesses=("minao",), conv_tol=1e-9)[0],
            "fitted DCD": compare_guesses(mol, "pbe", dm0=dm_fitted, guesses=(), conv_tol=1e-9)[0],
            "predicted DCD": compare_guesses(mol, "pbe", dm0=dm_pred, guesses=(), conv_tol=1e-9)[0]}
    for label, r in runs.items():
        assert r.converged and abs(r.e_tot - ref["e_tot"]) < 1e-6, (name, label, r)
    iterations[name] = {label: r.total_iterations for label, r in runs.items()}
    print(f"{name:<8} " + "   ".join(f"{label}: {n:2d} iterations" for label, n in iterations[name].items()))

# %%
# Every run converges to the same energy (checked above). The fitted density is the best
# case of this basis; how far the tiny model's guess gets from minao towards it measures
# what the model has learned (:doc:`/properties` has the numbers for the full guess set).
labels = ["minao", "fitted DCD", "predicted DCD"]
fig, ax = plt.subplots(figsize=(6.4, 3.6))
x = np.arange(len(iterations))
for k, label in enumerate(labels):
    ax.bar(x + (k - 1) * 0.27, [iterations[m][label] for m in iterations], width=0.27, label=label)
ax.set_xticks(x, list(iterations))
ax.set_ylabel("SCF iterations to 1e-9 hartree")
ax.set_title("PBE/def2-SVP SCF from different initial guesses")
ax.set_ylim(0, 1.4 * max(max(v.values()) for v in iterations.values()))
ax.legend(ncol=3, loc="upper center")
fig.tight_layout()
plt.show()
