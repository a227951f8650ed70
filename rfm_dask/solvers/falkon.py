"""FALKON (Rudi, Carratino, Rosasco 2017, Algorithm 1): Nystrom KRR by CG with a Cholesky preconditioner.

Solves (K_nm^T K_nm + reg K_mm) beta = K_nm^T Y, i.e. FALKON's system with lambda = reg / n, so that ``reg`` means
what it means in the exact solve (K + reg I) alpha = Y. Client-side and float64; the only distributed piece is the
``gram`` operator W -> K_nm^T (K_nm W), one pass over the row blocks.
"""

from __future__ import annotations

import numpy as np

from rfm_dask.solvers.cg import CGResult, Operator, conjugate_gradient
from rfm_dask.solvers.preconditioner import FalkonPreconditioner


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
    lam = reg / n
    B = FalkonPreconditioner(K_mm, lam, eps)

    def operator(v: np.ndarray) -> np.ndarray:
        w = B.apply(v)
        return B.apply_t(gram(w) / n + lam * (K_mm @ w))

    result = conjugate_gradient(
        operator, B.apply_t(np.asarray(rhs, dtype=np.float64) / n), tol=tol, max_iter=max_iter, refresh_every=refresh_every
    )
    return CGResult(x=B.apply(result.x), iterations=result.iterations, residual=result.residual)
