"""Distributed kernel passes for one feature matrix M: each is one flat map over row blocks, reduced on the client.

A ``KernelPasses`` is made once per RFM iteration. It puts the feature map (S = M^(1/2), shift) and the transformed
centres on the cluster as keys of their own (recomputable tasks, not raw arguments repeated on every submit); each
pass then submits one task per row block and gathers small results (n- or m-vectors), so the task graph does not
grow with the number of CG iterations.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from distributed import Client, Future

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


def tree_sum(client: Client, futures: list[Future], fan_in: int = 8) -> Any:
    """Sum futures' results on the cluster in a tree, gathering only the total.

    Reduction tasks get a higher priority than the leaves, so partial results (d x d AGOP sums, m-vectors) are
    folded as they arrive instead of piling up on the workers: at most about ``fan_in`` per worker are alive. The last
    ``fan_in`` or fewer are gathered and added here, which saves a scheduling round trip per pass.
    """
    while len(futures) > fan_in:
        futures = [
            client.submit(_add, *futures[i : i + fan_in], priority=1, pure=False)
            for i in range(0, len(futures), fan_in)
        ]
    return _add(*client.gather(futures))


def _column_sums(block: Any) -> np.ndarray:
    return to_host(materialise(block).sum(axis=0, dtype=np.float64))


def column_means(client: Client, rows: RowBlocks) -> np.ndarray:
    """Mean of the rows (d,) float64, from one task per block; raises ValueError if X holds NaN or infinity."""
    total = tree_sum(client, [client.submit(_column_sums, f, pure=False) for f in rows.futures])
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
        fmap = (S.astype(np.float32), shift.astype(np.float32))
        self._fmap = client.submit(identity, fmap, pure=False)
        self._centres = client.submit(wt.transformed_centres, self._fmap, *centres.futures, pure=False)

    def _put(self, a: np.ndarray) -> Future:
        """A small array as a key of its own that the tasks of a pass share; held as a task (not scattered), so it
        is recomputed if the worker holding it is lost."""
        return self.client.submit(identity, a, pure=False)

    def _submit(self, fn: Callable, rows: RowBlocks, *args: Any) -> list[Future]:
        """One task per row block ``fn(block, *args)``, in block order."""
        return [self.client.submit(fn, block, *args, pure=False) for block in rows.futures]

    def _map(self, fn: Callable, rows: RowBlocks, *args: Any) -> list:
        """Results of one task per row block, gathered in block order (for per-row outputs)."""
        return self.client.gather(self._submit(fn, rows, *args))

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
        return self._submit(wt.kernel_tiles, rows, self._fmap, self._centres, self.spec, self.tile)

    def cached_gram_matvec(self, cache: list[Future], W: np.ndarray) -> np.ndarray:
        """``gram_matvec`` from a ``kernel_cache``: two GEMVs per block instead of recomputing its kernel, with the
        same result bit for bit. (m, c) float64."""
        futures = [self.client.submit(wt.tiles_gram_matvec, tiles, W, pure=False) for tiles in cache]
        return tree_sum(self.client, futures)

    def rmatvec(self, rows: RowBlocks, Y: np.ndarray) -> np.ndarray:
        """K(X_rows, C)^T Y for targets Y (n_rows, c) on the client: (m, c) float64."""
        offsets = rows.offsets
        futures = [
            self.client.submit(
                wt.rmatvec, block, Y[lo:hi], self._fmap, self._centres, self.spec, self.tile, pure=False
            )
            for block, lo, hi in zip(rows.futures, offsets[:-1], offsets[1:])
        ]
        return tree_sum(self.client, futures)

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
        futures, start = [], 0
        for block, local in zip(rows.futures, rows.split_index(sample)):
            if local.size:
                parts = tuple(a[start : start + local.size] for a in per_row)
                futures.append(self.client.submit(fn, block, local, *parts, *args, pure=False))
            start += local.size
        return tree_sum(self.client, futures)

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

    def direct_solve(self, Y: np.ndarray, reg: float) -> tuple[np.ndarray, float]:
        """Dense Cholesky solve on one worker: (alpha (m, c), relative residual)."""
        return self.client.submit(wt.direct_solve, self._centres, Y, self.spec, reg, pure=False).result()
