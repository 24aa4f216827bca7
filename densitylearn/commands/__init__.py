"""Subcommands of the ``densitylearn`` command line, one module each (see :mod:`densitylearn.cli`)."""
