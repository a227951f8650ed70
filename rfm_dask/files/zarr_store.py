"""Zarr v3 stores of features and targets: written atomically, opened as dask arrays chunked by rows."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import dask.array as da
import numpy as np
import zarr

from rfm_dask.files.atomic import atomic_path
from rfm_dask.parallel.inputs import as_dask_array, is_dask


class ZarrData(NamedTuple):
    """A store opened lazily: X (n, d) float32, y (n,) or (n, c) or None, and the store's attributes."""

    X: da.Array
    y: da.Array | None
    attrs: dict


def _default_chunk_rows(d: int) -> int:
    """About 32 MiB of float32 per chunk, all columns in one chunk."""
    return max(1, (32 << 20) // (4 * max(d, 1)))


def _write_array(group_path: Path, name: str, data: Any, chunk_rows: int) -> None:
    arr = as_dask_array(data) if is_dask(data) else da.from_array(np.asarray(data), chunks=-1)
    chunks = (chunk_rows,) + tuple(arr.shape[1:])
    arr = arr.rechunk(chunks)
    target = zarr.create_array(
        store=str(group_path), name=name, shape=arr.shape, dtype=arr.dtype, chunks=chunks, zarr_format=3
    )
    da.store(arr, target, lock=False)


def write_zarr(
    path: str | os.PathLike,
    X: Any,
    y: Any = None,
    *,
    chunk_rows: int | None = None,
    attrs: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Write X (n, d) as float32 (and y, if given) to a Zarr v3 group at ``path``; returns the path.

    Chunks hold ``chunk_rows`` rows and every column. NumPy, pandas or dask input (y may also be a list); dask
    input is written chunk by chunk (memory stays bounded). The column names of a pandas or dask DataFrame X are
    kept in the ``feature_names`` attribute. The store is built in a temporary sibling directory and renamed into
    place, so a failed write leaves nothing behind; an existing ``path`` is an error unless ``overwrite``.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists (pass overwrite=True to replace it)")
    names = [str(c) for c in X.columns] if hasattr(X, "columns") else None
    X = as_dask_array(X) if is_dask(X) else np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (rows, features), got shape {X.shape}")
    if y is not None and not is_dask(y):
        y = np.asarray(y)
    if y is not None and y.shape[0] != X.shape[0]:
        raise ValueError(f"X has {X.shape[0]} rows but y has {y.shape[0]}")
    chunk_rows = chunk_rows or _default_chunk_rows(X.shape[1])
    with atomic_path(path) as tmp:
        group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        group.attrs.update({"rfm_dask_format": 1, **({"feature_names": names} if names else {}), **(attrs or {})})
        _write_array(tmp, "X", X.astype(np.float32), chunk_rows)
        if y is not None:
            _write_array(tmp, "y", y, chunk_rows)
    return path


def open_zarr(path: str | os.PathLike) -> ZarrData:
    """Open a store written by ``write_zarr`` (or any Zarr v3 group with an ``X`` array) as lazy dask arrays."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no Zarr store at {path}")
    group = zarr.open_group(str(path), mode="r")
    if "X" not in group:
        raise ValueError(f"{path} has no 'X' array (found: {sorted(group.array_keys())})")
    X_arr = group["X"]
    if X_arr.ndim != 2:
        raise ValueError(f"{path}/X must be 2-D, got shape {X_arr.shape}")
    X = _lazy(X_arr, (X_arr.chunks[0], X_arr.shape[1]))
    y = _lazy(group["y"], (X_arr.chunks[0],) + group["y"].shape[1:]) if "y" in group else None
    return ZarrData(X, y, dict(group.attrs))


def _lazy(array: zarr.Array, chunks: tuple) -> da.Array:
    """A Zarr array as a dask array with these chunks: ``from_zarr``, or where dask's array-expression mode has no
    ``from_zarr`` yet, ``from_array`` over the Zarr array (it reads the same slices)."""
    try:
        return da.from_zarr(array, chunks=chunks)
    except NotImplementedError:
        return da.from_array(array, chunks=chunks, name=False, asarray=True)
