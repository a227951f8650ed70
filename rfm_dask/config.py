"""Package defaults (rfm.yaml) registered with dask.config under the ``rfm`` namespace."""

from __future__ import annotations

from pathlib import Path

import dask.config
import yaml

_DEFAULTS = Path(__file__).with_name("rfm.yaml")


def load_defaults() -> None:
    """Register the packaged defaults; user settings in dask.config keep precedence."""
    with _DEFAULTS.open() as fh:
        dask.config.update_defaults(yaml.safe_load(fh))


def get(key: str):
    """A setting under ``rfm.``, e.g. ``get("cg.max-iter")``."""
    return dask.config.get(f"rfm.{key}")
