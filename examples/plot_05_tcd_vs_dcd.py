"""
DCD vs TCD: the relative gain per molecule
==========================================

The central comparison of Delta-SAED: two models with the same architecture, data,
settings and seed, one trained on the total density (TCD), one on the difference density
(DCD, SAED added back analytically). Both are scored on held-out molecules against the
exact DFT density, and for each molecule the relative gain

    gain = (eps_TCD - eps_DCD) / eps_TCD

is positive when the difference density wins. The paper reports DCD better on more than
90 % of test structures. Here the run is tiny (18 training molecules, the model of
:ref:`sphx_glr_auto_examples_plot_03_train_model.py` and its TCD twin, 12 test molecules),
so read the violins as a demonstration of the protocol, not as a benchmark; the QM9 version
is ``examples/qm9_delta_saed_benchmark.py``.
"""

# %%
import json
import os
import runpy
import shutil
import tempfile

import matplotlib.pyplot as plt
import numpy as np
from ase.build import molecule

from densitylearn.evaluate import evaluate_file
from densitylearn.metrics import relative_gain
from densitylearn.predict import predict_files
from densitylearn.reference import compute_references
from densitylearn.structure import from_ase
from densitylearn.train import TrainConfig, train

WORK = os.environ.get("DENSITYLEARN_EXAMPLES_DIR", os.path.join(tempfile.gettempdir(), "densitylearn-examples"))
DCD_MODEL = os.path.join(WORK, "run_dcd", "best.pt")
if not os.path.exists(DCD_MODEL):  # train it as in example 3
    here = os.path.dirname(os.path.abspath(__file__)) if "__file__" in globals() else os.getcwd()
    runpy.run_path(os.path.join(here, "plot_03_train_model.py"))

# %%
# The TCD twin
# ------------
# Same data set and settings (the config file written by example 3), only the target
# differs.
with open(os.path.join(WORK, "tiny.json")) as fh:
    settings = json.load(fh)
tcd_run = os.path.join(WORK, "run_tcd")
shutil.rmtree(tcd_run, ignore_errors=True)
train(os.path.join(WORK, "train.h5"), tcd_run, TrainConfig.from_dict(dict(settings, target="total")),
      progress=False)
TCD_MODEL = os.path.join(tcd_run, "best.pt")

# %%
# Held-out molecules
# ------------------
# New distortions (other seeds) of the same three molecules, with their reference DFT.
rng = np.random.default_rng(2024)
test_set = []
for formula in ["H2O", "NH3", "CH4"]:
    for k in range(4):
        atoms = molecule(formula)
        atoms.positions += rng.normal(scale=0.1 / np.sqrt(3), size=atoms.positions.shape)
        test_set.append(from_ase(atoms, name=f"test_{formula.lower()}_{k}"))
test_refs = os.path.join(WORK, "test_refs")
compute_references(test_set, test_refs, xc="pbe", basis="def2-svp", grid_level=1, progress=False)
chks = [os.path.join(test_refs, f"{s.name}.chk") for s in test_set]

# %%
# Predict and evaluate
# --------------------
# Prediction files from chkfile inputs remember their reference, so
# :func:`~densitylearn.evaluate.evaluate_file` (``densitylearn evaluate``) scores them
# against the exact DFT densities on a Becke grid.
eps = {}
for label, model in [("TCD", TCD_MODEL), ("DCD", DCD_MODEL)]:
    out = os.path.join(WORK, f"test_pred_{label.lower()}.h5")
    predict_files(model, chks, out, progress=False)
    report = evaluate_file(out, grid_level=2, progress=False)
    eps[label] = {row["name"]: row[f"eps_mae_{'total' if label == 'TCD' else 'difference'}"]
                  for row in report["structures"]}
names = [s.name for s in test_set]
e_tcd = np.array([eps["TCD"][n] for n in names])
e_dcd = np.array([eps["DCD"][n] for n in names])
gain = relative_gain(e_tcd, e_dcd)
print(f"{'molecule':<14} {'TCD %':>7} {'DCD %':>7} {'gain':>7}")
for n, a, b, g in zip(names, e_tcd, e_dcd, gain):
    print(f"{n:<14} {a:7.3f} {b:7.3f} {g:+7.3f}")
print(f"mean eps_mae: TCD {e_tcd.mean():.3f} %, DCD {e_dcd.mean():.3f} %; "
      f"DCD better on {np.sum(gain > 0)} of {len(gain)} molecules")

# %%
# The violin plot
# ---------------
groups = {"water": gain[0:4], "ammonia": gain[4:8], "methane": gain[8:12], "all": gain}
fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 2]})
parts = ax.violinplot(list(groups.values()), showmedians=True)
for body in parts["bodies"]:
    body.set_alpha(0.5)
for i, g in enumerate(groups.values(), start=1):
    ax.plot(np.full(len(g), i) + np.linspace(-0.05, 0.05, len(g)), g, "k.", ms=4)
ax.axhline(0.0, color="k", lw=0.8)
ax.set_xticks(range(1, len(groups) + 1), list(groups))
ax.set_ylabel("relative gain $(\\epsilon_{TCD} - \\epsilon_{DCD}) / \\epsilon_{TCD}$")
ax.set_title("held-out molecules (gain > 0: DCD better)")
lim = [0, 1.1 * max(e_tcd.max(), e_dcd.max())]
ax2.plot(lim, lim, "k-", lw=0.8)
for k, (label, color) in enumerate(zip(["water", "ammonia", "methane"], ["tab:blue", "tab:orange", "tab:green"])):
    ax2.scatter(e_tcd[4 * k:4 * k + 4], e_dcd[4 * k:4 * k + 4], color=color, label=label)
ax2.legend(loc="upper left")
ax2.set_xlim(lim)
ax2.set_ylim(lim)
ax2.set_xlabel("eps_mae TCD model (%)")
ax2.set_ylabel("eps_mae DCD model (%)")
ax2.set_title("per molecule (below the line: DCD better)")
fig.tight_layout()
plt.show()
