"""Dense kernel ridge regression by Cholesky, with jitter retry. For small n and as the reference in tests."""

from __future__ import annotations

import numpy as np
import scipy.linalg

from . import NumericalError


def cholesky_solve(K: np.ndarray, Y: np.ndarray, reg: float, max_tries: int = 6) -> np.ndarray:
    """Solve (K + reg I) A = Y for symmetric K (n, n), Y (n, c); float64.

    If the factorisation fails (reg ~ 0 on a singular kernel), add jitter 1e-10 * mean(diag K), growing 100x per try.
    Raises ``NumericalError`` if K or the solution holds non-finite values.
    """
    if not np.isfinite(K).all():
        raise NumericalError("the kernel matrix holds non-finite values (features too large in magnitude?)")
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
        solution = scipy.linalg.cho_solve(factor, Y, check_finite=False)
        if not np.isfinite(solution).all():
            raise NumericalError(f"the direct solve gave non-finite coefficients (reg={reg:g}, jitter {jitter:.3g}): "
                                 "rescale the targets or increase reg")
        return solution
    raise np.linalg.LinAlgError(f"kernel matrix not positive definite even with jitter {jitters[-1]:.3g}")
