"""The E(3)-equivariant network: structure -> per-atom auxiliary-basis coefficients.

Pipeline of :class:`DensityModel` (NequIP-style message passing, e3nn 0.6)::

    one-hot species --Linear--> embedding (D x 0e)
    edges i <- j within the cutoff: Y_l(r_ij) (e3nn.o3.SphericalHarmonics, l <= sh_lmax)
                                    Bessel radial basis x polynomial envelope (smooth at r_c)
    num_layers x interaction:
        h = Linear(x);  m_ij = TP_uvu(h_j, Y(r_ij); weights = MLP(radial(r_ij)))
        a_i = Linear(sum_j m_ij / sqrt(avg_num_neighbors)) + SelfConnection(x_i, species_i)
        x_i <- Gate(a_i)  (+ x_i, residual, when the irreps agree)
    per element Z: Linear(x_i) -> irreps of Z's coefficients (AuxBasis.irreps(Z))
    denormalise: c = scale * y + mean   (mean on 0e channels only, scale per shell)
    electron-count constraint (optional): sum_P q_P c_P = target count per structure
    e3nn -> PySCF harmonic order (AuxBasis.e3nn_to_pyscf, the one owner of the convention)

Every step is equivariant: the normalisation scale is constant over the 2l+1 components of
a shell and the mean and the constraint only touch l = 0 functions (q_P = int chi_P is zero
for l > 0).

Electron-count target: N = sum Z - charge for the total density ('total'), or the batch's
``N_ELECTRONS`` when it has them (valence counts of pseudopotential references); -charge
for the Delta-SAED difference density ('difference'), whose SAED prior carries the neutral
atoms' electrons (sum Z, or the valence counts for pseudo-atoms).
The correction is the smallest change of the *normalised* output y that meets the count:
c += w * (N - q.c) / (q.w) per structure, with w_P = q_P scale_P^2 (w = q before
normalisation has been fitted, i.e. with unit scales).

Periodic structures: edges reach periodic images (:func:`densitylearn.graph.build_edges`)
and edge vectors include the lattice shift, so a crystal's coefficients are those of its
home atoms, invariant under lattice translations and the choice of supercell.

Outputs (a dict, keys from :mod:`densitylearn.graph`): ``COEFFICIENTS`` (sum n_functions,)
PySCF order, concatenated per structure exactly like ``TARGET_COEFFICIENTS`` of a batch,
with ``COEF_OFFSETS`` (n_struct + 1,), ``ATOM_COEF_OFFSETS`` (n_atoms + 1,), ``N_FUNCTIONS``
(n_struct,), and ``COEFFICIENTS_E3NN`` (the same in e3nn's harmonic convention). A training
loop computes ``d = out[COEFFICIENTS] - batch[TARGET_COEFFICIENTS]`` and per-structure
losses ``d_s^T J_s d_s`` with ``d_s = d[COEF_OFFSETS[s]:COEF_OFFSETS[s+1]]`` and J_s the
structure's metric (overlap or Coulomb) matrix in PySCF order.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
from e3nn import o3
from e3nn.nn import FullyConnectedNet, Gate

from . import graph as G
from .basis import AuxBasis
from .errors import InputError

#: Targets a model can be built for.
MODEL_TARGETS = G.GRAPH_TARGETS

#: Tensor-product backends (:meth:`DensityModel.set_backend`).
BACKENDS = ("e3nn", "cueq")

_MAX_Z = 119


# ----------------------------------------------------------------------------- config
@dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters of :class:`DensityModel` (all plain types; maps 1:1 onto a YAML file).

    Attributes
    ----------
    cutoff : float
        Neighbour cutoff in bohr (5.67 bohr = 3 Angstrom).
    hidden_irreps : str
        Node features of the hidden layers. Must reach the largest l of the basis (the
        readout is a linear map). Irreps unreachable in a layer are dropped there.
    sh_lmax : int
        Largest l of the edge spherical harmonics.
    num_layers : int
        Interaction layers.
    num_radial : int
        Bessel radial basis functions.
    envelope_p : int
        Exponent of the polynomial cutoff envelope (smooth to second order at the cutoff).
    radial_hidden : int
        Width of the radial MLP that produces the tensor-product weights.
    radial_layers : int
        Hidden layers of the radial MLP.
    embedding_dim : int
        Size of the species embedding (scalars).
    avg_num_neighbors : float
        Message sums are divided by sqrt(avg_num_neighbors).
    electron_constraint : bool
        Correct the output so that it integrates to the target electron count.
    resnet : bool
        Residual connections where a layer's input and output irreps agree.
    """

    cutoff: float = 5.67
    hidden_irreps: str = "64x0e+32x1o+16x2e+8x3o+8x4e"
    sh_lmax: int = 3
    num_layers: int = 3
    num_radial: int = 8
    envelope_p: int = 6
    radial_hidden: int = 64
    radial_layers: int = 2
    embedding_dim: int = 32
    avg_num_neighbors: float = 12.0
    electron_constraint: bool = True
    resnet: bool = True

    def __post_init__(self):
        def need(ok, what):
            if not ok:
                raise InputError(f"model config: {what}")

        need(isinstance(self.cutoff, (int, float)) and self.cutoff > 0, f"cutoff must be > 0 bohr, got {self.cutoff!r}")
        try:
            irreps = o3.Irreps(self.hidden_irreps)
        except (ValueError, AssertionError, TypeError):
            raise InputError(f"model config: hidden_irreps {self.hidden_irreps!r} is not an irreps string") from None
        need(any(ir.l == 0 and mul > 0 for mul, ir in irreps),
             f"hidden_irreps {self.hidden_irreps!r} need at least one scalar (0e)")
        for name in ("sh_lmax", "num_layers", "num_radial", "envelope_p", "radial_hidden",
                     "radial_layers", "embedding_dim"):
            v = getattr(self, name)
            lo = 0 if name in ("radial_layers",) else 1
            need(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= lo,
                 f"{name} must be an integer >= {lo}, got {v!r}")
        need(self.avg_num_neighbors > 0, f"avg_num_neighbors must be > 0, got {self.avg_num_neighbors!r}")
        for name in ("electron_constraint", "resnet"):
            need(isinstance(getattr(self, name), bool), f"{name} must be true or false")

    @classmethod
    def from_dict(cls, d: dict | None) -> "ModelConfig":
        """Build from a plain dict (e.g. a YAML section); unknown keys are an error."""
        from .config import dataclass_from_dict

        return dataclass_from_dict(cls, d, "model config")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- pieces
def _path_exists(irreps_in1, irreps_in2, ir_out) -> bool:
    ir_out = o3.Irrep(ir_out)
    return any(ir_out in ir1 * ir2 for _, ir1 in o3.Irreps(irreps_in1) for _, ir2 in o3.Irreps(irreps_in2))


def bessel_basis(r: torch.Tensor, cutoff: float, n: int) -> torch.Tensor:
    """sqrt(2/r_c) sin(k pi r / r_c) / r, k = 1..n; shape (n_edges, n). r in bohr, > 0."""
    k = torch.arange(1, n + 1, dtype=r.dtype, device=r.device)
    return math.sqrt(2.0 / cutoff) * torch.sin(k * math.pi * r[:, None] / cutoff) / r[:, None]


def polynomial_envelope(r: torch.Tensor, cutoff: float, p: int = 6) -> torch.Tensor:
    """Smooth cutoff u(r/r_c): 1 at 0, zero with two vanishing derivatives at r_c, 0 beyond."""
    x = r / cutoff
    u = (1.0 - (p + 1) * (p + 2) / 2.0 * x ** p + p * (p + 2) * x ** (p + 1)
         - p * (p + 1) / 2.0 * x ** (p + 2))
    return torch.where(x < 1.0, u, torch.zeros_like(u))


class _Interaction(torch.nn.Module):
    """One message-passing layer (NequIP's convolution + gate + residual)."""

    def __init__(self, irreps_in, irreps_attr, irreps_sh, irreps_hidden, config: ModelConfig):
        super().__init__()
        irreps_in, irreps_sh = o3.Irreps(irreps_in), o3.Irreps(irreps_sh)
        reach = [(mul, ir) for mul, ir in o3.Irreps(irreps_hidden) if _path_exists(irreps_in, irreps_sh, ir)]
        scalars = o3.Irreps([(mul, ir) for mul, ir in reach if ir.l == 0])
        gated = o3.Irreps([(mul, ir) for mul, ir in reach if ir.l > 0])
        ir_gate = "0e" if _path_exists(irreps_in, irreps_sh, "0e") else "0o"
        gates = o3.Irreps([(mul, ir_gate) for mul, _ in gated])
        act = {1: torch.nn.functional.silu, -1: torch.tanh}
        self.gate = Gate(scalars, [act[ir.p] for _, ir in scalars], gates,
                         [torch.sigmoid] * len(gates), gated)
        conv_out = self.gate.irreps_in

        self.linear_1 = o3.Linear(irreps_in, irreps_in)
        mid, instructions = [], []
        for i, (mul, ir_in) in enumerate(irreps_in):
            for j, (_, ir_edge) in enumerate(irreps_sh):
                for ir_out in ir_in * ir_edge:
                    if ir_out in conv_out:
                        instructions.append((i, j, len(mid), "uvu", True))
                        mid.append((mul, ir_out))
        mid = o3.Irreps(mid)
        mid_sorted, perm, _ = mid.sort()
        instructions = [(i, j, perm[k], mode, train) for i, j, k, mode, train in instructions]
        self.tp = o3.TensorProduct(irreps_in, irreps_sh, mid_sorted, instructions,
                                   shared_weights=False, internal_weights=False)
        self._tp_spec = (irreps_in, irreps_sh, instructions, mid_sorted)
        self.backend, self.backend_method = "e3nn", None
        self._cueq = []  # a list, so that the cuEquivariance module stays out of state_dict
        self.radial = FullyConnectedNet([config.num_radial] + [config.radial_hidden] * config.radial_layers
                                        + [self.tp.weight_numel], torch.nn.functional.silu)
        self.linear_2 = o3.Linear(mid_sorted.simplify(), conv_out)
        self.self_connection = o3.FullyConnectedTensorProduct(irreps_in, irreps_attr, conv_out)
        self.norm = 1.0 / math.sqrt(config.avg_num_neighbors)
        self.irreps_in = irreps_in
        self.irreps_out = self.gate.irreps_out
        self.resnet = bool(config.resnet) and self.irreps_in == self.irreps_out

    def _cueq_conv(self, like: torch.Tensor):
        from .cueq import CueqConvolution

        mod = self._cueq[0] if self._cueq else None
        if mod is None or mod.weight_index.device != like.device or mod.dtype != like.dtype \
                or mod.requested != self.backend_method:
            with torch.inference_mode(False):  # its buffers must serve training too
                mod = CueqConvolution(*self._tp_spec, method=self.backend_method, device=like.device,
                                      dtype=like.dtype)
            self._cueq[:] = [mod]
        return mod

    def forward(self, x, attrs, centre, neighbour, sh, radial):
        h = self.linear_1(x)
        if self.backend == "cueq":
            agg = self._cueq_conv(h)(h, sh, self.radial(radial), neighbour, centre, x.shape[0])
        else:
            m = self.tp(h[neighbour], sh, self.radial(radial))
            agg = torch.zeros(x.shape[0], m.shape[1], dtype=m.dtype, device=m.device).index_add_(0, centre, m)
        y = self.gate(self.linear_2(agg * self.norm) + self.self_connection(x, attrs))
        return x + y if self.resnet else y


class _ElementReadout(torch.nn.Module):
    """Hidden features -> one element's coefficients (e3nn order), with normalisation.

    Buffers (per function of the element, e3nn order): ``mean`` (nonzero only on l = 0),
    ``scale`` (constant within a shell), ``q`` (int chi_P, zero unless l = 0), ``to_pyscf``
    (c_pyscf = to_pyscf @ c_e3nn).
    """

    def __init__(self, irreps_hidden, basis: AuxBasis, z: int):
        super().__init__()
        irreps_out = o3.Irreps(basis.irreps(z))
        for _, ir in irreps_out:
            if ir not in o3.Irreps(irreps_hidden):
                raise InputError(f"model: hidden features {irreps_hidden} lack irrep {ir} needed by "
                                 f"auxiliary basis {basis.name} for Z={z} (raise hidden_irreps, "
                                 "sh_lmax or num_layers)")
        self.irreps_out = irreps_out
        self.linear = o3.Linear(irreps_hidden, irreps_out, biases=True)
        n = basis.n_functions(z)
        dt = torch.get_default_dtype()
        self.register_buffer("mean", torch.zeros(n, dtype=dt))
        self.register_buffer("scale", torch.ones(n, dtype=dt))
        self.register_buffer("q", torch.as_tensor(basis.s_integrals(z), dtype=dt), persistent=False)
        self.register_buffer("to_pyscf", torch.as_tensor(basis.e3nn_to_pyscf(z), dtype=dt), persistent=False)

    def forward(self, x):
        return self.linear(x) * self.scale + self.mean


# ----------------------------------------------------------------------------- model
class DensityModel(torch.nn.Module):
    """Equivariant network predicting auxiliary-basis coefficients of a density.

    Parameters
    ----------
    config : ModelConfig
    basis : AuxBasis
        The auxiliary basis of the coefficients (restricted to ``elements``).
    target : {'total', 'difference'}
        Total density (TCD) or Delta-SAED difference density (DCD).
    elements : sequence of int, optional
        Atomic numbers the model handles (default: all of the basis's). Structures with
        other elements are refused with an :class:`InputError`.

    The model has the default dtype (float32) after construction; ``model.double()`` gives
    float64. e3nn's constant tables are computed in float64 at construction and restored
    exactly after every cast and after ``load_state_dict``, so a float64 model is
    equivariant to ~1e-15 even when cast from float32 or loaded from a float32 checkpoint
    (construction switches torch's default dtype for its duration: not thread-safe). :meth:`describe` / :meth:`from_description` round-trip everything but
    the state dict (plain types: safe for ``torch.load(weights_only=True)``).
    """

    def __init__(self, config: ModelConfig, basis: AuxBasis, target: str, elements=None):
        super().__init__()
        if not isinstance(config, ModelConfig):
            config = ModelConfig.from_dict(config)
        if target not in MODEL_TARGETS:
            raise InputError(f"model: unknown target {target!r} (expected one of {', '.join(MODEL_TARGETS)})")
        zs = sorted({int(z) for z in (basis.elements if elements is None else elements)})
        missing = [z for z in zs if z not in basis.elements]
        if not zs or missing:
            raise InputError(f"model: auxiliary basis {basis.name} has no functions for "
                             f"Z={missing[0] if missing else '(none requested)'}")
        self.config = config
        self.target = target
        self.elements = tuple(zs)
        self.basis = basis.subset(zs)
        # e3nn computes its constants (Clebsch-Gordan tables) in the default dtype: build in
        # float64, keep exact copies, then cast to the default dtype (see _apply)
        dtype = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            self._build(config, zs)
        finally:
            torch.set_default_dtype(dtype)
        self._exact_constants = {n: b.detach().clone() for n, b in self.named_buffers()
                                 if b.is_floating_point() and not n.endswith((".mean", ".scale"))}
        self.to(dtype)

    def _build(self, config: ModelConfig, zs) -> None:
        """Create the layers and buffers (called with float64 as the default dtype)."""
        table = torch.full((_MAX_Z,), -1, dtype=torch.long)
        table[torch.tensor(zs)] = torch.arange(len(zs))
        self.register_buffer("species_of_z", table, persistent=False)
        nf = torch.zeros(_MAX_Z, dtype=torch.long)
        nf[torch.tensor(zs)] = torch.tensor([self.basis.n_functions(z) for z in zs])
        self.register_buffer("n_functions_of_z", nf, persistent=False)
        self.register_buffer("normalisation_fitted", torch.tensor(False))

        n_el = len(zs)
        self.irreps_attr = o3.Irreps(f"{n_el}x0e")
        self.embedding = o3.Linear(self.irreps_attr, o3.Irreps(f"{config.embedding_dim}x0e"))
        self.irreps_sh = o3.Irreps.spherical_harmonics(config.sh_lmax)
        self.sh = o3.SphericalHarmonics(self.irreps_sh, normalize=True, normalization="component")
        layers, irreps = [], o3.Irreps(f"{config.embedding_dim}x0e")
        for _ in range(config.num_layers):
            layer = _Interaction(irreps, self.irreps_attr, self.irreps_sh, config.hidden_irreps, config)
            layers.append(layer)
            irreps = layer.irreps_out
        self.layers = torch.nn.ModuleList(layers)
        self.irreps_hidden = irreps
        self.readout = torch.nn.ModuleList([_ElementReadout(irreps, self.basis, z) for z in zs])

    # ------------------------------------------------------------------ backend
    def set_backend(self, backend: str = "e3nn", method: str | None = None) -> "DensityModel":
        """Choose the library that computes the convolution tensor products.

        ``"e3nn"`` (default) or ``"cueq"`` (NVIDIA cuEquivariance, :mod:`densitylearn.cueq`;
        ``method`` is one of :data:`densitylearn.cueq.METHODS`, default: its fused CUDA
        kernel on a GPU). Parameters and results are the same either way; the choice is not
        saved with the model. Returns the model.
        """
        if backend not in BACKENDS:
            raise InputError(f"model: backend {backend!r} is not one of {list(BACKENDS)}")
        if backend == "cueq":
            from .cueq import _require

            _require()
        for layer in self.layers:
            layer.backend, layer.backend_method = backend, method
            layer._cueq[:] = []
        return self

    @property
    def backend(self) -> str:
        """The tensor-product backend in use (see :meth:`set_backend`)."""
        return self.layers[0].backend

    # ------------------------------------------------------------------ dtype
    def _apply(self, fn, *args, **kwargs):
        # casting a float32 model with .double() would keep float32-rounded constants
        # (~1e-8 equivariance errors): put the exact values back after every cast/move
        out = super()._apply(fn, *args, **kwargs)
        self._restore_constants()
        return out

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """As torch's; the stored e3nn constants are replaced by exact values afterwards."""
        out = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self._restore_constants()
        return out

    @torch.no_grad()
    def _restore_constants(self) -> None:
        for name, exact in getattr(self, "_exact_constants", {}).items():
            buf = self.get_buffer(name)
            buf.copy_(exact.to(device=buf.device, dtype=buf.dtype))

    # ------------------------------------------------------------------ description
    def describe(self) -> dict:
        """Plain-type description: config, basis definition, target, elements, model class."""
        return {"model": "DensityModel", "config": self.config.to_dict(),
                "basis": self.basis.definition(), "target": self.target, "elements": list(self.elements)}

    @classmethod
    def from_description(cls, d: dict) -> "DensityModel":
        """Rebuild an (untrained) model from :meth:`describe` output; then load a state dict."""
        if d.get("model") != "DensityModel":
            raise InputError(f"not a DensityModel description (model = {d.get('model')!r})")
        return cls(ModelConfig.from_dict(d["config"]), AuxBasis.from_definition(d["basis"]),
                   d["target"], d["elements"])

    @property
    def dtype(self) -> torch.dtype:
        return self.readout[0].mean.dtype

    def irreps_out(self, z: int) -> o3.Irreps:
        """Irreps of one atom's coefficients (e3nn convention)."""
        return self.readout[self._species_index(z)].irreps_out

    def _species_index(self, z: int) -> int:
        if int(z) not in self.elements:
            raise InputError(f"model built for elements {list(self.elements)} cannot handle Z={int(z)}")
        return self.elements.index(int(z))

    # ------------------------------------------------------------------ normalisation
    @torch.no_grad()
    def fit_normalisation(self, dataset, max_structures: int | None = None) -> dict:
        """Set the per-element output mean and scale from training coefficients.

        For each element and each shell (irrep channel) of its basis: the mean over atoms of
        the 0e coefficients, and the RMS over atoms and the 2l+1 components of the
        coefficients (about the mean for 0e). Nothing else is equivariant.

        Parameters
        ----------
        dataset : GraphDataset, CoefficientDataset or sequence of records
            Records with ``numbers`` and the model's target coefficients (PySCF order).
        max_structures : int, optional
            Use only the first ``max_structures`` structures.

        Returns
        -------
        dict
            ``{Z: {'atoms': count, 'mean': ndarray, 'scale': ndarray}}`` per function
            (shells expanded), PySCF order.
        """
        target = getattr(dataset, "target", self.target)
        if target != self.target:
            raise InputError(f"normalisation: dataset target {target!r} differs from the model's {self.target!r}")
        if hasattr(dataset, "basis"):
            self.basis.require_same(dataset.basis, elements=[z for z in self.elements if z in dataset.basis.elements],
                                    context="normalisation")
        acc = {z: [0, np.zeros(self.basis.n_functions(z)), np.zeros(self.basis.n_functions(z))]
               for z in self.elements}
        n = len(dataset) if max_structures is None else min(len(dataset), int(max_structures))
        for i in range(n):
            rec = dataset[i]
            z_all = np.asarray(rec["numbers"], dtype=np.int64)
            c = np.asarray(G.record_target(rec, self.target), dtype=np.float64)
            off = self.basis.layout(z_all) if all(int(z) in self.elements for z in z_all) else None
            if off is None:
                bad = sorted(set(z_all.tolist()) - set(self.elements))[0]
                raise InputError(f"normalisation: structure {rec.get('name', i)!r} has element Z={bad}, "
                                 f"model built for {list(self.elements)}")
            if c.shape != (off[-1],):
                raise InputError(f"normalisation: structure {rec.get('name', i)!r} has {c.shape} coefficients, "
                                 f"expected ({off[-1]},)")
            for z in np.unique(z_all):
                atoms = np.nonzero(z_all == z)[0]
                block = c[off[atoms][:, None] + np.arange(self.basis.n_functions(int(z)))]
                a = acc[int(z)]
                a[0] += len(atoms)
                a[1] += block.sum(0)
                a[2] += (block ** 2).sum(0)
        stats = {}
        for k, z in enumerate(self.elements):
            count, s1, s2 = acc[z]
            ls = self.basis.shell_ls(z)
            mean = np.zeros_like(s1)
            scale = np.ones_like(s1)
            if count > 0:
                mean = np.where(ls == 0, s1 / count, 0.0)
                var = np.maximum(s2 / count - mean ** 2, 0.0)  # per function, about the mean
                i = 0
                for sh in self.basis.shells(z):
                    d = sh.n_functions
                    scale[i:i + d] = math.sqrt(var[i:i + d].mean())
                    i += d
                scale = np.maximum(scale, 1e-8)
            ro = self.readout[k]
            ro.mean.copy_(torch.as_tensor(mean, dtype=ro.mean.dtype))
            ro.scale.copy_(torch.as_tensor(scale, dtype=ro.scale.dtype))
            stats[z] = {"atoms": int(count), "mean": mean, "scale": scale}
        self.normalisation_fitted.fill_(True)
        return stats

    # ------------------------------------------------------------------ forward
    def forward(self, batch: dict) -> dict:
        """Coefficients of every structure of ``batch`` (see the module docstring).

        ``batch`` needs :data:`~densitylearn.graph.NUMBERS` and
        :data:`~densitylearn.graph.POSITIONS`; :data:`~densitylearn.graph.BATCH` (default:
        one structure), :data:`~densitylearn.graph.CHARGE` (default 0) and edges (built here
        with the model's cutoff when absent) are optional.
        """
        dev = self.species_of_z.device
        dtype = self.dtype
        numbers = batch[G.NUMBERS].to(device=dev, dtype=torch.long)
        n_at = numbers.shape[0]
        if n_at == 0:
            raise InputError("model: empty batch")
        if bool(((numbers < 0) | (numbers >= _MAX_Z)).any()):
            raise InputError(f"model: invalid atomic numbers {numbers.unique().tolist()}")
        species = self.species_of_z[numbers]
        if bool((species < 0).any()):
            bad = numbers[species < 0].unique().tolist()
            from ase.data import chemical_symbols

            raise InputError(f"model built for elements {list(self.elements)} cannot handle "
                             f"{chemical_symbols[bad[0]]} (Z={bad[0]})")
        pos = batch[G.POSITIONS].to(device=dev)
        if G.BATCH in batch:
            struct = batch[G.BATCH].to(device=dev, dtype=torch.long)
            n_struct = int(batch[G.N_ATOMS].shape[0]) if G.N_ATOMS in batch else int(struct.max()) + 1
        else:
            struct = torch.zeros(n_at, dtype=torch.long, device=dev)
            n_struct = 1
        n_atoms = torch.bincount(struct, minlength=n_struct)

        periodic = G.PBC in batch and bool(torch.as_tensor(batch[G.PBC]).any())
        cell = batch[G.CELL].to(device=dev) if G.CELL in batch else None
        if G.EDGE_INDEX in batch:
            if G.EDGE_CUTOFF in batch and float(batch[G.EDGE_CUTOFF]) < self.config.cutoff - 1e-9:
                raise InputError(f"model: batch edges built with cutoff {float(batch[G.EDGE_CUTOFF])} bohr, "
                                 f"the model needs {self.config.cutoff}")
            if periodic and G.EDGE_SHIFT not in batch:
                raise InputError("model: periodic batch with edges but no lattice shifts (edge_shift)")
            edge_index = batch[G.EDGE_INDEX].to(device=dev, dtype=torch.long)
            shift = batch[G.EDGE_SHIFT].to(device=dev, dtype=torch.long) if G.EDGE_SHIFT in batch else None
        else:
            edge_index, shift = G.build_edges(pos, struct, n_atoms, self.config.cutoff, cell=cell,
                                              pbc=batch.get(G.PBC))
        centre, neighbour = edge_index[0], edge_index[1]
        # differences (plus lattice shifts) in the batch's precision, then the model's dtype
        vec = G.edge_vectors(pos, edge_index, shift, cell, struct).to(dtype)
        r = vec.norm(dim=-1)
        radial = bessel_basis(r, self.config.cutoff, self.config.num_radial) \
            * polynomial_envelope(r, self.config.cutoff, self.config.envelope_p)[:, None]
        sh = self.sh(vec)

        attrs = torch.nn.functional.one_hot(species, len(self.elements)).to(dtype)
        x = self.embedding(attrs)
        for layer in self.layers:
            x = layer(x, attrs, centre, neighbour, sh, radial)

        # per-atom coefficient layout
        nf_atom = self.n_functions_of_z[numbers]
        atom_off = torch.zeros(n_at + 1, dtype=torch.long, device=dev)
        atom_off[1:] = torch.cumsum(nf_atom, 0)
        n_fun = torch.zeros(n_struct, dtype=torch.long, device=dev).index_add_(0, struct, nf_atom)
        coef_off = torch.zeros(n_struct + 1, dtype=torch.long, device=dev)
        coef_off[1:] = torch.cumsum(n_fun, 0)
        n_total = int(atom_off[-1])

        c = torch.zeros(n_total, dtype=dtype, device=dev)
        q = torch.zeros(n_total, dtype=dtype, device=dev)
        w = torch.zeros(n_total, dtype=dtype, device=dev)
        index = []
        for k, ro in enumerate(self.readout):
            atoms = torch.nonzero(species == k).flatten()
            if atoms.numel() == 0:
                index.append(None)
                continue
            idx = (atom_off[atoms][:, None] + torch.arange(ro.mean.shape[0], device=dev)).reshape(-1)
            index.append(idx)
            c = c.index_put((idx,), ro(x[atoms]).reshape(-1))
            q[idx] = ro.q.repeat(atoms.numel())
            w[idx] = (ro.q * ro.scale ** 2).repeat(atoms.numel())

        if self.config.electron_constraint:
            fun_struct = torch.repeat_interleave(torch.arange(n_struct, device=dev), n_fun)
            charge = batch[G.CHARGE].to(device=dev, dtype=dtype) if G.CHARGE in batch \
                else torch.zeros(n_struct, dtype=dtype, device=dev)
            count = self.electron_target(numbers, struct, n_struct, charge)
            if self.target == "total" and G.N_ELECTRONS in batch:
                # the batch's own counts (valence electrons of pseudopotential references)
                count = batch[G.N_ELECTRONS].to(device=dev, dtype=dtype)
            qc = torch.zeros(n_struct, dtype=dtype, device=dev).index_add(0, fun_struct, q * c)
            qw = torch.zeros(n_struct, dtype=dtype, device=dev).index_add_(0, fun_struct, q * w)
            c = c + w * ((count - qc) / qw)[fun_struct]

        c_py = torch.zeros_like(c)
        for k, ro in enumerate(self.readout):
            if index[k] is None:
                continue
            nf = ro.mean.shape[0]
            c_py = c_py.index_put((index[k],), (c[index[k]].reshape(-1, nf) @ ro.to_pyscf.T).reshape(-1))
        return {G.COEFFICIENTS: c_py, G.COEFFICIENTS_E3NN: c, G.COEF_OFFSETS: coef_off,
                G.ATOM_COEF_OFFSETS: atom_off, G.N_FUNCTIONS: n_fun}

    def electron_target(self, numbers, struct, n_struct: int, charge) -> torch.Tensor:
        """Electrons the predicted density must hold per structure, shape (n_struct,).

        sum Z - charge for 'total', -charge for 'difference'.
        """
        if self.target == "difference":
            return -charge
        zsum = torch.zeros(n_struct, dtype=charge.dtype, device=charge.device).index_add_(
            0, struct, numbers.to(charge.dtype))
        return zsum - charge

    def predict(self, numbers, positions, charge: float = 0.0, cell=None,
                n_electrons: float | None = None) -> torch.Tensor:
        """Coefficients (PySCF order) of one structure; positions (and ``cell``, lattice
        vectors as rows, making it fully periodic) in bohr. ``n_electrons`` overrides the
        total-density electron count (valence electrons of pseudopotential references)."""
        rec = {"numbers": np.asarray(numbers), "positions": np.asarray(positions, dtype=np.float64),
               "charge": charge}
        if cell is not None:
            rec.update(cell=np.asarray(cell, dtype=np.float64), pbc=np.ones(3, dtype=bool))
        if n_electrons is not None:
            rec["n_electrons"] = float(n_electrons)
        for z in rec["numbers"]:
            self._species_index(int(z))
        return self(G.collate([rec], self.basis))[G.COEFFICIENTS]


def count_parameters(model: torch.nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
