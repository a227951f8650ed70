"""A leaf-ordered copy of streamed rows: out of core, gathering one leaf's rows from row blocks that stay on disk would
read every block once per leaf. Instead the rows are reordered leaf by leaf by dask's array shuffle, a batch of leaves
at a time (one read of the blocks per batch), and written to Zarr stores; each leaf then reads its own consecutive
rows from its batch's store. While a batch is written, the workers give the memory the shuffle frees back to the
operating system every second (``parallel.freed_memory``)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import zarr
from distributed import Client, Future

from rfm_dask.parallel.freed_memory import release_freed_memory
from rfm_dask.parallel.row_blocks import (
    LazyBlock,
    RowBlocks,
    select_rows,
    stream_rows,
    take_rows,
    working_rows_budget,
)

#: Seconds between the workers' trims of freed memory while a batch of leaf-ordered rows is written.
TRIM_INTERVAL_S = 1.0


def as_dask_rows(rows: RowBlocks) -> da.Array:
    """Streamed row blocks (``LazyBlock``s) as one dask array (n, d), a chunk per block, their selections applied."""
    return da.concatenate([_selected(block) for block in rows.futures], axis=0)


def _selected(block: LazyBlock) -> da.Array:
    """One streamed block's rows as a one-chunk dask array. A selection is taken inside the task that reads the block
    (the read and the selection fused), so the workers never hold a whole block for a few of its rows."""
    if block.rows is None:
        return block.recipe
    chunks = ((block.rows.size,), (block.recipe.shape[1],))
    picked = block.recipe.map_blocks(select_rows, block.rows, chunks=chunks, dtype=block.recipe.dtype)
    return dask.optimize(picked)[0]


def leaf_ordered(client: Client, rows: RowBlocks, groups: list[np.ndarray]) -> da.Array:
    """Rows ``groups[j]`` (sorted global indices, disjoint) of streamed ``rows``, group after group: a dask array
    (sum of the group sizes, d) in chunks as long as the largest group.

    Each block's read task keeps only the groups' rows of it, so the shuffle holds the rows it moves, not the blocks
    they are in. Its input chunks are made at least as long as the largest group: dask's shuffle sizes its index
    dtype by its input chunks and wraps it for a longer group (dask/dask#12590, open).
    """
    picked = np.sort(np.concatenate(groups))
    largest = max(max(int(g.size) for g in groups), 1)
    X = as_dask_rows(take_rows(client, rows, picked)).rechunk({0: largest})
    indexer = [np.searchsorted(picked, g).tolist() for g in groups]
    return X.shuffle(indexer, axis=0).rechunk({0: largest, 1: -1})


def leaf_ordered_rows(
    client: Client, rows: RowBlocks, groups: list[np.ndarray], directory: str | os.PathLike
) -> list[RowBlocks]:
    """Rows ``groups[j]`` (sorted global indices, disjoint) of streamed ``rows``, written group after group into a
    Zarr store in ``directory`` (which every worker must see) by ``leaf_ordered``, and returned as one ``RowBlocks``
    per group, streamed from that store (at most a few of its chunks per group)."""
    ordered = leaf_ordered(client, rows, groups)
    path = Path(tempfile.mkdtemp(prefix="leaves-", suffix=".zarr", dir=directory))
    target = zarr.create_array(store=str(path), shape=ordered.shape, dtype=ordered.dtype,
                               chunks=(ordered.chunks[0][0], ordered.shape[1]), zarr_format=3, overwrite=True)
    _wait_releasing_memory(client, client.compute(da.store(ordered, target, lock=False, compute=False)))
    stored = da.from_zarr(str(path))
    offsets = np.concatenate([[0], np.cumsum([g.size for g in groups])])
    return [stream_rows(stored[lo:hi].rechunk({0: -1}), rows.device) for lo, hi in zip(offsets[:-1], offsets[1:])]


def _wait_releasing_memory(client: Client, future: Future, interval: float = TRIM_INTERVAL_S) -> None:
    """Wait for ``future`` (raising its error), asking the workers every ``interval`` seconds, and once at the end,
    to give the memory freed by its tasks (dask's shuffle and store tasks, which trim nothing themselves) back to the
    operating system."""
    while True:
        try:
            future.exception(timeout=interval)  # returns, not raises, the tasks' own errors
            break
        except TimeoutError:
            client.run(release_freed_memory, 0.0)
    client.run(release_freed_memory, 0.0)
    future.result()


def rows_by_leaf(
    client: Client, rows: RowBlocks, groups: dict[int, np.ndarray], directory: str | os.PathLike
) -> dict[int, RowBlocks]:
    """The rows of each non-empty group (sorted global indices, by leaf index): cut from the blocks where they are
    held (``take_rows``), or, for streamed blocks, read from leaf-ordered stores in ``directory``.

    Every output chunk of dask's shuffle takes rows from all the blocks, so the shuffle holds all the rows it moves
    on the workers until its last block is read. Streamed groups are therefore shuffled in batches of consecutive
    groups, each within half of the working-rows budget (``row_blocks.working_rows_budget``: the rows are held once
    as the shuffle's pieces and once more as the joined output chunks), one read of the blocks per batch: worker
    memory follows the budget, not n.
    """
    groups = {j: g for j, g in groups.items() if g.size}
    if not rows.streamed:
        return {j: take_rows(client, rows, g) for j, g in groups.items()}
    leaves = list(groups)
    budget = working_rows_budget(client)
    largest = np.dtype(np.float32).itemsize * rows.n_features * max((g.size for g in groups.values()), default=0)
    per_batch = max(1, int(budget // (2 * largest))) if budget else max(len(leaves), 1)
    out: dict[int, RowBlocks] = {}
    for start in range(0, len(leaves), per_batch):
        batch = leaves[start : start + per_batch]
        out.update(zip(batch, leaf_ordered_rows(client, rows, [groups[j] for j in batch], directory)))
    return out


def scratch_directory() -> str:
    """Where leaf-ordered stores are written: dask's ``temporary-directory`` if set, else the system's temp dir."""
    return dask.config.get("temporary-directory", None) or tempfile.gettempdir()
