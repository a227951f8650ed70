"""Distributed kernel passes for one feature matrix M: each is one flat map over row blocks, reduced on the client.

A ``KernelPasses`` is made once per RFM iteration. It puts the feature map (S = M^(1/2), shift) and the transformed
centres on the cluster as keys of their own (recomputable tasks, not raw arguments repeated on every submit); each
pass then submits one task per row block and gathers small results (n- or m-vectors), so the task graph does not
grow with the number of CG iterations.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Iterable, Iterator

import numpy as np
from distributed import Client, Future, wait

from . import config
from . import worker_tasks as wt
from .backend import identity, to_host
from .cluster import worker_threads
from .kernels import KernelSpec
from .row_blocks import RowBlocks, materialise, worker_memory_limits


def _add(*parts: Any) -> Any:
    """Sum of partial results: arrays, or tuples of arrays summed elementwise."""
    if isinstance(parts[0], tuple):
        return tuple(sum(items) for items in zip(*parts))
    return sum(parts)


class Submitter:
    """Submits a pass's tasks in order with at most a few per worker unfinished at a time (its capacity).

    Before a task is submitted past the cluster's capacity, one of the unfinished ones is waited for. So the workers
    never hold more than that many of a pass's tasks (each with its arguments: a streamed block's recipe and row
    selection, target slices) however many blocks there are, whatever the scheduler's queuing decides. The order of
    the calls, and so of every sum over them, is unchanged.

    A worker's capacity is ``rfm.tasks-per-thread`` per thread, but no more tasks than fit ``rfm.task-memory-fraction``
    of its memory limit at ``task_bytes`` each (at least one): fewer tasks at a time when blocks are large.

    Tasks on held blocks go where their block is. Tasks on streamed blocks have no such home, and the scheduler
    would run them all where the pass's small shared keys happen to live: with ``spread`` each is sent to the worker
    with the fewest unfinished tasks for its capacity (any other worker may still take it, e.g. if that one is lost).
    """

    def __init__(self, client: Client) -> None:
        self.client = client
        self.threads = worker_threads(client)
        self.memory = worker_memory_limits(client)
        self.per_thread = int(config.get("tasks-per-thread"))
        self.fraction = float(config.get("task-memory-fraction"))

    def capacity(self, task_bytes: int = 0) -> dict[str, int]:
        """Tasks of ``task_bytes`` each (0: not known) that each worker may hold unfinished at a time."""
        capacity = {}
        for worker, threads in self.threads.items():
            most = self.per_thread * threads
            budget = int(self.fraction * self.memory.get(worker, 0))
            capacity[worker] = min(most, max(1, budget // task_bytes)) if budget and task_bytes else most
        return capacity

    def limit(self, task_bytes: int = 0) -> int:
        """Tasks of ``task_bytes`` each the cluster may hold unfinished at a time (at least one)."""
        return max(1, sum(self.capacity(task_bytes).values()))

    def stream(self, calls: Iterable[tuple], spread: bool = False, task_bytes: int = 0) -> Iterator[Future]:
        """Futures of ``(fn, *args)`` calls of about ``task_bytes`` each, submitted in order as the iterator is
        consumed."""
        capacity, limit = self.capacity(task_bytes), self.limit(task_bytes)
        pending: list[tuple[Future, str | None]] = []  # submitted, not known to be finished, and where they were sent
        for fn, *args in calls:
            if len(pending) >= limit:  # returns at once if one of them has finished already
                with self.client.as_current():  # distributed.wait uses the current client
                    wait([f for f, _ in pending], return_when="FIRST_COMPLETED")
            pending = [(f, where) for f, where in pending if not f.done()]
            where = None
            if spread and capacity:
                busy = Counter(where for _, where in pending)
                where = min(sorted(capacity), key=lambda w: busy[w] / capacity[w])
            placement = {"workers": [where], "allow_other_workers": True} if where else {}
            future = self.client.submit(fn, *args, pure=False, **placement)
            pending.append((future, where))
            yield future


def tree_sum(client: Client, futures: Iterable[Future], fan_in: int = 8, combine: Callable = _add) -> Any:
    """Sum futures' results on the cluster in a fixed tree, as they are submitted, gathering only the last few.

    Every ``fan_in`` consecutive futures of a level are folded by one reduction task as soon as they exist
    (reductions outrank the leaves, so partial results do not pile up on the workers); the tree depends on the
    number of futures only, so the total is the same bit for bit on any cluster. The at most ``fan_in`` partial
    sums left at the end are gathered and added here, which saves a scheduling round trip per pass. ``combine``
    (associative, any number of arguments) replaces the sum for other reductions.
    """
    levels: list[list[Future]] = [[]]
    for future in futures:
        levels[0].append(future)
        k = 0
        while len(levels[k]) == fan_in:
            if k + 1 == len(levels):
                levels.append([])
            levels[k + 1].append(client.submit(combine, *levels[k], priority=1, pure=False))
            levels[k] = []
            k += 1
    rest = [f for level in levels for f in level]
    while len(rest) > fan_in:
        rest = [client.submit(combine, *rest[i : i + fan_in], priority=1, pure=False)
                for i in range(0, len(rest), fan_in)]
    return combine(*client.gather(rest))


def _column_stats(block: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Column sums (float64), minima and maxima of a row block: three (d,) arrays."""
    block = materialise(block)
    return tuple(to_host(a) for a in (block.sum(axis=0, dtype=np.float64), block.min(axis=0), block.max(axis=0)))


def _merge_stats(*parts: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``_column_stats`` of several blocks merged: sums added, minima and maxima taken."""
    sums, mins, maxs = zip(*parts)
    return sum(sums), np.minimum.reduce(mins), np.maximum.reduce(maxs)


#: The kernels' distances |x|^2 + |c|^2 - 2 x.c are taken in float32 on centred rows: the columns' ranges r must keep
#: 2 sum_j r_j^2 (a bound on |x - shift|^2 + |c - shift|^2) below float32's largest value.
MAX_SQUARED_SPREAD = float(np.finfo(np.float32).max) / 2


def column_means(client: Client, rows: RowBlocks) -> np.ndarray:
    """Mean of the rows (d,) float64, from one task per block; raises ValueError if X holds NaN or infinity, or
    values so far apart that the kernels' float32 distances would overflow (``MAX_SQUARED_SPREAD``)."""
    calls = ((_column_stats, f) for f in rows.futures)
    futures = Submitter(client).stream(calls, spread=rows.streamed, task_bytes=rows.streamed_block_bytes)
    total, lo, hi = tree_sum(client, futures, combine=_merge_stats)
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
    return total / max(rows.n, 1)


def task_bytes(rows: RowBlocks | None, tile: int) -> int:
    """What one kernel task on a block of ``rows`` holds at most (the ``Submitter``'s estimate): a streamed block as
    read, a sub-block transformed with its temporaries (about 3 x ``worker_tasks.SUB_BLOCK_BYTES``) and a float32
    kernel tile of ``tile`` entries with its distance temporaries (about 3 tiles). 0 (not known) without ``rows``
    (tasks on cached tiles)."""
    if rows is None:
        return 0
    return rows.streamed_block_bytes + 3 * wt.SUB_BLOCK_BYTES + 3 * 4 * tile


class KernelPasses:
    """Kernel products against a set of centres (row blocks on the cluster) under one feature map."""

    def __init__(
        self, client: Client, centres: RowBlocks, S: np.ndarray, shift: np.ndarray, spec: KernelSpec
    ) -> None:
        self.client = client
        self.spec = spec
        self.tile = int(config.get("tile-elements"))
        self.n_centres = centres.n
        self._submitter = Submitter(client)
        fmap = (S.astype(np.float32), shift.astype(np.float32))
        self._fmap = client.submit(identity, fmap, pure=False)
        self._centres = client.submit(wt.transformed_centres, self._fmap, *centres.futures, pure=False)

    def _put(self, a: np.ndarray) -> Future:
        """A small array as a key of its own that the tasks of a pass share; held as a task (not scattered), so it
        is recomputed if the worker holding it is lost."""
        return self.client.submit(identity, a, pure=False)

    def _stream(self, calls: Iterable[tuple], rows: RowBlocks | None = None) -> Iterator[Future]:
        """Futures of ``(fn, *args)`` calls on ``rows``'s blocks, submitted in order (see ``Submitter``)."""
        return self._submitter.stream(calls, spread=rows is not None and rows.streamed,
                                      task_bytes=task_bytes(rows, self.tile))

    def _submit(self, fn: Callable, rows: RowBlocks, *args: Any) -> Iterator[Future]:
        """One task per row block ``fn(block, *args)``, in block order (submitted as the iterator is consumed)."""
        return self._stream(((fn, block, *args) for block in rows.futures), rows)

    def _map(self, fn: Callable, rows: RowBlocks, *args: Any) -> list:
        """Results of one task per row block in block order (for per-row outputs), gathered a ``Submitter`` limit at a
        time so that the workers hold at most that many results."""
        results: list = []
        batch: list[Future] = []
        limit = self._submitter.limit(task_bytes(rows, self.tile))
        for future in self._submit(fn, rows, *args):
            batch.append(future)
            if len(batch) == limit:
                results += self.client.gather(batch)
                batch = []
        return results + self.client.gather(batch)

    def matvec(self, rows: RowBlocks, V: np.ndarray) -> np.ndarray:
        """K(X_rows, C) @ V for V (m, c): returns (n_rows, c) float64."""
        parts = self._map(wt.matvec, rows, self._fmap, self._centres, self._put(V), self.spec, self.tile)
        return np.concatenate(parts, axis=0)

    def gram_matvec(self, rows: RowBlocks, W: np.ndarray) -> np.ndarray:
        """sum_b K_b^T (K_b W) over the row blocks, K_b = K(X_b, C): (m, c) float64. Only m-vectors travel."""
        futures = self._submit(wt.gram_matvec, rows, self._fmap, self._centres, W, self.spec, self.tile)
        return tree_sum(self.client, futures)

    def kernel_cache(self, rows: RowBlocks) -> list[Future]:
        """Each row block's kernel K_b = K(X_b, C) (b, m) in the data's dtype, held on the worker that computed it;
        hold the list only while it is used (its futures keep the tiles in worker memory)."""
        return list(self._submit(wt.kernel_tiles, rows, self._fmap, self._centres, self.spec, self.tile))

    def cached_gram_matvec(self, cache: list[Future], W: np.ndarray) -> np.ndarray:
        """``gram_matvec`` from a ``kernel_cache``: two GEMVs per block instead of recomputing its kernel, with the
        same result bit for bit. (m, c) float64."""
        return tree_sum(self.client, self._stream((wt.tiles_gram_matvec, tiles, W) for tiles in cache))

    def rmatvec(self, rows: RowBlocks, Y: np.ndarray) -> np.ndarray:
        """K(X_rows, C)^T Y for targets Y (n_rows, c) on the client: (m, c) float64."""
        offsets = rows.offsets
        calls = (
            (wt.rmatvec, block, Y[lo:hi], self._fmap, self._centres, self.spec, self.tile)
            for block, lo, hi in zip(rows.futures, offsets[:-1], offsets[1:])
        )
        return tree_sum(self.client, self._stream(calls, rows))

    def landmark_columns(self, rows: RowBlocks, landmarks: np.ndarray) -> np.ndarray:
        """K(X_rows, C[landmarks]): (n_rows, l) float64, for the CG preconditioner."""
        subset = self.client.submit(wt.select_centres, self._centres, landmarks, pure=False)
        return np.concatenate(self._map(wt.kernel_columns, rows, self._fmap, subset, self.spec), axis=0)

    def centre_kernel(self, index: np.ndarray | None = None) -> np.ndarray:
        """K(C, C) (m, m), or among the centres ``index`` only, in float64, computed on one worker."""
        centres = self._centres
        if index is not None:
            centres = self.client.submit(wt.select_centres, centres, index, pure=False)
        return self.client.submit(wt.centre_kernel, centres, self.spec, pure=False).result()

    def _sampled_sum(self, fn: Callable, rows: RowBlocks, sample: np.ndarray, per_row: tuple, *args: Any) -> Any:
        """Tree sum of ``fn(block, local_rows, *per_row_slices, *args)`` over the blocks holding sampled rows.

        ``sample`` (s,) are sorted global row indices; each array in ``per_row`` has s rows aligned with it.
        """
        if np.any(np.diff(sample) < 0):
            raise ValueError("sample indices must be sorted")
        local_rows = rows.split_index(sample)
        bounds = np.cumsum([0] + [local.size for local in local_rows])
        calls = (
            (fn, block, local, *(a[lo:hi] for a in per_row), *args)
            for block, local, lo, hi in zip(rows.futures, local_rows, bounds[:-1], bounds[1:])
            if local.size
        )
        return tree_sum(self.client, self._stream(calls, rows))

    def agop_sums(
        self, rows: RowBlocks, sample: np.ndarray, beta: np.ndarray, diag: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """Gradient outer-product sums at the sorted sampled rows: ((d, d) or (d,), (c, d))."""
        args = (self._fmap, self._centres, self._put(beta), self.spec, diag, self.tile)
        return self._sampled_sum(wt.agop_sums, rows, sample, (), *args)

    def fact_sums(
        self, rows: RowBlocks, sample: np.ndarray, U: np.ndarray, residual: bool, beta: np.ndarray, diag: bool
    ) -> np.ndarray:
        """FACT sum over the sorted sampled rows, sum_i (sum_l u_il grad f_l(x_i)) (x_i - shift)^T: (d, d) or (d,).

        U (s, c): the sampled rows' dual coefficients, or (``residual``) their targets, whose residuals y - f(x)
        are used (see ``worker_tasks.fact_sums``).
        """
        args = (residual, self._fmap, self._centres, self._put(beta), self.spec, diag, self.tile)
        return self._sampled_sum(wt.fact_sums, rows, sample, (U,), *args)

    def falkon_on_one_worker(
        self, rows: RowBlocks, Y: np.ndarray, reg: float, cg: dict
    ) -> tuple[np.ndarray, int, float]:
        """The FALKON solve as one task on one worker (see ``worker_tasks.falkon_on_one_worker``)."""
        future = self.client.submit(
            wt.falkon_on_one_worker, self._fmap, self._centres, Y, self.spec, reg, cg, *rows.futures, pure=False
        )
        return future.result()

    def direct_solve(
        self, Y: np.ndarray, reg: float, weights: np.ndarray | None = None
    ) -> tuple[np.ndarray, float]:
        """Dense Cholesky solve of (K + reg W^-1) alpha = Y on one worker, W = diag(weights) (m,) or the identity:
        (alpha (m, c), relative residual)."""
        return self.client.submit(wt.direct_solve, self._centres, Y, self.spec, reg, weights, pure=False).result()

    def ridge_path(
        self, Y: np.ndarray, regs: tuple[float, ...], weights: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact solves for every ridge value from one kernel matrix on one worker (see ``worker_tasks.ridge_path``):
        (alphas (r, m, c), relative residuals (r,))."""
        return self.client.submit(
            wt.ridge_path, self._centres, Y, self.spec, tuple(regs), weights, pure=False
        ).result()
