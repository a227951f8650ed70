"""The interfaces the RFM loop, the solvers and the hyperparameter search are written against: a kernel operator
(products against a set of centres under one feature map) and an engine (where the rows live, and the operators over
them).

Two implementations: ``cluster_engine.ClusterEngine`` (row blocks on Dask workers, operators ``passes.KernelPasses``)
and ``local.LocalEngine`` (arrays in one process, e.g. inside a worker task). Both give the same products; only the
order of floating-point sums differs (blocks reduced by ``scheduling.tree_sum`` there, sub-blocks in order here).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from .kernels import KernelSpec
from .options import SolverOptions


class Rows(Protocol):
    """Rows of a float32 (n, d) matrix, wherever they are held."""

    @property
    def n(self) -> int: ...

    n_features: int
    device: str


class KernelOperator(Protocol):
    """Kernel products against a fixed set of centres C (m, d) under one feature map, k(x, c) = k(S(x - shift),
    S(c - shift)): what the solvers and the feature update need. ``KernelPasses`` (distributed) and
    ``local.LocalKernelOperator`` implement it."""

    spec: KernelSpec
    n_centres: int

    def matvec(self, rows: Any, V: np.ndarray) -> np.ndarray:
        """K(X_rows, C) @ V for V (m, c): (n_rows, c) float64."""

    def gram_matvec(self, rows: Any, W: np.ndarray) -> np.ndarray:
        """K(X_rows, C)^T K(X_rows, C) W for W (m, c): (m, c) float64."""

    def rmatvec(self, rows: Any, Y: np.ndarray) -> np.ndarray:
        """K(X_rows, C)^T Y for Y (n_rows, c): (m, c) float64."""

    def landmark_columns(self, rows: Any, landmarks: np.ndarray) -> np.ndarray:
        """K(X_rows, C[landmarks]): (n_rows, l) float64."""

    def centre_kernel(self, index: np.ndarray | None = None) -> np.ndarray:
        """K(C, C) (m, m) float64, or among the centres ``index``."""

    def agop_sums(self, rows: Any, sample: np.ndarray, beta: np.ndarray, diag: bool) -> tuple[np.ndarray, np.ndarray]:
        """Gradient outer-product sums at the sorted sampled rows: ((d, d) or (d,), (c, d))."""

    def fact_sums(
        self, rows: Any, sample: np.ndarray, U: np.ndarray, residual: bool, beta: np.ndarray, diag: bool
    ) -> np.ndarray:
        """FACT sum at the sorted sampled rows: (d, d) or (d,)."""

    def direct_solve(self, Y: np.ndarray, reg: float, weights: np.ndarray | None = None) -> tuple[np.ndarray, float]:
        """Exact (K_CC + reg W^-1) alpha = Y: (alpha (m, c), relative residual)."""

    def ridge_path(
        self, Y: np.ndarray, regs: tuple[float, ...], weights: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact solves for every ridge value: (alphas (r, m, c), relative residuals (r,))."""

    def nystrom_solve(
        self, rows: Any, Y: np.ndarray, reg: float, tol: float, options: SolverOptions
    ) -> tuple[np.ndarray, int, float]:
        """FALKON: (K_nm^T K_nm + reg K_mm) beta = K_nm^T Y: (beta (m, c), CG iterations, relative residual)."""


class Engine(Protocol):
    """Where a fit's rows live: their statistics, selections, digests, and kernel operators over them; ``options``
    are the solver options of the fit."""

    options: SolverOptions

    def worker_memory(self) -> int:
        """Bytes one solve may hold in one process (the smallest worker's memory limit), 0 if not known."""

    def column_means(self, rows: Any) -> np.ndarray:
        """Mean of the rows (d,) float64 (ValueError on non-finite or overflowing values)."""

    def rows_digest(self, rows: Any) -> np.ndarray:
        """SHA-256 digests of the rows (for checkpoint fingerprints): (k, 32) uint8."""

    def take_rows(self, rows: Any, index: np.ndarray) -> Any:
        """The selected global rows (sorted index)."""

    def fetch_rows(self, rows: Any) -> np.ndarray:
        """All rows as one (n, d) NumPy array."""

    def operator(self, centres: Any, S: np.ndarray, shift: np.ndarray, spec: KernelSpec) -> KernelOperator:
        """Kernel products against ``centres`` under the feature map S = M^(1/2) and ``shift``."""
