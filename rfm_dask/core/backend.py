"""Array-namespace helpers: pick NumPy or CuPy from an array, move results to the host. CuPy is imported lazily."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np


def namespace_of(a: Any) -> ModuleType:
    """The array module (``numpy`` or ``cupy``) that owns ``a``."""
    if type(a).__module__.split(".")[0] == "cupy":
        import cupy

        return cupy
    return np


def to_host(a: Any) -> np.ndarray:
    """A NumPy copy of a NumPy or CuPy array."""
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


def like(xp: ModuleType, a: np.ndarray, dtype: Any = None) -> Any:
    """Host array ``a`` moved into namespace ``xp`` (a no-op for NumPy)."""
    return xp.asarray(a, dtype=dtype)


def identity(value: Any) -> Any:
    """``value`` itself: submitted as a task, it makes a small value a cluster key that can be recomputed."""
    return value
