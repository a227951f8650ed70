"""Pure block functions for Mahalanobis kernels.

Every function takes an array namespace ``xp`` (``numpy`` or ``cupy``) and plain arrays; none knows about Dask.
Tiles are computed in the dtype of the data (float32 in production); reductions over tiles accumulate in float64.

Notation: ``X`` is a (b, d) row block, ``C`` the (m, d) centres, ``S`` the square root of the feature matrix M,
either (d, d) symmetric or (d,) for a diagonal M. A tilde means "multiplied by S": ``Xt = X S``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

KERNELS = ("laplace", "gaussian")

#: Column-tile width: a (b x TILE) kernel tile is the largest temporary a block function allocates.
DEFAULT_TILE = 2048


@dataclass(frozen=True)
class KernelSpec:
    """Which kernel, its bandwidth L and (Laplace only) its exponent q.

    Laplace: k = exp(-(r / L)^q), 0 < q <= 2.  Gaussian: k = exp(-r^2 / (2 L^2)).
    """

    kind: str = "laplace"
    bandwidth: float = 10.0
    exponent: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {self.kind!r}")
        if not self.bandwidth > 0:
            raise ValueError(f"bandwidth must be > 0, got {self.bandwidth!r}")
        if self.kind == "laplace" and not 0 < self.exponent <= 2:
            raise ValueError(f"exponent must be in (0, 2], got {self.exponent!r}")


def transform(xp: Any, X: Any, S: Any) -> Any:
    """Map rows into the learned feature space: (b, d) -> (b, d), ``X S`` (S symmetric) or ``X * s`` (diagonal)."""
    if S.ndim == 1:
        return X * S
    return X @ S


def sq_norms(xp: Any, Xt: Any) -> Any:
    """Squared row norms (b,) of a transformed block."""
    return xp.einsum("ij,ij->i", Xt, Xt)


def sq_distances(xp: Any, Xt: Any, x_sq: Any, Ct: Any, c_sq: Any) -> Any:
    """Squared distances (b, m) from ||x||^2 + ||c||^2 - 2 x.c, clamped at 0."""
    d2 = Xt @ Ct.T
    d2 *= -2
    d2 += x_sq[:, None]
    d2 += c_sq[None, :]
    return xp.maximum(d2, 0, out=d2)


def kernel_from_sq(xp: Any, d2: Any, spec: KernelSpec) -> Any:
    """Kernel values from squared distances, overwriting ``d2``: (b, m) -> (b, m)."""
    if spec.kind == "gaussian":
        d2 *= -0.5 / spec.bandwidth**2
    elif spec.exponent == 1.0:
        xp.sqrt(d2, out=d2)
        d2 *= -1.0 / spec.bandwidth
    else:
        xp.power(d2, 0.5 * spec.exponent, out=d2)
        d2 *= -(1.0 / spec.bandwidth) ** spec.exponent
    return xp.exp(d2, out=d2)


def kernel_tile(xp: Any, Xt: Any, x_sq: Any, Ct: Any, c_sq: Any, spec: KernelSpec) -> Any:
    """Kernel tile K(X, C) of shape (b, m) in the data's dtype."""
    return kernel_from_sq(xp, sq_distances(xp, Xt, x_sq, Ct, c_sq), spec)


def _tiles(m: int, tile: int):
    for start in range(0, m, tile):
        yield slice(start, min(start + tile, m))


def kernel_matvec(
    xp: Any, Xt: Any, Ct: Any, c_sq: Any, V: Any, spec: KernelSpec, tile: int = DEFAULT_TILE
) -> Any:
    """K(X, C) @ V for a (b, d) block against (m, d) centres and V of shape (m, c); returns (b, c) float64.

    Works tile by tile over the centres so only a (b, tile) kernel block is ever held.
    """
    x_sq = sq_norms(xp, Xt)
    out = xp.zeros((Xt.shape[0], V.shape[1]), dtype=xp.float64)
    Vt = V.astype(Xt.dtype, copy=False)
    for cols in _tiles(Ct.shape[0], tile):
        K = kernel_tile(xp, Xt, x_sq, Ct[cols], c_sq[cols], spec)
        out += K @ Vt[cols]
    return out


def gradient_weights(xp: Any, d2: Any, x_sq: Any, c_sq: Any, spec: KernelSpec) -> Any:
    """Weights w (b, m) with dk/dx = S w (c~ - x~), overwriting ``d2``.

    Laplace: w = (q / L^q) k r^(q-2); Gaussian: w = k / L^2.  Pairs whose distance is below what the working precision
    resolves (the self-term and duplicate rows) get w = 0 instead of a division by a rounding error.
    """
    eps = xp.finfo(d2.dtype).eps
    duplicate = d2 <= 1e-20 + 32 * eps * (x_sq[:, None] + c_sq[None, :])
    if spec.kind == "gaussian":
        w = kernel_from_sq(xp, d2, spec)
        w *= 1.0 / spec.bandwidth**2
    else:
        q, L = spec.exponent, spec.bandwidth
        d2[duplicate] = 1.0  # any positive value: these entries are zeroed below
        r_pow = xp.power(d2, 0.5 * q - 1.0)  # r^(q-2)
        w = kernel_from_sq(xp, d2, spec)
        w *= r_pow
        w *= q / L**q
    w[duplicate] = 0
    return w


def predictor_gradients(
    xp: Any, X: Any, S: Any, Ct: Any, c_sq: Any, beta: Any, spec: KernelSpec, tile: int = DEFAULT_TILE
) -> Any:
    """Input gradients of f(x) = K(x, C) beta at the rows of X.

    X (b, d) raw rows, S (d, d) or (d,), Ct (m, d) transformed centres, beta (m, c).
    Returns G (b, c, d) float64 with G[i, l] = grad f_l(x_i) in the original coordinates.
    """
    Xt = transform(xp, X, S)
    x_sq = sq_norms(xp, Xt)
    b, c = Xt.shape[0], beta.shape[1]
    beta_t = beta.astype(Xt.dtype, copy=False)
    Gt = xp.zeros((b, c, Xt.shape[1]), dtype=xp.float64)
    for cols in _tiles(Ct.shape[0], tile):
        W = gradient_weights(xp, sq_distances(xp, Xt, x_sq, Ct[cols], c_sq[cols]), x_sq, c_sq[cols], spec)
        Wb = W @ beta_t[cols]  # (b, c)
        for l in range(c):
            Gt[:, l, :] += W @ (beta_t[cols, l, None] * Ct[cols])
            Gt[:, l, :] -= Wb[:, l, None] * Xt
    # grad = S (c~ - x~)-weighted sum; S is symmetric, so for row vectors G = G~ S.
    S64 = S.astype(xp.float64)
    return Gt * S64 if S.ndim == 1 else Gt @ S64


def agop_partial(xp: Any, G: Any, diag: bool) -> tuple[Any, Any]:
    """Partial AGOP sums of gradients G (b, c, d).

    Returns (sum_i sum_l g g^T as (d, d), or sum of g^2 as (d,) when ``diag``) and sum_i g as (c, d) for centring.
    """
    flat = G.reshape(-1, G.shape[-1])
    outer = xp.einsum("ij,ij->j", flat, flat) if diag else flat.T @ flat
    return outer, G.sum(axis=0)
