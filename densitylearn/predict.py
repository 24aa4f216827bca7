"""Predicted densities from a trained model: the user-facing inference API.

>>> from densitylearn.predict import load_model
>>> predictor = load_model("run/best.pt")            # or a built-in name
>>> [pred] = predictor.predict(ase_atoms)            # ase.Atoms, Structure or pyscf Mole
>>> pred.coefficients                                # (n_functions,), PySCF order
>>> pred.density(points_bohr)                        # e/bohr^3, SAED included for DCD
>>> pred.electron_count()                            # electrons, analytic
>>> pred.write_cube("cubes")                         # bohr, e/bohr^3

Periodic crystals (``ase.Atoms`` with a cell and ``pbc=True``, POSCAR/CIF/extxyz files,
periodic chkfiles, ``pyscf.pbc`` Cells) go through a model trained on periodic data: the
records carry ``cell`` and ``pbc`` (the model's neighbour lists reach the images),
:meth:`Prediction.density` sums the auxiliary functions (and the SAED) over lattice images
(:func:`densitylearn.grid.evaluate_density_periodic`), :meth:`Prediction.electron_count`
is the valence count of a pseudopotential model and :meth:`Prediction.write_cube` writes a
cube file and a VASP CHGCAR of the cell. A molecular model refuses cells and a periodic
model refuses molecules; a periodic chkfile computed with another pseudopotential than the
model's training data is refused too (one-line :class:`InputError`).

Units: positions and points are in bohr everywhere in this module; ASE Atoms (Angstrom)
and PySCF Moles are converted at the boundary by :mod:`densitylearn.structure`.
Coefficients are dimensionless (unit-norm auxiliary functions); densities are e/bohr^3.

A model predicts either the total density (TCD, target ``'total'``) or the Delta-SAED
difference density (DCD, target ``'difference'``); for DCD the total density is
``sum_P c_P chi_P(r) + rho_SAED(r)`` with the SAED stored in the checkpoint, evaluated
analytically. :class:`Prediction` hides the difference: :meth:`Prediction.density` and
:meth:`Prediction.electron_count` always describe the total density.

Charge and spin: a model only predicts structures like those it was trained on. A
checkpoint whose ``dataset`` entry carries ``charges`` (list of net charges, e) and
``spins`` (list of 2S values) supports exactly those; a checkpoint without them (every
checkpoint written so far) supports neutral closed-shell structures only (charge 0,
2S = 0). Other structures are refused with a one-line :class:`InputError`.

Built-in models are files ``densitylearn/pretrained/<name>.pt``; :func:`available_models`
lists them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace

import numpy as np

from .errors import InputError
from .structure import Structure

#: Default structures per forward pass.
DEFAULT_BATCH_SIZE = 64


# ----------------------------------------------------------------------------- built-ins
def pretrained_dir() -> str:
    """Folder of the built-in checkpoints (``densitylearn/pretrained``; may not exist)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrained")


def available_models() -> list[str]:
    """Names of the built-in models (``<name>.pt`` files in :func:`pretrained_dir`), sorted."""
    folder = pretrained_dir()
    if not os.path.isdir(folder):
        return []
    return sorted(f[:-3] for f in os.listdir(folder) if f.endswith(".pt"))


def resolve_model(path_or_name: str) -> str:
    """Checkpoint path of a file path or a built-in model name.

    An existing file wins over a built-in of the same name. Raises :class:`InputError`
    ``unknown model X; available: ...`` otherwise (``PATH: no such checkpoint file`` for
    names that look like paths).
    """
    path_or_name = os.fspath(path_or_name)
    if os.path.isfile(path_or_name):
        return path_or_name
    names = available_models()
    if path_or_name in names:
        return os.path.join(pretrained_dir(), path_or_name + ".pt")
    if path_or_name.endswith(".pt") or os.sep in path_or_name:
        raise InputError(f"{path_or_name}: no such checkpoint file")
    listed = ", ".join(names) if names else "none installed"
    raise InputError(f"unknown model {path_or_name!r}; available: {listed} (or give a checkpoint file)")


# ----------------------------------------------------------------------------- inputs
def as_structures(structures) -> list[Structure]:
    """Structures from one or a list of :class:`Structure`, ``ase.Atoms`` or ``pyscf.gto.Mole``.

    ASE positions (Angstrom) and Moles (any unit) become bohr. Unnamed structures are
    named ``structure_<i>`` (i = position in the input).
    """
    from .structure import from_ase, from_pyscf

    if isinstance(structures, (Structure,)) or _is_ase(structures) or _is_mole(structures):
        structures = [structures]
    try:
        items = list(structures)
    except TypeError:
        raise InputError(f"cannot predict a {type(structures).__name__}: pass ase.Atoms, "
                         "Structure or pyscf Mole objects (or a list of them)") from None
    out = []
    for i, s in enumerate(items):
        if isinstance(s, Structure):
            pass
        elif _is_ase(s):
            s = from_ase(s, name=f"structure_{i}" if not s.info.get("name") else "")
        elif _is_mole(s):
            s = _from_cell(s, f"structure_{i}") if _is_cell(s) else from_pyscf(s, name=f"structure_{i}")
        else:
            raise InputError(f"structure {i}: cannot predict a {type(s).__name__}; pass ase.Atoms, "
                             "Structure or pyscf Mole objects")
        if not s.name:
            s = replace(s, name=f"structure_{i}")
        out.append(s)
    if not out:
        raise InputError("no structures to predict")
    return out


def _is_ase(obj) -> bool:
    return hasattr(obj, "get_atomic_numbers") and hasattr(obj, "get_positions")


def _is_mole(obj) -> bool:
    return hasattr(obj, "atom_coords") and hasattr(obj, "atom_charges")


def _is_cell(obj) -> bool:
    return _is_mole(obj) and hasattr(obj, "lattice_vectors")


def _from_cell(cell, name: str) -> Structure:
    """A periodic Structure (bohr) from a built ``pyscf.pbc.gto.Cell`` (nuclear charges, not
    the pseudo-ions' valence charges)."""
    from pyscf import gto

    numbers = [int(gto.charge(cell.atom_symbol(i))) for i in range(cell.natm)]
    return Structure(numbers=numbers, positions=cell.atom_coords(), cell=cell.lattice_vectors(),
                     pbc=np.ones(3, dtype=bool), charge=int(cell.charge), spin=int(cell.spin), name=name)


# ----------------------------------------------------------------------------- results
@dataclass(frozen=True, eq=False)
class Prediction:
    """The predicted density of one structure.

    Attributes
    ----------
    coefficients : ndarray, shape (n_functions,), float64
        Expansion coefficients in ``basis``'s PySCF order (``basis.layout(numbers)``),
        dimensionless; of the difference density for ``target == 'difference'``, of the
        total density for ``'total'``.
    target : str
        ``'difference'`` (Delta-SAED DCD) or ``'total'`` (TCD).
    basis : AuxBasis
        The model's auxiliary basis.
    saed : SAED or None
        The prior added to the coefficients' density (DCD only; None for TCD).
    structure : Structure
        The input structure (positions in bohr).
    device : str
        Torch device used by :meth:`density` (the predictor's).
    """

    coefficients: np.ndarray
    target: str
    basis: object
    saed: object
    structure: Structure
    device: str = "cpu"

    @property
    def name(self) -> str:
        return self.structure.label

    def density(self, points, chunk_size: int | None = None) -> np.ndarray:
        """Total density rho(r) (e/bohr^3) at ``points`` (ndarray (n_points, 3), bohr).

        ``sum_P c_P chi_P(r)``, plus the analytic SAED for DCD; for a periodic structure
        both are summed over the lattice images (the valence density of a pseudopotential
        model). Returns ndarray (n_points,).
        """
        import torch

        from .grid import evaluate_density, evaluate_density_periodic

        s = self.structure
        coef = torch.as_tensor(self.coefficients, dtype=torch.float64, device=self.device)
        pts = np.asarray(points, dtype=np.float64)
        with torch.no_grad():
            if s.is_periodic:
                rho = evaluate_density_periodic(self.basis, s.numbers, s.positions, s.cell, coef, pts,
                                                saed=self.saed, chunk_size=chunk_size)
            else:
                rho = evaluate_density(self.basis, s.numbers, s.positions, coef, pts, saed=self.saed,
                                       chunk_size=chunk_size)
        return rho.cpu().numpy()

    def electron_count(self) -> float:
        """Electrons in the predicted total density, analytic (no grid).

        ``sum_P q_P c_P`` with ``q_P = int chi_P dr``, plus the SAED's electrons for DCD (sum Z,
        or the valence counts of a pseudo-atom SAED). For a periodic structure: electrons per
        cell (valence electrons for pseudopotential models).
        """
        z = self.structure.numbers
        q = np.concatenate([self.basis.s_integrals(int(x)) for x in z])
        n = float(q @ self.coefficients)
        if self.saed is not None:
            n += self.saed.electron_count(z)
        return n

    def write_cube(self, folder: str, spacing: float = 0.2, margin: float = 4.0) -> dict:
        """Write ``folder/<name>.total.cube`` (and ``.difference.cube`` for DCD).

        Uniform grid with ``spacing`` (bohr) and ``margin`` (bohr) around the atoms; values
        in e/bohr^3. Returns {kind: path}. Cubes are for looking at, not for integrating.

        Periodic structures: the cell's own grid (at most ``spacing`` bohr between points
        along each lattice vector; ``margin`` unused), lattice-summed, written as
        ``<name>.<kind>.cube`` and ``<name>.<kind>.CHGCAR``
        (:func:`densitylearn.cube.density_cell_files`); returns {``'<kind>.<format>'``: path}.
        """
        from .cube import density_cell_files, density_cubes

        os.makedirs(folder, exist_ok=True)
        s = self.structure
        if s.is_periodic:
            files = density_cell_files(folder, self.name, self.basis, s.numbers, s.positions, s.cell,
                                       self.coefficients, saed=self.saed, spacing=spacing)
            return {f"{kind}.{fmt}": path for (kind, fmt), path in files.items()}
        return density_cubes(folder, self.name, self.basis, self.structure.numbers, self.structure.positions,
                             self.coefficients, saed=self.saed, spacing=spacing, margin=margin)

    def record(self) -> dict:
        """A record of the coefficient-dataset schema (:func:`densitylearn.data.write_dataset`)."""
        s = self.structure
        return {"numbers": s.numbers, "positions": s.positions, "cell": s.cell, "pbc": s.pbc,
                "charge": s.charge, "spin": s.spin, "name": s.name, "source": s.source,
                "coef_" + self.target: self.coefficients}


# ----------------------------------------------------------------------------- predictor
@dataclass(frozen=True, eq=False)
class Predictor:
    """A trained model (EMA weights, eval mode) with what it needs to make densities.

    Build with :func:`load_model`.

    Attributes
    ----------
    model : DensityModel
        On ``device``, eval mode.
    target : str
        ``'difference'`` (DCD) or ``'total'`` (TCD).
    saed : SAED or None
        The checkpoint's SAED (required for DCD; may be None for TCD).
    xc, orbital_basis : str
        Functional and orbital basis of the reference calculations the model learned.
    checkpoint : str
        Path of the checkpoint file.
    description : dict
        The checkpoint's model description plus provenance (no weights).
    charges, spins : tuple of int
        Net charges (e) and 2S values the model supports (see the module docstring).
    device : torch.device
    periodic : bool
        Whether the model was trained on periodic cells (then it refuses molecules, and a
        molecular model refuses cells).
    pseudo : str
        Pseudopotential of the training references ('' for all-electron).
    """

    model: object
    target: str
    saed: object
    xc: str
    orbital_basis: str
    checkpoint: str
    description: dict
    charges: tuple = (0,)
    spins: tuple = (0,)
    device: object = None
    periodic: bool = False
    pseudo: str = ""

    @property
    def basis(self):
        """The model's :class:`~densitylearn.basis.AuxBasis`."""
        return self.model.basis

    @property
    def elements(self) -> tuple:
        """Atomic numbers the model handles."""
        return tuple(self.model.elements)

    def check(self, structures) -> list[Structure]:
        """Convert (:func:`as_structures`) and validate every structure before any work.

        Raises a one-line :class:`InputError` naming the first structure that is periodic
        for a molecular model (or a molecule for a periodic model), has an element outside
        the model, a charge or spin the model does not support, or (periodic chkfiles) a
        pseudopotential other than the model's.
        """
        from ase.data import chemical_symbols

        out = as_structures(structures)
        # read leniently: stand-ins with the older Predictor interface have neither attribute
        periodic = bool(getattr(self, "periodic", False))
        allowed = set(self.elements)
        covered = " ".join(chemical_symbols[z] for z in self.elements)
        for s in out:
            if s.is_periodic and not periodic:
                raise InputError(f"structure {s.label}: a periodic cell, but the model was trained on molecules")
            if periodic and not s.is_periodic:
                raise InputError(f"structure {s.label}: a molecule, but the model was trained on periodic cells "
                                 "(give a cell and pbc)")
            bad = sorted(set(s.numbers.tolist()) - allowed)
            if bad:
                raise InputError(f"structure {s.label}: element {chemical_symbols[bad[0]]} (Z={bad[0]}) is not "
                                 f"covered by the model (elements {covered})")
            if s.charge not in self.charges or s.spin not in self.spins:
                raise InputError(f"structure {s.label}: charge {s.charge:+d}, 2S={s.spin}, but the model supports "
                                 f"{_support_text(self.charges, self.spins)}")
            if s.is_periodic and str(s.source).endswith(".chk") and os.path.isfile(s.source):
                pseudo = _chk_pseudo(s.source)
                if pseudo is not None:
                    self.check_pseudo(pseudo, f"structure {s.label} ({s.source})")
        return out

    def check_pseudo(self, pseudo, context: str) -> None:
        """InputError when ``pseudo`` (a reference's or a calculation's) differs from the model's."""
        from .reference import _norm_basis

        have, want = _norm_basis(self.pseudo or ""), _norm_basis(pseudo or "")
        if have != want:
            raise InputError(f"{context}: pseudopotential {pseudo or 'none (all-electron)'!r}, but the model "
                             f"was trained on {self.pseudo or 'all-electron'!r} densities")

    def n_electrons(self, structure: Structure) -> float:
        """Electrons of the density the model predicts for ``structure``.

        ``sum Z - charge`` for all-electron models; for pseudopotential models the valence
        count (the SAED's valence electrons, else the pseudopotential's) minus the charge.
        """
        if not self.pseudo:
            return float(structure.n_electrons)
        from .saed import valence_electrons

        if self.saed is not None and self.saed.pseudo:
            n = sum(self.saed.electrons(int(z)) for z in structure.numbers)
        else:
            n = sum(valence_electrons(int(z), self.pseudo) for z in structure.numbers)
        return float(n) - structure.charge

    def iter_predict(self, structures, batch_size: int = DEFAULT_BATCH_SIZE, checked: bool = False):
        """Yield one :class:`Prediction` per structure, in input order, ``batch_size`` at a time."""
        import torch

        from . import graph as G

        if int(batch_size) < 1:
            raise InputError(f"batch size must be >= 1, got {batch_size}")
        items = list(structures) if checked else self.check(structures)
        saed = self.saed if self.target == "difference" else None
        for start in range(0, len(items), int(batch_size)):
            chunk = items[start:start + int(batch_size)]
            records = [self._record(s) for s in chunk]
            batch = G.to_device(G.collate(records, self.basis), self.device)
            with torch.inference_mode():
                out = self.model(batch)
            coef = out[G.COEFFICIENTS].detach().to("cpu", torch.float64).numpy()
            off = out[G.COEF_OFFSETS].cpu().numpy()
            for k, s in enumerate(chunk):
                yield Prediction(coefficients=coef[off[k]:off[k + 1]].copy(), target=self.target, basis=self.basis,
                                 saed=saed, structure=s, device=str(self.device))

    def _record(self, s: Structure) -> dict:
        """The model's input record of one structure (cells: ``cell``, ``pbc`` and, for a
        pseudopotential total-density model, the valence ``n_electrons``)."""
        rec = {"numbers": s.numbers, "positions": s.positions, "charge": s.charge, "spin": s.spin, "name": s.label}
        if s.is_periodic:
            rec.update(cell=s.cell, pbc=s.pbc)
        if self.pseudo:
            rec["n_electrons"] = self.n_electrons(s)
        return rec

    def predict(self, structures, batch_size: int = DEFAULT_BATCH_SIZE) -> list[Prediction]:
        """Predict densities of ``structures`` (ase.Atoms, Structure, pyscf Mole, or a list).

        All structures are validated first (:meth:`check`); then they run through the model
        ``batch_size`` at a time on :attr:`device`. Returns a list of :class:`Prediction`.
        """
        return list(self.iter_predict(structures, batch_size=batch_size))

    def fitted(self, chkfile: str) -> Prediction:
        """What a perfect model would predict for a reference: its density fitted like the
        training target.

        The chkfile's SCF density matrix is fitted onto the model's auxiliary basis in the
        metric of the model's training data (Coulomb unless recorded otherwise), constrained
        to the electron count, as ``densitylearn fit-basis`` does; the returned
        :class:`Prediction` holds the difference (DCD, the model's SAED added back by every
        consumer) or total (TCD) coefficients. Whatever is computed from it (eps_mae, the
        one-shot properties of :func:`densitylearn.properties.nscf_predictions`) is the
        floor of any model on this basis. Molecules only; the structure is checked like
        :meth:`predict`'s (elements, charge, spin).
        """
        from .fitting import fit_reference
        from .reference import load_reference
        from .saed import saed_density_matrix

        [s] = self.check(read_inputs([chkfile]))
        if s.is_periodic:
            raise InputError(f"{chkfile}: structure {s.label} is periodic; fitted references are built for "
                             "molecules only")
        ref = load_reference(chkfile)
        metric = (self.description.get("training_dataset") or {}).get("metric") or "coulomb"
        fit = fit_reference(ref.mol, ref.dm, saed_density_matrix(ref.mol, self.xc, basis=ref.basis or None),
                            self.basis, metric=metric)
        difference = self.target == "difference"
        return Prediction(coefficients=fit.difference if difference else fit.total, target=self.target,
                          basis=self.basis, saed=self.saed if difference else None, structure=s,
                          device=str(self.device))

    def file_header(self) -> dict:
        """Attributes of a prediction file (:func:`densitylearn.data.make_header`)."""
        from .data import make_header

        extra = {"model": json.dumps(self.description), "checkpoint": os.path.abspath(self.checkpoint)}
        if self.pseudo:
            extra["pseudo"] = self.pseudo
        return make_header(self.basis, kind="prediction", targets=(self.target,),
                           saed=self.saed if self.target == "difference" else None,
                           metric=self.description.get("training_dataset", {}).get("metric") or None,
                           xc=self.xc, orbital_basis=self.orbital_basis, extra=extra)


def _chk_pseudo(path: str) -> str | None:
    """Pseudopotential a densitylearn chkfile records ('' for all-electron; None when the file
    does not say, e.g. a chkfile written by PySCF alone: then it is not checked here)."""
    from .reference import read_settings

    try:
        settings = read_settings(path)
    except InputError:
        return None
    if "pseudo" not in settings:
        return None
    return str(settings.get("pseudo") or "")


def _support_text(charges, spins) -> str:
    if tuple(charges) == (0,) and tuple(spins) == (0,):
        return "neutral closed-shell structures only"
    return f"charges {sorted(charges)} and 2S in {sorted(spins)}"


def load_model(path_or_name, device=None, backend: str = "e3nn") -> Predictor:
    """Load a checkpoint file or a built-in model (see :func:`available_models`).

    Parameters
    ----------
    path_or_name : str
        A ``.pt`` checkpoint written by training, or a built-in model name.
    device : str or torch.device, optional
        ``'cpu'``, ``'cuda'``, ``'auto'`` or None (= auto: CUDA when available).
    backend : str
        Tensor-product library: ``'e3nn'`` or ``'cueq'`` (NVIDIA cuEquivariance, same
        results; see :meth:`densitylearn.model.DensityModel.set_backend`).

    Returns
    -------
    Predictor
        The EMA weights in eval mode, the checkpoint's SAED and reference settings.
    """
    from .saed import SAED
    from .train import load_checkpoint, model_from_checkpoint

    path = resolve_model(path_or_name)
    ck = load_checkpoint(path)
    device = _resolve_device(device)
    model = model_from_checkpoint(ck).to(device).set_backend(backend)
    saed = SAED.from_definition(ck["saed"]) if ck.get("saed") else None
    if model.target == "difference" and saed is None:
        raise InputError(f"{path}: a difference-density (DCD) model without an SAED definition")
    ds = dict(ck.get("dataset") or {})
    charges = tuple(int(c) for c in ds.get("charges", [0])) or (0,)
    spins = tuple(int(s) for s in ds.get("spins", [0])) or (0,)
    pseudo = str(ds.get("pseudo", "") or (saed.pseudo if saed is not None and saed.pseudo else ""))
    # checkpoints written before cells were trained on record neither flag: their pseudo-atom
    # SAED or the dataset's grid metric tells
    periodic = bool(ds.get("periodic", bool(pseudo) or ds.get("metric") == "grid-l2"))
    desc = {k: v for k, v in ck["model"].items() if k != "basis"}
    desc.update(basis_name=model.basis.name, basis_hash=model.basis.hash,
                training_dataset={k: v for k, v in ds.items() if isinstance(v, (str, int, float, bool, list))},
                epoch=int(ck.get("epoch", -1)), best_val_eps_mae=_float(ck.get("best_val")),
                card=json.loads(ck["card"]) if ck.get("card") else {})
    return Predictor(model=model, target=model.target, saed=saed, xc=str(ds.get("xc", "")),
                     orbital_basis=str(ds.get("orbital_basis", "")), checkpoint=path, description=desc,
                     charges=charges, spins=spins, device=device, periodic=periodic, pseudo=pseudo)


def _resolve_device(device):
    """None/'auto' -> CUDA when available, else CPU; 'cuda' without CUDA is an InputError."""
    import torch

    from .train import resolve_device

    if device is None:
        device = "auto"
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str) or not (device in ("auto", "cpu") or device.split(":")[0] == "cuda"):
        raise InputError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    if device.startswith("cuda"):
        resolve_device("cuda")  # raises when no CUDA device is available
        return torch.device(device)
    return resolve_device(device)


def _float(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


# ----------------------------------------------------------------------------- files
def read_inputs(paths) -> list[Structure]:
    """Structures from files: PySCF chkfiles (``*.chk``) or any ASE-readable file (all frames).

    A chkfile's structure gets ``source`` = the chkfile's absolute path, so that
    ``densitylearn evaluate`` finds the reference. Names are made unique by appending
    ``_2``, ``_3``, ... (they name cube files and match references).
    """
    from .structure import read_structures, structure_from_chk

    out: list[Structure] = []
    for p in paths:
        p = os.fspath(p)
        if p.endswith(".chk"):
            if not os.path.isfile(p):
                raise InputError(f"{p}: no such file")
            s = structure_from_chk(p)
            out.append(replace(s, source=os.path.abspath(p)))
        else:
            out.extend(read_structures(p))
    if not out:
        raise InputError("no structures given")
    seen: dict[str, int] = {}
    unique = []
    for s in out:
        n = seen.get(s.name, 0) + 1
        seen[s.name] = n
        unique.append(s if n == 1 else replace(s, name=f"{s.name}_{n}"))
    return unique


def predict_files(model: str, inputs, out: str, cube: str | None = None, device=None,
                  batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = True,
                  cube_spacing: float = 0.2, cube_margin: float = 4.0, backend: str = "e3nn") -> dict:
    """Predict every structure of ``inputs`` (file paths) and write a prediction file.

    ``out`` uses the coefficient-dataset schema (:mod:`densitylearn.data`, ``kind =
    'prediction'``, coefficients ``coef_<target>``), so ``densitylearn evaluate`` reads it.
    All inputs are read and validated before the model runs. With ``cube``, total (and for
    DCD difference) density cubes are written there (bohr, e/bohr^3).

    Returns a summary dict: n, target, model, out, seconds, cubes (count), device.
    """
    import time

    from tqdm.auto import tqdm

    from .data import write_dataset

    if int(batch_size) < 1:
        raise InputError(f"batch size must be >= 1, got {batch_size}")
    predictor = load_model(model, device=device, backend=backend)
    structures = predictor.check(read_inputs(inputs))
    if cube:
        os.makedirs(cube, exist_ok=True)
    t0 = time.perf_counter()
    n_cubes = 0
    bar = tqdm(total=len(structures), desc="predict", unit="mol", disable=not progress)

    def records():
        nonlocal n_cubes
        for pred in predictor.iter_predict(structures, batch_size=batch_size, checked=True):
            if cube:
                n_cubes += len(pred.write_cube(cube, spacing=cube_spacing, margin=cube_margin))
            bar.update(1)
            yield pred.record()

    try:
        n = write_dataset(out, predictor.file_header(), records())
    finally:
        bar.close()
    return {"n": n, "target": predictor.target, "model": predictor.checkpoint, "out": out,
            "seconds": time.perf_counter() - t0, "cubes": n_cubes, "device": str(predictor.device)}
