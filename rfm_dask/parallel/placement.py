"""Placing an estimator's inputs on the cluster: features as row blocks, the seeded validation split, sample
weights checked."""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np
from distributed import Client

from rfm_dask.parallel.inputs import is_dask
from rfm_dask.parallel.row_blocks import RowBlocks, block_rows, place_rows, put_rows, take_rows


def place(client: Client, X: Any) -> RowBlocks:
    """Put checked features on the cluster: dask arrays are persisted or streamed (see ``place_rows``), NumPy
    arrays persisted in row blocks (see ``put_rows``)."""
    if isinstance(X, da.Array):
        return place_rows(client, X)
    return put_rows(client, X, block_rows(X.shape[0], X.shape[1]))


def validation_rows(n: int, fraction: float, rng: np.random.Generator) -> np.ndarray | None:
    """Seeded random validation row indices (sorted), or None when there are too few rows to split."""
    n_val = int(fraction * n)
    if n_val < 1 or n - n_val < 2:
        return None
    return np.sort(rng.choice(n, n_val, replace=False))


def check_weights(sample_weight: Any, n: int) -> np.ndarray:
    """Sample weights as an (n,) float64 array: finite and >= 0, else ValueError."""
    weights = np.asarray(sample_weight.compute() if is_dask(sample_weight) else sample_weight, dtype=np.float64)
    if weights.shape != (n,):
        raise ValueError(f"sample_weight must have shape ({n},), got {weights.shape}")
    if not (np.all(np.isfinite(weights)) and np.all(weights >= 0)):
        raise ValueError("sample_weight must be finite and >= 0")
    return weights


def fit_rows(
    client: Client, X: Any, Y: np.ndarray, X_val: Any, Y_val: np.ndarray | None, weights: np.ndarray | None,
    fraction: float, rng: np.random.Generator,
) -> tuple[RowBlocks, np.ndarray, RowBlocks | None, np.ndarray | None, np.ndarray | None, np.ndarray]:
    """The training and validation rows of a fit on the cluster: X (n, d) and targets Y (n, c); the given
    validation rows, or a seeded ``fraction`` of X's rows split off (none when too few). Returns (train, Y_train,
    val, Y_val, the training rows' weights, the training rows' indices in X (n_train,) int64, increasing)."""
    train = place(client, X)
    everything = np.arange(Y.shape[0])
    if X_val is not None:
        return train, Y, place(client, X_val), Y_val, weights, everything
    val_rows = validation_rows(Y.shape[0], fraction, rng)
    if val_rows is None:
        return train, Y, None, None, weights, everything
    is_val = np.zeros(Y.shape[0], dtype=bool)
    is_val[val_rows] = True
    kept = np.flatnonzero(~is_val)
    train, val = take_rows(client, train, kept), take_rows(client, train, val_rows)
    return train, Y[~is_val], val, Y[is_val], None if weights is None else weights[~is_val], kept
