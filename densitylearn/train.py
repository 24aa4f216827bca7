"""Training of coefficient models for the TCD or DCD target, from one CPU to many GPUs.

The loss measures the error of the density itself: for each structure the coefficient
error e = c_hat - c is weighted by the auxiliary basis's metric matrix M at that geometry,
``e @ M @ e`` — with the Coulomb metric (default) that is twice the Coulomb self-energy of
the error density, with the overlap metric its squared L2 norm — divided by the number of
electrons and averaged over the batch. (``loss: mse`` gives plain coefficient MSE for
comparison.) Validation measures eps_mae on a Becke grid against the exact reference
densities of the chkfiles (a fixed validation subset), with the EMA weights.

Periodic cells (datasets of ``fit-basis`` on pyscf.pbc chkfiles): the metrics are lattice
sums by quadrature on the reference's FFT mesh, with ``B_gP = sum_T chi_P(r_g - T)``
(:func:`periodic_grid_metric`). ``overlap``: ``M = w B^T B`` with the uniform weight
w = V_cell / n_points, so ``e @ M @ e`` is the squared L2 norm of the error density over one
cell (the norm of the fit). ``coulomb``: the FFT of ``B`` weighted by ``4 pi / G^2`` with
G = 0 left out, twice the Hartree energy of the error density per cell; predictions and fits
both hold the electron count, so their error has no G = 0 part and nothing is lost.
(Until this metric existed, ``coulomb`` fell back to the overlap metric for cells; runs
trained that way, the allotrope studies in the docs among them, say which they used.)
Validation evaluates cells on the
same mesh with uniform weights and lattice sums
(:func:`densitylearn.grid.evaluate_density_periodic`) against the reference's valence
density. Molecules are unchanged.

Everything else a long run needs: AdamW, linear warm-up then cosine decay, EMA of the
weights, gradient clipping, early stopping on validation eps_mae, self-contained
checkpoints (``last.pt`` every epoch, ``best.pt`` at the best validation; loadable with
``torch.load(weights_only=True)``), resume from ``last.pt`` (the data order of every epoch
is a function of the seed and the epoch, so a resumed run continues as if never stopped),
a JSON-lines log, and torch.distributed data parallelism when started with ``torchrun``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from . import graph as G
from .errors import InputError, MismatchError

CHECKPOINT_FORMAT = "densitylearn-checkpoint"
CHECKPOINT_VERSION = 1
LOSSES = ("coulomb", "overlap", "mse")


@dataclass(frozen=True)
class TrainConfig:
    """Training settings (a YAML/JSON file maps 1:1 onto these fields plus ``model:``)."""

    target: str = "difference"      #: 'difference' (Delta-SAED DCD) or 'total' (TCD)
    loss: str = "coulomb"           #: 'coulomb', 'overlap' (metric-weighted) or 'mse'
    batch_size: int = 8
    lr: float = 1e-2                #: peak learning rate (AdamW); 1e-2 since the QM9 ablation (docs: pretrained)
    weight_decay: float = 1e-6
    warmup_steps: int = 50
    max_epochs: int = 200
    grad_clip: float = 10.0
    ema_decay: float = 0.99
    patience: int = 30              #: epochs without validation improvement before stopping
    #: validate (grid eps_mae, best checkpoint, patience) every this many epochs and after the
    #: last one. On a CPU the grid validation can cost as much as the epoch's training steps.
    val_every: int = 1
    val_fraction: float = 0.1
    val_structures: int = 16        #: validation structures scored on a grid at each validation (spread over the split)
    val_grid_level: int = 2
    seed: int = 0
    #: read the whole coefficient file into memory before training (about 40 KB per QM9
    #: molecule): a record read from HDF5 costs a dozen small reads, 17 % of a CPU step of
    #: four QM9 molecules. False reads each record from the file; either may resume the other.
    in_memory: bool = True
    device: str = "auto"            #: 'auto', 'cpu' or 'cuda'
    dtype: str = "float32"
    amp: bool = False               #: bfloat16 autocast on CUDA
    backend: str = "e3nn"           #: tensor products: 'e3nn' or 'cueq' (cuEquivariance)
    #: train on N molecules of the training split only (a learning-curve point); the
    #: validation split is unchanged. Which N: see ``train_subset``.
    max_train_structures: int | None = None
    #: how ``max_train_structures`` picks its molecules: 'random' (a seeded random subset; the
    #: subsets of one seed are nested, so a smaller learning-curve point is part of every
    #: larger one) or 'first' (the first N in the dataset's order; fit-basis writes by name, so
    #: for QM9 the lowest indices: smaller molecules, the runs before 2026-12-06)
    train_subset: str = "random"
    #: wall-clock budget in minutes (None: none). The cosine decay follows whichever of
    #: epochs and elapsed time is further along, and training ends when either runs out, so
    #: a run with a hard time limit still anneals its learning rate.
    max_minutes: float | None = None
    #: fine-tuning: a checkpoint or built-in model name whose architecture, normalisation and
    #: (EMA) weights start the run instead of a fresh initialisation; optimiser, schedule and
    #: EMA start anew. Target, auxiliary basis, SAED and reference settings must match the data.
    init_from: str | None = None
    model: dict = field(default_factory=dict)  #: ModelConfig fields

    def __post_init__(self):
        if self.target not in G.GRAPH_TARGETS:
            raise InputError(f"config: target must be one of {', '.join(G.GRAPH_TARGETS)}, got {self.target!r}")
        if self.loss not in LOSSES:
            raise InputError(f"config: loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.dtype not in ("float32", "float64"):
            raise InputError(f"config: dtype must be float32 or float64, got {self.dtype!r}")
        if self.backend not in ("e3nn", "cueq"):
            raise InputError(f"config: backend must be e3nn or cueq, got {self.backend!r}")
        for name in ("batch_size", "max_epochs", "val_structures", "val_every"):
            if getattr(self, name) < 1:
                raise InputError(f"config: {name} must be >= 1")
        if not 0.0 < self.val_fraction < 1.0:
            raise InputError("config: val_fraction must lie in (0, 1)")
        if self.train_subset not in ("random", "first"):
            raise InputError(f"config: train_subset must be 'random' or 'first', got {self.train_subset!r}")
        if self.max_train_structures is not None and self.max_train_structures < 1:
            raise InputError("config: max_train_structures must be >= 1")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise InputError("config: max_minutes must be > 0")

    @classmethod
    def from_dict(cls, d: dict | None) -> "TrainConfig":
        from .config import dataclass_from_dict

        d = dict(d or {})
        if d.get("num_workers") == 0:  # recorded by checkpoints before 2026-12; it never had an effect
            del d["num_workers"]
        return dataclass_from_dict(cls, d, "config")

    @classmethod
    def from_file(cls, path: str, **overrides) -> "TrainConfig":
        """Read a YAML (needs PyYAML) or JSON file; ``overrides`` win."""
        if not os.path.isfile(path):
            raise InputError(f"{path}: no such config file")
        with open(path) as fh:
            text = fh.read()
        if path.endswith((".yaml", ".yml")):
            try:
                import yaml
            except ImportError:
                raise InputError(f"{path}: YAML configs need PyYAML (pip install pyyaml), or use JSON") from None
            d = yaml.safe_load(text) or {}
        else:
            d = json.loads(text)
        if not isinstance(d, dict):
            raise InputError(f"{path}: config must be a mapping")
        d.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls.from_dict(d)
        except InputError as exc:
            raise InputError(f"{path}: {exc}") from None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- helpers
def _torch_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "float64": torch.float64}[name]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available")
    return torch.device(name)


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train/validation split of ``n`` structures."""
    perm = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(val_fraction * n)))
    if n - n_val < 1:
        raise InputError(f"dataset has {n} structure(s): too few for a training and a validation split")
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def grid_validation_subset(val_idx: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` validation structures scored on a grid at each validation: spread evenly
    over the sorted validation split, first and last included (all of it when ``n`` is not
    smaller). The first ``n`` would all come from the first input of a merged dataset
    (``densitylearn merge`` keeps the input order), so fine-tuning on old plus new data
    would select checkpoints on old molecules only."""
    val_idx = np.asarray(val_idx)
    if n >= len(val_idx):
        return val_idx
    return val_idx[np.round(np.linspace(0, len(val_idx) - 1, n)).astype(int)]


def training_subset(train_idx: np.ndarray, config: TrainConfig) -> np.ndarray:
    """The part of the training split a run trains on (all of it unless
    ``max_train_structures`` is set), sorted."""
    n = config.max_train_structures
    if not n or n >= len(train_idx):
        return train_idx
    if config.train_subset == "first":
        return train_idx[:n]
    # its own stream (not the split's): the order is fixed by the seed alone, so the first N
    # of it for a smaller N are part of the first N for a larger one
    order = np.random.default_rng([config.seed, 1]).permutation(len(train_idx))
    return np.sort(train_idx[order[:n]])


class MetricCache:
    """Per-structure auxiliary metric matrices (PySCF integrals), computed once and kept.

    Periodic records (``pbc`` set) get :func:`periodic_grid_metric` on their reference's FFT
    mesh whatever the metric (see the module docstring).
    """

    def __init__(self, basis, metric: str):
        self.basis, self.metric, self._cache = basis, metric, {}

    def get(self, key, numbers, positions, record: dict | None = None) -> np.ndarray:
        if key not in self._cache:
            if record is not None and np.asarray(record.get("pbc", False)).any():
                self._cache[key] = periodic_grid_metric(self.basis, numbers, positions, record["cell"],
                                                        reference_mesh(record), metric=self.metric)
            else:
                from .fitting import structure_metric

                self._cache[key] = structure_metric(self.basis, numbers, positions, self.metric)
        return self._cache[key]

    def tensor(self, key, numbers, positions, record, device, dtype) -> torch.Tensor:
        """:meth:`get` as a tensor on ``device``; the converted copy replaces the array in
        the cache, so each matrix crosses to the GPU once instead of at every step."""
        m = self.get(key, numbers, positions, record)
        if not (isinstance(m, torch.Tensor) and m.device == device and m.dtype == dtype):
            m = self._cache[key] = torch.as_tensor(m).to(device=device, dtype=dtype)
        return m


#: Grid spacing (bohr) of a cell whose reference chkfile (and FFT mesh) is not at hand.
PERIODIC_FALLBACK_SPACING = 0.3


def reference_mesh(record: dict) -> np.ndarray:
    """FFT mesh (3 ints) of a periodic record's reference chkfile (``source``), else a uniform
    mesh of at most :data:`PERIODIC_FALLBACK_SPACING` bohr spacing."""
    from .grid import cell_grid_shape

    chk = record.get("source", "")
    if chk and os.path.isfile(chk):
        from .reference import read_settings

        mesh = read_settings(chk).get("mesh")
        if mesh:
            return np.asarray(json.loads(mesh) if isinstance(mesh, str) else mesh, dtype=np.int64)
    return cell_grid_shape(record["cell"], PERIODIC_FALLBACK_SPACING)


def periodic_grid_metric(basis, numbers, positions, cell, mesh, metric: str = "overlap",
                         block: int = 8192) -> np.ndarray:
    """Lattice-summed metric of a cell's auxiliary functions by quadrature on a uniform mesh.

    ``B_gP = sum_T chi_P(r_g - T)`` (PySCF's ``pbc_eval_gto`` at the gamma point) on the
    points ``(i/n1, j/n2, k/n3) @ cell``, ``n`` points, cell volume ``V``.

    * ``metric="overlap"``: ``M_PQ = (V/n) sum_g B_gP B_gQ``, so ``e @ M @ e`` is the squared
      L2 norm of ``sum_P e_P B_P`` over one cell.
    * ``metric="coulomb"``: ``M_PQ = (V/n^2) sum_{G != 0} (4 pi / |G|^2) Re[conj(B_P(G))
      B_Q(G)]`` with ``B(G)`` the FFT of ``B`` on the mesh (PySCF's ``get_coulG``, G = 0
      left out as in its FFTDF Coulomb), so ``e @ M @ e = int int rho_e rho_e' / |r - r'|``
      per cell, twice the Hartree energy of the periodic density ``rho_e = sum_P e_P B_P``
      with its mean removed. Exact for the errors of predictions and fits that hold the
      electron count (no G = 0 component), which is what the loss sees.

    Returns shape (n_functions, n_functions): e^2/bohr^3 (overlap) or hartree (coulomb) per
    coefficient^2. ``positions``, ``cell`` in bohr.
    """
    import warnings

    from ase.data import chemical_symbols
    from pyscf.pbc import gto as pbcgto

    from .grid import cell_grid

    if metric not in ("overlap", "coulomb"):
        raise InputError(f"periodic metric must be 'overlap' or 'coulomb', got {metric!r}")
    aux = pbcgto.Cell()
    aux.atom = [(chemical_symbols[int(z)], tuple(p)) for z, p in
                zip(np.asarray(numbers).reshape(-1), np.asarray(positions, dtype=np.float64))]
    aux.unit = "Bohr"
    aux.a = np.asarray(cell, dtype=np.float64)
    aux.basis = basis.to_pyscf_basis()
    aux.mesh = [int(m) for m in mesh]
    aux.spin = None
    aux.verbose = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        aux.build(dump_input=False, parse_arg=False)
    axes, pts = cell_grid(cell, mesh)
    w = abs(float(np.linalg.det(axes)))
    if metric == "overlap":
        m = np.zeros((aux.nao, aux.nao))
        for p0 in range(0, len(pts), block):
            b = np.asarray(aux.pbc_eval_gto("GTOval_sph", pts[p0:p0 + block]))
            m += b.T @ b
        return m * w
    from pyscf.pbc import tools

    n1, n2, n3 = (int(x) for x in mesh)
    b = np.empty((len(pts), aux.nao))
    for p0 in range(0, len(pts), block):
        b[p0:p0 + block] = aux.pbc_eval_gto("GTOval_sph", pts[p0:p0 + block])
    # B real: the half spectrum of rfftn, each G of the other half is the conjugate of -G
    bg = np.fft.rfftn(b.reshape(n1, n2, n3, aux.nao), axes=(0, 1, 2))
    coulg = np.asarray(tools.get_coulG(aux, mesh=[n1, n2, n3])).reshape(n1, n2, n3)[:, :, :n3 // 2 + 1]
    mult = np.full(n3 // 2 + 1, 2.0)
    mult[0] = 1.0
    if n3 % 2 == 0:
        mult[-1] = 1.0
    scale = np.sqrt(coulg * mult[None, None, :]).reshape(-1)
    bg = bg.reshape(-1, aux.nao) * scale[:, None]
    volume = abs(float(np.linalg.det(np.asarray(cell, dtype=np.float64))))
    n = len(pts)
    return (bg.conj().T @ bg).real * (volume / n ** 2)


def density_loss(pred: torch.Tensor, target: torch.Tensor, offsets, metrics, n_electrons) -> torch.Tensor:
    """Mean over structures of ``e @ M_s @ e / N_s`` (``metrics`` None: mean squared error)."""
    err = pred - target
    if metrics is None:
        return (err ** 2).mean()
    total = pred.new_zeros(())
    for s, m in enumerate(metrics):
        e = err[offsets[s]:offsets[s + 1]]
        total = total + e @ (m @ e) / n_electrons[s].clamp(min=1.0)
    return total / len(metrics)


class EMA:
    """Exponential moving average of parameters (and copies of buffers)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                self.shadow[k].mul_(self.decay).add_(v.detach(), alpha=1 - self.decay)
            else:
                self.shadow[k].copy_(v)

    def state_dict(self) -> dict:
        return {k: v.clone() for k, v in self.shadow.items()}

    def load_state_dict(self, d: dict) -> None:
        # copy into the shadow tensors: they live on the model's device and dtype, while a
        # checkpoint is loaded onto the CPU
        missing = set(self.shadow) ^ set(d)
        if missing:
            raise ValueError(f"EMA state does not match the model: {sorted(missing)[:3]}")
        for k, v in d.items():
            self.shadow[k].copy_(v)


def _no_buffer_sync() -> dict:
    """DistributedDataParallel keyword that turns off buffer broadcasts in every forward.

    Buffers (target normalisation) are identical on all ranks. torch >= 2.13 spells this
    ``forward_sync_buffers=False``; older versions ``broadcast_buffers=False``.
    """
    import inspect

    params = inspect.signature(torch.nn.parallel.DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}


def _lr_lambda(warmup: int, total: int, time_frac=lambda: 0.0):
    """Linear warm-up, then cosine decay to 2 % over ``total`` steps or, when
    ``time_frac()`` (the spent fraction of a time budget) is further along, over the budget."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        frac = max((step - warmup) / max(1, total - warmup), time_frac())
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))
    return f


def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": repr(random.getstate()),
            "numpy": [np_state[0], torch.as_tensor(np_state[1].astype(np.int64)), int(np_state[2]),
                      int(np_state[3]), float(np_state[4])]}


def _set_rng_state(d: dict) -> None:
    import ast

    torch.set_rng_state(d["torch"])
    random.setstate(ast.literal_eval(d["python"]))
    n = d["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))


def save_checkpoint(path: str, payload: dict) -> None:
    """Atomic ``torch.save`` (temp file, fsync, rename)."""
    from .io_utils import atomic_path

    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str) -> dict:
    """Load a checkpoint with torch's safe loader; errors name the file."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such checkpoint")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or foreign files raise many types
        raise InputError(f"{path}: not a readable densitylearn checkpoint ({type(exc).__name__})") from None
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path}: not a densitylearn checkpoint")
    return ck


def model_from_checkpoint(path_or_ck, use_ema: bool = True):
    """Rebuild a :class:`~densitylearn.model.DensityModel` in eval mode (EMA weights by default),
    in the dtype its weights were stored in (cast before loading, so nothing is rounded)."""
    from .model import DensityModel

    ck = load_checkpoint(path_or_ck) if isinstance(path_or_ck, str) else path_or_ck
    state = ck["ema_state_dict"] if use_ema and "ema_state_dict" in ck else ck["state_dict"]
    dtypes = {v.dtype for v in state.values() if v.is_floating_point()}
    model = DensityModel.from_description(ck["model"])
    if len(dtypes) == 1:
        model = model.to(dtypes.pop())
    model.load_state_dict(state)
    model.eval()
    return model


def export_model(checkpoint: str, out: str, card: dict | None = None, dtype: str | None = None) -> dict:
    """Write a slim, shareable model file from a training checkpoint.

    Keeps what prediction needs: the architecture description (basis included), the EMA
    weights (as ``state_dict``), the SAED definition, the reference settings and the
    charges/spins seen in training. Drops the optimiser, scheduler, RNG state, the raw
    weights and the split indices, and replaces the dataset's absolute path by its file
    name. The result loads with :func:`densitylearn.load_model` and with torch's safe
    loader; it is written atomically.

    Parameters
    ----------
    checkpoint : str
        A checkpoint written by :func:`train` (``best.pt`` or ``last.pt``).
    out : str
        The model file to write (``.pt``).
    card : dict, optional
        A model card (plain JSON types: training data, held-out metrics, citation); stored
        as JSON and shown by ``load_model(...).description['card']``.
    dtype : {'float32', 'float64'}, optional
        Cast the weights (default: keep them).

    Returns
    -------
    dict
        ``path``, ``bytes``, ``parameters``.
    """
    ck = load_checkpoint(checkpoint)
    state = ck.get("ema_state_dict") or ck["state_dict"]
    if dtype is not None:
        dt = _torch_dtype(dtype)
        state = {k: v.to(dt) if v.is_floating_point() else v for k, v in state.items()}
    dataset = dict(ck.get("dataset") or {})
    if dataset.get("path"):
        dataset["path"] = os.path.basename(str(dataset["path"]))
    if card is not None:
        try:
            card_text = json.dumps(card)
        except TypeError as exc:
            raise InputError(f"model card: not JSON-serialisable ({exc})") from None
    payload = {"format": CHECKPOINT_FORMAT, "version": ck.get("version", CHECKPOINT_VERSION),
               "model": ck["model"], "state_dict": {k: v.detach().cpu().contiguous() for k, v in state.items()},
               "train_config": ck.get("train_config", {}), "epoch": ck.get("epoch", -1),
               "step": ck.get("step", -1), "best_val": ck.get("best_val"), "saed": ck.get("saed", ""),
               "dataset": dataset, "versions": ck.get("versions", ""), "exported": True,
               "card": card_text if card is not None else ""}
    save_checkpoint(out, payload)
    return {"path": out, "bytes": os.path.getsize(out),
            "parameters": int(sum(v.numel() for v in payload["state_dict"].values() if v.is_floating_point()))}


# ----------------------------------------------------------------------------- validation
class GridValidator:
    """eps_mae of predictions on a fixed set of validation structures.

    Reference densities come from the structures' chkfiles (``source``); where a chkfile
    is missing, the fitted density of the dataset stands in and the log says so
    (``val_reference: fit``). Molecules are compared on a Becke grid; periodic cells on
    their reference's FFT mesh (uniform weights, lattice sums, valence densities).
    """

    def __init__(self, dataset, indices, target: str, grid_level: int):
        from .grid import becke_grid, evaluate_density
        from .metrics import reference_density
        from .reference import load_reference

        self.items, self.reference_kind = [], "dft"
        saed = dataset.saed if target == "difference" else None
        for i in indices:
            rec = dataset[int(i)]
            chk = rec["source"]
            if np.asarray(rec["pbc"]).any():
                self.items.append(self._cell_item(dataset, rec, target, saed))
                continue
            pts, w = becke_grid((rec["numbers"], rec["positions"]), level=grid_level)
            if chk and os.path.isfile(chk):
                ref = load_reference(chk)
                rho_ref = reference_density(ref.mol, ref.dm, pts)
            else:
                self.reference_kind = "fit"
                with torch.no_grad():
                    rho_ref = evaluate_density(dataset.basis, rec["numbers"], rec["positions"],
                                               G.record_target(rec, target), pts, saed=saed).numpy()
            self.items.append((rec, pts, w, rho_ref))
        self.basis, self.saed, self.target = dataset.basis, saed, target
        # the SAED prior does not change during training: evaluate it once per structure
        self.saed_values = [None if saed is None else self._evaluate(rec, pts, None, saed)
                            for rec, pts, _, _ in self.items]

    def _evaluate(self, rec, pts, coefficients, saed):
        """Density of ``coefficients`` (None: zeros) at ``pts`` (lattice sums for cells), plus ``saed``."""
        from .grid import evaluate_density, evaluate_density_periodic

        if coefficients is None:
            coefficients = np.zeros(sum(self.basis.n_functions(int(z)) for z in rec["numbers"]))
        if np.asarray(rec["pbc"]).any():
            return evaluate_density_periodic(self.basis, rec["numbers"], rec["positions"], rec["cell"],
                                             coefficients, pts, saed=saed)
        return evaluate_density(self.basis, rec["numbers"], rec["positions"], coefficients, pts, saed=saed)

    def _cell_item(self, dataset, rec, target, saed):
        """(rec, mesh points, uniform weights, reference valence density) of a cell."""
        from .grid import cell_grid, evaluate_density_periodic
        from .reference import load_reference, periodic_density_on_mesh

        chk = rec["source"]
        ref = load_reference(chk) if chk and os.path.isfile(chk) else None
        if ref is not None and ref.is_periodic:
            rho_ref, _ = periodic_density_on_mesh(ref)
            axes, pts = cell_grid(rec["cell"], rho_ref.shape)
            rho_ref = rho_ref.reshape(-1)
        else:
            self.reference_kind = "fit"
            axes, pts = cell_grid(rec["cell"], reference_mesh(rec))
            with torch.no_grad():
                rho_ref = evaluate_density_periodic(dataset.basis, rec["numbers"], rec["positions"], rec["cell"],
                                                    G.record_target(rec, target), pts, saed=saed).numpy()
        w = np.full(len(pts), abs(float(np.linalg.det(axes))))
        return rec, pts, w, rho_ref

    @torch.no_grad()
    def __call__(self, model) -> float:
        from .metrics import eps_mae

        device = next(model.parameters()).device
        eps = []
        for k, ((rec, pts, w, rho_ref), rho_saed) in enumerate(zip(self.items, self.saed_values)):
            batch = G.to_device(G.collate([rec], self.basis), device)
            # the density is evaluated where the model runs (the GPU's grid kernels in training)
            c = model(batch)[G.COEFFICIENTS].double()
            if not (isinstance(pts, torch.Tensor) and pts.device == device):
                pts = torch.as_tensor(pts, dtype=torch.float64, device=device)
                self.items[k] = (rec, pts, w, rho_ref)
            rho = self._evaluate(rec, pts, c, None).cpu()
            if rho_saed is not None:
                rho = rho + rho_saed
            eps.append(eps_mae(rho.numpy(), rho_ref, w))
        return float(np.mean(eps))


# ----------------------------------------------------------------------------- training
def _dist_info():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def maybe_init_distributed(device: torch.device) -> bool:
    """Initialise torch.distributed when launched by torchrun (WORLD_SIZE > 1)."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return dist.is_available() and dist.is_initialized()
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return True


def train(data_path: str, out_dir: str, config: TrainConfig = TrainConfig(), progress: bool = True,
          log=print, epoch_callback=None) -> dict:
    """Train a model on a coefficient dataset; resumes from ``out_dir/last.pt`` if present.

    ``epoch_callback(entry)`` is called on rank 0 after each epoch's checkpoint is written,
    with that epoch's log entry. Returns a summary dict (epochs run, best validation
    eps_mae, paths).
    """
    from tqdm.auto import tqdm

    from .data import CoefficientDataset
    from .model import DensityModel, ModelConfig

    device = resolve_device(config.device)
    distributed = maybe_init_distributed(device)
    rank, world = _dist_info()
    if distributed and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    dtype = _torch_dtype(config.dtype)
    ds = CoefficientDataset(data_path)
    if config.target == "difference" and ds.saed is None:
        raise MismatchError(f"{data_path}: target 'difference' needs a dataset that records its SAED")
    os.makedirs(out_dir, exist_ok=True)
    last_path, best_path = os.path.join(out_dir, "last.pt"), os.path.join(out_dir, "best.pt")
    log_path = os.path.join(out_dir, "log.jsonl")

    resume = load_checkpoint(last_path) if os.path.exists(last_path) else None
    if resume is not None:
        stored_dict = dict(resume["train_config"])
        if "train_subset" not in stored_dict and stored_dict.get("max_train_structures"):
            stored_dict["train_subset"] = "first"  # checkpoints before 2026-12-06 took the first N
        # where the records come from does not change the run
        stored = dataclasses.replace(TrainConfig.from_dict(stored_dict), in_memory=config.in_memory)
        if stored != config:
            diff = [k for k in config.to_dict() if getattr(stored, k) != getattr(config, k)]
            raise MismatchError(f"{last_path}: run was started with other settings ({', '.join(diff)}); "
                                f"use another --out or the original config")
        if resume["dataset"]["auxbasis_hash"] != ds.basis.hash or resume["dataset"]["n"] != len(ds):
            raise MismatchError(f"{last_path}: run was started on another dataset than {data_path}")
    if config.in_memory:  # after the checks above, so that a refused resume reads nothing
        ds.load_into_memory()

    train_idx, val_idx = split_indices(len(ds), config.val_fraction, config.seed)
    train_idx = training_subset(train_idx, config)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    random.seed(config.seed)

    mcfg = ModelConfig.from_dict(config.model)
    elements = sorted(set(ds.elements))
    if resume is not None:
        model = DensityModel.from_description(resume["model"])
    elif config.init_from:
        model = _warm_start_model(config, ds, mcfg)
        if rank == 0 and progress:
            log(f"starting from the weights of {config.init_from}")
    else:
        model = DensityModel(mcfg, ds.basis, config.target, elements=elements)
        if rank == 0 and progress:
            log(f"fitting per-element target normalisation on {len(train_idx)} training structures")
        model.fit_normalisation(G.GraphDataset(ds, config.target, indices=train_idx))
    model = model.to(device=device, dtype=dtype).set_backend(config.backend)
    # readouts of elements absent from a batch get no gradient: find_unused_parameters
    ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True,
                                                    **_no_buffer_sync()) if distributed else None
    net = ddp if ddp is not None else model

    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(train_idx) / (config.batch_size * world)))
    # training time spent (seconds, carried across resumes) against max_minutes; the spent
    # fraction is taken on rank 0 once per epoch and shared, so every rank has the same lr
    clock = {"spent": 0.0, "since": time.time(), "frac": 0.0}

    def spent() -> float:
        return clock["spent"] + time.time() - clock["since"]

    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(config.warmup_steps,
                                                              steps_per_epoch * config.max_epochs,
                                                              lambda: clock["frac"]))
    ema = EMA(model, config.ema_decay)
    epoch, step, best, bad = 0, 0, float("inf"), 0
    last_validated = 0  # the epoch of the latest validation
    if resume is not None:
        model.load_state_dict(resume["state_dict"])
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        ema.load_state_dict(resume["ema_state_dict"])
        epoch, step, best, bad = resume["epoch"], resume["step"], resume["best_val"], resume["bad_epochs"]
        clock["spent"] = float(resume.get("time_spent_s", 0.0))
        last_validated = int(resume.get("last_validated", epoch))
        clock["frac"] = clock["spent"] / (60.0 * config.max_minutes) if config.max_minutes else 0.0
        _set_rng_state(resume["rng"])
        if rank == 0 and progress:
            log(f"resuming {out_dir} at epoch {epoch} (best validation eps_mae {best:.4f} %)")

    gds = G.GraphDataset(ds, config.target)
    metric_cache = MetricCache(ds.basis, config.loss) if config.loss != "mse" else None
    val_ds = [gds[int(i)] for i in val_idx]
    if resume is not None and "grid_val" in resume:  # a resumed run keeps the structures it validated on
        grid_val = np.asarray(resume["grid_val"], dtype=int)
    elif resume is not None:  # checkpoints without grid_val validated on the first val_structures
        grid_val = val_idx[:config.val_structures]
    else:
        grid_val = grid_validation_subset(val_idx, config.val_structures)
    validator = GridValidator(ds, grid_val, config.target, config.val_grid_level) if rank == 0 else None

    def batch_loss(records, idx, train_mode: bool):
        batch = G.to_device(gds.collate(records), device)
        batch = {k: (v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
                 for k, v in batch.items()}
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=config.amp and device.type == "cuda"):
            out = (net if train_mode else model)(batch)  # validation runs on rank 0 only
        pred = out[G.COEFFICIENTS].to(dtype)
        mats = None
        if metric_cache is not None:
            mats = [metric_cache.tensor(int(i), r["numbers"], r["positions"], r, device, dtype)
                    for i, r in zip(idx, records)]
        return density_loss(pred, batch[G.TARGET_COEFFICIENTS], batch[G.COEF_OFFSETS].tolist(), mats,
                            batch[G.N_ELECTRONS])

    summary = {"out_dir": out_dir, "best": best_path, "last": last_path}
    clock["since"] = time.time()
    while epoch < config.max_epochs and bad < config.patience and clock["frac"] < 1.0:
        t0 = time.time()
        perm = np.random.default_rng([config.seed, epoch]).permutation(train_idx)
        # every rank takes the same number of batches (the permutation wraps around)
        perm = np.resize(perm, steps_per_epoch * config.batch_size * world)[rank::world]
        model.train()
        losses = []
        bar = tqdm(range(0, len(perm), config.batch_size), desc=f"epoch {epoch}", unit="batch",
                   disable=not progress or rank != 0, leave=False)
        for b0 in bar:
            idx = perm[b0:b0 + config.batch_size]
            loss = batch_loss([ds[int(i)] for i in idx], idx, True)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            opt.step()
            sched.step()
            ema.update(model)
            step += 1
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{losses[-1]:.3e}")
        epoch += 1
        stop = torch.zeros(2)
        if rank == 0:
            stop[1] = spent() / (60.0 * config.max_minutes) if config.max_minutes else 0.0
            validate = epoch % config.val_every == 0 or epoch >= config.max_epochs or stop[1] >= 1.0
            entry = {"epoch": epoch, "step": step, "train_loss": float(np.mean(losses)) if losses else float("nan")}
            improved = False
            if validate:
                # validation with the EMA weights
                live = {k: v.detach().clone() for k, v in model.state_dict().items()}
                model.load_state_dict(ema.state_dict())
                model.eval()
                with torch.no_grad():
                    vloss = float(np.mean([float(batch_loss([r], [int(i)], False))
                                           for r, i in zip(val_ds, val_idx)]))
                veps = validator(model)
                model.load_state_dict(live)
                improved = veps < best
                # patience counts epochs: those since the previous validation
                since = epoch - last_validated
                best, bad = (veps, 0) if improved else (best, bad + since)
                last_validated = epoch
                entry.update({"val_loss": vloss, "val_eps_mae": veps, "val_reference": validator.reference_kind})
            entry.update({"lr": sched.get_last_lr()[0], "time_s": time.time() - t0})
            with open(log_path, "a") as fh:
                fh.write(json.dumps(entry) + "\n")
            if progress:
                val = (f", val loss {entry['val_loss']:.4e}, val eps_mae {entry['val_eps_mae']:.4f} %"
                       f"{' *' if improved else ''}") if validate else ""
                log(f"epoch {epoch}: train loss {entry['train_loss']:.4e}{val}")
            payload = _checkpoint_payload(model, ema, opt, sched, config, ds, epoch, step, best, bad,
                                          train_idx, val_idx)
            payload["time_spent_s"] = spent()
            payload["last_validated"] = last_validated
            payload["grid_val"] = torch.as_tensor(grid_val)
            if improved:
                save_checkpoint(best_path, payload)
            save_checkpoint(last_path, payload)
            stop[0] = float(bad >= config.patience)
            stop[1] = spent() / (60.0 * config.max_minutes) if config.max_minutes else 0.0
            if epoch_callback is not None:
                epoch_callback(entry)
        if distributed:
            import torch.distributed as dist

            dist.broadcast(stop, 0)
        clock["frac"] = float(stop[1])
        if stop[0] > 0:
            break
    summary.update({"epochs": epoch, "steps": step, "best_val_eps_mae": best,
                    "time_spent_s": spent()})
    return summary


def _warm_start_model(config: TrainConfig, ds, mcfg):
    """The model of ``config.init_from`` (EMA weights, train mode), checked against the run."""
    from .predict import resolve_model

    path = resolve_model(config.init_from)
    ck = load_checkpoint(path)
    model = model_from_checkpoint(ck).train()
    if model.target != config.target:
        raise MismatchError(f"{path}: a {model.target!r} model cannot start a {config.target!r} run")
    if model.basis.hash != ds.basis.hash:
        raise MismatchError(f"{path}: auxiliary basis {model.basis.name} differs from the one of {ds.path}")
    missing = sorted(set(int(z) for z in ds.elements) - set(model.elements))
    if missing:
        raise MismatchError(f"{path}: model has no weights for elements {missing} of {ds.path}")
    if config.model and mcfg != model.config:
        raise MismatchError(f"{path}: its architecture differs from the config's model settings "
                            "(leave model settings out to take the checkpoint's)")
    stored = ck.get("dataset") or {}
    for key in ("xc", "orbital_basis", "pseudo"):
        mine = str(ds.attrs.get(key, "") or "")
        theirs = str(stored.get(key, "") or "")
        if mine.lower() != theirs.lower():
            raise MismatchError(f"{path}: trained on {key} {theirs!r}, {ds.path} has {mine!r}")
    if config.target == "difference":
        from .saed import SAED

        if not ck.get("saed"):
            raise MismatchError(f"{path}: records no SAED, so it cannot start a Delta-SAED run on {ds.path}")
        # to round-off: SAEDs computed on another machine differ in the last digits
        SAED.from_definition(ck["saed"]).require_same(ds.saed, elements=ds.elements,
                                                      context=f"{path} against {ds.path}")
    return model


def _checkpoint_payload(model, ema, opt, sched, config, ds, epoch, step, best, bad, train_idx, val_idx) -> dict:
    from .data import code_versions

    return {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "model": model.describe(),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "ema_state_dict": {k: v.detach().cpu() for k, v in ema.state_dict().items()},
            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "train_config": config.to_dict(), "epoch": epoch, "step": step, "best_val": best,
            "bad_epochs": bad, "rng": _rng_state(),
            "saed": json.dumps(ds.saed_definition) if ds.saed_definition else "",
            "dataset": {"path": os.path.abspath(ds.path), "n": len(ds), "auxbasis_hash": ds.basis.hash,
                        "xc": ds.attrs.get("xc", ""), "orbital_basis": ds.attrs.get("orbital_basis", ""),
                        "metric": ds.attrs.get("metric", ""), "pseudo": str(ds.attrs.get("pseudo", "") or ""),
                        "periodic": bool(np.asarray(ds.column("pbc")).any()),
                        # what the model has seen, so prediction can refuse other cases
                        "charges": sorted({int(x) for x in ds.column("charge")}),
                        "spins": sorted({int(x) for x in ds.column("spin")})},
            "split": {"train": torch.as_tensor(train_idx), "val": torch.as_tensor(val_idx)},
            "versions": json.dumps(code_versions())}
