"""Preconditioned conjugate gradient on the client, float64, several right-hand sides at once.

The operator is any callable mapping an (n, c) float64 array to (n, c); in rfm_dask it is one distributed pass.
Each column runs its own CG recurrence; all columns share every operator call.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np

Operator = Callable[[np.ndarray], np.ndarray]
logger = logging.getLogger("rfm_dask")


@dataclass
class CGResult:
    """Solution (n, c), iterations used, and the final true relative residual (max over columns)."""

    x: np.ndarray
    iterations: int
    residual: float


def _column_dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->j", a, b)


def conjugate_gradient(
    operator: Operator,
    b: np.ndarray,
    preconditioner: Operator | None = None,
    tol: float = 1e-6,
    max_iter: int = 500,
    x0: np.ndarray | None = None,
    refresh_every: int = 10,
) -> CGResult:
    """Solve A x = b for symmetric positive definite A given as ``operator``.

    Stops when every column's relative residual ||b - A x|| / ||b|| is below ``tol``. The residual is recomputed
    from scratch every ``refresh_every`` iterations to stop drift in the recurrence.
    """
    b = np.asarray(b, dtype=np.float64)
    squeeze = b.ndim == 1
    B = b[:, None] if squeeze else b
    apply_p = preconditioner or (lambda r: r)
    X = np.zeros_like(B) if x0 is None else np.array(x0, dtype=np.float64).reshape(B.shape)
    b_norm = np.linalg.norm(B, axis=0)
    b_norm[b_norm == 0] = 1.0
    R = B - operator(X) if x0 is not None else B.copy()
    Z = apply_p(R)
    P = Z.copy()
    rz = _column_dot(R, Z)
    rel = np.linalg.norm(R, axis=0) / b_norm
    it = 0
    while it < max_iter and np.any(rel > tol):
        active = rel > tol
        AP = operator(P)
        pap = _column_dot(P, AP)
        alpha = np.where(active, rz / np.where(pap > 0, pap, 1.0), 0.0)
        X += alpha * P
        it += 1
        if it % refresh_every == 0:
            R = B - operator(X)
        else:
            R -= alpha * AP
        rel = np.linalg.norm(R, axis=0) / b_norm
        logger.debug("CG step %d: relative residual %.3g", it, np.max(rel), extra={"rfm_step": ("cg", it, max_iter)})
        Z = apply_p(R)
        rz_new = _column_dot(R, Z)
        beta = np.where(active, rz_new / np.where(rz > 0, rz, 1.0), 0.0)
        P = Z + beta * P
        rz = rz_new
    true_rel = float(np.max(np.linalg.norm(B - operator(X), axis=0) / b_norm)) if it else float(np.max(rel))
    return CGResult(x=X[:, 0] if squeeze else X, iterations=it, residual=true_rel)
