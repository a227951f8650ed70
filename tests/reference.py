"""Dense float64 NumPy reference for the Mahalanobis kernels, predictor, gradients and AGOP.

Written independently of ``rfm_dask`` (nothing here imports it) so the tests compare two implementations:

* distances by direct broadcasting ``x[:, None, :] - c[None, :, :]`` with a full PSD M:
  r = sqrt((x - c)^T M (x - c))  (a diagonal M given as a (d,) vector is expanded to ``np.diag``);
  for the L1 kernel, with a diagonal M only: r = sum_i sqrt(M_ii) |x_i - c_i|;
* Laplace and L1 Laplace k = exp(-(r / L)^q), Gaussian k = exp(-r^2 / (2 L^2));
* predictor f(X) = K(X, C) beta;
* gradients of f by central finite differences (only valid at points that are not centres, where the Laplace
  kernel is smooth), and the AGOP (1/n) sum_i sum_l grad f_l(x_i) grad f_l(x_i)^T built from them.
"""

from __future__ import annotations

import numpy as np

FD_STEP = 1e-5


def as_full(M: np.ndarray) -> np.ndarray:
    """A (d, d) float64 matrix from a full M or a (d,) diagonal."""
    M = np.asarray(M, dtype=np.float64)
    return np.diag(M) if M.ndim == 1 else M


def sqrtm_psd(M: np.ndarray) -> np.ndarray:
    """Symmetric square root of a PSD matrix (float64); elementwise sqrt for a (d,) diagonal."""
    M = np.asarray(M, dtype=np.float64)
    if M.ndim == 1:
        return np.sqrt(M)
    vals, vecs = np.linalg.eigh((M + M.T) / 2)
    return (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T


def distances(X: np.ndarray, C: np.ndarray, M: np.ndarray) -> np.ndarray:
    """Mahalanobis distances r (n, m) by direct differences: sqrt((x - c)^T M (x - c))."""
    X = np.asarray(X, dtype=np.float64)
    C = np.asarray(C, dtype=np.float64)
    diff = X[:, None, :] - C[None, :, :]  # (n, m, d)
    quad = np.einsum("nmi,ij,nmj->nm", diff, as_full(M), diff)
    return np.sqrt(np.clip(quad, 0.0, None))


def l1_distances(X: np.ndarray, C: np.ndarray, M: np.ndarray) -> np.ndarray:
    """L1 distances r (n, m) = sum_i sqrt(M_ii) |x_i - c_i| for a diagonal M, (d,) or a diagonal (d, d) matrix."""
    M = np.asarray(M, dtype=np.float64)
    if M.ndim == 2:
        if np.any(M != np.diag(np.diag(M))):
            raise ValueError("the L1 kernel is defined for a diagonal M only")
        M = np.diag(M)
    diff = np.asarray(X, dtype=np.float64)[:, None, :] - np.asarray(C, dtype=np.float64)[None, :, :]
    return np.abs(diff) @ np.sqrt(M)


def kernel_from_r(r: np.ndarray, kind: str, bandwidth: float, exponent: float = 1.0) -> np.ndarray:
    if kind in ("laplace", "l1_laplace"):
        return np.exp(-((r / bandwidth) ** exponent))
    if kind == "gaussian":
        return np.exp(-(r**2) / (2.0 * bandwidth**2))
    raise ValueError(kind)


def kernel(X, C, M, kind: str, bandwidth: float, exponent: float = 1.0) -> np.ndarray:
    """Kernel matrix K(X, C) of shape (n, m), float64."""
    r = l1_distances(X, C, M) if kind == "l1_laplace" else distances(X, C, M)
    return kernel_from_r(r, kind, bandwidth, exponent)


def predictor(X, C, beta, M, kind: str, bandwidth: float, exponent: float = 1.0) -> np.ndarray:
    """f(X) = K(X, C) beta: (n, c) for beta (m, c)."""
    return kernel(X, C, M, kind, bandwidth, exponent) @ np.asarray(beta, dtype=np.float64)


def fd_gradients(X, C, beta, M, kind: str, bandwidth: float, exponent: float = 1.0, h: float = FD_STEP):
    """Central finite-difference gradients G (n, c, d), G[i, l] = grad f_l(x_i). X must avoid the centres."""
    X = np.asarray(X, dtype=np.float64)
    n, d = X.shape
    beta = np.asarray(beta, dtype=np.float64)
    G = np.empty((n, beta.shape[1], d))
    for k in range(d):
        e = np.zeros(d)
        e[k] = h
        fp = predictor(X + e, C, beta, M, kind, bandwidth, exponent)
        fm = predictor(X - e, C, beta, M, kind, bandwidth, exponent)
        G[:, :, k] = (fp - fm) / (2.0 * h)
    return G


def agop(X, C, beta, M, kind: str, bandwidth: float, exponent: float = 1.0, centre: bool = False):
    """AGOP (d, d) = (1/n) sum_i sum_l g g^T from finite-difference gradients; ``centre`` removes each output's
    mean gradient first."""
    G = fd_gradients(X, C, beta, M, kind, bandwidth, exponent)
    if centre:
        G = G - G.mean(axis=0, keepdims=True)
    flat = G.reshape(-1, G.shape[-1])
    return flat.T @ flat / G.shape[0]
