"""densitylearn: machine-learned electron densities (Delta-SAED).

Importing this package has no side effects (no CUDA initialisation, no disk writes);
:func:`load_model` is imported lazily on first use.

>>> import densitylearn
>>> model = densitylearn.load_model("run/best.pt")          # or a built-in model name
>>> [pred] = model.predict(ase_atoms)                       # coefficients + analytic SAED
>>> pred.density(points_bohr), pred.electron_count(), pred.write_cube("cubes")
"""

__version__ = "0.1.0"

__all__ = ["__version__", "load_model", "available_models"]


def __getattr__(name):
    if name in ("load_model", "available_models"):
        from . import predict

        return getattr(predict, name)
    raise AttributeError(f"module 'densitylearn' has no attribute {name!r}")
