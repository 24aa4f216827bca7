"""
Training a small Delta-SAED model
=================================

The whole training pipeline on a toy data set: slightly distorted water, ammonia and
methane molecules, reference DFT, density fitting onto an auxiliary basis, and a tiny
equivariant (e3nn) model trained on the difference density (DCD) for a few dozen epochs,
about a minute on a laptop CPU.

The same steps on the command line::

    densitylearn compute train.xyz --out refs --grid-level 1
    densitylearn fit-basis refs/*.chk --auxbasis def2-universal-jfit --out data.h5
    densitylearn train data.h5 --target difference --config tiny.json --out run_dcd

The later examples reuse this model from the work folder.

.. note::

   Eighteen molecules and a model with a few thousand parameters: the errors below are
   those of a toy, far from the basis's fitting floor. See :doc:`/benchmarks` for
   real training runs.
"""

# %%
# A toy data set
# --------------
# Each molecule from ASE's g2 collection, its atoms displaced by up to ~0.1 Angstrom with
# a seeded random generator.
import json
import os
import shutil
import tempfile

import matplotlib.pyplot as plt
import numpy as np
from ase.build import molecule

from densitylearn.preprocess import FitSettings, fit_basis
from densitylearn.reference import compute_references
from densitylearn.structure import from_ase
from densitylearn.train import TrainConfig, train

WORK = os.environ.get("DENSITYLEARN_EXAMPLES_DIR", os.path.join(tempfile.gettempdir(), "densitylearn-examples"))
os.makedirs(WORK, exist_ok=True)


def distorted(formula, count, seed, amplitude=0.1):
    """``count`` copies of a g2 molecule with Gaussian displacements (Angstrom), named."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(count):
        atoms = molecule(formula)
        atoms.positions += rng.normal(scale=amplitude / np.sqrt(3), size=atoms.positions.shape)
        out.append(from_ase(atoms, name=f"{formula.lower()}_{seed}_{k}"))
    return out


train_set = [s for i, f in enumerate(["H2O", "NH3", "CH4"]) for s in distorted(f, 6, seed=i)]
print(f"{len(train_set)} structures: " + ", ".join(s.name for s in train_set[::6]) + ", ...")

# %%
# Reference DFT and density fitting
# ---------------------------------
# PBE/def2-SVP with PySCF; a coarse level-1 grid keeps the example fast. Existing chkfiles
# are reused, so rerunning the example skips this step. The fits go onto the compact
# def2-universal-jfit basis (31 functions per heavy atom); the difference-density target
# is total minus the fitted SAED. Floors are skipped here (``floor_grid_level=-1``).
refs = os.path.join(WORK, "refs")
summary = compute_references(train_set, refs, xc="pbe", basis="def2-svp", grid_level=1, progress=False)
print(f"computed {len(summary['computed'])}, reused {len(summary['skipped'])} reference chkfiles")
chks = [os.path.join(refs, f"{s.name}.chk") for s in train_set]
data = os.path.join(WORK, "train.h5")
fit_basis(chks, data, FitSettings(auxbasis="def2-universal-jfit", floor_grid_level=-1), overwrite=True,
          progress=False)

# %%
# A tiny model, trained on the difference density
# -----------------------------------------------
# One interaction layer, a few features per irrep (the readout needs irreps up to l = 4,
# the largest angular momentum of the basis). The loss is the Coulomb energy of the error
# density; validation reports eps_mae on a Becke grid against the exact DFT density, with
# the EMA weights. The same settings serve the TCD model of a later example.
TINY_MODEL = {"num_layers": 1, "hidden_irreps": "16x0e+8x1o+4x2e+2x3o+2x4e", "sh_lmax": 4,
              "embedding_dim": 8, "num_radial": 6, "radial_hidden": 16}
SETTINGS = dict(max_epochs=40, batch_size=4, lr=0.02, ema_decay=0.9, warmup_steps=4, val_fraction=0.2,
                val_structures=4, val_grid_level=1, seed=0, device="cpu", model=TINY_MODEL)
with open(os.path.join(WORK, "tiny.json"), "w") as fh:  # the config file of the CLI
    json.dump(SETTINGS, fh, indent=1)

run = os.path.join(WORK, "run_dcd")
shutil.rmtree(run, ignore_errors=True)  # train from scratch (a rerun would resume)
result = train(data, run, TrainConfig.from_dict(dict(SETTINGS, target="difference")), progress=False)
print(f"{result['epochs']} epochs, best validation eps_mae {result['best_val_eps_mae']:.2f} %")
print("checkpoint:", result["best"])

# %%
# Learning curve
# --------------
# ``log.jsonl`` holds one line per epoch; validated epochs (all, with the default
# ``val_every: 1``) carry the validation loss and eps_mae.
with open(os.path.join(run, "log.jsonl")) as fh:
    log = [e for e in (json.loads(line) for line in fh) if "val_eps_mae" in e]
epoch = [e["epoch"] for e in log]
fig, ax = plt.subplots(figsize=(6.4, 3.6))
ax.semilogy(epoch, [e["train_loss"] for e in log], label="training loss")
ax.semilogy(epoch, [e["val_loss"] for e in log], label="validation loss")
ax.set_xlabel("epoch")
ax.set_ylabel("loss $e^T J e / N$ (hartree)")
ax2 = ax.twinx()
ax2.plot(epoch, [e["val_eps_mae"] for e in log], "k--", label="validation eps_mae")
ax2.set_ylabel("validation eps_mae (%)")
lines = ax.get_lines() + ax2.get_lines()
ax.legend(lines, [line.get_label() for line in lines], loc="upper right")
ax.set_title("Tiny DCD model, 18 distorted H2O / NH3 / CH4")
fig.tight_layout()
plt.show()
