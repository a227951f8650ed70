"""One kernel ridge regression solve under a fixed feature matrix: pick the solver and run it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from rfm_dask.options import SolverOptions
from rfm_dask.solvers.cg import conjugate_gradient
from rfm_dask.solvers.preconditioner import NystromPreconditioner

if TYPE_CHECKING:
    from rfm_dask.kernel_operator import KernelOperator

SOLVERS = ("auto", "direct", "cg", "nystrom")
#: Bytes the dense solve holds per kernel entry on its worker: the float64 kernel, its jittered copy factorised in
#: place, and the float32 tiles it is computed from (about 3 x 8 n^2 bytes).
DIRECT_BYTES_PER_ENTRY = 24


@dataclass
class Solution:
    """Coefficients on the centres (m, c), the solver used, its CG iterations (0 if direct) and relative residual."""

    coef: np.ndarray
    solver: str
    iterations: int
    residual: float


def dense_solve_fits(n: int, worker_memory: int) -> bool:
    """Whether the dense solve of n rows (its n x n matrices, ``DIRECT_BYTES_PER_ENTRY`` per entry) fits half of
    ``worker_memory`` bytes (always, when it is 0: no limit known)."""
    return not worker_memory or DIRECT_BYTES_PER_ENTRY * n * n <= worker_memory // 2


def choose_solver(solver: str, n: int, options: SolverOptions, worker_memory: int = 0) -> str:
    """Resolve ``solver="auto"`` by the number of training rows: direct up to ``options.direct_max_rows``, then
    exact CG up to ``options.cg_max_rows``, then Nystrom (FALKON).

    The dense solve is chosen only where its n x n matrices (``DIRECT_BYTES_PER_ENTRY``) fit half of
    ``worker_memory``, the smallest worker's memory limit in bytes (0: no limit known).
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    if solver != "auto":
        return solver
    if n <= options.direct_max_rows and dense_solve_fits(n, worker_memory):
        return "direct"
    return "cg" if n <= options.cg_max_rows else "nystrom"


def check_weights_supported(solver: str, weights: np.ndarray | None) -> None:
    """Raise ValueError for sample weights with a solver that does not take them (nystrom)."""
    if weights is not None and solver == "nystrom":
        raise ValueError("sample_weight is supported by the direct and cg solvers, not by nystrom (which "
                         "solver='auto' picks above rfm.cg-max-rows training rows): pass solver='cg'")


def solve_krr(
    op: KernelOperator,
    train: Any,
    Y: np.ndarray,
    reg: float,
    solver: str,
    tol: float,
    rng: np.random.Generator,
    options: SolverOptions,
    weights: np.ndarray | None = None,
) -> Solution:
    """Solve KRR with the ``solver`` named (not "auto") on the operator ``op``, which holds the centres.

    direct and cg: the centres are the training rows, (K + reg W^-1) alpha = Y with W = diag(weights) (n,), the
    identity if None; both solve the symmetric form (W^1/2 K W^1/2 + reg I) u = W^1/2 Y, alpha = W^1/2 u, and report
    its residual. Sample weights are not supported by nystrom (ValueError). nystrom: the centres are m sampled
    rows, (K_nm^T K_nm + reg K_mm) beta = K_nm^T Y (see the operator's ``nystrom_solve``).
    """
    check_weights_supported(solver, weights)
    if solver == "direct":
        coef, residual = op.direct_solve(Y, reg, weights)
        return Solution(coef, solver, 0, residual)
    if solver == "nystrom":
        coef, iterations, residual = op.nystrom_solve(train, Y, reg, tol, options)
        return Solution(coef, solver, iterations, residual)
    rank = min(options.preconditioner_rank, train.n)
    landmarks = np.sort(rng.choice(train.n, size=rank, replace=False))
    s = np.ones((train.n, 1)) if weights is None else np.sqrt(weights)[:, None]
    K_nl = s * op.landmark_columns(train, landmarks)
    precond = NystromPreconditioner(K_nl, op.centre_kernel(landmarks), reg)
    result = conjugate_gradient(
        lambda U: s * op.matvec(train, s * U) + reg * U,
        s * Y,
        preconditioner=precond,
        tol=tol,
        max_iter=options.cg_max_iter,
        refresh_every=options.cg_refresh_every,
    )
    return Solution(s * result.x, solver, result.iterations, result.residual)
