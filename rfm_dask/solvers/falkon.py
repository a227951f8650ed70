"""FALKON (Rudi, Carratino, Rosasco 2017, Algorithm 1): Nystrom KRR by CG with a Cholesky preconditioner.

Solves (K_nm^T K_nm + reg K_mm) beta = K_nm^T Y, i.e. FALKON's system with lambda = reg / n, so that ``reg`` means
what it means in the exact solve (K + reg I) alpha = Y. Client-side and float64; the only distributed piece is the
``gram`` operator W -> K_nm^T (K_nm W), one pass over the row blocks.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

from .cg import CGResult, Operator, conjugate_gradient
from .cholesky import jittered_cholesky


def falkon_solve(
    gram: Operator,
    K_mm: np.ndarray,
    rhs: np.ndarray,
    n: int,
    reg: float,
    tol: float = 1e-6,
    max_iter: int = 500,
    refresh_every: int = 10,
    eps: float = 1e-7,
) -> CGResult:
    """Coefficients beta (m, c) on the centres.

    gram: W (m, c) -> K_nm^T (K_nm W); K_mm (m, m); rhs = K_nm^T Y (m, c); n training rows.
    Preconditioner B = T^-1 A^-1 with T^T T = K_mm + eps m I and A^T A = T T^T / m + lambda I; CG runs on
    B^T H B with H = K_nm^T K_nm / n + lambda K_mm (K_mm exact, not its jittered factor).
    """
    m = K_mm.shape[0]
    lam = reg / n
    L_T = np.tril(jittered_cholesky(K_mm, eps * m)[0])  # T = L_T^T
    L_A = jittered_cholesky(L_T.T @ L_T / m + lam * np.eye(m), 0.0)[0]  # A = L_A^T

    def solve(L: np.ndarray, v: np.ndarray, trans: bool) -> np.ndarray:
        """R^-1 v (R^-T v if ``trans``) for the upper factor R = L^T."""
        return scipy.linalg.solve_triangular(L, v, trans="N" if trans else "T", lower=True, check_finite=False)

    def B(v: np.ndarray) -> np.ndarray:
        return solve(L_T, solve(L_A, v, False), False)

    def Bt(u: np.ndarray) -> np.ndarray:
        return solve(L_A, solve(L_T, u, True), True)

    def operator(v: np.ndarray) -> np.ndarray:
        w = B(v)
        return Bt(gram(w) / n + lam * (K_mm @ w))

    result = conjugate_gradient(
        operator, Bt(np.asarray(rhs, dtype=np.float64) / n), tol=tol, max_iter=max_iter, refresh_every=refresh_every
    )
    return CGResult(x=B(result.x), iterations=result.iterations, residual=result.residual)
