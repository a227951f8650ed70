"""Preconditioners as objects: ``apply`` is P^-1 (and ``apply_t`` its transpose) on (n, c) float64 arrays.

- ``NystromPreconditioner``: the randomized Nystrom preconditioner of K + mu I from l sampled columns of K
  (Frangella, Tropp, Udell 2023), for exact-kernel CG; symmetric.
- ``FalkonPreconditioner``: FALKON's B = T^-1 A^-1 (Rudi, Carratino, Rosasco 2017), for the Nystrom system.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import scipy.linalg

from rfm_dask.solvers.cholesky import jittered_cholesky


class Preconditioner(Protocol):
    """P^-1 and its transpose on (n, c) float64 arrays."""

    def apply(self, R: np.ndarray) -> np.ndarray: ...

    def apply_t(self, R: np.ndarray) -> np.ndarray: ...


class NystromPreconditioner:
    """P^-1 for K + mu I from K_nl (n, l), the kernel between all n rows and l landmark rows, and K_ll (l, l), the
    landmarks' own kernel (best computed in float64: a float32 one can be indefinite for near-duplicate landmarks).

    The Nystrom approximation K_nl K_ll^-1 K_ln = U diag(lam) U^T gives
    P^-1 = (lam_l + mu) U diag(1 / (lam + mu)) U^T + (I - U U^T), symmetric (``apply_t`` is ``apply``).
    """

    def __init__(self, K_nl: np.ndarray, K_ll: np.ndarray, mu: float) -> None:
        K_nl = np.asarray(K_nl, dtype=np.float64)
        K_ll = (K_ll + K_ll.T) / 2
        l = K_ll.shape[0]
        shift = np.finfo(np.float64).eps * max(np.trace(K_ll), 1.0) * l
        L = jittered_cholesky(K_ll, shift)[0]
        B = scipy.linalg.solve_triangular(L, K_nl.T, lower=True).T  # (n, l), B B^T = Nystrom approximation
        U, sigma, _ = np.linalg.svd(B, full_matrices=False)
        lam = np.maximum(sigma**2 - shift, 0.0)
        keep = lam > 0
        self.U, lam = U[:, keep], lam[keep]
        self.scale = (lam[-1] + mu) / (lam + mu) - 1.0 if lam.size else lam  # U (scale) U^T R + R

    def apply(self, R: np.ndarray) -> np.ndarray:
        return R + self.U @ (self.scale[:, None] * (self.U.T @ R))

    apply_t = apply


class FalkonPreconditioner:
    """B = T^-1 A^-1 with T^T T = K_mm + eps m I and A^T A = T T^T / m + lam I, for K_mm (m, m) float64 and
    lam = reg / n (FALKON's lambda). ``apply`` is B, ``apply_t`` is B^T."""

    def __init__(self, K_mm: np.ndarray, lam: float, eps: float = 1e-7) -> None:
        m = K_mm.shape[0]
        self.L_T = np.tril(jittered_cholesky(K_mm, eps * m)[0])  # T = L_T^T
        self.L_A = jittered_cholesky(self.L_T.T @ self.L_T / m + lam * np.eye(m), 0.0)[0]  # A = L_A^T

    @staticmethod
    def _solve(L: np.ndarray, v: np.ndarray, trans: bool) -> np.ndarray:
        """R^-1 v (R^-T v if ``trans``) for the upper factor R = L^T."""
        return scipy.linalg.solve_triangular(L, v, trans="N" if trans else "T", lower=True, check_finite=False)

    def apply(self, v: np.ndarray) -> np.ndarray:
        return self._solve(self.L_T, self._solve(self.L_A, v, False), False)

    def apply_t(self, u: np.ndarray) -> np.ndarray:
        return self._solve(self.L_A, self._solve(self.L_T, u, True), True)
