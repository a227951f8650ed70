"""Task bodies that run on Dask workers: unpack arguments, call the pure block functions, return NumPy results.

Blocks arrive as NumPy or CuPy arrays; the namespace follows the block, so the same task serves CPU and GPU workers.
The feature map travels as a tuple ``(S, shift)`` (see ``kernels.transform``), the centres as a tuple ``(Ct, c_sq)``:
transformed centres (m, d) and their squared norms (m,). Every task runs BLAS on one thread (see ``blas_threads``); the
centre kernel and the direct solve spread their tiles over the worker's threads instead.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable, Iterator

import numpy as np
from distributed import get_worker

from rfm_dask.core import gradients as gr
from rfm_dask.core import kernels as kn
from rfm_dask.core.backend import like, namespace_of, to_host
from rfm_dask.core.blas_threads import single_blas_thread
from rfm_dask.parallel.row_blocks import materialise
from rfm_dask.solvers.direct import direct_solve as dense_solve
from rfm_dask.solvers.falkon import falkon_solve

Centres = tuple[Any, Any]
FeatureMap = tuple[np.ndarray, np.ndarray]

#: Bytes of a row block's rows transformed at a time by a pass's task (rounded to whole kernel tiles): with the kernel
#: tile, this bounds what a task holds besides its block, whatever the block's (the store's chunk's) size.
SUB_BLOCK_BYTES = 4 << 20


def _transform(xp: Any, X: Any, fmap: FeatureMap) -> Any:
    S, shift = fmap
    return kn.transform(xp, X, like(xp, S, X.dtype), like(xp, shift, X.dtype))


def sub_block_rows(b: int, d: int, m: int, tile: int) -> int:
    """Rows per sub-block of a (b, d) block against m centres: whole kernel tiles of ``tile`` entries, about
    ``SUB_BLOCK_BYTES`` of float32 rows (at least one tile)."""
    tile_rows = max(1, tile // max(m, 1))
    return min(max(b, 1), tile_rows * max(1, SUB_BLOCK_BYTES // (4 * max(d, 1) * tile_rows)))


def _sub_blocks(X: Any, fmap: FeatureMap, m: int, tile: int) -> Iterator[tuple[Any, slice, Any]]:
    """The block's rows in sub-blocks (see ``sub_block_rows``), each transformed only when it is reached:
    (xp, the rows' slice, the transformed rows (b_s, d))."""
    X = materialise(X)
    xp = namespace_of(X)
    step = sub_block_rows(X.shape[0], X.shape[1], m, tile)
    for start in range(0, X.shape[0], step):
        rows = slice(start, min(start + step, X.shape[0]))
        yield xp, rows, _transform(xp, X[rows], fmap)


def _summed(parts: Iterable[Any]) -> Any:
    """The sum of the sub-blocks' partial results, added in order."""
    total = None
    for part in parts:
        total = part if total is None else total + part
    return total


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
    """K(X, C) @ V for one row block, by sub-blocks: (b, c) float64 on the host."""
    Ct, c_sq = centres
    return np.concatenate([to_host(kn.kernel_matvec(xp, Xt, Ct, c_sq, like(xp, V), spec, tile))
                           for xp, _, Xt in _sub_blocks(X, fmap, Ct.shape[0], tile)], axis=0)


@single_blas_thread
def gram_matvec(
    X: Any, fmap: FeatureMap, centres: Centres, W: np.ndarray, spec: kn.KernelSpec, tile: int
) -> np.ndarray:
    """K_b^T (K_b W) for one row block, summed over its sub-blocks: (m, c) float64 on the host."""
    Ct, c_sq = centres
    return to_host(_summed(kn.kernel_gram_matvec(xp, Xt, Ct, c_sq, like(xp, W), spec, tile)
                           for xp, _, Xt in _sub_blocks(X, fmap, Ct.shape[0], tile)))


@single_blas_thread
def kernel_tiles(X: Any, fmap: FeatureMap, centres: Centres, spec: kn.KernelSpec, tile: int) -> list[list[Any]]:
    """One block's kernel against the centres as row tiles in the data's dtype, kept on this worker (see
    ``kernels.kernel_tiles``): one list of tiles per sub-block, (b, m) in all."""
    Ct, c_sq = centres
    return [kn.kernel_tiles(xp, Xt, Ct, c_sq, spec, tile) for xp, _, Xt in _sub_blocks(X, fmap, Ct.shape[0], tile)]


@single_blas_thread
def tiles_gram_matvec(tiles: list[list[Any]], W: np.ndarray) -> np.ndarray:
    """K_b^T (K_b W) from a block's cached tiles (see ``kernel_tiles``), summed over its sub-blocks as
    ``gram_matvec`` sums them, so bit for bit the same: (m, c) float64 on the host."""
    xp = namespace_of(tiles[0][0])
    return to_host(_summed(kn.tiles_gram_matvec(xp, group, like(xp, W), group[0].shape[1]) for group in tiles))


@single_blas_thread
def rmatvec(X: Any, Y: np.ndarray, fmap: FeatureMap, centres: Centres, spec: kn.KernelSpec, tile: int) -> np.ndarray:
    """K_b^T Y_b for one row block and its targets, summed over its sub-blocks: (m, c) float64 on the host."""
    Ct, c_sq = centres
    return to_host(_summed(kn.kernel_rmatvec(xp, Xt, Ct, c_sq, like(xp, Y[rows]), spec, tile)
                           for xp, rows, Xt in _sub_blocks(X, fmap, Ct.shape[0], tile)))


@single_blas_thread
def kernel_columns(X: Any, fmap: FeatureMap, centres: Centres, spec: kn.KernelSpec) -> np.ndarray:
    """The kernel block K(X, C) (b, m) as float64 on the host; for a few landmark columns only."""
    Ct, c_sq = centres
    return np.concatenate([to_host(kn.kernel_tile(xp, Xt, kn.sq_norms(xp, Xt), Ct, c_sq, spec)).astype(np.float64)
                           for xp, _, Xt in _sub_blocks(X, fmap, Ct.shape[0], kn.DEFAULT_TILE)], axis=0)


def _worker_threads() -> int:
    """Threads of the Dask worker running this task (1 outside a worker)."""
    try:
        return int(get_worker().state.nthreads)
    except ValueError:
        return 1


#: Rows per tile of ``centre_kernel`` (a fixed grid, so that K does not depend on the number of threads).
CENTRE_TILE_ROWS = 512


@single_blas_thread
def centre_kernel(centres: Centres, spec: kn.KernelSpec) -> np.ndarray:
    """K(C, C) (m, m) in float64 on the host, exactly symmetric, computed by tiles on all the worker's threads.

    Only the tiles on and below the diagonal are computed (half the distance GEMMs and the exp's of the whole
    matrix); each diagonal tile is symmetrised and each tile below it is mirrored above. The tile grid depends on m
    alone (``CENTRE_TILE_ROWS``), so K does not depend on the number of threads.

    Computed in float64 (m x m is small): a float32 Laplace kernel of near-duplicate centres is off by up to
    sqrt(eps32 |c|^2) / L ~ 1e-3, enough to make K_mm indefinite, which breaks the Cholesky-based solvers.
    """
    Ct = centres[0].astype(np.float64)
    xp = namespace_of(Ct)
    c_sq = kn.sq_norms(xp, Ct)
    m = Ct.shape[0]
    tiles = [slice(s, min(s + CENTRE_TILE_ROWS, m)) for s in range(0, m, CENTRE_TILE_ROWS)]
    K = np.empty((m, m))

    def fill(rows: slice) -> None:  # row tile i against the columns of tiles 0..i, mirrored above the diagonal
        strip = to_host(kn.kernel_tile(xp, Ct[rows], c_sq[rows], Ct[: rows.stop], c_sq[: rows.stop], spec))
        diagonal = strip[:, rows]
        strip[:, rows] = (diagonal + diagonal.T) / 2
        K[rows, : rows.stop] = strip
        K[: rows.start, rows] = strip[:, : rows.start].T

    with ThreadPoolExecutor(_worker_threads()) as pool:
        list(pool.map(fill, tiles[::-1]))  # the longest strips first
    return K


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
    G = gr.predictor_gradients(xp, Xs, S, *centres, like(xp, beta), spec, tile, shift=shift)
    outer, gsum = gr.agop_partial(xp, G, diag)
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
    G = gr.predictor_gradients(xp, Xs, S, *centres, beta, spec, tile, shift=shift)
    return to_host(gr.fact_partial(xp, G, U, Xs - shift, diag))


def weighted_ridge_solve(
    K: np.ndarray, Y: np.ndarray, reg: float, weights: np.ndarray | None, threads: int = 1
) -> tuple[np.ndarray, float]:
    """alpha (n, c) with (K + reg W^-1) alpha = Y, W = diag(weights) (the identity if None), and its relative
    residual; float64, on ``threads`` threads (see ``solvers.direct.direct_solve``: the result does not depend on
    their number).

    Solved in the symmetric form (W^1/2 K W^1/2 + reg I) u = W^1/2 Y, alpha = W^1/2 u (the residual is that of
    this system), so a row of weight 0 gets alpha_i = 0 instead of a division by zero.
    """
    if weights is None:
        solution = dense_solve(K, Y, reg, threads)
        return solution.x, solution.residual
    s = np.sqrt(weights)[:, None]
    solution = dense_solve(s * K * s.T, s * Y, reg, threads)
    return s * solution.x, solution.residual


@single_blas_thread
def direct_solve(
    centres: Centres, Y: np.ndarray, spec: kn.KernelSpec, reg: float, weights: np.ndarray | None = None
) -> tuple[np.ndarray, float]:
    """Exact (weighted) KRR on one worker, on all its threads: alpha (n, c) with (K + reg W^-1) alpha = Y, and the
    relative residual (see ``weighted_ridge_solve``)."""
    return weighted_ridge_solve(centre_kernel(centres, spec), Y, reg, weights, _worker_threads())


@single_blas_thread
def ridge_path(
    centres: Centres, Y: np.ndarray, spec: kn.KernelSpec, regs: tuple[float, ...], weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact (weighted) KRR for every ridge value from one kernel matrix on one worker: alpha_r =
    (K + reg_r W^-1)^-1 Y (see ``weighted_ridge_solve``).

    One solve per ridge value, not one eigendecomposition for all: on this project's machine (one BLAS thread,
    n = 2000) LAPACK's fastest symmetric eigensolver (evr) took 9.3 s against 2.6 s for five Cholesky solves (1.0 s
    against 0.7 s at n = 1000); the eigendecomposition wins only beyond ~15 ridge values.
    Returns (alphas (r, n, c), relative residuals (r,)), float64.
    """
    K, threads = centre_kernel(centres, spec), _worker_threads()
    solutions = [weighted_ridge_solve(K, Y, reg, weights, threads) for reg in regs]
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
