"""FALKON (Rudi, Carratino, Rosasco 2017, Algorithm 1): Nystrom KRR by CG with a Cholesky preconditioner.

Solves (K_nm^T K_nm + reg K_mm) beta = K_nm^T Y, i.e. FALKON's system with lambda = reg / n, so that ``reg`` means
what it means in the exact solve (K + reg I) alpha = Y. Client-side and float64; the only distributed piece is the
``gram`` operator W -> K_nm^T (K_nm W), one pass over the row blocks.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

from .cg import CGResult, Operator, conjugate_gradient


def jittered_cholesky(A: np.ndarray, jitter: float, max_tries: int = 6) -> np.ndarray:
    """Upper-triangular R with R^T R = A + j I: j = ``jitter`` first, then 10x more (from 1e-12 mean(diag A) if
    ``jitter`` is 0) while the factorisation fails."""
    base = jitter if jitter > 0 else 1e-12 * max(float(np.mean(np.diag(A))), 1e-300)
    jitters = [jitter] + [base * 10.0 ** (k + 1) for k in range(max_tries - 1)]
    for j in jitters:
        try:
            return scipy.linalg.cholesky(A + j * np.eye(A.shape[0]), lower=False, check_finite=False)
        except np.linalg.LinAlgError:
            continue
    raise np.linalg.LinAlgError(f"matrix not positive definite even with jitter {jitters[-1]:.3g}")


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
    T = jittered_cholesky(K_mm, eps * m)
    A = jittered_cholesky(T @ T.T / m + lam * np.eye(m), 0.0)

    def solve(R: np.ndarray, v: np.ndarray, trans: bool) -> np.ndarray:
        return scipy.linalg.solve_triangular(R, v, trans="T" if trans else "N", lower=False, check_finite=False)

    def B(v: np.ndarray) -> np.ndarray:
        return solve(T, solve(A, v, False), False)

    def Bt(u: np.ndarray) -> np.ndarray:
        return solve(A, solve(T, u, True), True)

    def operator(v: np.ndarray) -> np.ndarray:
        w = B(v)
        return Bt(gram(w) / n + lam * (K_mm @ w))

    result = conjugate_gradient(
        operator, Bt(np.asarray(rhs, dtype=np.float64) / n), tol=tol, max_iter=max_iter, refresh_every=refresh_every
    )
    return CGResult(x=B(result.x), iterations=result.iterations, residual=result.residual)
