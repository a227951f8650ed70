"""Dense kernel ridge regression on one worker: (K + reg I) A = Y for symmetric K (n, n).

``cholesky_solve`` is the float64 Cholesky solve (with jitter retry), the reference in tests. ``direct_solve`` is the
fast path the ``direct`` solver takes: a float32 Cholesky factor of K + reg I, computed by tiles on all the threads it
is given, preconditions conjugate gradient on the float64 system, which brings the float32 factor's ~1e-4 relative
error down to the float64 solve's accuracy in a few steps (each two triangular solves and one float64 product with K).

Every tile operation runs single-threaded BLAS on a tile grid fixed by n and ``TILE`` alone, and each tile's updates
are applied in the same order whatever thread does them: the result is the same bit for bit for any thread count.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import scipy.linalg

from rfm_dask.core.errors import NumericalError
from rfm_dask.solvers.cg import conjugate_gradient
from rfm_dask.solvers.cholesky import MAX_TRIES, jittered_cholesky

#: Rows and columns per tile of the tiled Cholesky and of the products with K.
TILE = 512
#: Relative residual ||(K + reg I) A - Y|| / ||Y|| the preconditioned CG solves to (per column): the float64
#: Cholesky solve reaches 1e-14 to 1e-13 on the kernels of this project.
DIRECT_TOL = 1e-13
#: CG steps before the float32-preconditioned solve gives way to the float64 Cholesky solve (a well-conditioned
#: preconditioned system needs 3-6).
DIRECT_MAX_ITER = 30
#: Jitters tried on the float32 factor, relative to mean(diag K): float32 rounding of a near-singular K + reg I can
#: make it indefinite. A jitter slows the CG steps down, it does not change the solution they converge to.
FLOAT32_JITTERS = (0.0, 1e-6, 1e-4, 1e-2)


@dataclass
class DirectSolution:
    """Solution A (n, c) of (K + reg I) A = Y, its relative residual (max over columns), the CG steps taken (0 when
    the float64 Cholesky solve was used) and the factor's precision ("float32" or "float64")."""

    x: np.ndarray
    residual: float
    iterations: int
    precision: str


def cholesky_solve(K: np.ndarray, Y: np.ndarray, reg: float, max_tries: int = MAX_TRIES) -> np.ndarray:
    """Solve (K + reg I) A = Y for symmetric K (n, n), Y (n, c); float64.

    If the factorisation fails (reg ~ 0 on a singular kernel), jitter is added (``cholesky.jittered_cholesky``:
    1e-10 * mean(diag K), growing 100x per try). Raises ``NumericalError`` if K or the solution holds non-finite
    values.
    """
    if not np.isfinite(K).all():
        raise NumericalError("the kernel matrix holds non-finite values (features too large in magnitude?)")
    A = K.copy()
    A[np.diag_indices_from(A)] += reg
    L, jitter = jittered_cholesky(A, 0.0, max_tries)
    solution = scipy.linalg.cho_solve((L, True), Y, check_finite=False)
    if not np.isfinite(solution).all():
        raise NumericalError(f"the direct solve gave non-finite coefficients (reg={reg:g}, jitter {jitter:.3g}): "
                             "rescale the targets or increase reg")
    return solution


def _edges(n: int) -> list[int]:
    """Tile boundaries 0, TILE, 2 TILE, ..., n."""
    return list(range(0, n, TILE)) + [n]


def tiled_cholesky(A: np.ndarray, pool: ThreadPoolExecutor) -> np.ndarray:
    """Lower Cholesky factor of the symmetric positive definite A (n, n), in place (the strict upper triangle is left
    as garbage), by TILE x TILE tiles; returns A. Raises ``np.linalg.LinAlgError`` if A is not positive definite.

    Right-looking: for each diagonal tile k, factor it, solve the tiles below it, then update every tile column to
    its right with one GEMM each, the columns spread over the pool's threads. Bitwise independent of the pool size.
    """
    edges = _edges(A.shape[0])
    for k in range(len(edges) - 1):
        k0, k1 = edges[k], edges[k + 1]
        A[k0:k1, k0:k1] = scipy.linalg.cholesky(A[k0:k1, k0:k1], lower=True, check_finite=False)
        L_kk = A[k0:k1, k0:k1]

        def solve_panel(i: int) -> None:
            rows = slice(edges[i], edges[i + 1])
            A[rows, k0:k1] = scipy.linalg.solve_triangular(L_kk, A[rows, k0:k1].T, lower=True, check_finite=False).T

        def update_column(j: int) -> None:
            j0, j1 = edges[j], edges[j + 1]
            A[j0:, j0:j1] -= A[j0:, k0:k1] @ A[j0:j1, k0:k1].T

        list(pool.map(solve_panel, range(k + 1, len(edges) - 1)))
        list(pool.map(update_column, range(k + 1, len(edges) - 1)))
    return A


def _tiled_product(pool: ThreadPoolExecutor, K: np.ndarray, V: np.ndarray) -> np.ndarray:
    """K @ V for K (n, n) and V (n, c), one row tile per call spread over the pool: (n, c) float64."""
    edges = _edges(K.shape[0])
    parts = pool.map(lambda i: K[edges[i] : edges[i + 1]] @ V, range(len(edges) - 1))
    return np.concatenate(list(parts), axis=0)


def _float32_factor(K: np.ndarray, reg: float, pool: ThreadPoolExecutor) -> np.ndarray | None:
    """The float32 lower Cholesky factor of K + (reg + jitter) I for the first of ``FLOAT32_JITTERS`` that works, or
    None."""
    scale = float(np.mean(np.diag(K))) or 1.0
    edges = _edges(K.shape[0])
    A = np.empty(K.shape, dtype=np.float32)

    def cast_lower(i: int) -> None:  # row tile i up to its diagonal tile's end: all that tiled_cholesky reads
        rows = slice(edges[i], edges[i + 1])
        A[rows, : rows.stop] = K[rows, : rows.stop]

    for jitter in FLOAT32_JITTERS:
        list(pool.map(cast_lower, range(len(edges) - 1)))
        A[np.diag_indices_from(A)] += np.float32(reg + jitter * scale)
        try:
            return tiled_cholesky(A, pool)
        except np.linalg.LinAlgError:
            continue
    return None


class Float32CholeskyPreconditioner:
    """(L L^T)^-1 on (n, c) float64 arrays from a float32 lower Cholesky factor L (n, n) of K + reg I; symmetric."""

    def __init__(self, factor: np.ndarray) -> None:
        self.factor = factor

    def apply(self, R: np.ndarray) -> np.ndarray:
        # two triangular solves on the C-ordered factor read as its Fortran-ordered transpose (no copy of it,
        # unlike cho_solve: 50x faster at n = 7200)
        Z = scipy.linalg.solve_triangular(self.factor, R.astype(np.float32), lower=True, check_finite=False)
        Z = scipy.linalg.solve_triangular(self.factor, Z, lower=True, trans="T", check_finite=False)
        return Z.astype(np.float64)

    apply_t = apply


def direct_solve(K: np.ndarray, Y: np.ndarray, reg: float, threads: int = 1) -> DirectSolution:
    """Solve (K + reg I) A = Y for symmetric K (n, n) float64 and Y (n, c), on ``threads`` threads.

    CG on the float64 system, preconditioned by a float32 Cholesky factor of K + reg I, to relative residual
    ``DIRECT_TOL``; if the float32 factor cannot be made, or CG breaks down (``NumericalError``) or does not get
    there in ``DIRECT_MAX_ITER`` steps, the float64 Cholesky solve (``cholesky_solve``). The result does not depend on ``threads``.
    """
    Y = np.asarray(Y, dtype=np.float64)
    with ThreadPoolExecutor(max(1, int(threads))) as pool:
        operator = lambda V: _tiled_product(pool, K, V) + reg * V  # noqa: E731
        factor = _float32_factor(K, reg, pool)
        if factor is not None:
            precondition = Float32CholeskyPreconditioner(factor)
            try:
                result = conjugate_gradient(operator, Y, precondition, tol=DIRECT_TOL, max_iter=DIRECT_MAX_ITER)
            except NumericalError:  # K + reg I not numerically positive definite: the jittered float64 solve
                result = None
            if result is not None and (result.iterations < DIRECT_MAX_ITER or result.residual <= DIRECT_TOL):
                return DirectSolution(result.x, result.residual, result.iterations, "float32")
            del factor, precondition
        alpha = cholesky_solve(K, Y, reg)
        residual = operator(alpha) - Y
    y_norm = np.linalg.norm(Y, axis=0)
    rel = np.linalg.norm(residual, axis=0) / np.where(y_norm > 0, y_norm, 1.0)
    return DirectSolution(alpha, float(np.max(rel)), 0, "float64")
