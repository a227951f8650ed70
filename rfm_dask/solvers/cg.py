"""Preconditioned conjugate gradient on the client, float64, several right-hand sides at once.

The operator is any callable mapping an (n, c) float64 array to (n, c); in rfm_dask it is one distributed pass.
Each column runs its own CG recurrence; all columns share every operator call.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from rfm_dask.core.errors import NumericalError

if TYPE_CHECKING:
    from rfm_dask.solvers.preconditioner import Preconditioner

#: CG on a positive definite system of condition number kappa keeps ||r_k|| / ||r_0|| <= 2 sqrt(kappa); in float64
#: kappa is at most 1 / eps, so a relative residual above 2 / sqrt(eps) (1.3e8) means the system is not numerically
#: positive definite and CG is diverging.
DIVERGED = 2.0 / np.sqrt(np.finfo(np.float64).eps)

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
    preconditioner: Preconditioner | None = None,
    tol: float = 1e-6,
    max_iter: int = 500,
    x0: np.ndarray | None = None,
    refresh_every: int = 10,
) -> CGResult:
    """Solve A x = b for symmetric positive definite A given as ``operator``.

    Stops when every column's relative residual ||b - A x|| / ||b|| is below ``tol``. The residual is recomputed
    from scratch every ``refresh_every`` iterations to stop drift in the recurrence. Raises ``NumericalError``
    when A is not numerically positive definite: p^T A p <= 0 for a search direction, a residual past ``DIVERGED``,
    or a non-finite value.
    """
    b = np.asarray(b, dtype=np.float64)
    squeeze = b.ndim == 1
    B = b[:, None] if squeeze else b
    apply_p = (lambda r: r) if preconditioner is None else preconditioner.apply
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
        _check_progress(it, active & ~(pap > 0), "p^T A p <= 0 (the operator is not positive definite)")
        alpha = np.where(active, rz / np.where(pap > 0, pap, 1.0), 0.0)
        X += alpha * P
        it += 1
        if it % refresh_every == 0:
            R = B - operator(X)
        else:
            R -= alpha * AP
        rel = np.linalg.norm(R, axis=0) / b_norm
        logger.debug("CG step %d: relative residual %.3g", it, np.max(rel), extra={"rfm_step": ("cg", it, max_iter)})
        _check_progress(it, ~(rel <= DIVERGED), f"relative residual {np.max(rel):.3g}")
        Z = apply_p(R)
        rz_new = _column_dot(R, Z)
        beta = np.where(active, rz_new / np.where(rz > 0, rz, 1.0), 0.0)
        P = Z + beta * P
        rz = rz_new
    true_rel = float(np.max(np.linalg.norm(B - operator(X), axis=0) / b_norm)) if it else float(np.max(rel))
    _check_progress(it, np.array([not true_rel <= DIVERGED]), f"final relative residual {true_rel:.3g}")
    return CGResult(x=X[:, 0] if squeeze else X, iterations=it, residual=true_rel)


def _check_progress(iteration: int, failed: np.ndarray, what: str) -> None:
    """Raise ``NumericalError`` if any column ``failed`` (c,) bool at this iteration."""
    if np.any(failed):
        raise NumericalError(
            f"CG diverged at iteration {iteration}: {what} in column(s) {np.flatnonzero(failed).tolist()}; the "
            "kernel system is not numerically positive definite: increase reg, or use solver='direct' (which adds "
            "jitter), or rescale the inputs"
        )
