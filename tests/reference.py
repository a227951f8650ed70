"""Dense float64 NumPy reference for the Mahalanobis kernels, predictor, gradients and AGOP.

Written independently of ``rfm_dask`` (nothing here imports it) so the tests compare two implementations:

* distances by direct broadcasting ``x[:, None, :] - c[None, :, :]`` with a full PSD M:
  r = sqrt((x - c)^T M (x - c))  (a diagonal M given as a (d,) vector is expanded to ``np.diag``);
  for the L1 kernel, with a diagonal M only: r = sum_i sqrt(M_ii) |x_i - c_i|;
* Laplace and L1 Laplace k = exp(-(r / L)^q), Gaussian k = exp(-r^2 / (2 L^2));
* predictor f(X) = K(X, C) beta;
* gradients of f by central finite differences (only valid at points that are not centres, where the Laplace
  kernel is smooth), and the AGOP (1/n) sum_i sum_l grad f_l(x_i) grad f_l(x_i)^T built from them;
* at training rows that are centres, gradients of the predictor without that centre (the masked self-term);
* the RFM loop itself (``rfm_iterations``): a dense solve (exact, or Nystrom on given centre rows), then the next M
  from AGOP (power, centring) or FACT, normalised by its largest entry;
* the target encoding of the estimators (``encode_targets``): the one place to change when it changes;
* a first-order bound on the float32 rounding of kernel entries (``float32_kernel_error``), to set tolerances.
"""

from __future__ import annotations

import numpy as np

FD_STEP = 1e-5
EPS32 = float(np.finfo(np.float32).eps)


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


def masked_gradients(X, C, centre_of_row, beta, M, kind: str, bandwidth: float, exponent: float = 1.0):
    """Gradients (n, c, d) of f(x) = K(x, C) beta at each row x_i of X, leaving out centre ``centre_of_row[i]``
    (the masked self-term; -1 where the row is no centre), by finite differences of that smooth predictor."""
    G = []
    for i, x in enumerate(np.asarray(X, dtype=np.float64)):
        keep = np.arange(len(C)) != centre_of_row[i]
        G.append(fd_gradients(x[None], C[keep], np.asarray(beta)[keep], M, kind, bandwidth, exponent)[0])
    return np.stack(G)


def psd_power(A: np.ndarray, power: float) -> np.ndarray:
    """A^power of a symmetric (d, d) matrix with negative eigenvalues set to 0 (elementwise for a (d,) diagonal)."""
    if A.ndim == 1:
        return np.clip(A, 0.0, None) ** power
    vals, vecs = np.linalg.eigh((A + A.T) / 2)
    return (vecs * np.clip(vals, 0.0, None) ** power) @ vecs.T


def normalise(M: np.ndarray) -> np.ndarray:
    """M divided by its largest absolute entry."""
    return M / np.abs(M).max()


def agop_update(G: np.ndarray, diag: bool, power: float = 1.0, centre: bool = False) -> np.ndarray:
    """normalise(AGOP^power) from gradients G (s, c, d): (d, d), or (d,) for a diagonal M; ``centre`` removes each
    output's mean gradient first."""
    if centre:
        G = G - G.mean(axis=0, keepdims=True)
    flat = G.reshape(-1, G.shape[-1])
    A = flat.T @ flat / G.shape[0]
    return normalise(psd_power(np.diag(A) if diag else A, power))


def fact_update(G: np.ndarray, U: np.ndarray, X: np.ndarray, diag: bool) -> np.ndarray:
    """normalise((F F^T)^(1/2)) (or normalise(|diag F|)) with F = (1/s) sum_i (sum_l u_il g_il) (x_i - mean x)^T,
    from gradients G (s, c, d), weights U (s, c) and the rows X (s, d) (centred by ``X``'s mean)."""
    V = np.einsum("ild,il->id", G, U)
    F = V.T @ (X - X.mean(axis=0)) / len(X)
    return normalise(np.abs(np.diag(F))) if diag else normalise(psd_power(F @ F.T, 0.5))


def encode_targets(y, classes=None) -> tuple[np.ndarray, np.ndarray]:
    """The estimators' target encoding: (Y (n, c) to fit, offset (c,) that maps fitted outputs F back as F + offset).

    Regressor (``classes`` None): y as columns, centred by their means. Classifier: one-hot rows of ``classes`` (one
    0/1 column for two classes) centred by the class frequencies. The regressor also divides each output by its
    standard deviation before the solve; the solve is linear in its targets, so its coefficients times that scale
    are the coefficients of Y, and M (from the mapped-back predictor) is the same.
    """
    y = np.asarray(y)
    if classes is None:
        Y = y.astype(np.float64).reshape(len(y), -1)
    else:
        index = np.searchsorted(classes, y)
        Y = index[:, None].astype(np.float64) if len(classes) == 2 else np.eye(len(classes))[index]
    offset = Y.mean(axis=0)
    return Y - offset, offset


def rfm_iterations(
    X, Y, kind: str, bandwidth: float, exponent: float, reg: float, iters: int, diag: bool = False,
    power: float = 1.0, centre: bool = False, update: str = "agop", centre_rows=None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(M_t, coef_t) for t = 0..iters] of RFM on all rows X (n, d), targets Y (n, c), M_0 = I.

    coef solves (K + reg I) alpha = Y on centres X, or, given ``centre_rows`` (sorted indices), the Nystrom system
    (K_nm^T K_nm + reg K_mm) beta = K_nm^T Y on centres X[centre_rows]. The next M uses gradients at every row
    (masked self-term) and AGOP or FACT; FACT weights rows by alpha (exact) or by the residual Y - f(X) (Nystrom).
    """
    X, Y = np.asarray(X, dtype=np.float64), np.asarray(Y, dtype=np.float64)
    n, d = X.shape
    rows = np.arange(n) if centre_rows is None else np.asarray(centre_rows)
    C = X[rows]
    centre_of_row = np.full(n, -1)
    centre_of_row[rows] = np.arange(len(rows))
    M = np.ones(d) if diag else np.eye(d)
    out = []
    for t in range(iters + 1):
        K_nm = kernel(X, C, M, kind, bandwidth, exponent)
        if centre_rows is None:
            coef = np.linalg.solve(K_nm + reg * np.eye(n), Y)
            U = coef
        else:
            coef = np.linalg.solve(K_nm.T @ K_nm + reg * K_nm[rows], K_nm.T @ Y)
            U = Y - K_nm @ coef
        out.append((M, coef))
        if t < iters:
            G = masked_gradients(X, C, centre_of_row, coef, M, kind, bandwidth, exponent)
            M = agop_update(G, diag, power, centre) if update == "agop" else fact_update(G, U, X, diag)
    return out


def float32_kernel_error(
    X, C, M, kind: str, bandwidth: float, exponent: float = 1.0, eps: float = EPS32, shift=None
) -> np.ndarray:
    """First-order bound (n, m) on |k32 - k| for kernel entries computed in float32 (or in the precision of unit
    roundoff ``eps``) from squared distances |x~|^2 + |c~|^2 - 2 x~.c~ (x~ = S (x - shift), shift the mean of C
    unless given): that formula is off by about eps (|x~|^2 + |c~|^2), which moves k by |dk/d(r^2)| times as much
    (dk/d(r^2) = -k / (2 L^2) for Gaussian, -(q / (2 L^q)) k r^(q-2) for Laplace), plus eps k for the exponential
    itself. Pairs at distance 0 are exact (k = 1)."""
    S = sqrtm_psd(M)
    shift = np.asarray(C, dtype=np.float64).mean(axis=0) if shift is None else np.asarray(shift)
    Xt, Ct = [(np.asarray(A, dtype=np.float64) - shift) @ as_full(S) for A in (X, C)]
    norms = (Xt**2).sum(axis=1)[:, None] + (Ct**2).sum(axis=1)[None, :]
    r = distances(X, C, M)
    k = kernel_from_r(r, kind, bandwidth, exponent)
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = k / (2 * bandwidth**2) if kind == "gaussian" else exponent / (2 * bandwidth**exponent) * k * r ** (
            exponent - 2)
    return np.where(r > 0, eps * (norms * slope + k), 0.0)


def solve_rounding_bound(
    X, Y, M, coef, kind: str, bandwidth: float, exponent: float, reg: float, centre_rows=None
) -> float:
    """First-order bound on max |d coef| / max |coef| when the solve of ``rfm_iterations`` (exact, or Nystrom on
    ``centre_rows``) uses float32 kernel entries, each off by at most E = ``float32_kernel_error``:
    componentwise, |d coef| <= |A^-1| (|dB| + |dA| |coef|) for A coef = B."""
    C = X if centre_rows is None else X[centre_rows]
    K, E = kernel(X, C, M, kind, bandwidth, exponent), float32_kernel_error(X, C, M, kind, bandwidth, exponent)
    coef = np.abs(coef)
    if centre_rows is None:  # A = K + reg I, B = Y
        A, dB = K + reg * np.eye(len(X)), E @ coef
    else:  # A = K^T K + reg K_mm, B = K^T Y
        A = K.T @ K + reg * K[centre_rows]
        dB = E.T @ np.abs(Y) + (E.T @ np.abs(K) + np.abs(K).T @ E + reg * E[centre_rows]) @ coef
    return float(np.max(np.abs(np.linalg.inv(A)) @ dB) / coef.max())
