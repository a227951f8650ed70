"""Cholesky factorisation with a jitter retry: the one place every solver factorises a kernel matrix."""

from __future__ import annotations

import numpy as np
import scipy.linalg

#: Tries of ``jittered_cholesky``: the requested jitter, then growing ones.
MAX_TRIES = 6


def jitter_schedule(first: float, scale: float, max_tries: int = MAX_TRIES) -> list[float]:
    """Diagonal shifts to try: ``first``, then max(first, 1e-12 scale) times 100, 10^4, ... (``max_tries`` in all);
    ``scale`` is the matrix's typical diagonal entry."""
    base = max(first, 1e-12 * scale)
    return [first] + [base * 100.0 ** (k + 1) for k in range(max_tries - 1)]


def jittered_cholesky(A: np.ndarray, first: float = 0.0, max_tries: int = MAX_TRIES) -> tuple[np.ndarray, float]:
    """Lower-triangular L with L L^T = A + j I, for the first jitter j of ``jitter_schedule`` that factorises.

    A (n, n) symmetric float64. Returns (L (n, n), only its lower triangle meaningful, and j); raises
    ``np.linalg.LinAlgError`` naming the largest jitter tried when none does.
    """
    scale = float(np.mean(np.diag(A))) if A.size else 1.0
    jitters = jitter_schedule(first, scale if scale > 0 else 1.0, max_tries)
    for jitter in jitters:
        shifted = A.copy()
        shifted[np.diag_indices_from(shifted)] += jitter
        try:
            L, _ = scipy.linalg.cho_factor(shifted, lower=True, overwrite_a=True, check_finite=False)
        except np.linalg.LinAlgError:
            continue
        return L, jitter
    raise np.linalg.LinAlgError(f"matrix not positive definite even with jitter {jitters[-1]:.3g}")
