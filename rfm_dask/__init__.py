"""rfm_dask: Recursive Feature Machines for large tabular data, out of core and distributed on Dask."""

from . import config as _config

_config.load_defaults()

from .estimators import RFMClassifier, RFMRegressor  # noqa: E402

__version__ = "0.1.0"
__all__ = ["RFMClassifier", "RFMRegressor", "__version__"]
