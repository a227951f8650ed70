"""One kernel ridge regression solve under a fixed feature matrix: pick the solver and run it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import config
from .passes import KernelPasses
from .row_blocks import RowBlocks, cluster_memory, smallest_worker_memory
from .solvers.cg import conjugate_gradient
from .solvers.falkon import falkon_solve
from .solvers.preconditioner import nystrom_preconditioner

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


def choose_solver(solver: str, n: int, worker_memory: int = 0) -> str:
    """Resolve ``solver="auto"`` by the number of training rows: direct, then exact CG, then Nystrom (FALKON).

    The dense solve is chosen only where its n x n matrices (``DIRECT_BYTES_PER_ENTRY``) fit half of
    ``worker_memory``, the smallest worker's memory limit in bytes (0: no limit known).
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    if solver != "auto":
        return solver
    fits = not worker_memory or DIRECT_BYTES_PER_ENTRY * n * n <= worker_memory // 2
    if n <= int(config.get("direct-max-rows")) and fits:
        return "direct"
    return "cg" if n <= int(config.get("cg-max-rows")) else "nystrom"


def check_weights_supported(solver: str, weights: np.ndarray | None) -> None:
    """Raise ValueError for sample weights with a solver that does not take them (nystrom)."""
    if weights is not None and solver == "nystrom":
        raise ValueError("sample_weight is supported by the direct and cg solvers, not by nystrom (which "
                         "solver='auto' picks above rfm.cg-max-rows training rows): pass solver='cg'")


def _fits_kernel_cache(passes: KernelPasses, train: RowBlocks) -> bool:
    """Whether K_nm (n x m float32) fits ``rfm.kernel-cache-fraction`` of the workers' total memory limit.

    Caching changes no result (the cached products are the recomputed ones, bit for bit), only the time of a CG step.
    CPU workers only: on GPU workers the fused tile recomputes K_nm faster than device memory would hold it.
    """
    if train.device != "cpu":
        return False
    budget = float(config.get("kernel-cache-fraction")) * cluster_memory(passes.client)
    return train.n * passes.n_centres * 4 <= budget


def _fits_one_worker(passes: KernelPasses, train: RowBlocks) -> bool:
    """Whether the one-task FALKON solve fits: K_nm (n x m float64) within ``rfm.one-worker-bytes``, and K_nm with
    the rows that task gathers within half the smallest worker's memory limit. Never for streamed rows."""
    if train.streamed:
        return False
    m, d = passes.n_centres, train.n_features
    if train.n * m * 8 > int(config.get("one-worker-bytes")):
        return False
    limit = smallest_worker_memory(passes.client)
    return not limit or train.n * (12 * m + 8 * d) <= limit // 2


def solve_krr(
    passes: KernelPasses,
    train: RowBlocks,
    Y: np.ndarray,
    reg: float,
    solver: str,
    tol: float,
    rng: np.random.Generator,
    weights: np.ndarray | None = None,
) -> Solution:
    """Solve KRR with the ``solver`` named (not "auto"); ``passes`` holds the centres.

    direct and cg: the centres are the training rows, (K + reg W^-1) alpha = Y with W = diag(weights) (n,), the
    identity if None; both solve the symmetric form (W^1/2 K W^1/2 + reg I) u = W^1/2 Y, alpha = W^1/2 u, and report
    its residual. Sample weights are not supported by nystrom (ValueError). nystrom: the centres are m sampled
    rows, (K_nm^T K_nm + reg K_mm) beta = K_nm^T Y; when K_nm fits one worker (``_fits_one_worker``) the whole
    solve runs as one task there (no round trip per CG step), else each CG step is a pass over the blocks,
    from kernel blocks cached on the workers (float32) when K_nm fits ``rfm.kernel-cache-fraction`` of their
    memory.
    """
    max_iter, refresh = int(config.get("cg.max-iter")), int(config.get("cg.refresh-every"))
    check_weights_supported(solver, weights)
    if solver == "direct":
        coef, residual = passes.direct_solve(Y, reg, weights)
        return Solution(coef, solver, 0, residual)
    if solver == "nystrom" and _fits_one_worker(passes, train):
        cg = {"tol": tol, "max_iter": max_iter, "refresh_every": refresh}
        coef, iterations, residual = passes.falkon_on_one_worker(train, Y, reg, cg)
        return Solution(coef, solver, iterations, residual)
    if solver == "nystrom":
        cache = passes.kernel_cache(train) if _fits_kernel_cache(passes, train) else None
        result = falkon_solve(
            (lambda W: passes.cached_gram_matvec(cache, W)) if cache else (lambda W: passes.gram_matvec(train, W)),
            passes.centre_kernel(),
            passes.rmatvec(train, Y),
            train.n,
            reg,
            tol=tol,
            max_iter=max_iter,
            refresh_every=refresh,
        )
        return Solution(result.x, solver, result.iterations, result.residual)
    rank = min(int(config.get("cg.preconditioner-rank")), train.n)
    landmarks = np.sort(rng.choice(train.n, size=rank, replace=False))
    s = np.ones((train.n, 1)) if weights is None else np.sqrt(weights)[:, None]
    K_nl = s * passes.landmark_columns(train, landmarks)
    precond = nystrom_preconditioner(K_nl, passes.centre_kernel(landmarks), reg)
    result = conjugate_gradient(
        lambda U: s * passes.matvec(train, s * U) + reg * U,
        s * Y,
        preconditioner=precond,
        tol=tol,
        max_iter=max_iter,
        refresh_every=refresh,
    )
    return Solution(s * result.x, solver, result.iterations, result.residual)
