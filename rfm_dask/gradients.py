"""Pure block functions for the input gradients of a kernel predictor f(x) = K(x, C) beta, and the AGOP and FACT
partial sums taken from them. Over an array namespace ``xp`` (NumPy or CuPy); notation as in ``kernels``."""

from __future__ import annotations

from typing import Any

from .kernel_spec import KernelSpec
from .kernels import DEFAULT_TILE, kernel_from_distance, pair_distances, row_tiles, sq_norms, transform


def gradient_weights(xp: Any, a: Any, spec: KernelSpec) -> Any:
    """Weights w (b, m) from the distance term ``a`` of ``spec`` (overwritten): dk/dx = S w (c~ - x~) for the L2
    kernels, dk/dx = S w sign(c~ - x~) for the L1 kernel.

    Laplace kernels: w = (q / L^q) k r^(q-p) (p = 2 for L2, 1 for L1); Gaussian: w = k / L^2. Pairs at distance 0
    (the self-term and duplicate rows, exactly 0 by ``pair_distances``) get w = 0 instead of a division by zero.
    """
    if spec.kind == "gaussian":
        w = kernel_from_distance(xp, a, spec)
        w *= 1.0 / spec.bandwidth**2
        return w
    q, L, p = spec.exponent, spec.bandwidth, spec.distance_power
    duplicate = a == 0
    a[duplicate] = 1.0  # any positive value: these weights are zeroed below
    r_pow = xp.power(a, q / p - 1.0)  # r^(q-p)
    w = kernel_from_distance(xp, a, spec)
    w *= r_pow
    w *= q / L**q
    w[duplicate] = 0
    return w


def predictor_gradients(
    xp: Any,
    X: Any,
    S: Any,
    Ct: Any,
    c_sq: Any,
    beta: Any,
    spec: KernelSpec,
    tile: int = DEFAULT_TILE,
    shift: Any = None,
) -> Any:
    """Input gradients of f(x) = K(x, C) beta at the rows of X.

    X (b, d) raw rows, S (d, d) or (d,) ((d,) only for the L1 kernel), Ct (m, d) transformed centres, beta (m, c),
    shift as in ``transform``. Returns G (b, c, d) float64 with G[i, l] = grad f_l(x_i) in the original coordinates.
    L1 kernel: the subgradient with sign(0) = 0 where a coordinate of x~ equals that of a centre.
    """
    if spec.l1 and S.ndim != 1:
        raise ValueError(f"the L1 kernel needs a diagonal feature matrix: S of shape (d,), got {S.shape}")
    Xt = transform(xp, X, S, shift)
    x_sq = sq_norms(xp, Xt)
    b, c = Xt.shape[0], beta.shape[1]
    beta = beta.astype(xp.float64, copy=False)
    Gt = xp.zeros((b, c, Xt.shape[1]), dtype=xp.float64)
    Xt64, Ct64 = (None, None) if spec.l1 else (Xt.astype(xp.float64), Ct.astype(xp.float64))
    for rows in row_tiles(b, Ct.shape[0], tile):
        W = gradient_weights(xp, pair_distances(xp, Xt[rows], x_sq[rows], Ct, c_sq, spec), spec).astype(xp.float64)
        if spec.l1:
            _l1_tile_gradients(xp, W, beta, Xt[rows], Ct, Gt[rows])
            continue
        Wb = W @ beta  # (r, c)
        for l in range(c):  # summed in float64 for the same reason as in kernel_matvec
            Gt[rows, l, :] = W @ (beta[:, l, None] * Ct64) - Wb[:, l, None] * Xt64[rows]
    # grad = S (c~ - x~)-weighted sum; S is symmetric, so for row vectors G = G~ S.
    S64 = S.astype(xp.float64)
    return Gt * S64 if S.ndim == 1 else Gt @ S64


def _l1_tile_gradients(xp: Any, W: Any, beta: Any, Xt: Any, Ct: Any, Gt: Any) -> None:
    """Gt[i, l, k] = sum_j W_ij beta_jl sign(c~_jk - x~_ik) for a row tile: W (r, m) float64 weights, beta (m, c)
    float64, Xt (r, d), Ct (m, d); written into Gt (r, c, d). One elementwise pass and one (r, m) x (m, c) product
    per feature (the sign of a float difference is exact, so ties give 0)."""
    signed = xp.empty_like(W)
    XT, CT = xp.ascontiguousarray(Xt.T), xp.ascontiguousarray(Ct.T)
    for k, (x_k, c_k) in enumerate(zip(XT, CT)):
        xp.multiply(W, xp.sign(c_k[None, :] - x_k[:, None]), out=signed)
        Gt[:, :, k] = signed @ beta


def agop_partial(xp: Any, G: Any, diag: bool) -> tuple[Any, Any]:
    """Partial AGOP sums of gradients G (b, c, d).

    Returns (sum_i sum_l g g^T as (d, d), or sum of g^2 as (d,) when ``diag``) and sum_i g as (c, d) for centring.
    """
    flat = G.reshape(-1, G.shape[-1])
    outer = xp.einsum("ij,ij->j", flat, flat) if diag else flat.T @ flat
    return outer, G.sum(axis=0)


def fact_partial(xp: Any, G: Any, U: Any, X: Any, diag: bool) -> Any:
    """Partial FACT sum of gradients G (b, c, d), per-row output weights U (b, c) and (shifted) rows X (b, d).

    Returns sum_i (sum_l U_il g_il) x_i^T as (d, d) float64, or its diagonal (d,) when ``diag``.
    """
    V = xp.einsum("ild,il->id", G, U.astype(xp.float64, copy=False))
    X = X.astype(xp.float64, copy=False)
    return xp.einsum("id,id->d", V, X) if diag else V.T @ X
