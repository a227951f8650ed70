"""The RFM loop's feature update: the next feature matrix M from a fitted predictor, by the average gradient outer
product (AGOP) or the Features at Convergence Theorem (FACT), from partial sums over the sampled training rows that
the kernel operator computes where the rows live (``KernelOperator.agop_sums``, ``fact_sums``)."""

from __future__ import annotations

import numpy as np

from rfm_dask.core.duplicates import Duplicates
from rfm_dask.core.feature_matrix import agop_feature_matrix, fact_feature_matrix
from rfm_dask.kernel_operator import KernelOperator, Rows
from rfm_dask.solvers.dispatch import Solution

#: The feature updates: ``feature_update`` of the estimators.
FEATURE_UPDATES = ("agop", "fact")


def next_feature_matrix(
    passes: KernelOperator, train: Rows, Z: np.ndarray, sol: Solution, sample: np.ndarray, kind: str, diag: bool,
    power: float, scale: np.ndarray, duplicates: Duplicates | None = None, centre: tuple[bool, ...] = (False,),
) -> list[np.ndarray]:
    """The next M ((d, d), or (d,) with ``diag``) from the fitted predictor ``sol`` of the operator ``passes``, at
    the sorted sampled training rows ``sample``: for ``kind`` "agop" one M per value of ``centre`` (the AGOP of the
    gradients, or of their deviations from their mean, from the same sums), to the ``power``; for "fact" one M.

    With ``duplicates`` the training rows are the distinct rows of its n rows and ``sample`` indexes those n: the
    AGOP is taken at the sampled rows' distinct rows, each as often as sampled (the same sum); FACT, whose weights
    are the dual coefficients, at every distinct row once (a distinct row's coefficient is the sum of its rows', and
    ``rfm_loop.collapsible_duplicates`` collapses rows for FACT only where every row is sampled).

    Z (n, c) are the scaled targets the solve saw and ``scale`` (c,) the target scale: the update is that of the
    predictor mapped back to the targets' scale, whose coefficients are coef * scale (the offset has no gradient).
    AGOP: normalise(AGOP^p). FACT: the FACT matrix weighted by each row's dual coefficient alpha_i where the centres
    are the training rows (direct, cg); for Nystrom, by the residual y_i - f(x_i), which equals reg * alpha_i for an
    exact solve (a positive factor, removed by the normalisation).
    """
    beta = sol.coef * scale
    count = sample.size
    if kind == "agop":
        at = sample if duplicates is None else np.sort(duplicates.inverse[sample])
        outer, grad_sum = passes.agop_sums(train, at, beta, diag)
        return [agop_feature_matrix(outer, grad_sum, count, power, c) for c in centre]
    residual = sol.solver == "nystrom"
    if duplicates is not None:
        assert count == duplicates.n_rows and not residual, "FACT on collapsed rows needs every row sampled"
        sample = np.arange(train.n)
    U = (Z[sample] if residual else sol.coef[sample]) * scale
    return [fact_feature_matrix(passes.fact_sums(train, sample, U, residual, beta, diag), count)]


def checked_initial_M(M: np.ndarray, d: int, diag: bool) -> np.ndarray:
    """An initial M as float64, (d,) with a diagonal M and (d, d) otherwise (ValueError on another shape)."""
    M = np.asarray(M, dtype=np.float64)
    shape = (d,) if diag else (d, d)
    if M.shape != shape or not np.all(np.isfinite(M)):
        raise ValueError(f"initial_M must be a finite {shape} array for this fit, got {M.shape}")
    return M
