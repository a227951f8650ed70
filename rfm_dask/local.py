"""The local engine: a fit's rows as one in-memory array (NumPy or CuPy) in this process, and the kernel operator over
them. It runs the same RFM loop (``training.run_rfm``) as the cluster, e.g. for one leaf of a tree inside one worker
task, in tests, or for small data; nothing here reads dask.config or submits tasks.

The products are the block functions of ``worker_tasks`` applied to the whole array (which sub-blocks it), so they
equal the distributed ones up to the order of floating-point sums over blocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from rfm_dask.core.backend import like, namespace_of, to_host
from rfm_dask.core.kernel_spec import KernelSpec
from rfm_dask.core.metrics import regression_metrics
from rfm_dask.core.targets import TargetScaling
from rfm_dask.options import SolverOptions
from rfm_dask.parallel import tasks as wt
from rfm_dask.parallel.row_blocks import column_stats, mean_of_stats
from rfm_dask.parallel.scheduling import block_digest
from rfm_dask.rfm_loop import FitResult, Metrics, RFMSettings, collapsible_duplicates, run_rfm


@dataclass(frozen=True)
class LocalRows:
    """Rows of a float32 (n, d) NumPy or CuPy array held in this process."""

    X: Any

    def __post_init__(self) -> None:
        if self.X.ndim != 2:
            raise ValueError(f"rows must be a 2-d (n, d) array, got shape {self.X.shape}")

    @property
    def n(self) -> int:
        return int(self.X.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.X.shape[1])

    @property
    def device(self) -> str:
        return "cpu" if namespace_of(self.X) is np else "gpu"

    @property
    def streamed(self) -> bool:
        return False


class LocalKernelOperator:
    """Kernel products against centres (m, d) held in this process, under the feature map S = M^(1/2), ``shift``;
    see ``operator.KernelOperator`` for the shapes."""

    def __init__(self, centres: LocalRows, S: np.ndarray, shift: np.ndarray, spec: KernelSpec, tile: int) -> None:
        self.spec = spec
        self.tile = tile
        self.n_centres = centres.n
        self._fmap = (S.astype(np.float32), shift.astype(np.float32))
        self._centres = wt.transformed_centres(self._fmap, centres.X)

    def matvec(self, rows: LocalRows, V: np.ndarray) -> np.ndarray:
        return wt.matvec(rows.X, self._fmap, self._centres, V, self.spec, self.tile)

    def gram_matvec(self, rows: LocalRows, W: np.ndarray) -> np.ndarray:
        return wt.gram_matvec(rows.X, self._fmap, self._centres, W, self.spec, self.tile)

    def rmatvec(self, rows: LocalRows, Y: np.ndarray) -> np.ndarray:
        return wt.rmatvec(rows.X, Y, self._fmap, self._centres, self.spec, self.tile)

    def landmark_columns(self, rows: LocalRows, landmarks: np.ndarray) -> np.ndarray:
        return wt.kernel_columns(rows.X, self._fmap, wt.select_centres(self._centres, landmarks), self.spec)

    def centre_kernel(self, index: np.ndarray | None = None) -> np.ndarray:
        centres = self._centres if index is None else wt.select_centres(self._centres, index)
        return wt.centre_kernel(centres, self.spec)

    def agop_sums(
        self, rows: LocalRows, sample: np.ndarray, beta: np.ndarray, diag: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        return wt.agop_sums(rows.X, sample, self._fmap, self._centres, beta, self.spec, diag, self.tile)

    def fact_sums(
        self, rows: LocalRows, sample: np.ndarray, U: np.ndarray, residual: bool, beta: np.ndarray, diag: bool
    ) -> np.ndarray:
        return wt.fact_sums(rows.X, sample, U, residual, self._fmap, self._centres, beta, self.spec, diag, self.tile)

    def direct_solve(
        self, Y: np.ndarray, reg: float, weights: np.ndarray | None = None
    ) -> tuple[np.ndarray, float]:
        return wt.direct_solve(self._centres, Y, self.spec, reg, weights)

    def ridge_path(
        self, Y: np.ndarray, regs: tuple[float, ...], weights: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        return wt.ridge_path(self._centres, Y, self.spec, tuple(regs), weights)

    def nystrom_solve(
        self, rows: LocalRows, Y: np.ndarray, reg: float, tol: float, options: SolverOptions
    ) -> tuple[np.ndarray, int, float]:
        """FALKON on K_nm (n x m float64) held here: the rows are in this process already."""
        cg = {"tol": tol, "max_iter": options.cg_max_iter, "refresh_every": options.cg_refresh_every}
        return wt.falkon_on_one_worker(self._fmap, self._centres, Y, self.spec, reg, cg, rows.X)


class LocalEngine:
    """Rows as ``LocalRows`` in this process; operators are ``LocalKernelOperator`` objects. ``worker_memory``: the bytes
    a dense solve may hold here (0: no limit known), for ``solver="auto"``."""

    def __init__(self, options: SolverOptions, worker_memory: int = 0) -> None:
        self.options = options
        self._worker_memory = worker_memory

    def worker_memory(self) -> int:
        return self._worker_memory

    def column_means(self, rows: LocalRows) -> np.ndarray:
        return mean_of_stats(column_stats(rows.X), rows.n)

    def rows_digest(self, rows: LocalRows) -> np.ndarray:
        return np.frombuffer(block_digest(rows.X), dtype=np.uint8).reshape(1, 32)

    def take_rows(self, rows: LocalRows, index: np.ndarray) -> LocalRows:
        xp = namespace_of(rows.X)
        return LocalRows(rows.X[like(xp, np.sort(np.asarray(index, dtype=np.int64)))])

    def fetch_rows(self, rows: LocalRows) -> np.ndarray:
        return to_host(rows.X)

    def operator(self, centres: LocalRows, S: np.ndarray, shift: np.ndarray, spec: KernelSpec) -> LocalKernelOperator:
        return LocalKernelOperator(centres, S, shift, spec, self.options.tile_elements)


def fit_local(
    X: Any,
    Y: np.ndarray,
    settings: RFMSettings,
    rng: np.random.Generator,
    X_val: Any = None,
    Y_val: np.ndarray | None = None,
    metrics: Metrics = regression_metrics,
    scaling: TargetScaling | None = None,
    weights: np.ndarray | None = None,
    initial_M: np.ndarray | None = None,
    worker_memory: int = 0,
) -> FitResult:
    """The RFM loop (``training.run_rfm``) on arrays in this process.

    Parameters
    ----------
    X : array (n, d) float32, NumPy or CuPy
        Training rows.
    Y : ndarray (n, c) float64
        Targets, scaled by ``scaling`` inside (as ``run_rfm`` does).
    settings, rng, metrics, scaling, weights
        As for ``run_rfm``; the solver options are ``settings.options`` (no dask.config is read here).
    X_val, Y_val : (n_val, d) and (n_val, c), optional
        Validation rows and targets that pick the best iteration.
    initial_M : ndarray (d, d), or (d,) with a diagonal M, optional
        The feature matrix of iteration 0 (the identity if None).
    worker_memory : int
        Bytes a dense solve may hold here, for ``solver="auto"`` (0: no limit known).

    Returns
    -------
    FitResult
        Its ``centres`` are X as NumPy (n, d), or X's distinct rows (m, d) where they are collapsed.

    Rows with duplicates are solved as weighted distinct rows where ``rfm_loop.collapsible_duplicates`` says so:
    the same fit (to rounding) at the cost of the distinct rows.
    """
    engine = LocalEngine(settings.options, worker_memory)
    val = None if X_val is None else LocalRows(X_val)
    duplicates = collapsible_duplicates(to_host(X), settings, worker_memory)
    if duplicates is not None:
        X = X[like(namespace_of(X), duplicates.first)]
    return run_rfm(engine, LocalRows(X), Y, settings, rng, val, Y_val, metrics, scaling=scaling, weights=weights,
                   initial_M=initial_M, duplicates=duplicates)
