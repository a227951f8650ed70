"""Randomized Nystrom preconditioner for (K + mu I) from l sampled columns of K (Frangella, Tropp, Udell 2023)."""

from __future__ import annotations

import numpy as np
import scipy.linalg

from .cg import Operator
from .cholesky import jittered_cholesky


def nystrom_preconditioner(K_nl: np.ndarray, K_ll: np.ndarray, mu: float) -> Operator:
    """Inverse preconditioner r -> P^-1 r for K + mu I.

    K_nl (n, l): the kernel between all n rows and l landmark rows; K_ll (l, l): the landmarks' own kernel, best
    computed in float64 (a float32 one can be indefinite for near-duplicate landmarks).
    The Nystrom approximation K_nl K_ll^-1 K_ln = U diag(lam) U^T gives
    P^-1 = (lam_l + mu) U diag(1 / (lam + mu)) U^T + (I - U U^T).
    """
    K_nl = np.asarray(K_nl, dtype=np.float64)
    K_ll = (K_ll + K_ll.T) / 2
    l = K_ll.shape[0]
    shift = np.finfo(np.float64).eps * max(np.trace(K_ll), 1.0) * l
    L = jittered_cholesky(K_ll, shift)[0]
    B = scipy.linalg.solve_triangular(L, K_nl.T, lower=True).T  # (n, l), B B^T = Nystrom approximation
    U, sigma, _ = np.linalg.svd(B, full_matrices=False)
    lam = np.maximum(sigma**2 - shift, 0.0)
    keep = lam > 0
    U, lam = U[:, keep], lam[keep]
    if lam.size == 0:
        return lambda R: R
    scale = (lam[-1] + mu) / (lam + mu) - 1.0  # U (scale) U^T R + R

    def apply(R: np.ndarray) -> np.ndarray:
        return R + U @ (scale[:, None] * (U.T @ R))

    return apply
