"""Pure block functions for Mahalanobis kernels.

Every function takes an array namespace ``xp`` (``numpy`` or ``cupy``) and plain arrays; none knows about Dask.
Tiles are computed in the dtype of the data (float32 in production); reductions over tiles accumulate in float64.
On CuPy, the kernel products (``kernel_matvec``, ``kernel_rmatvec``, ``kernel_gram_matvec``) take the route that
``gpu_route`` picks: the fused CUDA tile of ``cuda_tiles``, or the tiled code below, optionally with TF32 GEMMs.

Notation: ``X`` is a (b, d) row block, ``C`` the (m, d) centres, ``S`` the square root of the feature matrix M,
either (d, d) symmetric or (d,) for a diagonal M. A tilde means "multiplied by S": ``Xt = X S``.

The L2 kernels (Laplace, Gaussian) take squared distances from a GEMM; the L1 (product) Laplace kernel takes L1
distances sum_i |x~_i - c~_i| from elementwise passes over the features (no GEMM form) and needs a diagonal M.
Functions that serve both speak of the pair "distance term" a: r^2 for the L2 kernels, r for the L1 kernel.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

from rfm_dask.core import cuda_tiles
from rfm_dask.core.kernel_spec import KernelSpec

#: Pairs whose GEMM-formula squared distance is below NEAR_FACTOR * eps * (squared norms) are recomputed directly.
NEAR_FACTOR = 1024
#: Points closer than this many ulps of their norms (after their transforms' rounding) are duplicates: distance 0.
DUPLICATE_ULPS = 64
#: Near pairs recomputed per batch (bounds the temporary (pairs, d) difference array).
NEAR_CHUNK = 1 << 16

#: Kernel entries per tile: a block function holds one (rows x m) tile in the data's dtype.
DEFAULT_TILE = 1 << 22
#: Kernel entries widened to float64 at a time for the products with coefficients: a chunk small enough to stay in
#: the core's cache for both GEMVs of K^T (K W) (measured on this project's 2-core machine: 6x faster per tile than
#: widening a whole 4M-entry tile, which makes the GEMVs memory-bound).
WIDEN_ELEMENTS = 1 << 16


def transform(xp: Any, X: Any, S: Any, shift: Any = None) -> Any:
    """Map rows into the learned feature space: (b, d) -> (b, d), ``(X - shift) S``, or ``(X - shift) * s``.

    The kernels are translation invariant, so ``shift`` (d,) changes no kernel value; it is the centres' mean, which
    keeps ||x||^2 + ||c||^2 - 2 x.c from cancelling catastrophically in float32 on data far from the origin.
    """
    if shift is not None:
        X = X - shift
    if S.ndim == 1:
        return X * S
    return X @ S


def sq_norms(xp: Any, Xt: Any) -> Any:
    """Squared row norms (b,) of a transformed block."""
    return xp.einsum("ij,ij->i", Xt, Xt)


def sq_distances(xp: Any, Xt: Any, x_sq: Any, Ct: Any, c_sq: Any) -> Any:
    """Squared distances (b, m), accurate to a few ulps also for near-duplicate pairs.

    One GEMM of augmented operands, [-2 x, |x|^2, 1] . [c, 1, |c|^2], gives |x|^2 + |c|^2 - 2 x.c with no elementwise
    pass for the norms. That formula loses about eps * (|x|^2 + |c|^2) to cancellation, which for close pairs is
    most of d2 (and, after the square root of a Laplace kernel, a kernel error of up to 1e-3 that can make K
    indefinite). Pairs below ``NEAR_FACTOR * eps * (|x|^2 + max |c|^2)`` are therefore recomputed directly as
    |x - c|^2, and those closer than ``DUPLICATE_ULPS`` ulps of their norms are set to 0: the self-term and duplicate
    rows get exactly 0 (and kernel value 1). Negative values are clamped to 0.
    """
    b, m = Xt.shape[0], Ct.shape[0]
    ones_b, ones_m = xp.ones((b, 1), dtype=Xt.dtype), xp.ones((m, 1), dtype=Ct.dtype)
    A = xp.concatenate([-2 * Xt, x_sq[:, None].astype(Xt.dtype), ones_b], axis=1)
    B = xp.concatenate([Ct, ones_m, c_sq[:, None].astype(Ct.dtype)], axis=1)
    d2 = A @ B.T
    if d2.size:
        eps = xp.finfo(d2.dtype).eps
        near_floor = NEAR_FACTOR * eps * (x_sq + c_sq.max())
        near = d2 < near_floor[:, None]
        # (row, column) of each near pair in row-major order; 1-D flatnonzero is ~10x faster than 2-D nonzero here
        rows, cols = xp.divmod(xp.flatnonzero(near), m) if bool(near.any()) else ((), ())
        for start in range(0, len(rows), NEAR_CHUNK):
            i, j = rows[start : start + NEAR_CHUNK], cols[start : start + NEAR_CHUNK]
            diff = Xt[i] - Ct[j]
            exact = xp.einsum("kd,kd->k", diff, diff)
            # rows that differ only by the rounding of their transforms are the same point
            exact[exact <= (DUPLICATE_ULPS * eps) ** 2 * (x_sq[i] + c_sq[j])] = 0
            d2[i, j] = exact
    return xp.maximum(d2, 0, out=d2)


def l1_distances(xp: Any, Xt: Any, Ct: Any) -> Any:
    """L1 distances sum_i |x~_i - c~_i| (b, m) in the data's dtype, one elementwise pass per feature (no GEMM).

    Memory: the (b, m) result and one (b, m) temporary. The difference form does not cancel: rows equal after the
    (elementwise, for a diagonal M) transform get exactly 0, so the self-term and duplicate rows need no fix-up.
    """
    b, m = Xt.shape[0], Ct.shape[0]
    r = xp.zeros((b, m), dtype=Xt.dtype)
    diff = xp.empty_like(r)
    XT, CT = xp.ascontiguousarray(Xt.T), xp.ascontiguousarray(Ct.T)  # (d, b), (d, m): one contiguous row per feature
    for x_k, c_k in zip(XT, CT):
        xp.subtract(x_k[:, None], c_k[None, :], out=diff)
        r += xp.abs(diff, out=diff)
    return r


def pair_distances(xp: Any, Xt: Any, x_sq: Any, Ct: Any, c_sq: Any, spec: KernelSpec) -> Any:
    """The distance term a (b, m) of ``spec``: squared L2 distances (``sq_distances``), or L1 distances
    (``l1_distances``, which ignores the squared norms) for the L1 kernel. Exactly 0 for the self-term and
    duplicates."""
    if spec.l1:
        return l1_distances(xp, Xt, Ct)
    return sq_distances(xp, Xt, x_sq, Ct, c_sq)


def kernel_from_distance(xp: Any, a: Any, spec: KernelSpec) -> Any:
    """Kernel values from the distance term a = r^p of ``spec`` (see ``KernelSpec.distance_power``), overwriting
    ``a``: (b, m) -> (b, m). Laplace kernels: exp(-a^(q/p) / L^q); Gaussian: exp(-a / (2 L^2))."""
    if spec.kind == "gaussian":
        a *= -0.5 / spec.bandwidth**2
        return xp.exp(a, out=a)
    power = spec.exponent / spec.distance_power
    if power == 0.5:
        xp.sqrt(a, out=a)
    elif power != 1.0:
        xp.power(a, power, out=a)
    a *= -((1.0 / spec.bandwidth) ** spec.exponent)
    return xp.exp(a, out=a)


def kernel_tile(xp: Any, Xt: Any, x_sq: Any, Ct: Any, c_sq: Any, spec: KernelSpec) -> Any:
    """Kernel tile K(X, C) of shape (b, m) in the data's dtype (``x_sq``, ``c_sq``: squared norms, unused by the L1
    kernel)."""
    return kernel_from_distance(xp, pair_distances(xp, Xt, x_sq, Ct, c_sq, spec), spec)


def row_tiles(b: int, m: int, tile: int):
    """Row slices of a (b, m) kernel block, each at most ``tile`` elements (at least one row)."""
    step = max(1, tile // max(m, 1))
    for start in range(0, b, step):
        yield slice(start, min(start + step, b))


def gpu_route(xp: Any, Xt: Any, Ct: Any, V: Any, spec: KernelSpec) -> str | None:
    """How a kernel product of Xt (b, d), Ct (m, d) and V (m or b, c) runs: None for the tiled code of this module
    (always on NumPy, and for the L1 kernel, whose tiles are CuPy elementwise passes with no GEMM), "fused" for
    ``cuda_tiles`` (CuPy, ``spec.gpu_fused``, float32 data, c <= cuda_tiles.MAX_COLUMNS) or "tf32" for the tiled code
    with its float32 GEMMs in TF32 (CuPy, ``spec.gpu_precision == "tf32"``: faster distance GEMMs, but squared
    distances off by ~1e-3 of the squared norms, so an explicit opt-in)."""
    if getattr(xp, "__name__", None) != "cupy" or spec.l1:
        return None
    if spec.gpu_precision == "tf32":
        return "tf32"
    if spec.gpu_fused and cuda_tiles.handles(Xt, Ct, V):
        return "fused"
    return None


def _product(
    tiled: Callable, fused: Callable, xp: Any, Xt: Any, Ct: Any, c_sq: Any, V: Any, spec: KernelSpec, tile: int
) -> Any:
    """``tiled(xp, Xt, Ct, c_sq, V, spec, tile)``, or ``fused(Xt, Ct, V, spec)``, as ``gpu_route`` says."""
    route = gpu_route(xp, Xt, Ct, V, spec)
    if route == "fused":
        return fused(Xt, Ct, V, spec)
    if route == "tf32":
        with cuda_tiles.tf32_gemms():
            return tiled(xp, Xt, Ct, c_sq, V, spec, tile)
    return tiled(xp, Xt, Ct, c_sq, V, spec, tile)


def kernel_matvec(
    xp: Any, Xt: Any, Ct: Any, c_sq: Any, V: Any, spec: KernelSpec, tile: int = DEFAULT_TILE
) -> Any:
    """K(X, C) @ V for a (b, d) block against (m, d) centres and V (m, c); returns (b, c) float64.

    Works in row tiles of at most ``tile`` kernel entries, so memory is bounded by the tile, not by b or m. Kernel
    values are computed in the data's dtype; products with V are summed in float64, because KRR coefficients are
    large and of mixed sign, and a float32 sum of K alpha loses about eps32 * sum|K alpha| / |f| (1e-4 relative at
    reg = 1e-3). On CuPy see ``gpu_route`` (the fused route holds no tile at all).
    """
    return _product(_tiled_matvec, cuda_tiles.matvec, xp, Xt, Ct, c_sq, V, spec, tile)


def _tiled_matvec(xp: Any, Xt: Any, Ct: Any, c_sq: Any, V: Any, spec: KernelSpec, tile: int) -> Any:
    V = V.astype(xp.float64, copy=False)
    out = xp.empty((Xt.shape[0], V.shape[1]), dtype=xp.float64)
    for rows, K in _tiles(xp, Xt, Ct, c_sq, spec, tile):
        out_rows = out[rows]  # a view: written in place
        for part, K64 in _widened(xp, K):
            out_rows[part] = K64 @ V
    return out


def _widened(xp: Any, K: Any) -> Iterator[tuple[slice, Any]]:
    """Row chunks of a (b, m) kernel tile as float64 copies of at most ``WIDEN_ELEMENTS`` entries: (rows, chunk).

    Every chunk is written into one buffer (use it before taking the next): a fresh array per chunk would be
    mmapped and page-faulted each time in Dask worker processes, whose malloc trim threshold disables reuse.
    """
    step = max(1, WIDEN_ELEMENTS // max(K.shape[1], 1))
    buffer = xp.empty((min(step, K.shape[0]), K.shape[1]), dtype=xp.float64)
    for rows in row_tiles(K.shape[0], K.shape[1], WIDEN_ELEMENTS):
        chunk = buffer[: rows.stop - rows.start]
        chunk[...] = K[rows]
        yield rows, chunk


def kernel_gram_matvec(
    xp: Any, Xt: Any, Ct: Any, c_sq: Any, W: Any, spec: KernelSpec, tile: int = DEFAULT_TILE
) -> Any:
    """K_b^T (K_b W) with K_b = K(X, C) for a (b, d) block and W (m, c): returns (m, c) float64.

    One kernel evaluation per entry: each row tile of K_b is used for K_r W and then for K_r^T (K_r W). On CuPy see
    ``gpu_route`` (the fused route evaluates each entry twice and holds no tile).
    """
    return _product(_tiled_gram_matvec, cuda_tiles.gram_matvec, xp, Xt, Ct, c_sq, W, spec, tile)


def _tiled_gram_matvec(xp: Any, Xt: Any, Ct: Any, c_sq: Any, W: Any, spec: KernelSpec, tile: int) -> Any:
    return tiles_gram_matvec(xp, (K for _, K in _tiles(xp, Xt, Ct, c_sq, spec, tile)), W, Ct.shape[0])


def kernel_rmatvec(
    xp: Any, Xt: Any, Ct: Any, c_sq: Any, Y: Any, spec: KernelSpec, tile: int = DEFAULT_TILE
) -> Any:
    """K(X, C)^T Y for a (b, d) block and its targets Y (b, c): returns (m, c) float64. On CuPy see ``gpu_route``."""
    return _product(_tiled_rmatvec, cuda_tiles.rmatvec, xp, Xt, Ct, c_sq, Y, spec, tile)


def _tiled_rmatvec(xp: Any, Xt: Any, Ct: Any, c_sq: Any, Y: Any, spec: KernelSpec, tile: int) -> Any:
    Y = Y.astype(xp.float64, copy=False)
    out = xp.zeros((Ct.shape[0], Y.shape[1]), dtype=xp.float64)
    for rows, K in _tiles(xp, Xt, Ct, c_sq, spec, tile):
        Y_rows = Y[rows]
        for part, K64 in _widened(xp, K):
            out += K64.T @ Y_rows[part]
    return out


def _tiles(xp: Any, Xt: Any, Ct: Any, c_sq: Any, spec: KernelSpec, tile: int) -> Iterator[tuple[slice, Any]]:
    """K(X, C) for a (b, d) block, one row tile at a time: (rows, (b_t, m) tile in the data's dtype), at most
    ``tile`` entries each."""
    x_sq = sq_norms(xp, Xt)
    for rows in row_tiles(Xt.shape[0], Ct.shape[0], tile):
        yield rows, kernel_tile(xp, Xt[rows], x_sq[rows], Ct, c_sq, spec)


def kernel_tiles(xp: Any, Xt: Any, Ct: Any, c_sq: Any, spec: KernelSpec, tile: int = DEFAULT_TILE) -> list[Any]:
    """K(X, C) for a (b, d) block as the row tiles that ``kernel_gram_matvec`` computes one at a time, all held (in
    the data's dtype, float32 in production), to be reused: a list of (b_t, m) arrays with sum b_t = b."""
    return [K for _, K in _tiles(xp, Xt, Ct, c_sq, spec, tile)]


def tiles_gram_matvec(xp: Any, tiles: Iterable[Any], W: Any, m: int) -> Any:
    """sum_t K_t^T (K_t W) over row tiles K_t (b_t, m), widened to float64 chunk by chunk, and W (m, c): (m, c)
    float64. On held tiles this is bit for bit what the tiled ``kernel_gram_matvec`` returns for the same block
    (same tiles, products and order)."""
    W = W.astype(xp.float64, copy=False)
    out = xp.zeros((m, W.shape[1]), dtype=xp.float64)
    for K in tiles:
        for _, K64 in _widened(xp, K):
            out += K64.T @ (K64 @ W)
    return out
