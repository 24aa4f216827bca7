"""Small frozen dataclass configs built from plain dicts (YAML/JSON sections)."""

from __future__ import annotations

import dataclasses

from .errors import InputError


def dataclass_from_dict(cls, d: dict | None, label: str = "config"):
    """``cls(**d)`` for a dataclass, with unknown keys a one-line :class:`InputError`."""
    d = dict(d or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise InputError(f"{label}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
    return cls(**d)
