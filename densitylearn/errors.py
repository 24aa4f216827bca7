"""User-facing errors.

:class:`DensityLearnError` carries a one-line message naming the file and structure at
fault. The command line prints it without a traceback (``--traceback`` shows it) and exits
non-zero.
"""


class DensityLearnError(Exception):
    """An error caused by the user's input, reported as one line."""


class InputError(DensityLearnError, ValueError):
    """Malformed or inconsistent input (files, structures, arrays)."""


class MismatchError(DensityLearnError, ValueError):
    """Two artefacts that must agree do not (basis hash, SAED, functional, geometry)."""
