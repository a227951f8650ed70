"""Split rules of the tree (DESIGN section 8): a node's direction from a sample of its rows, its threshold and
soft-routing scale from the projections of all its rows. Pure functions over NumPy/CuPy arrays; no Dask."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from rfm_dask.core.backend import to_host
from rfm_dask.core.targets import TargetScaling
from rfm_dask.local import fit_local
from rfm_dask.rfm_loop import RFMSettings, untuned

#: ``split_method`` values: the top eigenvector of the AGOP of a one-iteration RFM on the sample (xRFM's default),
#: or the sample's top principal component.
SPLIT_METHODS = ("agop", "pca")
#: Smallest soft-routing scale (xRFM's floor on a node's inter-quartile range).
MIN_SCALE = 1e-6


def split_model_settings(settings: RFMSettings, n: int) -> RFMSettings:
    """The one-iteration RFM of a split on n sampled rows: exact solve, AGOP at every sampled row, untuned."""
    return replace(untuned(settings), iters=1, solver="direct", patience=None, agop_samples=max(n, 1),
                   feature_update="agop")


def top_eigenvector(M: np.ndarray) -> np.ndarray:
    """The unit eigenvector (d,) float64 of the largest eigenvalue of a symmetric PSD (d, d) M, or of a diagonal M
    given as (d,); its sign is fixed (the entry of largest magnitude is positive) so that it depends on M only."""
    M = np.asarray(M, dtype=np.float64)
    if M.ndim == 1:
        v = np.zeros(M.size)
        v[int(np.argmax(M))] = 1.0
        return v
    _, vectors = np.linalg.eigh((M + M.T) / 2)
    v = vectors[:, -1]
    return v if v[np.argmax(np.abs(v))] > 0 else -v


def principal_axis(X: Any) -> np.ndarray:
    """The top principal component (d,) float64 of rows X (s, d) (NumPy or CuPy): the top eigenvector of the
    covariance of the centred rows, sign fixed as in ``top_eigenvector``."""
    Xc = X.astype(np.float64) - X.astype(np.float64).mean(axis=0)
    return top_eigenvector(to_host(Xc.T @ Xc))


def split_direction(
    X: Any, Y: np.ndarray, settings: RFMSettings, rng: np.random.Generator, method: str, scaling: TargetScaling,
    weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """A node's split direction from its sampled rows X (s, d) float32 (NumPy or CuPy) and their targets Y (s, c).

    Returns (direction (d,) float64 unit vector, M): with ``method="agop"``, M ((d, d), or (d,) for a diagonal M) is
    the feature matrix of ``fit_local(X, Y, iters=1)`` without validation rows, i.e. the AGOP of its first
    (lazy-kernel) predictor, and the direction its top eigenvector; with ``"pca"`` the sample's top principal
    component and M None. The targets are scaled by ``scaling`` (the sample's own) for the solve.
    """
    if method == "pca":
        return principal_axis(X), None
    if method != "agop":
        raise ValueError(f"split_method must be one of {SPLIT_METHODS}, got {method!r}")
    result = fit_local(X, Y, split_model_settings(settings, X.shape[0]), rng, scaling=scaling, weights=weights)
    return top_eigenvector(result.feature_matrix), result.feature_matrix


def threshold_and_scale(projections: np.ndarray) -> tuple[float, float]:
    """The threshold (the median) of a node's projections (n,) float64, and its soft-routing scale: the
    inter-quartile range, at least ``MIN_SCALE``."""
    q1, median, q3 = np.quantile(projections, [0.25, 0.5, 0.75])
    return float(median), float(max(q3 - q1, MIN_SCALE))
