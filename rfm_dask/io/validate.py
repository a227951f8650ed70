"""Checked reads from JSON-like dicts, for ``from_dict`` methods: malformed input raises a ``ValueError``."""

from __future__ import annotations

import math
from typing import Any


def get(d: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """``d[key]``, which must be an instance of ``kind`` (bool never counts as a number)."""
    if not isinstance(d, dict):
        raise ValueError(f"{where}: expected a dict, got {type(d).__name__}")
    if key not in d:
        raise ValueError(f"{where}: missing key {key!r}")
    value = d[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
        raise ValueError(f"{where}: {key!r} must be {_names(kind)}, got {value!r}")
    return value


def get_list(d: Any, key: str, item: type | tuple[type, ...], where: str) -> list:
    """``d[key]``, a list whose items are instances of ``item``."""
    values = get(d, key, list, where)
    for value in values:
        if not isinstance(value, item) or isinstance(value, bool) and bool not in _as_tuple(item):
            raise ValueError(f"{where}: {key!r} must hold only {_names(item)}, got {value!r}")
    return values


def get_finite(d: Any, key: str, length: int, where: str, *, positive: bool = False) -> list[float]:
    """``d[key]``, a list of ``length`` finite numbers (all > 0 if ``positive``) as floats."""
    values = [float(v) for v in get_list(d, key, (int, float), where)]
    if len(values) != length:
        raise ValueError(f"{where}: {key!r} must hold {length} numbers, got {len(values)}")
    if not all(math.isfinite(v) and (v > 0 or not positive) for v in values):
        raise ValueError(f"{where}: {key!r} must hold finite{' positive' if positive else ''} numbers: {values}")
    return values


def get_choice(d: Any, key: str, choices: tuple[str, ...], where: str) -> str:
    """``d[key]``, one of ``choices``."""
    value = get(d, key, str, where)
    if value not in choices:
        raise ValueError(f"{where}: {key!r} must be one of {list(choices)}, got {value!r}")
    return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _names(kind: type | tuple[type, ...]) -> str:
    return " or ".join(k.__name__ for k in _as_tuple(kind))


def check_option(name: str, value: Any, choices: tuple) -> None:
    """Raise a ``ValueError`` unless the argument ``name`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
