"""rfm_dask: Recursive Feature Machines for large tabular data, out of core and distributed on Dask.

The public names are imported lazily, so a Dask worker that only runs block tasks does not import scikit-learn.
"""

from __future__ import annotations

import importlib
from typing import Any

from rfm_dask import config as _config

_config.load_defaults()

__version__ = "0.1.0"

_EXPORTS = {
    "RFMRegressor": "rfm_dask.estimators",
    "RFMClassifier": "rfm_dask.estimators",
    "load": "rfm_dask.estimators",
    "ModelFileError": "rfm_dask.files.model_file",
    "open_zarr": "rfm_dask.files.zarr_store",
    "write_zarr": "rfm_dask.files.zarr_store",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'rfm_dask' has no attribute {name!r}")
