"""
SAED, total and difference densities on a slice
===============================================

The Delta-SAED split rho_total = rho_SAED + rho_difference, drawn on the molecular plane of
water. rho_SAED (spherically averaged neutral atoms) carries the cores and most of the
shape; the difference density (DCD) is small and holds the chemistry: where bonding moves
charge relative to neutral spherical atoms (here into the O-H bonds, red, and out of the
spherical oxygen valence shell, blue). The DCD integrates to zero electrons for a neutral
molecule.
"""

# %%
import matplotlib.pyplot as plt
import numpy as np
from ase.build import molecule
from matplotlib.colors import LogNorm, TwoSlopeNorm

from densitylearn.grid import becke_grid
from densitylearn.metrics import reference_density
from densitylearn.reference import run_reference
from densitylearn.saed import load_saed
from densitylearn.structure import from_ase

water = from_ase(molecule("H2O"), name="water")  # lies in the yz plane (x = 0)
result = run_reference(water, xc="pbe", basis="def2-svp", return_objects=True)
mol, dm = result["mol"], result["mf"].make_rdm1()
saed = load_saed(water.numbers, xc="pbe", basis="def2-svp")

# %%
# Densities on the plane x = 0 (bohr, e/bohr^3)
# ---------------------------------------------
y = np.linspace(-4.0, 4.0, 161)
z = np.linspace(-4.0, 3.5, 151)
yy, zz = np.meshgrid(y, z)
plane = np.column_stack([np.zeros(yy.size), yy.ravel(), zz.ravel()])
rho_total = reference_density(mol, dm, plane).reshape(yy.shape)
rho_saed = saed.evaluate(water.numbers, water.positions, plane).reshape(yy.shape)
rho_diff = rho_total - rho_saed

# %%
# The same split integrated on a Becke grid: the SAED holds all 10 electrons, the
# difference density none, but it is far from zero pointwise.
points, weights = becke_grid(mol, level=3)
rho_t = reference_density(mol, dm, points)
rho_a = saed.evaluate(water.numbers, water.positions, points)
print(f"electrons: total {weights @ rho_t:.5f}, SAED {weights @ rho_a:.5f}, "
      f"difference {weights @ (rho_t - rho_a):+.5f}")
print(f"electrons moved (int |rho_difference| / 2): {0.5 * weights @ np.abs(rho_t - rho_a):.4f}")

# %%
fig, axes = plt.subplots(1, 3, figsize=(12, 3.9), sharey=True)
extent = (y[0], y[-1], z[0], z[-1])
log = LogNorm(vmin=1e-3, vmax=1e2)
panels = [(rho_total, "total (DFT)", log, "viridis"),
          (rho_saed, "SAED", log, "viridis"),
          (rho_diff, "difference = total - SAED", TwoSlopeNorm(0.0, -0.1, 0.1), "RdBu_r")]
for ax, (data, title, norm, cmap) in zip(axes, panels):
    shown = np.clip(data, 1e-3, None) if isinstance(norm, LogNorm) else np.clip(data, -0.1, 0.1)
    im = ax.imshow(shown, origin="lower", extent=extent, norm=norm, cmap=cmap)
    ax.plot(water.positions[:, 1], water.positions[:, 2], "k.", ms=4)
    ax.set_title(title)
    ax.set_xlabel("y (bohr)")
    fig.colorbar(im, ax=ax, shrink=0.85, label="e/bohr$^3$")
axes[0].set_ylabel("z (bohr)")
fig.suptitle("Water, PBE/def2-SVP, molecular plane (difference clipped at $\\pm$0.1 e/bohr$^3$)")
fig.tight_layout()
plt.show()

# %%
# A cut along one O-H bond shows the scale: tiny next to the total density at the oxygen
# nucleus, the difference density is about a third of it in the middle of the bond.
o, h = water.positions[0], water.positions[1]
t = np.linspace(-1.0, 2.0, 400)
line = o + np.outer(t, h - o)
s = t * np.linalg.norm(h - o)
fig, ax = plt.subplots(figsize=(6.4, 3.4))
ax.plot(s, reference_density(mol, dm, line), label="total")
ax.plot(s, saed.evaluate(water.numbers, water.positions, line), "--", label="SAED")
ax.plot(s, reference_density(mol, dm, line) - saed.evaluate(water.numbers, water.positions, line),
        label="difference")
ax.axhline(0.0, color="k", lw=0.5)
ax.set_ylim(-0.2, 0.6)
ax.set_xlabel("distance from O along the O-H bond (bohr)")
ax.set_ylabel("density (e/bohr$^3$)")
ax.legend()
fig.tight_layout()
plt.show()
