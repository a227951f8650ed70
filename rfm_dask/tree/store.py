"""A leaf-ordered copy of streamed rows: out of core, gathering one leaf's rows from row blocks that stay on disk would
read every block once per leaf. Instead the rows are reordered leaf by leaf once, by dask's array shuffle, and
written to a Zarr store; each leaf then reads its own consecutive rows from it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import zarr
from distributed import Client

from ..row_blocks import RowBlocks, stream_rows, take_rows


def as_dask_rows(rows: RowBlocks) -> da.Array:
    """Streamed row blocks (``LazyBlock``s) as one dask array (n, d), their selections applied."""
    parts = [block.recipe if block.rows is None else block.recipe[block.rows] for block in rows.futures]
    return da.concatenate(parts, axis=0)


def leaf_ordered_rows(
    client: Client, rows: RowBlocks, groups: list[np.ndarray], directory: str | os.PathLike
) -> list[RowBlocks]:
    """Rows ``groups[j]`` (sorted global indices, disjoint) of streamed ``rows``, written group after group into a
    Zarr store in ``directory`` (which every worker must see), and returned as one ``RowBlocks`` per group, streamed
    from that store (at most a few of its chunks per group)."""
    X = as_dask_rows(rows)
    sizes = [int(g.size) for g in groups]
    ordered = X.shuffle([g.tolist() for g in groups], axis=0).rechunk({0: max(max(sizes), 1), 1: -1})
    path = Path(tempfile.mkdtemp(prefix="leaves-", suffix=".zarr", dir=directory))
    target = zarr.create_array(store=str(path), shape=ordered.shape, dtype=ordered.dtype,
                               chunks=(ordered.chunks[0][0], ordered.shape[1]), zarr_format=3, overwrite=True)
    client.compute(da.store(ordered, target, lock=False, compute=False)).result()
    stored = da.from_zarr(str(path))
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    return [stream_rows(stored[lo:hi].rechunk({0: -1}), rows.device) for lo, hi in zip(offsets[:-1], offsets[1:])]


def rows_by_leaf(
    client: Client, rows: RowBlocks, groups: dict[int, np.ndarray], directory: str | os.PathLike
) -> dict[int, RowBlocks]:
    """The rows of each non-empty group (sorted global indices, by leaf index): cut from the blocks where they are
    held (``take_rows``), or, for streamed blocks, read from a leaf-ordered store in ``directory``."""
    groups = {j: g for j, g in groups.items() if g.size}
    if not rows.streamed:
        return {j: take_rows(client, rows, g) for j, g in groups.items()}
    return dict(zip(groups, leaf_ordered_rows(client, rows, list(groups.values()), directory))) if groups else {}


def scratch_directory() -> str:
    """Where leaf-ordered stores are written: dask's ``temporary-directory`` if set, else the system's temp dir."""
    return dask.config.get("temporary-directory", None) or tempfile.gettempdir()
