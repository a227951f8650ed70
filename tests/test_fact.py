"""The FACT feature update against a dense float64 reference (DESIGN section 2).

Reference: FACT = (1/s) sum_i (sum_l u_il grad f_l(x_i)) (x_i - mean)^T, where the gradient at a training row that
is also a centre leaves that centre out (the masked self-term), computed by finite differences of the predictor
without that centre (smooth at x_i); u = alpha for the exact solve, u = y - f(x) for Nystrom. Then
M = normalise((F F^T)^(1/2)).
"""

from __future__ import annotations

import numpy as np
import pytest

from rfm_dask import RFMRegressor
from rfm_dask import gradients as gr
from rfm_dask import kernels as kn
from rfm_dask.features import fact_feature_matrix, matrix_sqrt
from rfm_dask.passes import KernelPasses
from rfm_dask.row_blocks import put_rows, take_rows

import reference as ref


def _reference_fact_matrix(X, G, U, diag):
    V = np.einsum("ild,il->id", G, U)
    F = V.T @ (X - X.mean(axis=0)) / len(X)
    if diag:
        return np.abs(np.diag(F)) / np.abs(np.diag(F)).max()
    vals, vecs = np.linalg.eigh(F @ F.T)
    root = (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T
    return root / np.abs(root).max()


def _data(n=48, d=4, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = np.column_stack([X[:, 0] * X[:, 1] + np.sin(2 * X[:, 2]), X[:, 3] ** 2])
    return X, y


def test_fact_partial_matches_einsum():
    rng = np.random.default_rng(1)
    G, U, X = rng.normal(size=(7, 2, 3)), rng.normal(size=(7, 2)), rng.normal(size=(7, 3))
    expected = sum(np.outer(U[i] @ G[i], X[i]) for i in range(7))
    np.testing.assert_allclose(gr.fact_partial(np, G, U, X, diag=False), expected, rtol=1e-12)
    np.testing.assert_allclose(gr.fact_partial(np, G, U, X, diag=True), np.diag(expected), rtol=1e-12)


def test_fact_feature_matrix_is_polar_factor():
    rng = np.random.default_rng(2)
    F = rng.normal(size=(4, 4))
    M = fact_feature_matrix(3 * F, 3)
    FFt = F @ F.T
    np.testing.assert_allclose((M @ M) / (M @ M)[0, 0], FFt / FFt[0, 0], rtol=1e-10)
    assert np.allclose(M, M.T) and np.linalg.eigvalsh(M).min() > -1e-12 and np.abs(M).max() == pytest.approx(1.0)
    np.testing.assert_allclose(fact_feature_matrix(np.array([-2.0, 1.0, 0.5]), 2), [1.0, 0.5, 0.25])


@pytest.mark.parametrize("diag", [False, True])
def test_fact_fit_matches_dense_reference(client, diag):
    """One FACT update after an exact (direct) solve with M = I equals the dense reference (the estimator centres
    the targets, and FACT is that of the predictor on the targets' scale: alpha solved for y - mean(y))."""
    X, y = _data()
    L, reg = 3.0, 1e-2
    model = RFMRegressor(
        bandwidth=L, reg=reg, iters=1, solver="direct", feature_update="fact", diag=diag,
        validation_fraction=0.0, random_state=0, client=client,
    ).fit(X, y)
    K = ref.kernel(X, X, np.eye(4), "laplace", L)
    yc = y - y.mean(axis=0)  # the estimator centres (and scales) the targets; M is scale-free
    alpha = np.linalg.solve(K + reg * np.eye(len(X)), yc)
    G = ref.masked_gradients(X, X, np.arange(len(X)), alpha, np.eye(4), "laplace", L)
    expected = _reference_fact_matrix(X, G, alpha, diag)
    # M is quadratic in alpha, whose float32 rounding is bounded by the solve's conditioning
    tol = 4 * ref.solve_rounding_bound(X, yc, np.eye(4), alpha, "laplace", L, 1.0, reg)
    np.testing.assert_allclose(model.feature_matrix_, expected, rtol=0, atol=tol)


@pytest.mark.parametrize("update", ["agop", "fact"])
def test_l1_kernel_fit_matches_dense_reference(client, update):
    """The L1 (product-Laplace) kernel end to end: one AGOP or FACT update after an exact solve with M = I, on the
    cluster, equals the dense reference; the L1 kernel learns a diagonal M although diag is not asked for."""
    X, y = _data()
    L, reg = 3.0, 1e-2
    model = RFMRegressor(
        kernel="l1_laplace", bandwidth=L, reg=reg, iters=1, solver="direct", feature_update=update,
        validation_fraction=0.0, random_state=0, client=client,
    ).fit(X, y)
    M0 = np.ones(4)
    K = ref.kernel(X, X, M0, "l1_laplace", L)
    yc = y - y.mean(axis=0)  # the estimator centres (and scales) the targets; M is scale-free
    alpha = np.linalg.solve(K + reg * np.eye(len(X)), yc)
    G = ref.masked_gradients(X, X, np.arange(len(X)), alpha, M0, "l1_laplace", L)
    if update == "fact":
        expected = _reference_fact_matrix(X, G, alpha, diag=True)
    else:
        agop = (G**2).sum(axis=(0, 1)) / len(X)
        expected = agop / agop.max()
    assert model.feature_matrix_.shape == (4,)
    np.testing.assert_allclose(model.feature_matrix_, expected, rtol=1e-3, atol=1e-4)
    # and the kept predictor is the dense L1 kernel ridge regression under that M
    K1 = ref.kernel(X, X, model.feature_matrix_, "l1_laplace", L)
    pred = y.mean(axis=0) + K1 @ np.linalg.solve(K1 + reg * np.eye(len(X)), yc)  # the scale cancels
    np.testing.assert_allclose(model.predict(X), pred, rtol=1e-3, atol=1e-3 * np.abs(pred).max())


def test_fact_nystrom_uses_residuals(client):
    """With centres a subset of the rows, FACT weights each sampled row by its residual y - f(x)."""
    X, y = _data(n=60)
    L, M = 2.5, np.diag([1.0, 0.5, 0.8, 0.3])
    spec = kn.KernelSpec("laplace", bandwidth=L)
    rows = put_rows(client, X, rows_per_block=16)
    centre_rows = np.arange(0, 60, 3)
    passes = KernelPasses(client, take_rows(client, rows, centre_rows), matrix_sqrt(M), X.mean(axis=0), spec)
    beta = np.random.default_rng(3).normal(size=(len(centre_rows), 2))
    sample = np.sort(np.random.default_rng(4).choice(60, 40, replace=False))
    got = fact_feature_matrix(passes.fact_sums(rows, sample, y[sample], True, beta, diag=False), sample.size)

    C = X[centre_rows]
    residual = y[sample] - ref.predictor(X[sample], C, beta, M, "laplace", L)
    centre_of_row = np.array([np.flatnonzero(centre_rows == i)[0] if i in centre_rows else -1 for i in sample])
    G = ref.masked_gradients(X[sample], C, centre_of_row, beta, M, "laplace", L)
    V = np.einsum("ild,il->id", G, residual)
    F = V.T @ (X[sample] - X.mean(axis=0)) / sample.size
    vals, vecs = np.linalg.eigh(F @ F.T)
    root = (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T
    np.testing.assert_allclose(got, root / np.abs(root).max(), rtol=1e-3, atol=1e-4)


def test_fact_learns_low_rank_support(client):
    """On the golden low-rank task the FACT update also concentrates M on features 0, 1 and 5."""
    from rfm_dask.datasets import low_rank_golden

    X, y, _, _ = low_rank_golden(n_train=1500, n_test=10, seed=0)
    model = RFMRegressor(iters=3, feature_update="fact", random_state=0, patience=None, client=client).fit(X, y)
    top = set(np.argsort(np.diag(model.feature_matrix_))[-3:].tolist())
    assert top == {0, 1, 5}, np.round(np.diag(model.feature_matrix_), 3)
    with pytest.raises(ValueError, match="feature_update"):
        RFMRegressor(feature_update="nope", client=client).fit(X, y)
