"""Task bodies that run on Dask workers: unpack arguments, call the pure block functions, return NumPy results.

Blocks arrive as NumPy or CuPy arrays; the namespace follows the block, so the same task serves CPU and GPU workers.
The feature map travels as a tuple ``(S, shift)`` (see ``kernels.transform``), the centres as a tuple ``(Ct, c_sq)``:
transformed centres (m, d) and their squared norms (m,). Every task runs BLAS on one thread (see ``blas_threads``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import kernels as kn
from .backend import like, namespace_of, to_host
from .blas_threads import single_blas_thread
from .row_blocks import materialise
from .solvers.direct import cholesky_solve
from .solvers.falkon import falkon_solve

Centres = tuple[Any, Any]
FeatureMap = tuple[np.ndarray, np.ndarray]


def _transform(xp: Any, X: Any, fmap: FeatureMap) -> Any:
    S, shift = fmap
    return kn.transform(xp, X, like(xp, S, X.dtype), like(xp, shift, X.dtype))


@single_blas_thread
def transformed_centres(fmap: FeatureMap, *blocks: Any) -> Centres:
    """Concatenate row blocks into centres and transform them: returns (Ct (m, d), c_sq (m,))."""
    blocks = tuple(materialise(b) for b in blocks)
    xp = namespace_of(blocks[0])
    C = xp.concatenate(blocks, axis=0) if len(blocks) > 1 else blocks[0]
    Ct = _transform(xp, C, fmap)
    return Ct, kn.sq_norms(xp, Ct)


def select_centres(centres: Centres, index: np.ndarray) -> Centres:
    """A subset of the centres (landmarks), by index."""
    Ct, c_sq = centres
    idx = like(namespace_of(Ct), index)
    return Ct[idx], c_sq[idx]


@single_blas_thread
def matvec(X: Any, fmap: FeatureMap, centres: Centres, V: np.ndarray, spec: kn.KernelSpec, tile: int) -> np.ndarray:
    """K(X, C) @ V for one row block: (b, c) float64 on the host."""
    X = materialise(X)
    xp = namespace_of(X)
    return to_host(kn.kernel_matvec(xp, _transform(xp, X, fmap), *centres, like(xp, V), spec, tile))


@single_blas_thread
def gram_matvec(
    X: Any, fmap: FeatureMap, centres: Centres, W: np.ndarray, spec: kn.KernelSpec, tile: int
) -> np.ndarray:
    """K_b^T (K_b W) for one row block: (m, c) float64 on the host."""
    X = materialise(X)
    xp = namespace_of(X)
    return to_host(kn.kernel_gram_matvec(xp, _transform(xp, X, fmap), *centres, like(xp, W), spec, tile))


@single_blas_thread
def kernel_tiles(X: Any, fmap: FeatureMap, centres: Centres, spec: kn.KernelSpec, tile: int) -> list[Any]:
    """One block's kernel against the centres as row tiles in the data's dtype, kept on this worker (see
    ``kernels.kernel_tiles``): (b, m) in all."""
    X = materialise(X)
    xp = namespace_of(X)
    return kn.kernel_tiles(xp, _transform(xp, X, fmap), *centres, spec, tile)


@single_blas_thread
def tiles_gram_matvec(tiles: list[Any], W: np.ndarray) -> np.ndarray:
    """K_b^T (K_b W) from a block's cached tiles: (m, c) float64 on the host."""
    xp = namespace_of(tiles[0])
    return to_host(kn.tiles_gram_matvec(xp, tiles, like(xp, W), tiles[0].shape[1]))


@single_blas_thread
def rmatvec(X: Any, Y: np.ndarray, fmap: FeatureMap, centres: Centres, spec: kn.KernelSpec, tile: int) -> np.ndarray:
    """K_b^T Y_b for one row block and its targets: (m, c) float64 on the host."""
    X = materialise(X)
    xp = namespace_of(X)
    return to_host(kn.kernel_rmatvec(xp, _transform(xp, X, fmap), *centres, like(xp, Y), spec, tile))


@single_blas_thread
def kernel_columns(X: Any, fmap: FeatureMap, centres: Centres, spec: kn.KernelSpec) -> np.ndarray:
    """The kernel block K(X, C) (b, m) as float64 on the host; for a few landmark columns only."""
    X = materialise(X)
    xp = namespace_of(X)
    Xt = _transform(xp, X, fmap)
    return to_host(kn.kernel_tile(xp, Xt, kn.sq_norms(xp, Xt), *centres, spec)).astype(np.float64)


@single_blas_thread
def centre_kernel(centres: Centres, spec: kn.KernelSpec) -> np.ndarray:
    """K(C, C) (m, m) in float64 on the host, symmetrised.

    Computed in float64 (m x m is small): a float32 Laplace kernel of near-duplicate centres is off by up to
    sqrt(eps32 |c|^2) / L ~ 1e-3, enough to make K_mm indefinite, which breaks the Cholesky-based solvers.
    """
    Ct = centres[0].astype(np.float64)
    xp = namespace_of(Ct)
    c_sq = kn.sq_norms(xp, Ct)
    K = to_host(kn.kernel_tile(xp, Ct, c_sq, Ct, c_sq, spec))
    return (K + K.T) / 2


def _sampled_rows(X: Any, rows: np.ndarray, fmap: FeatureMap) -> tuple[Any, Any, Any, Any]:
    """(xp, the block's ``rows`` (s_b, d), S and shift in the block's namespace and dtype)."""
    X = materialise(X)
    xp = namespace_of(X)
    S, shift = (like(xp, a, X.dtype) for a in fmap)
    return xp, X[like(xp, rows)], S, shift


@single_blas_thread
def agop_sums(
    X: Any,
    rows: np.ndarray,
    fmap: FeatureMap,
    centres: Centres,
    beta: np.ndarray,
    spec: kn.KernelSpec,
    diag: bool,
    tile: int,
) -> tuple[np.ndarray, np.ndarray]:
    """AGOP partial sums at the sampled ``rows`` of one block: ((d, d) or (d,), (c, d)), float64 on the host."""
    xp, Xs, S, shift = _sampled_rows(X, rows, fmap)
    G = kn.predictor_gradients(xp, Xs, S, *centres, like(xp, beta), spec, tile, shift=shift)
    outer, gsum = kn.agop_partial(xp, G, diag)
    return to_host(outer), to_host(gsum)


@single_blas_thread
def fact_sums(
    X: Any,
    rows: np.ndarray,
    U: np.ndarray,
    subtract_prediction: bool,
    fmap: FeatureMap,
    centres: Centres,
    beta: np.ndarray,
    spec: kn.KernelSpec,
    diag: bool,
    tile: int,
) -> np.ndarray:
    """FACT partial sum at the sampled ``rows`` of one block: (d, d) or (d,), float64 on the host.

    U (s_b, c) are the per-row output weights (the dual coefficients alpha of these rows), or, with
    ``subtract_prediction``, the targets of these rows, whose residuals U - f(x) are used instead.
    """
    xp, Xs, S, shift = _sampled_rows(X, rows, fmap)
    beta = like(xp, beta)
    U = like(xp, U, xp.float64)
    if subtract_prediction:
        U = U - kn.kernel_matvec(xp, kn.transform(xp, Xs, S, shift), *centres, beta, spec, tile)
    G = kn.predictor_gradients(xp, Xs, S, *centres, beta, spec, tile, shift=shift)
    return to_host(kn.fact_partial(xp, G, U, Xs - shift, diag))


def _relative_residual(K: np.ndarray, alpha: np.ndarray, reg: float, Y: np.ndarray) -> float:
    """max over columns of ||(K + reg I) alpha - Y|| / ||Y|| for K (n, n), alpha and Y (n, c)."""
    residual = K @ alpha + reg * alpha - Y
    y_norm = np.linalg.norm(Y, axis=0)
    return float(np.max(np.linalg.norm(residual, axis=0) / np.where(y_norm > 0, y_norm, 1.0)))


def weighted_ridge_solve(
    K: np.ndarray, Y: np.ndarray, reg: float, weights: np.ndarray | None
) -> tuple[np.ndarray, float]:
    """alpha (n, c) with (K + reg W^-1) alpha = Y, W = diag(weights) (the identity if None), and its relative
    residual; float64.

    Solved in the symmetric form (W^1/2 K W^1/2 + reg I) u = W^1/2 Y, alpha = W^1/2 u (the residual is that of
    this system), so a row of weight 0 gets alpha_i = 0 instead of a division by zero.
    """
    if weights is None:
        alpha = cholesky_solve(K, Y, reg)
        return alpha, _relative_residual(K, alpha, reg, Y)
    s = np.sqrt(weights)[:, None]
    Ks, Ys = s * K * s.T, s * Y
    u = cholesky_solve(Ks, Ys, reg)
    return s * u, _relative_residual(Ks, u, reg, Ys)


@single_blas_thread
def direct_solve(
    centres: Centres, Y: np.ndarray, spec: kn.KernelSpec, reg: float, weights: np.ndarray | None = None
) -> tuple[np.ndarray, float]:
    """Exact (weighted) KRR on one worker: alpha (n, c) with (K + reg W^-1) alpha = Y, and the relative residual
    (see ``weighted_ridge_solve``)."""
    return weighted_ridge_solve(centre_kernel(centres, spec), Y, reg, weights)


@single_blas_thread
def ridge_path(
    centres: Centres, Y: np.ndarray, spec: kn.KernelSpec, regs: tuple[float, ...], weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact (weighted) KRR for every ridge value from one kernel matrix on one worker: alpha_r =
    (K + reg_r W^-1)^-1 Y (see ``weighted_ridge_solve``).

    One Cholesky factorisation per ridge value, not one eigendecomposition for all: on this project's machine
    (one BLAS thread, n = 2000) LAPACK's fastest symmetric eigensolver (evr) took 9.3 s against 2.6 s for five
    Cholesky solves (1.0 s against 0.7 s at n = 1000); the eigendecomposition wins only beyond ~15 ridge values.
    Returns (alphas (r, n, c), relative residuals (r,)), float64.
    """
    K = centre_kernel(centres, spec)
    solutions = [weighted_ridge_solve(K, Y, reg, weights) for reg in regs]
    return np.stack([alpha for alpha, _ in solutions]), np.array([residual for _, residual in solutions])


@single_blas_thread
def falkon_on_one_worker(
    fmap: FeatureMap,
    centres: Centres,
    Y: np.ndarray,
    spec: kn.KernelSpec,
    reg: float,
    cg: dict,
    *blocks: Any,
) -> tuple[np.ndarray, int, float]:
    """The whole FALKON solve in one task, for data whose K_nm (n, m) fits in this worker's memory in float64.

    K_nm is computed once, so a CG step is two GEMVs here instead of a round trip over the cluster. Returns
    (beta (m, c), CG iterations, relative residual); ``cg`` holds falkon_solve's tol, max_iter and refresh_every.
    """
    Ct, c_sq = centres
    xp = namespace_of(Ct)
    K = xp.empty((Y.shape[0], Ct.shape[0]), dtype=xp.float64)
    start = 0
    for block in blocks:  # one block's kernel at a time, written into K (no list of copies to concatenate)
        Xt = _transform(xp, materialise(block), fmap)
        K[start : start + Xt.shape[0]] = kn.kernel_tile(xp, Xt, kn.sq_norms(xp, Xt), Ct, c_sq, spec)
        start += Xt.shape[0]
    result = falkon_solve(
        lambda W: to_host(K.T @ (K @ like(xp, W))),
        centre_kernel(centres, spec),
        to_host(K.T @ like(xp, Y, xp.float64)),
        K.shape[0],
        reg,
        **cg,
    )
    return result.x, result.iterations, result.residual
