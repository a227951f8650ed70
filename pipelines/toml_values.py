"""Helpers for the pipelines' TOML configuration files."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
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


def layered_config(defaults: dict[str, dict], paths: list[Path] | Path | None) -> dict[str, dict]:
    """A copy of ``defaults`` (tables of settings) updated table by table with each TOML file of ``paths`` in turn,
    later files over earlier ones; a table that ``defaults`` lacks, or a value that is not a table, is an error."""
    config = copy.deepcopy(defaults)
    for path in [paths] if isinstance(paths, Path) else paths or []:
        with open(path, "rb") as fh:
            loaded = none_values(tomllib.load(fh))
        for table, values in loaded.items():
            if table not in config or not isinstance(values, dict):
                raise SystemExit(f"{path}: [{table}] is not a known table (known: {', '.join(config)})")
            config[table].update(values)
    return config
