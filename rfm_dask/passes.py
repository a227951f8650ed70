"""Distributed kernel passes for one feature matrix M: each is one flat map over row blocks, reduced on the client.

A ``KernelPasses`` is made once per RFM iteration. It puts the feature map (S = M^(1/2), shift) and the transformed
centres on the cluster as keys of their own (recomputable tasks, not raw arguments repeated on every submit); each
pass then submits one task per row block and gathers small results (n- or m-vectors), so the task graph does not
grow with the number of CG iterations.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

import numpy as np
from distributed import Client, Future

from . import worker_tasks as wt
from .backend import identity
from .kernels import DEFAULT_TILE, KernelSpec
from .options import SolverOptions
from .row_blocks import RowBlocks, smallest_worker_memory
from .scheduling import Submitter, tree_sum
from .solvers.falkon import falkon_solve


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
        self, client: Client, centres: RowBlocks, S: np.ndarray, shift: np.ndarray, spec: KernelSpec,
        tile: int = DEFAULT_TILE, cluster_memory: int = 0,
    ) -> None:
        """``tile``: kernel entries per tile in the block tasks; ``cluster_memory``: the workers' total memory limit
        in bytes (0: not known), which bounds the Nystrom solve's kernel cache."""
        self.client = client
        self.spec = spec
        self.tile = tile
        self.cluster_memory = cluster_memory
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

    def _fits_kernel_cache(self, rows: RowBlocks, fraction: float) -> bool:
        """Whether K_nm (n x m float32) fits ``fraction`` of the workers' total memory limit. Caching changes no
        result (the cached products are the recomputed ones, bit for bit), only the time of a CG step. CPU workers
        only: on GPU workers the fused tile recomputes K_nm faster than device memory would hold it."""
        return rows.device == "cpu" and rows.n * self.n_centres * 4 <= fraction * self.cluster_memory

    def _fits_one_worker(self, rows: RowBlocks, max_bytes: int) -> bool:
        """Whether the one-task FALKON solve fits: K_nm (n x m float64) within ``max_bytes``, and K_nm with the rows
        that task gathers within half the smallest worker's memory limit. Never for streamed rows."""
        if rows.streamed or rows.n * self.n_centres * 8 > max_bytes:
            return False
        limit = smallest_worker_memory(self.client)
        return not limit or rows.n * (12 * self.n_centres + 8 * rows.n_features) <= limit // 2

    def nystrom_solve(
        self, rows: RowBlocks, Y: np.ndarray, reg: float, tol: float, options: SolverOptions
    ) -> tuple[np.ndarray, int, float]:
        """FALKON, (K_nm^T K_nm + reg K_mm) beta = K_nm^T Y: (beta (m, c), CG iterations, relative residual).

        When K_nm fits one worker (``options.one_worker_bytes``) the whole solve runs as one task there (no round
        trip per CG step); else each CG step is a pass over the blocks, from kernel blocks cached on the workers
        (float32) when K_nm fits ``options.kernel_cache_fraction`` of their memory.
        """
        cg = {"tol": tol, "max_iter": options.cg_max_iter, "refresh_every": options.cg_refresh_every}
        if self._fits_one_worker(rows, options.one_worker_bytes):
            return self.falkon_on_one_worker(rows, Y, reg, cg)
        cache = self.kernel_cache(rows) if self._fits_kernel_cache(rows, options.kernel_cache_fraction) else None
        result = falkon_solve(
            (lambda W: self.cached_gram_matvec(cache, W)) if cache else (lambda W: self.gram_matvec(rows, W)),
            self.centre_kernel(), self.rmatvec(rows, Y), rows.n, reg, **cg,
        )
        return result.x, result.iterations, result.residual
