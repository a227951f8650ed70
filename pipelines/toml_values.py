"""Helpers for the pipelines' TOML configuration files."""

from __future__ import annotations

from typing import Any


def none_values(value: Any) -> Any:
    """TOML has no null: the string "none" (any case) means None, recursively through tables and arrays."""
    if isinstance(value, str) and value.strip().lower() == "none":
        return None
    if isinstance(value, dict):
        return {k: none_values(v) for k, v in value.items()}
    if isinstance(value, list):
        return [none_values(v) for v in value]
    return value
