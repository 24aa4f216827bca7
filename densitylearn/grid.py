"""Densities and basis functions on real-space grids (torch, CPU and CUDA).

A density in an auxiliary basis is ``rho(r) = sum_P c_P chi_P(r)`` (e/bohr^3) with the
functions of :class:`~densitylearn.basis.AuxBasis` (unit-norm, PySCF order). This module
evaluates it at arbitrary points (bohr):

* :func:`evaluate_basis`: the dense matrix chi_P(r_i), shape (n_points, n_functions), for
  small systems, tests and least-squares fits from grids. It is the slow, obviously correct
  twin of the screened path and is checked against PySCF's ``mol.eval_gto``.
* :func:`evaluate_density` / :func:`evaluate_density_batch`: linear-scaling evaluation. No
  points x functions matrix is formed. Points are sorted along a Morton curve and cut into
  chunks of ``chunk_size``; each chunk only sees atoms whose largest shell radius reaches
  its bounding box; inside a chunk, work is grouped by (element, l, radius class) so that
  each step is one vectorised op over all atom-point pairs of the group: gather pairs ->
  radial part for all primitives (one exp and one small matmul) -> solid harmonics
  (:func:`~densitylearn.basis.solid_harmonics_pyscf`, the one owner of the harmonic
  convention) -> contract with the coefficients -> ``index_add`` into the points.
  Differentiable with respect to the coefficients (and the positions).
* On CUDA, when Triton is importable and no gradient is asked for, both use fused kernels
  (:mod:`densitylearn._triton_grid`) that keep each block of points in registers and
  never store atom-point pairs; ``DENSITYLEARN_NO_TRITON=1`` forces the torch path.
* :func:`becke_grid` (PySCF's atom-centred integration grid) and :func:`uniform_box`
  (cube-file grid).

Screening: a shell is skipped at distance ``|r| > R_s`` where R_s is the largest radius with
``sqrt((2l+1)/4pi) |r|^l sum_k |c_k| exp(-a_k r^2) >= threshold`` (default 1e-12). The
functions have unit L2 norm, so the threshold is relative to the function's norm, and the
neglected part of rho at any point is below ``threshold * sum |c_P|`` over the skipped
functions.
"""

from __future__ import annotations

import math
import weakref

import numpy as np

from .basis import AuxBasis, solid_harmonics_pyscf
from .errors import InputError

#: Default screening threshold on ``|chi_P(r)|`` (bohr^-3/2; functions have unit norm).
DEFAULT_THRESHOLD = 1e-12

#: Default number of points per chunk on CPU and on CUDA.
DEFAULT_CHUNK_CPU = 32768  # measured: 3x faster than 2048 on a QM9 molecule, level-3 grid
DEFAULT_CHUNK_CUDA = 65536

#: Largest number of (pair x width) elements one kernel step materialises (CPU, CUDA).
PAIR_BUDGET_CPU = 1 << 22
PAIR_BUDGET_CUDA = 1 << 27

#: Shells of one (element, l) go into one kernel group while their radius stays above
#: this fraction of the group's largest radius (work per pair scales like radius^3).
RADIUS_CLASS_RATIO = 0.5

# Keys of a batch for :func:`evaluate_density_batch` (a plain dict of arrays/tensors).
#: (sum n_atoms,) int: atomic numbers of all structures, concatenated.
BATCH_NUMBERS = "numbers"
#: (sum n_atoms, 3) float, bohr: positions, concatenated.
BATCH_POSITIONS = "positions"
#: (sum n_functions,) float: coefficients in PySCF order, concatenated per structure.
BATCH_COEFFICIENTS = "coefficients"
#: (sum n_points, 3) float, bohr: evaluation points, concatenated.
BATCH_POINTS = "points"
#: (n_structures,) int: number of atoms of each structure.
BATCH_N_ATOMS = "n_atoms"
#: (n_structures,) int: number of points of each structure.
BATCH_N_POINTS = "n_points"
#: (n_structures,) int, optional: number of coefficients of each structure (checked).
BATCH_N_FUNCTIONS = "n_functions"


# ----------------------------------------------------------------------------- plan
def shell_cutoff_radius(shell, threshold: float = DEFAULT_THRESHOLD) -> float:
    """Radius (bohr) beyond which every function of ``shell`` is below ``threshold``.

    Bounds ``|chi_m(r)|`` by ``sqrt((2l+1)/4pi) |r|^l sum_k |c_k| exp(-a_k |r|^2)`` (the real
    unit-sphere harmonics obey sum_m Y_lm^2 = (2l+1)/4pi) and returns the largest r where
    the bound reaches ``threshold``; 0 if it never does.
    """
    l = int(shell.l)
    a = np.asarray(shell.exponents, dtype=np.float64)
    c = np.abs(np.asarray(shell.coefficients, dtype=np.float64))
    keep = c > 0
    if not keep.any():
        return 0.0
    a, c = a[keep], c[keep]
    log_eps = math.log(threshold)
    log_y = 0.5 * math.log((2 * l + 1) / (4 * math.pi))
    if len(a) == 1:
        return _primitive_radius(l, float(a[0]), log_y + math.log(c[0]) - log_eps)
    return _bisection_radius(l, a, c, log_y, log_eps)


def _primitive_radius(l: int, a: float, k: float) -> float:
    """Outer root of ``k + l log r - a r^2 = 0`` (one primitive), 0 if the bound never
    reaches the threshold; fixed-point iteration beyond the maximum of ``r^l exp(-a r^2)``,
    converged to 1e-12 relative (tested against :func:`_bisection_radius`)."""
    r_peak = math.sqrt(l / (2 * a)) if l else 0.0
    if k + (l * math.log(r_peak) if l else 0.0) - a * r_peak ** 2 < 0:
        return 0.0
    r = math.sqrt(max(k, 1.0) / a) + r_peak
    for _ in range(500):
        r_new = max(math.sqrt(max(k + (l * math.log(r) if l else 0.0), 0.0) / a), r_peak)
        if abs(r_new - r) <= 1e-12 * max(r, 1.0):
            return r_new
        r = r_new
    return r


def _bisection_radius(l: int, a, c, log_y: float, log_eps: float) -> float:
    """Largest r where the bound of a contracted shell reaches the threshold (bisection)."""

    def log_bound(r):
        r = np.atleast_1d(np.asarray(r, dtype=np.float64))
        t = np.log(c)[None, :] - a[None, :] * r[:, None] ** 2
        m = t.max(axis=1)
        lse = m + np.log(np.exp(t - m[:, None]).sum(axis=1))
        with np.errstate(divide="ignore"):
            return log_y + (l * np.log(r) if l else 0.0) + lse

    r_grid = np.concatenate([[0.0], np.logspace(-4, 3, 1401)])
    above = np.nonzero(log_bound(r_grid) >= log_eps)[0]
    if len(above) == 0:
        return 0.0
    i = above[-1]
    if i == len(r_grid) - 1:
        return float(r_grid[-1])
    lo, hi = r_grid[i], r_grid[i + 1]
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if log_bound(mid)[0] >= log_eps:
            lo = mid
        else:
            hi = mid
    return float(hi)


class _Group:
    """Shells of one element and one l evaluated together (host-side description)."""

    def __init__(self, l, shells, starts, radius):
        self.l = int(l)
        self.n_shells = len(shells)
        d = 2 * self.l + 1
        self.cols = np.concatenate([np.arange(st, st + d) for st in starts]).astype(np.int64)
        self.exponents = np.concatenate([s.exponents for s in shells])
        cmat = np.zeros((len(self.exponents), len(shells)))
        k = 0
        for j, s in enumerate(shells):
            n = len(s.exponents)
            cmat[k:k + n, j] = s.coefficients
            k += n
        self.cmat = cmat
        # uncontracted groups: R = exp(-a r^2) * c, no matmul
        self.diagonal = len(self.exponents) == len(shells)
        self.cdiag = np.array([s.coefficients[0] for s in shells]) if self.diagonal else None
        self.radius = float(radius)
        self._dev: dict = {}

    def tensors(self, dtype, device):
        import torch

        key = (dtype, str(device))
        t = self._dev.get(key)
        if t is None:
            t = {"exponents": torch.tensor(self.exponents, dtype=dtype, device=device),
                 "cmat": torch.tensor(self.cmat, dtype=dtype, device=device),
                 "cdiag": (torch.tensor(self.cdiag, dtype=dtype, device=device)
                           if self.diagonal else None),
                 "cols": torch.tensor(self.cols, dtype=torch.long, device=device)}
            if self.l == 0:  # the constant Y_00, taken from the one owner of the convention
                y00 = solid_harmonics_pyscf(0, torch.ones(1, 3, dtype=torch.float64))
                t["y00"] = float(y00.reshape(-1)[0])
            self._dev[key] = t
        return t


class _Plan:
    """Per-basis screening radii and kernel groups (cached per basis and threshold)."""

    def __init__(self, basis: AuxBasis, threshold: float):
        self.threshold = float(threshold)
        self.groups: dict[int, list[_Group]] = {}
        self.rmax: dict[int, float] = {}
        self.dense_groups: dict[int, list[_Group]] = {}
        for z in basis.elements:
            shells = basis.shells(z)
            starts = np.concatenate([[0], np.cumsum([s.n_functions for s in shells])])[:-1]
            radii = np.array([shell_cutoff_radius(s, threshold) for s in shells])
            groups = []
            for l in sorted({s.l for s in shells}):
                idx = [i for i, s in enumerate(shells) if s.l == l and radii[i] > 0]
                idx.sort(key=lambda i: -radii[i])
                while idx:
                    r0 = radii[idx[0]]
                    take = [i for i in idx if radii[i] >= RADIUS_CLASS_RATIO * r0]
                    idx = [i for i in idx if radii[i] < RADIUS_CLASS_RATIO * r0]
                    take.sort()  # keep layout order inside a group
                    groups.append(_Group(l, [shells[i] for i in take], starts[take], r0))
            groups.sort(key=lambda g: -g.radius)
            self.groups[z] = groups
            self.rmax[z] = float(radii.max()) if len(radii) else 0.0


_PLANS: "weakref.WeakKeyDictionary[AuxBasis, dict]" = weakref.WeakKeyDictionary()


def _plan(basis: AuxBasis, threshold: float) -> _Plan:
    per = _PLANS.setdefault(basis, {})
    p = per.get(float(threshold))
    if p is None:
        p = per[float(threshold)] = _Plan(basis, threshold)
    return p


def shell_radii(basis: AuxBasis, z: int, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Screening radius (bohr) of each shell of element ``z``, shape (n_shells,)."""
    return np.array([shell_cutoff_radius(s, threshold) for s in basis.shells(z)])


# ----------------------------------------------------------------------------- inputs
def _torch():
    import torch

    return torch


def _target(coefficients, points):
    """dtype and device of the result: the coefficients' if torch, else the points'."""
    torch = _torch()
    for ref in (coefficients, points):
        if isinstance(ref, torch.Tensor):
            dt = ref.dtype if ref.dtype.is_floating_point else torch.float64
            return dt, ref.device
        if ref is coefficients:
            continue
        arr = np.asarray(ref)
        dt = torch.float32 if arr.dtype == np.float32 else torch.float64
        return dt, torch.device("cpu")
    return torch.float64, torch.device("cpu")  # pragma: no cover


def _as_tensor(x, dtype, device):
    torch = _torch()
    if isinstance(x, torch.Tensor):
        return x.to(dtype=dtype, device=device)
    a = np.asarray(x)
    on_cpu = device is None or torch.device(device).type == "cpu"
    if not a.flags.writeable and on_cpu:  # frozen (cached) arrays: a CPU tensor would alias
        a = a.copy()  # them; a transfer to the GPU copies anyway
    return torch.as_tensor(a, dtype=dtype, device=device)


def _numbers_np(numbers) -> np.ndarray:
    torch = _torch()
    if isinstance(numbers, torch.Tensor):
        numbers = numbers.detach().cpu().numpy()
    z = np.asarray(numbers)
    if z.ndim != 1:
        raise InputError(f"numbers must have shape (n_atoms,), got {z.shape}")
    return z.astype(np.int64)


def _check_points(points, dtype, device, label="points"):
    shape = tuple(points.shape) if hasattr(points, "shape") else np.shape(points)
    if len(shape) != 2 or shape[1] != 3:
        raise InputError(f"{label} must have shape (n, 3), got {shape}")
    p = _as_tensor(points, dtype, device)
    if not bool(_torch().isfinite(p).all()):
        raise InputError(f"{label} contain NaN or infinity")
    return p


def _check_positions(positions, n_atoms, dtype, device):
    shape = tuple(positions.shape) if hasattr(positions, "shape") else np.shape(positions)
    if shape != (n_atoms, 3):
        raise InputError(f"positions must have shape ({n_atoms}, 3), got {shape}")
    p = _as_tensor(positions, dtype, device)
    if not bool(_torch().isfinite(p).all()):
        raise InputError("positions contain NaN or infinity")
    return p


def _check_coefficients(basis, numbers, coefficients, dtype, device, n_expected=None):
    shape = tuple(coefficients.shape) if hasattr(coefficients, "shape") else np.shape(coefficients)
    n = int(basis.layout(numbers)[-1]) if n_expected is None else int(n_expected)
    if len(shape) != 1 or shape[0] != n:
        raise InputError(f"coefficients: shape {shape}, basis {basis.name} expects ({n},) for these atoms")
    c = _as_tensor(coefficients, dtype, device)
    if not bool(_torch().isfinite(c).all()):
        raise InputError("coefficients contain NaN or infinity")
    return c


# ----------------------------------------------------------------------------- dense
def evaluate_basis(basis: AuxBasis, numbers, positions, points, dtype=None, device=None):
    """Dense values of all basis functions at the points.

    Parameters
    ----------
    basis : AuxBasis
    numbers : array-like or Tensor, shape (n_atoms,)
        Atomic numbers.
    positions : array-like or Tensor, shape (n_atoms, 3)
        Nuclear positions in bohr.
    points : array-like or Tensor, shape (n_points, 3)
        Evaluation points in bohr.
    dtype, device : torch dtype and device, optional
        Of the result; default those of ``points`` if a tensor, else float64 on CPU
        (float32 for float32 numpy points).

    Returns
    -------
    Tensor, shape (n_points, n_functions)
        chi_P(r_i) in bohr^-3/2, columns in the basis's PySCF order (``basis.layout``),
        unscreened. Memory is n_points * n_functions: use :func:`evaluate_density` for
        large systems.
    """
    torch = _torch()
    dt, dev = _target(None, points)
    dtype = dtype or dt
    device = torch.device(device) if device is not None else dev
    z = _numbers_np(numbers)
    pts = _check_points(points, dtype, device)
    pos = _check_positions(positions, len(z), dtype, device)
    off = basis.layout(z)
    plan = _plan(basis, DEFAULT_THRESHOLD)
    n_pts = pts.shape[0]
    blocks, colidx = [], []
    for el in np.unique(z):
        atoms = np.nonzero(z == el)[0]
        r = (pts[None, :, :] - pos[atoms][:, None, :]).reshape(-1, 3)
        r2 = (r * r).sum(-1)
        base = torch.as_tensor(off[atoms], device=device)
        for g in _all_shell_groups(basis, plan, int(el)):
            t = g.tensors(dtype, device)
            rad = torch.exp(-r2[:, None] * t["exponents"][None, :]) @ t["cmat"]  # (P, n_s)
            sh = solid_harmonics_pyscf(g.l, r)  # (P, 2l+1)
            vals = (rad[:, :, None] * sh[:, None, :]).reshape(len(atoms), n_pts, -1)
            blocks.append(vals.permute(1, 0, 2).reshape(n_pts, -1))
            colidx.append((base[:, None] + t["cols"][None, :]).reshape(-1))
    out = torch.zeros(n_pts, int(off[-1]), dtype=dtype, device=device)
    if blocks:
        out = out.index_copy(1, torch.cat(colidx), torch.cat(blocks, dim=1))
    return out


def _all_shell_groups(basis, plan, z):
    """Unscreened groups (one per l, all shells of that l) for the dense evaluator."""
    if z not in plan.dense_groups:
        shells = basis.shells(z)
        starts = np.concatenate([[0], np.cumsum([s.n_functions for s in shells])])[:-1]
        plan.dense_groups[z] = [_Group(l, [s for s in shells if s.l == l],
                                       [starts[i] for i, s in enumerate(shells) if s.l == l], np.inf)
                                for l in sorted({s.l for s in shells})]
    return plan.dense_groups[z]


# ----------------------------------------------------------------------------- screened
def _morton_key(points):
    """30-bit Morton (Z-order) key of each point within the points' bounding box."""
    torch = _torch()
    lo = points.min(0).values
    ext = (points.max(0).values - lo).max().clamp_min(1e-12)
    q = ((points - lo) / ext * 1023.0).to(torch.int64).clamp_(0, 1023)

    def spread(v):
        v = (v | (v << 16)) & 0x030000FF
        v = (v | (v << 8)) & 0x0300F00F
        v = (v | (v << 4)) & 0x030C30C3
        v = (v | (v << 2)) & 0x09249249
        return v

    return spread(q[:, 0]) | (spread(q[:, 1]) << 1) | (spread(q[:, 2]) << 2)


def _screened_density(basis, plan, z, pos, coef, off, pts, atom_struct, point_struct,
                      chunk_size, pair_budget):
    """Core of :func:`evaluate_density`: rho at ``pts`` from all structures at once.

    Atoms and points carry a structure id; only pairs of the same structure contribute.
    """
    torch = _torch()
    device, dtype = pts.device, pts.dtype
    n_pts = pts.shape[0]
    if n_pts == 0:
        return coef.new_zeros(0)
    key = _morton_key(pts) + point_struct.to(torch.int64) * (1 << 30)
    perm = torch.argsort(key)
    ps = pts[perm]
    ps_struct = point_struct[perm]

    elements = [int(e) for e in np.unique(z)]
    el_index = {e: i for i, e in enumerate(elements)}
    atom_el = torch.as_tensor(np.array([el_index[int(e)] for e in z]), device=device)
    atom_rmax = torch.as_tensor(np.array([plan.rmax[int(e)] for e in z]), dtype=dtype, device=device)
    # per element: its atoms' coefficient blocks, per group gathered once (differentiable)
    local = np.zeros(len(z), dtype=np.int64)
    group_coef = {}
    for e in elements:
        atoms = np.nonzero(z == e)[0]
        local[atoms] = np.arange(len(atoms))
        nf = basis.n_functions(e)
        idx = torch.as_tensor(off[atoms][:, None] + np.arange(nf)[None, :], device=device)
        cz = coef[idx]  # (n_atoms_e, nf)
        for gi, g in enumerate(plan.groups[e]):
            t = g.tensors(dtype, device)
            group_coef[(e, gi)] = cz[:, t["cols"]].reshape(len(atoms), g.n_shells, 2 * g.l + 1)
    local_t = torch.as_tensor(local, device=device)

    outs = []
    for start in range(0, n_pts, chunk_size):
        p = ps[start:start + chunk_size]
        p_struct = ps_struct[start:start + chunk_size]
        n_c = p.shape[0]
        lo, hi = p.min(0).values, p.max(0).values
        gap = torch.clamp(lo[None, :] - pos, min=0) + torch.clamp(pos - hi[None, :], min=0)
        near = _rowdot(gap, gap) < atom_rmax * atom_rmax
        s0, s1 = int(p_struct[0]), int(p_struct[-1])
        if atom_struct.numel():
            near &= (atom_struct >= s0) & (atom_struct <= s1)
        cand = near.nonzero().squeeze(1)
        acc = p.new_zeros(n_c)
        if cand.numel():
            cand_el = atom_el.index_select(0, cand)
            for e in elements:
                atoms = cand[cand_el == el_index[e]]
                if atoms.numel() == 0:
                    continue
                groups = plan.groups[e]
                diff = (p[None, :, :] - pos.index_select(0, atoms)[:, None, :]).reshape(-1, 3)
                d2 = _rowdot(diff, diff)  # (n_cand_e * n_chunk,)
                if s0 != s1:
                    other = atom_struct.index_select(0, atoms)[:, None] != p_struct[None, :]
                    d2 = d2.masked_fill(other.reshape(-1), math.inf)
                # pairs within the largest radius; later (smaller) groups filter this list
                flat = (d2 < groups[0].radius ** 2).nonzero().squeeze(1)
                r = diff.index_select(0, flat)
                r2 = d2.index_select(0, flat)
                ia = torch.div(flat, n_c, rounding_mode="floor")
                ip = flat - ia * n_c
                a_loc = local_t.index_select(0, atoms).index_select(0, ia)
                del diff, d2, flat, ia
                for gi, g in enumerate(groups):
                    rc2 = g.radius * g.radius
                    if gi and g.radius < groups[gi - 1].radius:
                        keep = (r2 < rc2).nonzero().squeeze(1)
                        if keep.numel() < r2.numel():
                            r, r2 = r.index_select(0, keep), r2.index_select(0, keep)
                            ip, a_loc = ip.index_select(0, keep), a_loc.index_select(0, keep)
                    n_pair = r2.numel()
                    if n_pair == 0:
                        break
                    t = g.tensors(dtype, device)
                    cg = group_coef[(e, gi)]
                    width = max(len(g.exponents), g.n_shells * (2 * g.l + 1), 1)
                    step = max(1024, pair_budget // width)
                    for b in range(0, n_pair, step):
                        sl = slice(b, b + step)
                        v = _group_values(g, t, r[sl], r2[sl], cg.index_select(0, a_loc[sl]))
                        acc.index_add_(0, ip[sl], v)
        outs.append(acc)
    rho_sorted = torch.cat(outs)
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(n_pts, device=device)
    return rho_sorted.index_select(0, inv)


def _density(basis, plan, z, pos, coef, off, pts, atom_struct, point_struct, chunk_size, budget):
    """Fused Triton kernels on CUDA when no gradient is needed, else the torch path."""
    torch = _torch()
    from . import _triton_grid

    needs_grad = torch.is_grad_enabled() and (coef.requires_grad or pos.requires_grad)
    if not needs_grad and _triton_grid.available(pts.device):
        return _triton_grid.screened_density(basis, plan, z, pos, coef, off, pts, atom_struct, point_struct)
    return _screened_density(basis, plan, z, pos, coef, off, pts, atom_struct, point_struct,
                             chunk_size, budget)


def _rowsum(x):
    """x.sum(-1) for a small last dimension.

    On CPU a matrix-vector product with ones is several times faster than torch's
    reduction over a short contiguous axis; on CUDA the reduction is used, which also
    keeps TF32 matmul settings from touching distances.
    """
    if x.device.type == "cpu":
        return x @ x.new_ones(x.shape[-1])
    return x.sum(-1)


def _rowdot(a, b):
    """sum(a * b, -1) for a small last dimension."""
    return _rowsum(a * b)


def _group_values(g, t, r, r2, cg):
    """Contribution of one group to rho for a batch of pairs.

    r : (P, 3) displacement point - atom (bohr); r2 : (P,) its square norm;
    cg : (P, n_shells, 2l+1) coefficients. Returns (P,) sum_{s,m} c_sm R_s(|r|) S_lm(r).
    """
    torch = _torch()
    e = torch.exp(-r2[:, None] * t["exponents"][None, :])
    rad = e * t["cdiag"][None, :] if g.diagonal else e @ t["cmat"]  # (P, n_s)
    if g.l == 0:
        return _rowdot(rad, cg[:, :, 0]) * t["y00"]
    sh = solid_harmonics_pyscf(g.l, r)  # (P, 2l+1)
    if g.n_shells == 1:
        return rad[:, 0] * _rowdot(cg[:, 0, :], sh)
    q = _rowsum(cg * sh[:, None, :])  # (P, n_s)
    return _rowdot(q, rad)


def _defaults(device, chunk_size):
    cuda = device.type == "cuda"
    if chunk_size is None:
        chunk_size = DEFAULT_CHUNK_CUDA if cuda else DEFAULT_CHUNK_CPU
    chunk_size = int(chunk_size)
    if chunk_size < 1:
        raise InputError(f"chunk_size must be positive, got {chunk_size}")
    return chunk_size, (PAIR_BUDGET_CUDA if cuda else PAIR_BUDGET_CPU)


def evaluate_density(basis: AuxBasis, numbers, positions, coefficients, points, saed=None,
                     chunk_size=None, threshold: float = DEFAULT_THRESHOLD):
    """rho(r) = sum_P c_P chi_P(r) (+ the SAED prior) at the points, linear scaling.

    Parameters
    ----------
    basis : AuxBasis
    numbers : array-like or Tensor, shape (n_atoms,)
        Atomic numbers.
    positions : array-like or Tensor, shape (n_atoms, 3)
        Nuclear positions in bohr.
    coefficients : array-like or Tensor, shape (n_functions,)
        Expansion coefficients in the basis's PySCF order (``basis.layout(numbers)``).
    points : array-like or Tensor, shape (n_points, 3)
        Evaluation points in bohr.
    saed : SAED, optional
        If given, ``saed.evaluate_torch(numbers, positions, points)`` is added (called with
        tensors on the result's device: numbers int64, positions and points in the
        result's dtype, bohr): the coefficients then describe the difference density
        rho - rho_SAED.
    chunk_size : int, optional
        Points per chunk of the torch path (memory bound); default
        :data:`DEFAULT_CHUNK_CPU` on CPU, :data:`DEFAULT_CHUNK_CUDA` on CUDA. The fused
        Triton path (CUDA, no gradient) works in blocks of its own and ignores it.
    threshold : float
        Screening threshold on ``|chi_P|`` (see the module docstring).

    Returns
    -------
    Tensor, shape (n_points,)
        Density in e/bohr^3; dtype and device of ``coefficients`` if it is a tensor, else
        of ``points`` (float64 on CPU for numpy input). Differentiable with respect to
        the coefficients.
    """
    torch = _torch()
    dtype, device = _target(coefficients, points)
    z = _numbers_np(numbers)
    pts = _check_points(points, dtype, device)
    pos = _check_positions(positions, len(z), dtype, device)
    coef = _check_coefficients(basis, z, coefficients, dtype, device)
    chunk_size, budget = _defaults(device, chunk_size)
    plan = _plan(basis, threshold)
    empty = torch.zeros(0, dtype=torch.long, device=device)
    rho = _density(basis, plan, z, pos, coef, basis.layout(z), pts,
                   empty, torch.zeros(pts.shape[0], dtype=torch.long, device=device), chunk_size, budget)
    if saed is not None:
        rho = rho + _saed_values(saed, z, pos, pts)
    return rho


def _saed_values(saed, z, pos, pts, n_atoms=None, n_points=None):
    """The SAED prior at ``pts``; ``n_atoms``/``n_points`` split a batch into structures.

    One fused kernel for the whole batch on CUDA (Triton), else ``saed.evaluate_torch``
    structure by structure.
    """
    torch = _torch()
    from . import _triton_grid

    if n_atoms is None:
        n_atoms, n_points = np.array([len(z)]), np.array([pts.shape[0]])
    if _triton_grid.available(pts.device) and _triton_grid.saed_supported(saed, z):
        atom_struct = torch.as_tensor(np.repeat(np.arange(len(n_atoms)), n_atoms), device=pts.device)
        point_struct = torch.as_tensor(np.repeat(np.arange(len(n_atoms)), n_points), device=pts.device)
        return _triton_grid.saed_density(saed, z, pos.detach(), pts.detach(), atom_struct, point_struct)
    a_off = np.concatenate([[0], np.cumsum(n_atoms)])
    p_off = np.concatenate([[0], np.cumsum(n_points)])
    prior = []
    for i in range(len(n_atoms)):
        zt = torch.as_tensor(z[a_off[i]:a_off[i + 1]], device=pts.device)
        v = saed.evaluate_torch(zt, pos[a_off[i]:a_off[i + 1]], pts[p_off[i]:p_off[i + 1]])
        prior.append(torch.as_tensor(v).to(dtype=pts.dtype, device=pts.device).reshape(-1))
    return torch.cat(prior)


def evaluate_density_batch(basis: AuxBasis, batch: dict, saed=None, chunk_size=None,
                           threshold: float = DEFAULT_THRESHOLD):
    """Densities of many structures at once, each on its own points.

    Parameters
    ----------
    basis : AuxBasis
    batch : dict
        Concatenated arrays or tensors under the keys :data:`BATCH_NUMBERS` (sum n_atoms,),
        :data:`BATCH_POSITIONS` (sum n_atoms, 3) bohr, :data:`BATCH_COEFFICIENTS`
        (sum n_functions,), :data:`BATCH_POINTS` (sum n_points, 3) bohr, with the
        per-structure counts :data:`BATCH_N_ATOMS` and :data:`BATCH_N_POINTS`
        (n_structures,) and optionally :data:`BATCH_N_FUNCTIONS` (checked against the basis).
    saed, chunk_size, threshold
        As in :func:`evaluate_density`.

    Returns
    -------
    Tensor, shape (sum n_points,)
        Densities in e/bohr^3, concatenated in structure order; equal to evaluating each
        structure with :func:`evaluate_density`. All structures are screened and chunked
        together (points of one structure never see atoms of another).
    """
    torch = _torch()
    for k in (BATCH_NUMBERS, BATCH_POSITIONS, BATCH_COEFFICIENTS, BATCH_POINTS,
              BATCH_N_ATOMS, BATCH_N_POINTS):
        if k not in batch:
            raise InputError(f"batch has no {k!r} entry")
    coefficients, points = batch[BATCH_COEFFICIENTS], batch[BATCH_POINTS]
    dtype, device = _target(coefficients, points)
    z = _numbers_np(batch[BATCH_NUMBERS])
    n_atoms = _numbers_np(batch[BATCH_N_ATOMS])
    n_points = _numbers_np(batch[BATCH_N_POINTS])
    if len(n_atoms) != len(n_points):
        raise InputError(f"batch: {len(n_atoms)} atom counts but {len(n_points)} point counts")
    if n_atoms.sum() != len(z) or (n_atoms < 1).any():
        raise InputError(f"batch: atom counts sum to {n_atoms.sum()} (each >= 1 required), "
                         f"numbers has {len(z)}")
    pts = _check_points(points, dtype, device)
    if n_points.sum() != pts.shape[0] or (n_points < 0).any():
        raise InputError(f"batch: point counts sum to {n_points.sum()}, points has {pts.shape[0]}")
    pos = _check_positions(batch[BATCH_POSITIONS], len(z), dtype, device)
    off = basis.layout(z)
    if BATCH_N_FUNCTIONS in batch:
        a_off = np.concatenate([[0], np.cumsum(n_atoms)])
        expect = off[a_off[1:]] - off[a_off[:-1]]
        got = _numbers_np(batch[BATCH_N_FUNCTIONS])
        if got.shape != expect.shape or np.any(got != expect):
            raise InputError(f"batch: n_functions {got.tolist()} do not match basis "
                             f"{basis.name} ({expect.tolist()})")
    coef = _check_coefficients(basis, z, coefficients, dtype, device)
    chunk_size, budget = _defaults(device, chunk_size)
    plan = _plan(basis, threshold)
    n_s = len(n_atoms)
    atom_struct = torch.as_tensor(np.repeat(np.arange(n_s), n_atoms), device=device)
    point_struct = torch.as_tensor(np.repeat(np.arange(n_s), n_points), device=device)
    rho = _density(basis, plan, z, pos, coef, off, pts, atom_struct, point_struct, chunk_size, budget)
    if saed is not None:
        rho = rho + _saed_values(saed, z, pos, pts, n_atoms, n_points)
    return rho


# ----------------------------------------------------------------------------- grids
def becke_grid(structure_or_mol, level: int = 3, return_atoms: bool = False):
    """PySCF's atom-centred (Becke-partitioned) integration grid of a molecule.

    Parameters
    ----------
    structure_or_mol : Structure, pyscf.gto.Mole or (numbers, positions)
        The molecule; positions in bohr for the tuple form.
    level : int
        PySCF grid level (0-9).

    Returns
    -------
    points : ndarray, shape (n, 3)
        Grid points in bohr.
    weights : ndarray, shape (n,)
        Quadrature weights in bohr^3 (``sum w rho`` integrates a density in e/bohr^3).
    atom_index : ndarray, shape (n,), int
        Only with ``return_atoms``: the atom whose atom-centred grid each point belongs to
        (its weight includes that atom's Becke cell function, so summing over an atom's
        points integrates over its Becke cell).
    """
    from pyscf import dft, gto

    from .structure import Structure

    if isinstance(structure_or_mol, gto.Mole):
        mol = structure_or_mol
    else:
        if isinstance(structure_or_mol, Structure):
            if structure_or_mol.is_periodic:
                raise InputError(f"{structure_or_mol.label}: becke_grid is for molecules, "
                                 "not periodic structures")
            numbers, positions = structure_or_mol.numbers, structure_or_mol.positions
        else:
            numbers, positions = structure_or_mol
        numbers = _numbers_np(numbers)
        positions = np.asarray(positions, dtype=np.float64)
        if positions.shape != (len(numbers), 3) or not np.all(np.isfinite(positions)):
            raise InputError(f"positions must be finite with shape ({len(numbers)}, 3)")
        mol = gto.Mole()
        mol.atom = [(int(zz), tuple(p)) for zz, p in zip(numbers, positions)]
        mol.unit = "Bohr"
        mol.basis = "sto-3g"  # only to build the Mole; the grid does not depend on it
        mol.spin = int(numbers.sum()) % 2
        mol.verbose = 0
        mol.build()
    if not 0 <= int(level) <= 9:
        raise InputError(f"grid level must lie in 0..9, got {level}")
    grids = dft.gen_grid.Grids(mol)
    grids.level = int(level)
    grids.build(with_non0tab=False)
    keep = np.asarray(grids.atm_idx) >= 0  # drop PySCF's zero-weight alignment padding
    points, weights = np.asarray(grids.coords)[keep], np.asarray(grids.weights)[keep]
    if return_atoms:
        return points, weights, np.asarray(grids.atm_idx)[keep].astype(np.int64)
    return points, weights


def uniform_box(numbers, positions, spacing: float = 0.2, margin: float = 4.0):
    """A uniform grid around a molecule (the cube-file convention).

    Parameters
    ----------
    numbers : array-like, shape (n_atoms,)
    positions : array-like, shape (n_atoms, 3)
        Bohr.
    spacing : float
        Grid spacing in bohr.
    margin : float
        Distance in bohr between the outermost atoms and the box faces.

    Returns
    -------
    origin : ndarray, shape (3,)
        Bohr.
    axes : ndarray, shape (3, 3)
        Step vectors as rows, bohr (diagonal, ``spacing``).
    shape : ndarray, shape (3,), int
        Points along each axis.
    points : ndarray, shape (prod(shape), 3)
        Bohr, ``origin + i*axes[0] + j*axes[1] + k*axes[2]`` in C order (x slowest).
    """
    z = _numbers_np(numbers)
    pos = np.asarray(positions, dtype=np.float64)
    if pos.shape != (len(z), 3) or len(z) == 0 or not np.all(np.isfinite(pos)):
        raise InputError(f"positions must be finite with shape ({len(z)}, 3)")
    if not spacing > 0 or not margin >= 0:
        raise InputError(f"spacing must be > 0 and margin >= 0, got {spacing}, {margin}")
    lo = pos.min(0) - margin
    extent = pos.max(0) + margin - lo
    shape = np.floor(extent / spacing + 1e-9).astype(np.int64) + 1
    axes = np.eye(3) * spacing
    grids = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    idx = np.stack([g.reshape(-1) for g in grids], axis=1)
    points = lo[None, :] + idx.astype(np.float64) @ axes
    return lo, axes, shape, points


# ----------------------------------------------------------------------------- cells
def cell_grid(cell, shape):
    """The uniform grid of a periodic cell (the CHGCAR / FFT-mesh convention).

    Parameters
    ----------
    cell : array-like, shape (3, 3)
        Lattice vectors as rows, bohr.
    shape : sequence of 3 int
        Points along each lattice vector.

    Returns
    -------
    axes : ndarray, shape (3, 3)
        Step vectors as rows, bohr (``cell[i] / shape[i]``).
    points : ndarray, shape (prod(shape), 3)
        Bohr, point (i, j, k) at ``(i/n1, j/n2, k/n3) @ cell``, C order (i slowest).
    """
    cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
    shape = [int(n) for n in shape]
    if len(shape) != 3 or min(shape) < 1:
        raise InputError(f"grid shape must be three positive integers, got {shape}")
    if abs(np.linalg.det(cell)) < 1e-6:
        raise InputError("zero-volume cell")
    axes = cell / np.asarray(shape, dtype=np.float64)[:, None]
    grids = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    idx = np.stack([g.reshape(-1) for g in grids], axis=1).astype(np.float64)
    return axes, idx @ axes


def cell_grid_shape(cell, spacing: float = 0.2) -> np.ndarray:
    """Points along each lattice vector for a spacing of at most ``spacing`` bohr."""
    if not spacing > 0:
        raise InputError(f"spacing must be > 0, got {spacing}")
    lengths = np.linalg.norm(np.asarray(cell, dtype=np.float64).reshape(3, 3), axis=1)
    return np.maximum(1, np.ceil(lengths / spacing - 1e-9)).astype(np.int64)


def lattice_image_atoms(numbers, positions, cell, points, reach):
    """Atoms of a fully periodic structure plus the images whose functions reach ``points``.

    Parameters
    ----------
    numbers : array-like, shape (n_atoms,)
    positions : array-like, shape (n_atoms, 3)
        Bohr.
    cell : array-like, shape (3, 3)
        Lattice vectors as rows, bohr.
    points : array-like, shape (n_points, 3)
        Bohr (anywhere; they need not lie in the cell).
    reach : dict[int, float]
        Reach (bohr) of each element's functions.

    Returns
    -------
    numbers : ndarray (m,), positions : ndarray (m, 3), home : ndarray (m,) int
        Home atoms first (``home[:n_atoms] == arange(n_atoms)``), then images; ``home`` is
        the atom each image copies. An image is kept when, along every lattice direction,
        its distance from the slab spanned by the points is below its reach: a superset
        of the images within reach of some point.
    """
    z = _numbers_np(numbers)
    pos = np.asarray(positions, dtype=np.float64).reshape(len(z), 3)
    cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    home = np.arange(len(z))
    if len(pts) == 0:
        return z, pos, home
    inv = np.linalg.inv(cell)
    vol = abs(np.linalg.det(cell))
    heights = np.array([vol / np.linalg.norm(np.cross(cell[(i + 1) % 3], cell[(i + 2) % 3]))
                        for i in range(3)])
    fp = pts @ inv
    flo, fhi = fp.min(0), fp.max(0)
    fpos = pos @ inv
    r_atom = np.array([float(reach[int(x)]) for x in z])
    rmax = float(r_atom.max())
    lo = np.floor(flo - fpos.max(0) - rmax / heights).astype(np.int64) - 1
    hi = np.ceil(fhi - fpos.min(0) + rmax / heights).astype(np.int64) + 1
    ranges = [np.arange(lo[i], hi[i] + 1) for i in range(3)]
    shifts = np.stack(np.meshgrid(*ranges, indexing="ij"), axis=-1).reshape(-1, 3)
    shifts = shifts[np.any(shifts != 0, axis=1)]
    f = fpos[:, None, :] + shifts[None, :, :].astype(np.float64)  # (n, n_shift, 3)
    gap = np.clip(flo - f, 0, None) + np.clip(f - fhi, 0, None)
    keep = np.all(gap * heights <= r_atom[:, None, None], axis=2)
    a_idx, s_idx = np.nonzero(keep)
    img_pos = pos[a_idx] + shifts[s_idx].astype(np.float64) @ cell
    return (np.concatenate([z, z[a_idx]]), np.concatenate([pos, img_pos]),
            np.concatenate([home, a_idx]))


def evaluate_density_periodic(basis: AuxBasis, numbers, positions, cell, coefficients, points,
                              saed=None, chunk_size=None, threshold: float = DEFAULT_THRESHOLD):
    """Density of a fully periodic structure at ``points``, with lattice sums.

    ``rho(r) = sum_T sum_P c_P chi_P(r - R_P - T) (+ sum_T rho_SAED)``: the home atoms'
    coefficients are copied onto every periodic image within reach of the points (the
    largest shell radius at ``threshold``; the SAED's cutoff radius for the prior) and the
    molecular evaluator :func:`evaluate_density` runs on the tiled atoms.

    Parameters
    ----------
    basis : AuxBasis
    numbers : array-like, shape (n_atoms,)
    positions : array-like, shape (n_atoms, 3)
        Bohr.
    cell : array-like, shape (3, 3)
        Lattice vectors as rows, bohr.
    coefficients : array-like or Tensor, shape (n_functions,)
        The home atoms' coefficients, PySCF order (``basis.layout(numbers)``).
    points : array-like or Tensor, shape (n_points, 3)
        Bohr.
    saed : SAED, optional
        Add the lattice-summed SAED prior (the coefficients are then a difference density).
    chunk_size, threshold
        As in :func:`evaluate_density`.

    Returns
    -------
    Tensor, shape (n_points,)
        e/bohr^3; dtype and device as :func:`evaluate_density`; differentiable with respect
        to the coefficients.
    """
    torch = _torch()
    dtype, device = _target(coefficients, points)
    z = _numbers_np(numbers)
    pts = _check_points(points, dtype, device)
    pos = _check_positions(positions, len(z), dtype, device)
    coef = _check_coefficients(basis, z, coefficients, dtype, device)
    cell_np = np.asarray(torch.as_tensor(cell).detach().cpu(), dtype=np.float64).reshape(3, 3)
    if not np.all(np.isfinite(cell_np)) or abs(np.linalg.det(cell_np)) < 1e-6:
        raise InputError("evaluate_density_periodic: the cell must be finite with non-zero volume")
    pts_np = pts.detach().cpu().numpy().astype(np.float64)
    pos_np = pos.detach().cpu().numpy().astype(np.float64)
    zs = sorted(set(z.tolist()))
    reach = {zz: float(shell_radii(basis, zz, threshold).max()) for zz in zs}
    img_z, img_pos, home = lattice_image_atoms(z, pos_np, cell_np, pts_np, reach)
    off = basis.layout(z)
    idx = np.concatenate([np.arange(off[h], off[h + 1]) for h in home])
    coef_img = coef[torch.as_tensor(idx, device=coef.device)]
    img_pos_t = torch.as_tensor(img_pos, dtype=dtype, device=device)
    rho = evaluate_density(basis, img_z, img_pos_t, coef_img, pts, chunk_size=chunk_size,
                           threshold=threshold)
    if saed is not None:
        cut = {zz: float(saed.cutoff(zz)) for zz in zs}
        s_z, s_pos, _ = lattice_image_atoms(z, pos_np, cell_np, pts_np, cut)
        rho = rho + _saed_values(saed, s_z, torch.as_tensor(s_pos, dtype=dtype, device=device), pts)
    return rho


def saed_periodic(saed, numbers, positions, cell, points) -> np.ndarray:
    """The lattice-summed SAED prior of a fully periodic structure at ``points`` (numpy).

    Images within each element's SAED cutoff radius of the points are included (see
    :func:`lattice_image_atoms`); positions, cell and points in bohr, result in e/bohr^3.
    """
    z = _numbers_np(numbers)
    pos = np.asarray(positions, dtype=np.float64).reshape(len(z), 3)
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    cut = {zz: float(saed.cutoff(zz)) for zz in set(z.tolist())}
    s_z, s_pos, _ = lattice_image_atoms(z, pos, cell, pts, cut)
    return saed.evaluate(s_z, s_pos, pts)
