"""densitylearn: machine-learned electron densities (Delta-SAED).

Importing this package has no side effects (no CUDA initialisation, no disk writes).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
