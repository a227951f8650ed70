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
from .kernels import KernelSpec
from .row_blocks import RowBlocks, materialise


def _add(*parts: Any) -> Any:
    """Sum of partial results: arrays, or tuples of arrays summed elementwise."""
    if isinstance(parts[0], tuple):
        return tuple(sum(items) for items in zip(*parts))
    return sum(parts)


class Submitter:
    """Submits a pass's tasks in order with at most ``rfm.tasks-per-thread`` per worker thread unfinished at a time.

    Before a task is submitted past that limit, one of the unfinished ones is waited for. So the workers never hold
    more than the limit of a pass's tasks (each with its arguments: a streamed block's recipe and row selection,
    target slices) however many blocks there are, whatever the scheduler's queuing decides. The order of the calls,
    and so of every sum over them, is unchanged.

    Tasks on held blocks go where their block is. Tasks on streamed blocks have no such home, and the scheduler
    would run them all where the pass's small shared keys happen to live: with ``spread`` each is sent to the worker
    with the fewest unfinished tasks per thread (any other worker may still take it, e.g. if that one is lost).
    """

    def __init__(self, client: Client) -> None:
        self.client = client
        self.threads = dict(client.nthreads())
        self.limit = int(config.get("tasks-per-thread")) * max(1, sum(self.threads.values()))

    def _least_busy(self, pending: list[tuple[Future, str | None]]) -> str:
        busy = Counter(where for _, where in pending)
        return min(sorted(self.threads), key=lambda w: busy[w] / max(self.threads[w], 1))

    def stream(self, calls: Iterable[tuple], spread: bool = False) -> Iterator[Future]:
        """Futures of ``(fn, *args)`` calls, submitted in order as the iterator is consumed."""
        pending: list[tuple[Future, str | None]] = []  # submitted, not known to be finished, and where they were sent
        for fn, *args in calls:
            if len(pending) >= self.limit:  # returns at once if one of them has finished already
                with self.client.as_current():  # distributed.wait uses the current client
                    wait([f for f, _ in pending], return_when="FIRST_COMPLETED")
            pending = [(f, where) for f, where in pending if not f.done()]
            where = self._least_busy(pending) if spread and self.threads else None
            placement = {"workers": [where], "allow_other_workers": True} if where else {}
            future = self.client.submit(fn, *args, pure=False, **placement)
            pending.append((future, where))
            yield future


def tree_sum(client: Client, futures: Iterable[Future], fan_in: int = 8) -> Any:
    """Sum futures' results on the cluster in a fixed tree, as they are submitted, gathering only the last few.

    Every ``fan_in`` consecutive futures of a level are folded by one reduction task as soon as they exist
    (reductions outrank the leaves, so partial results do not pile up on the workers); the tree depends on the
    number of futures only, so the total is the same bit for bit on any cluster. The at most ``fan_in`` partial
    sums left at the end are gathered and added here, which saves a scheduling round trip per pass.
    """
    levels: list[list[Future]] = [[]]
    for future in futures:
        levels[0].append(future)
        k = 0
        while len(levels[k]) == fan_in:
            if k + 1 == len(levels):
                levels.append([])
            levels[k + 1].append(client.submit(_add, *levels[k], priority=1, pure=False))
            levels[k] = []
            k += 1
    rest = [f for level in levels for f in level]
    while len(rest) > fan_in:
        rest = [client.submit(_add, *rest[i : i + fan_in], priority=1, pure=False) for i in range(0, len(rest), fan_in)]
    return _add(*client.gather(rest))


def _column_sums(block: Any) -> np.ndarray:
    return to_host(materialise(block).sum(axis=0, dtype=np.float64))


def column_means(client: Client, rows: RowBlocks) -> np.ndarray:
    """Mean of the rows (d,) float64, from one task per block; raises ValueError if X holds NaN or infinity."""
    calls = ((_column_sums, f) for f in rows.futures)
    total = tree_sum(client, Submitter(client).stream(calls, spread=rows.streamed))
    if not np.all(np.isfinite(total)):
        raise ValueError("Input X contains NaN or infinity")
    return total / max(rows.n, 1)


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
        return self._submitter.stream(calls, spread=rows is not None and rows.streamed)

    def _submit(self, fn: Callable, rows: RowBlocks, *args: Any) -> Iterator[Future]:
        """One task per row block ``fn(block, *args)``, in block order (submitted as the iterator is consumed)."""
        return self._stream(((fn, block, *args) for block in rows.futures), rows)

    def _map(self, fn: Callable, rows: RowBlocks, *args: Any) -> list:
        """Results of one task per row block in block order (for per-row outputs), gathered a ``Submitter`` limit at a
        time so that the workers hold at most that many results."""
        results: list = []
        batch: list[Future] = []
        for future in self._submit(fn, rows, *args):
            batch.append(future)
            if len(batch) == self._submitter.limit:
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
