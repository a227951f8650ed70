"""Dense kernel ridge regression by Cholesky, with jitter retry. For small n and as the reference in tests."""

from __future__ import annotations

import numpy as np
import scipy.linalg


def cholesky_solve(K: np.ndarray, Y: np.ndarray, reg: float, max_tries: int = 6) -> np.ndarray:
    """Solve (K + reg I) A = Y for symmetric K (n, n), Y (n, c); float64.

    If the factorisation fails (reg ~ 0 on a singular kernel), add jitter 1e-10 * mean(diag K), growing 100x per try.
    """
    n = K.shape[0]
    scale = float(np.mean(np.diag(K))) or 1.0
    jitters = [0.0] + [scale * 1e-10 * 100.0**k for k in range(max_tries - 1)]
    for jitter in jitters:
        A = K.copy()
        A[np.diag_indices(n)] += reg + jitter
        try:
            factor = scipy.linalg.cho_factor(A, lower=True, overwrite_a=True, check_finite=False)
        except np.linalg.LinAlgError:
            continue
        return scipy.linalg.cho_solve(factor, Y, check_finite=False)
    raise np.linalg.LinAlgError(f"kernel matrix not positive definite even with jitter {jitters[-1]:.3g}")
