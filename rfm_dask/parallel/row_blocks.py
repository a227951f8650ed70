"""Row blocks of a float32 matrix held on the workers, in order, as futures."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np
from dask.utils import parse_bytes
from distributed import Client, Future, futures_of

from rfm_dask import config
from rfm_dask.core.backend import identity, like, namespace_of, to_host
from rfm_dask.parallel import devices
from rfm_dask.parallel.inputs import row_chunks


@dataclass(frozen=True)
class LazyBlock:
    """A row block kept as its recipe (a one-chunk dask array) and computed inside each task that needs it.

    This is how data larger than the cluster's memory is streamed: every pass re-reads the block (from Zarr,
    typically), so a worker holds only the blocks its threads are working on.
    """

    recipe: da.Array
    rows: np.ndarray | None = None  # local rows to keep after loading (a selection made without a task)
    device: str = "cpu"  # devices.to_device mode of the loaded rows ("cpu": left as read)

    def load(self) -> Any:
        block = self.recipe.compute(scheduler="sync")
        return devices.to_device(block if self.rows is None else block[self.rows], self.device)

    def select(self, local: np.ndarray) -> "LazyBlock":
        return LazyBlock(self.recipe, local if self.rows is None else self.rows[local], self.device)


def materialise(block: Any) -> Any:
    """The block's array: loaded here if it is a LazyBlock, as is otherwise."""
    return block.load() if isinstance(block, LazyBlock) else block


@dataclass
class RowBlocks:
    """Consecutive (b_i, d) row blocks on the cluster, their row counts, and d.

    Each entry of ``futures`` is a Future of a block held in worker memory, or a ``LazyBlock`` streamed per pass.
    """

    futures: list[Future | LazyBlock]
    sizes: list[int]
    n_features: int
    device: str = "cpu"  # devices.to_device mode of the blocks: "cpu" means NumPy blocks

    @property
    def streamed(self) -> bool:
        """Whether the blocks are read from storage in every pass (``LazyBlock``s) rather than held in memory."""
        return any(isinstance(f, LazyBlock) for f in self.futures)

    @property
    def n(self) -> int:
        return int(sum(self.sizes))

    @property
    def streamed_block_bytes(self) -> int:
        """Bytes of the largest block as a task reads it (float32) if the blocks are streamed, else 0 (held blocks
        are in the workers' memory already)."""
        return 4 * max(self.sizes, default=0) * self.n_features if self.streamed else 0

    @property
    def offsets(self) -> np.ndarray:
        """Start row of each block, plus n at the end: (n_blocks + 1,)."""
        return np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)

    def split_index(self, index: np.ndarray) -> list[np.ndarray]:
        """Global row indices -> per-block local indices (sorted within each block)."""
        index = np.sort(np.asarray(index, dtype=np.int64))
        bounds = np.searchsorted(index, self.offsets)
        return [index[lo:hi] - start for lo, hi, start in zip(bounds[:-1], bounds[1:], self.offsets[:-1])]


def block_rows(n: int, d: int) -> int:
    """Rows per block: about ``rfm.block-bytes`` of float32, and at least ``rfm.min-blocks`` blocks.

    The split depends on the data only, never on the cluster, so a fit gives the same model on any number of workers.
    """
    target = int(config.get("block-bytes")) // (4 * max(d, 1))
    return max(1, min(target, math.ceil(n / int(config.get("min-blocks")))))


def _join_block(pieces: list[np.ndarray], device: str) -> Any:
    """One row block from its consecutive pieces (rows), moved to ``device`` (see ``devices.to_device``)."""
    return devices.to_device(np.concatenate(pieces, axis=0), device)


def put_rows(client: Client, X: np.ndarray, rows_per_block: int) -> RowBlocks:
    """Put a NumPy matrix (n, d) on the workers in row blocks of ``rows_per_block`` rows that the scheduler can
    recompute.

    Each block is joined on a worker from pieces sent as tasks of their own, each under half of
    ``distributed.admin.large-graph-warning-threshold`` (so no "Sending large graph" warning, whatever n). The
    pieces are task arguments, not scattered data: scattered data dies with its worker, while the scheduler keeps
    the pieces' tasks and recomputes a block elsewhere if a worker is lost mid-fit.
    """
    X = np.ascontiguousarray(X)
    limit = parse_bytes(dask.config.get("distributed.admin.large-graph-warning-threshold")) // 2
    piece_rows = max(1, limit // max(1, X.shape[1] * X.itemsize))
    device = devices.block_device(client)
    futures, sizes = [], []
    for start in range(0, X.shape[0], rows_per_block):
        block = X[start : start + rows_per_block]
        pieces = [client.submit(identity, block[lo : lo + piece_rows], pure=False)
                  for lo in range(0, block.shape[0], piece_rows)]
        futures.append(client.submit(_join_block, pieces, device, pure=False))
        sizes.append(block.shape[0])
    return RowBlocks(futures, sizes, int(X.shape[1]), device)


def select_rows(block: Any, local: np.ndarray) -> Any:
    """Rows ``local`` of one block (NumPy or CuPy, held or lazy)."""
    block = materialise(block)
    return block[like(namespace_of(block), local)]


def stream_rows(X: da.Array, device: str = "cpu") -> RowBlocks:
    """Row blocks that stay on disk: each pass computes every block inside its task (needs known chunk sizes).

    ``device`` is the ``devices.to_device`` mode applied to each block as it is loaded (see ``devices.block_device``).
    """
    X = X.rechunk({1: -1})
    if any(math.isnan(c) for c in X.chunks[0]):
        raise ValueError("streaming needs known chunk sizes along rows")
    # each recipe culled to its own block's tasks: a task that loads a block then carries no graph of all the others
    blocks = [LazyBlock(dask.optimize(block)[0], device=device) for block in row_chunks(X)]
    return RowBlocks(blocks, [int(c) for c in X.chunks[0]], int(X.shape[1]), device)


def worker_memory_limits(client: Client) -> dict[str, int]:
    """Each worker's memory limit in bytes (0 where it sets none), by address."""
    workers = client.scheduler_info()["workers"]
    return {address: int(w.get("memory_limit") or 0) for address, w in workers.items()}


def cluster_memory(client: Client) -> int:
    """Total memory limit of the cluster's workers in bytes (0 when the workers set none)."""
    return sum(worker_memory_limits(client).values())


def smallest_worker_memory(client: Client) -> int:
    """The smallest memory limit among the workers in bytes (0 when some worker sets none)."""
    return min(worker_memory_limits(client).values(), default=0)


def working_rows_budget(client: Client) -> float:
    """Bytes of gathered rows (samples, selections) a step may hold in the workers' memory beside its tasks:
    ``rfm.task-memory-fraction`` of the smallest worker's memory limit, so that it fits even if one worker holds
    them all (0 when some worker sets no limit: no bound)."""
    return float(config.get("task-memory-fraction")) * smallest_worker_memory(client)


def place_rows(client: Client, X: da.Array) -> RowBlocks:
    """Persist X when it fits ``rfm.persist-fraction`` of the cluster's memory, else stream it block by block."""
    budget = float(config.get("persist-fraction")) * cluster_memory(client)
    nbytes = X.dtype.itemsize * int(np.prod(X.shape)) if not any(math.isnan(s) for s in X.shape) else np.inf
    if budget and nbytes > budget:
        return stream_rows(X, devices.block_device(client))
    return persist_rows(client, X)


def _n_rows(block: Any) -> int:
    return int(block.shape[0])


def persist_rows(client: Client, X: da.Array) -> RowBlocks:
    """Persist a dask array (rows chunked, one chunk across columns) and list its block futures in row order.

    Row counts are read from the persisted blocks (this also waits for them), so unknown chunk sizes (after boolean
    selection) are fine. On GPU workers (see ``devices.block_device``) each block is moved to the device by a task of
    the persisted graph, so it is recomputed like the rest; ``meta`` stays NumPy, so the client needs no CuPy.
    """
    X = X.rechunk({1: -1})
    device = devices.block_device(client)
    if device != "cpu":
        X = X.map_blocks(devices.to_device, device=device, dtype=X.dtype, meta=X._meta)
    # row order from the futures' own keys (name, row block, 0): in dask's array-expression mode the persisted
    # collection's __dask_keys__ name other keys than its futures
    futures = sorted(futures_of(client.persist(X)), key=lambda f: f.key[1])
    sizes = client.gather([client.submit(_n_rows, f, pure=False) for f in futures])
    return RowBlocks(futures, sizes, int(X.shape[1]), device)


def _host_block(block: Any) -> np.ndarray:
    return to_host(materialise(block))


def fetch_rows(client: Client, rows: RowBlocks) -> np.ndarray:
    """All rows gathered to the client as one (n, d) NumPy array (for the centres of a fitted model)."""
    parts = client.gather([client.submit(_host_block, f, pure=False) for f in rows.futures])
    return np.concatenate(parts, axis=0)


def take_rows(client: Client, rows: RowBlocks, index: np.ndarray) -> RowBlocks:
    """A new RowBlocks of the selected global rows (in sorted order): held blocks are cut on the workers, streamed
    blocks just remember the selection."""
    parts = [(f, local) for f, local in zip(rows.futures, rows.split_index(index)) if local.size]
    futures = [
        f.select(local) if isinstance(f, LazyBlock) else client.submit(select_rows, f, local, pure=False)
        for f, local in parts
    ]
    return RowBlocks(futures, [int(local.size) for _, local in parts], rows.n_features, rows.device)


def column_stats(block: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Column sums (float64), minima and maxima of a row block (b, d): three (d,) arrays on the host."""
    block = materialise(block)
    return tuple(to_host(a) for a in (block.sum(axis=0, dtype=np.float64), block.min(axis=0), block.max(axis=0)))


def merge_stats(*parts: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``column_stats`` of several blocks merged: sums added, minima and maxima taken."""
    sums, mins, maxs = zip(*parts)
    return sum(sums), np.minimum.reduce(mins), np.maximum.reduce(maxs)


#: The kernels' distances |x|^2 + |c|^2 - 2 x.c are taken in float32 on centred rows: the columns' ranges r must keep
#: 2 sum_j r_j^2 (a bound on |x - shift|^2 + |c - shift|^2) below float32's largest value.
MAX_SQUARED_SPREAD = float(np.finfo(np.float32).max) / 2


def mean_of_stats(stats: tuple[np.ndarray, np.ndarray, np.ndarray], n: int) -> np.ndarray:
    """The mean of n rows (d,) float64 from their merged ``column_stats``; raises ValueError if X holds NaN or
    infinity, or values so far apart that the kernels' float32 distances would overflow (``MAX_SQUARED_SPREAD``)."""
    total, lo, hi = stats
    if not np.all(np.isfinite(total)):
        raise ValueError("Input X contains NaN or infinity")
    spread = hi.astype(np.float64) - lo
    if not np.sum(spread**2) < MAX_SQUARED_SPREAD:
        wide = np.argsort(spread)[::-1][:3].tolist()
        raise ValueError(
            f"Input X is too large in magnitude: columns {wide} span up to {np.max(spread):.3g}, so squared distances "
            f"between rows overflow float32 (the columns' squared ranges must sum to below {MAX_SQUARED_SPREAD:.3g}); "
            "rescale the features"
        )
    return total / max(n, 1)
