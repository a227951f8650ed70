"""Row blocks of a float32 matrix held on the workers, in order, as futures."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from . import config
import dask.array as da
import numpy as np
from distributed import Client, Future, futures_of


@dataclass
class RowBlocks:
    """Futures of consecutive (b_i, d) row blocks, their row counts, and d."""

    futures: list[Future]
    sizes: list[int]
    n_features: int

    @property
    def n(self) -> int:
        return int(sum(self.sizes))

    @property
    def offsets(self) -> np.ndarray:
        """Start row of each block, plus n at the end: (n_blocks + 1,)."""
        return np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)

    def split_index(self, index: np.ndarray) -> list[np.ndarray]:
        """Global row indices -> per-block local indices (sorted within each block)."""
        index = np.sort(np.asarray(index, dtype=np.int64))
        bounds = np.searchsorted(index, self.offsets)
        return [index[lo:hi] - start for lo, hi, start in zip(bounds[:-1], bounds[1:], self.offsets[:-1])]


def block_rows(n: int, d: int, n_threads: int) -> int:
    """Rows per block: about ``rfm.block-bytes`` of float32, and at least one block per worker thread."""
    target = int(config.get("block-bytes")) // (4 * max(d, 1))
    return max(1, min(target, math.ceil(n / n_threads)))


def scatter_rows(client: Client, X: np.ndarray, rows_per_block: int) -> RowBlocks:
    """Scatter a NumPy matrix to the workers in row blocks."""
    starts = range(0, X.shape[0], rows_per_block)
    blocks = [np.ascontiguousarray(X[s : s + rows_per_block]) for s in starts]
    futures = client.scatter(blocks, hash=False)
    return RowBlocks(list(futures), [b.shape[0] for b in blocks], X.shape[1])


def select_rows(block: Any, local: np.ndarray) -> Any:
    """Rows ``local`` of one block (NumPy or CuPy)."""
    return block[local.tolist()] if type(block).__module__.startswith("cupy") else block[local]


def _n_rows(block: Any) -> int:
    return int(block.shape[0])


def persist_rows(client: Client, X: da.Array) -> RowBlocks:
    """Persist a dask array (rows chunked, one chunk across columns) and list its block futures in row order.

    Row counts are read from the persisted blocks (this also waits for them), so unknown chunk sizes (after boolean
    selection) are fine.
    """
    Xp = client.persist(X.rechunk({1: -1}))
    by_key = {f.key: f for f in futures_of(Xp)}
    futures = [by_key[key] for (key,) in Xp.__dask_keys__()]
    sizes = client.gather([client.submit(_n_rows, f, pure=False) for f in futures])
    return RowBlocks(futures, sizes, int(X.shape[1]))


def _block_is_finite(block) -> bool:
    return bool(block.size == 0 or (block == block).all() and abs(block).max() < float("inf"))


def check_finite(client: Client, rows: RowBlocks) -> None:
    """Raise ValueError if any block holds NaN or infinity (one small task per block)."""
    if not all(client.gather([client.submit(_block_is_finite, f) for f in rows.futures])):
        raise ValueError("Input X contains NaN or infinity")


def take_rows(client: Client, rows: RowBlocks, index: np.ndarray) -> RowBlocks:
    """A new RowBlocks of the selected global rows (in sorted order), gathered block by block on the workers."""
    parts = [(f, local) for f, local in zip(rows.futures, rows.split_index(index)) if local.size]
    futures = [client.submit(select_rows, f, local, pure=False) for f, local in parts]
    return RowBlocks(futures, [int(local.size) for _, local in parts], rows.n_features)
