"""Turning user inputs (NumPy, pandas, dask arrays and DataFrames) into checked float32 features and targets."""

from __future__ import annotations

from typing import Any

import dask
import dask.array as da
import numpy as np


def is_dask(X: Any) -> bool:
    """True for dask arrays and dask DataFrames/Series."""
    return isinstance(X, da.Array) or hasattr(X, "to_dask_array")


def as_dask_array(X: Any) -> da.Array:
    """A dask DataFrame/Series becomes a dask array with known chunk sizes; a dask array is returned as is."""
    return X if isinstance(X, da.Array) else X.to_dask_array(lengths=True)


def check_dask_features(X: Any, n_features: int | None) -> da.Array:
    """Check a lazy 2-D numeric feature array: shape and dtype now; values when computed.

    Training input (``n_features`` None) has its values checked once persisted, and unknown row-chunk sizes (after
    a boolean selection, say) computed; input to a fitted model (``n_features`` given) is checked block by block as
    it is computed, raising ``ValueError`` on NaN or infinity. Returns it as float32 with one chunk across columns.
    """
    X = as_dask_array(X)
    if n_features is None and X.ndim >= 1 and any(np.isnan(c) for c in X.chunks[0]):
        X = X.copy().compute_chunk_sizes()  # on a copy: compute_chunk_sizes changes its array in place
    if X.ndim != 2:
        raise ValueError(f"Expected a 2D array of features, got a {X.ndim}D dask array")
    if not (np.issubdtype(X.dtype, np.number) or X.dtype == bool) or np.issubdtype(X.dtype, np.complexfloating):
        raise ValueError(f"Features must be real numbers, got dtype {X.dtype}")
    if X.shape[0] == 0:
        raise ValueError(f"0 sample(s) (shape={X.shape}) while a minimum of 1 is required")
    if X.shape[1] == 0:
        raise ValueError("0 feature(s) (shape=(?, 0)) while a minimum of 1 is required")
    if n_features is not None and X.shape[1] != n_features:
        raise ValueError(f"X has {X.shape[1]} features, but the model is expecting {n_features} features as input")
    X = X.astype(np.float32).rechunk({1: -1})
    if n_features is not None:
        X = X.map_blocks(_finite_block, dtype=np.float32)
    return X


def _finite_block(block: np.ndarray) -> np.ndarray:
    """``block`` itself, if all its values are finite."""
    if not np.isfinite(block).all():
        raise ValueError("Input X contains NaN or infinity")
    return block


def row_chunks(a: da.Array) -> list[da.Array]:
    """Each row block of ``a`` as a dask array of its own, cut at the chunk boundaries (slices, which also work in
    dask's array-expression mode, where arrays have no ``.blocks``)."""
    bounds = np.cumsum((0,) + a.chunks[0])
    return [a[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])]


def gather_rows(a: da.Array, scheduler: Any = None, blocks_per_batch: int = 16) -> np.ndarray:
    """A lazy array's values as one NumPy array here, computed a few row blocks at a time.

    A plain ``compute`` joins the blocks in one task, so one worker would hold all n rows (and their blocks);
    here no worker holds more than ``blocks_per_batch`` blocks of it. ``scheduler``: as for ``dask.compute``
    (a ``Client``, say; None means the default).
    """
    if any(np.isnan(c) for c in a.chunks[0]):  # unknown block sizes cannot be cut by slices: one plain compute
        return np.asarray(dask.compute(a, scheduler=scheduler)[0])
    if a.ndim > 1:
        a = a.rechunk({axis: -1 for axis in range(1, a.ndim)})
    blocks = row_chunks(a)
    parts: list[np.ndarray] = []
    for start in range(0, len(blocks), blocks_per_batch):
        parts += dask.compute(*blocks[start : start + blocks_per_batch], scheduler=scheduler)
    return np.concatenate(parts, axis=0) if parts else np.empty(a.shape, dtype=a.dtype)


def to_host_targets(y: Any) -> np.ndarray:
    """Targets as a NumPy array (dask collections are gathered here block by block: n values are small)."""
    if is_dask(y):
        y = gather_rows(as_dask_array(y))
    return np.asarray(y)


def check_finite_targets(y: np.ndarray) -> None:
    """Raise a clear error for NaN or infinite regression targets, or targets whose sum of squares overflows float64
    (the validation MSE and the solves would)."""
    if not np.all(np.isfinite(y)):
        raise ValueError("Input y contains NaN or infinity")
    with np.errstate(over="ignore"):
        if not np.isfinite(np.sum(np.square(y, dtype=np.float64))):
            raise ValueError(f"Input y is too large in magnitude (max |y| = {np.max(np.abs(y)):.3g}): the sum of its "
                             "squares overflows float64; rescale the targets")
