"""sample_weight: the weighted ridge (K + reg W^-1) alpha = y against dense float64 NumPy references."""

from __future__ import annotations

import numpy as np
import pytest

from rfm_dask import RFMClassifier, RFMRegressor

import reference as ref

L, REG = 3.0, 1e-2


def _data(n=100, d=4, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = 3.0 + np.sin(2 * X[:, 0]) + X[:, 1] * X[:, 2]
    return X, y, rng.uniform(0.2, 3.0, size=n)


def _fit(X, y, w, solver="direct", **params):
    return RFMRegressor(bandwidth=L, reg=REG, iters=0, solver=solver, validation_fraction=0.0, tol=1e-10,
                        random_state=0, **params).fit(X, y, sample_weight=w)


# float32 tiles: kernel entries off by ~1e-7 relative, amplified by cond(K + reg W^-1) <= (1 + n w_max) / reg
ATOL = np.finfo(np.float32).eps * (1 + 100 * 3.0) / REG


@pytest.mark.parametrize("solver", ["direct", "cg"])
def test_weighted_ridge_matches_dense_reference(client, solver):
    X, y, w = _data()
    X_test = _data(n=30, seed=1)[0]
    model = _fit(X, y, w, solver, client=client)
    mean = np.average(y, weights=w)
    K = ref.kernel(X, X, np.eye(4), "laplace", L)
    alpha = np.linalg.solve(K + REG * np.diag(1 / w), y - mean)
    expected = mean + ref.kernel(X_test, X, np.eye(4), "laplace", L) @ alpha
    np.testing.assert_allclose(model.predict(X_test), expected, rtol=0, atol=ATOL * np.std(y))
    np.testing.assert_allclose(model.model_.target.offset, [mean])
    np.testing.assert_allclose(model.model_.target.scale, [np.sqrt(np.average((y - mean) ** 2, weights=w))])


@pytest.mark.parametrize("solver", ["direct", "cg"])
def test_zero_weights_drop_rows_and_integer_weights_repeat_them(client, solver):
    X, y, _ = _data()
    X_test = _data(n=30, seed=2)[0]
    w = np.tile([0.0, 1.0, 2.0, 1.0], 25)
    weighted = _fit(X, y, w, solver, client=client).predict(X_test)
    index = np.repeat(np.arange(100), w.astype(int))
    repeated = _fit(X[index], y[index], None, solver, client=client).predict(X_test)
    np.testing.assert_allclose(weighted, repeated, rtol=0, atol=ATOL * np.std(y))


def test_unit_weights_change_nothing_and_classifier_weights_the_frequencies(client):
    X, y, _ = _data(n=80)
    plain = _fit(X, y, None, client=client)
    ones = _fit(X, y, np.ones(80), client=client)
    np.testing.assert_allclose(ones.predict(X), plain.predict(X), rtol=1e-12)
    labels = np.where(y > 3.0, "up", "down")
    w = np.where(labels == "up", 3.0, 1.0)
    clf = RFMClassifier(bandwidth=L, reg=REG, iters=0, solver="direct", validation_fraction=0.0, random_state=0,
                        client=client).fit(X, labels, sample_weight=w)
    np.testing.assert_allclose(clf.model_.target.offset, [np.average(labels == "up", weights=w)])


def test_bad_weights_and_nystrom_raise(client):
    X, y, w = _data(n=40)
    with pytest.raises(ValueError, match="shape"):
        _fit(X, y, w[:10], client=client)
    with pytest.raises(ValueError, match=">= 0"):
        _fit(X, y, -w, client=client)
    with pytest.raises(ValueError, match="every training row"):
        _fit(X, y, np.zeros(40), client=client)
    with pytest.raises(ValueError, match="nystrom"):
        _fit(X, y, w, "nystrom", client=client)
