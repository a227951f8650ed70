"""The feature-matrix updates (AGOP and FACT): from partial sums to a normalised M, and M to S = M^(1/2).

Client-side, float64.
"""

from __future__ import annotations

import numpy as np

from rfm_dask.core.errors import NumericalError


def psd_power(A: np.ndarray, power: float) -> np.ndarray:
    """A^power for a symmetric PSD (d, d) matrix (or elementwise for a (d,) diagonal); negative eigenvalues -> 0.

    Raises ``NumericalError`` if A holds non-finite values (the gradients overflowed).
    """
    if not np.isfinite(A).all():
        raise NumericalError("the feature update gave non-finite values: the gradients overflowed (features or "
                             "targets too large in magnitude: rescale them)")
    if A.ndim == 1:
        return np.maximum(A, 0.0) ** power
    vals, vecs = np.linalg.eigh((A + A.T) / 2)
    vals = np.maximum(vals, 0.0) ** power
    return (vecs * vals) @ vecs.T


def matrix_sqrt(M: np.ndarray) -> np.ndarray:
    """S = M^(1/2): (d, d) symmetric, or (d,) for a diagonal M."""
    return psd_power(M, 0.5)


def normalise(M: np.ndarray) -> np.ndarray:
    """Scale M so its largest entry is 1, keeping the bandwidth's meaning; an all-zero M is left as is."""
    top = np.max(np.abs(M))
    return M / top if top > 0 else M


def agop_feature_matrix(
    outer_sum: np.ndarray, grad_sum: np.ndarray, n_samples: int, power: float = 1.0, centre: bool = False
) -> np.ndarray:
    """M = normalise(AGOP^power) from partial sums over ``n_samples`` rows.

    outer_sum: (d, d) sum of g g^T (or (d,) sum of g^2 for a diagonal M) over rows and outputs.
    grad_sum: (c, d) sum of gradients per output, used when ``centre`` (AGOP of the centred gradients).
    """
    agop = outer_sum / n_samples
    if centre:
        mean = grad_sum / n_samples
        agop = agop - (np.einsum("lj,lj->j", mean, mean) if agop.ndim == 1 else mean.T @ mean)
    return normalise(psd_power(agop, power))


def fact_feature_matrix(fact_sum: np.ndarray, n_samples: int) -> np.ndarray:
    """M = normalise((F F^T)^(1/2)) with F = fact_sum / n_samples (d, d); for a diagonal (d,) F, M = normalise(|F|).

    F is the FACT matrix (1/s) sum_i J_f(x_i)^T u_i x_i^T; it is not symmetric, hence the polar factor.
    """
    F = fact_sum / n_samples
    if F.ndim == 1:
        return normalise(np.abs(F))
    return normalise(psd_power(F @ F.T, 0.5))
