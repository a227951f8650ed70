"""Target scaling inside the estimators against dense float64 NumPy references (DESIGN section 2, "Targets").

Regression: f(x) = mean + std * K(x, X) (K + reg I)^-1 (y - mean) / std = mean + K(x, X) (K + reg I)^-1 (y - mean).
Classification: scores p + K(x, X) (K + reg I)^-1 (Y - p) with p the class frequencies of the training rows.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from rfm_dask import RFMClassifier, RFMRegressor, load
from rfm_dask.files.model_file import ModelFileError, read_model_file, write_model_file
from rfm_dask.core.targets import TargetScaling

import reference as ref

L, REG = 4.0, 1e-2


def _regression(n=120, d=5, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = 12.0 + 3.0 * np.sin(X[:, 0]) + X[:, 1] * X[:, 2]  # mean far from 0, as a log price would be
    return X, y


def _exact_reference(X, Y, X_test, offset):
    """offset + K(X_test, X) (K + REG I)^-1 (Y - offset), float64, M = I."""
    K = ref.kernel(X, X, np.eye(X.shape[1]), "laplace", L)
    alpha = np.linalg.solve(K + REG * np.eye(len(X)), Y - offset)
    return offset + ref.kernel(X_test, X, np.eye(X.shape[1]), "laplace", L) @ alpha


def test_scaling_maps_and_inverts():
    Y = np.array([[1.0, 5.0], [3.0, 5.0], [8.0, 5.0]])
    s = TargetScaling.standardise(Y)
    np.testing.assert_allclose(s.offset, [4.0, 5.0])
    np.testing.assert_allclose(s.scale, [np.std(Y[:, 0]), 1.0])  # a constant output keeps scale 1
    Z = s.transform(Y)
    np.testing.assert_allclose(Z.mean(axis=0), 0.0, atol=1e-15)
    np.testing.assert_allclose(Z[:, 0].std(), 1.0)
    np.testing.assert_allclose(s.inverse(Z), Y)
    w = np.array([1.0, 0.0, 3.0])
    np.testing.assert_allclose(TargetScaling.centre(Y, w).offset, [6.25, 5.0])
    np.testing.assert_allclose(TargetScaling.identity(2).transform(Y), Y)
    with pytest.raises(ValueError, match="scale"):
        TargetScaling(np.zeros(2), np.array([1.0, 0.0]))


@pytest.mark.parametrize("solver", ["direct", "cg", "nystrom"])
def test_regression_predictions_match_centred_reference(client, solver):
    """Every solver solves for the centred targets and maps back; far from the data predictions fall to the mean."""
    X, y = _regression()
    X_test = np.vstack([_regression(n=30, seed=1)[0], np.full((1, 5), 50.0)])
    model = RFMRegressor(bandwidth=L, reg=REG, iters=0, solver=solver, n_centers=len(X), tol=1e-10,
                         validation_fraction=0.0, random_state=0, client=client).fit(X, y)
    expected = _exact_reference(X, y[:, None], X_test, y.mean())[:, 0]
    # float32 tiles: kernel entries carry relative errors ~1e-6, amplified by cond(K + reg I) <= (1 + n) / reg
    np.testing.assert_allclose(model.predict(X_test), expected, rtol=0, atol=2e-3 * np.std(y))
    assert model.predict(X_test[-1:])[0] == pytest.approx(y.mean(), abs=1e-9)  # no decay to 0
    np.testing.assert_allclose(model.model_.target.offset, [y.mean()])
    np.testing.assert_allclose(model.model_.target.scale, [y.std()])


def test_multioutput_scaling_is_per_output_and_lazy_predictions_agree(client):
    X, y = _regression()
    Y = np.column_stack([y, 1e3 * y[::-1] - 5e3])
    model = RFMRegressor(bandwidth=L, reg=REG, iters=0, solver="direct", validation_fraction=0.0,
                         random_state=0, client=client).fit(X, Y)
    X_test = _regression(n=40, seed=2)[0]
    expected = _exact_reference(X, Y, X_test, Y.mean(axis=0))
    got = model.predict(X_test)
    for k in range(2):
        np.testing.assert_allclose(got[:, k], expected[:, k], rtol=0, atol=2e-3 * np.std(Y[:, k]))
    lazy = model.predict(da.from_array(X_test.astype(np.float32), chunks=(15, 5)))
    assert isinstance(lazy, da.Array)
    np.testing.assert_allclose(lazy.compute(), got, rtol=1e-6, atol=1e-9 * np.abs(got).max())
    np.testing.assert_allclose(model.model_.target.scale, Y.std(axis=0))


def test_feature_update_is_that_of_the_predictor_on_the_targets_scale(client):
    """AGOP after an exact solve with M = I equals the AGOP of the mapped-back predictor (each output on its own
    scale), so scaling one output of two by 100 changes M as it would without target scaling."""
    X, y = _regression(n=60, d=4)
    Y = np.column_stack([y, 100.0 * X[:, 3] ** 2])
    model = RFMRegressor(bandwidth=L, reg=REG, iters=1, patience=None, solver="direct", validation_fraction=0.0,
                         agop_samples=60, diag=True, random_state=0, client=client).fit(X, Y)
    K = ref.kernel(X, X, np.eye(4), "laplace", L)
    alpha = np.linalg.solve(K + REG * np.eye(len(X)), Y - Y.mean(axis=0))
    G = []
    for i, x in enumerate(X):  # gradients at training rows leave out their own centre (the masked self-term)
        keep = np.arange(len(X)) != i
        G.append(ref.fd_gradients(x[None], X[keep], alpha[keep], np.eye(4), "laplace", L)[0])
    G = np.stack(G)
    agop = np.einsum("ild,ild->d", G, G)
    np.testing.assert_allclose(model.feature_matrix_, agop / agop.max(), rtol=1e-3, atol=1e-4)


def test_validation_metrics_are_on_the_targets_scale(client):
    X, y = _regression(n=150)
    X_val, y_val = _regression(n=50, seed=3)
    model = RFMRegressor(bandwidth=L, reg=REG, iters=1, patience=None, solver="direct", random_state=0,
                         client=client).fit(X, y, X_val=X_val, y_val=y_val)
    mse = np.mean((model.predict(X_val) - y_val) ** 2)
    assert model.history_[model.best_iter_]["val_mse"] == pytest.approx(mse, rel=1e-4)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_classifier_scores_are_centred_by_class_frequencies(client, n_classes):
    X, _ = _regression(n=90)
    labels = np.array(["a", "b", "c"][:n_classes])
    y = labels[(X[:, 0] > 0.3).astype(int) + (n_classes == 3) * (X[:, 1] > 0.8).astype(int)]
    model = RFMClassifier(bandwidth=L, reg=REG, iters=0, solver="direct", validation_fraction=0.0,
                          random_state=0, client=client).fit(X, y)
    Y = (y[:, None] == labels[None, :]).astype(float)
    Y = Y[:, 1:] if n_classes == 2 else Y
    X_test = np.vstack([_regression(n=30, seed=4)[0], np.full((1, 5), 50.0)])
    scores = _exact_reference(X, Y, X_test, Y.mean(axis=0))
    np.testing.assert_allclose(model.model_.decision(X_test.astype(np.float32)), scores, rtol=0, atol=2e-3)
    proba = model.predict_proba(X_test)
    if n_classes == 2:
        np.testing.assert_allclose(proba[:, 1], np.clip(scores[:, 0], 0, 1), atol=2e-3)
    # far from the data the scores are the class frequencies: the majority class is predicted
    np.testing.assert_allclose(model.model_.decision(X_test[-1:].astype(np.float32))[0], Y.mean(axis=0), atol=1e-9)
    majority = labels[np.argmax([np.mean(y == c) for c in labels])]
    assert model.predict(X_test[-1:])[0] == majority
    np.testing.assert_array_equal(np.argmax(proba, axis=1), np.searchsorted(labels, model.predict(X_test)))


def test_model_file_records_scaling_and_old_files_load_as_identity(client, tmp_path):
    X, y = _regression(n=60)
    model = RFMRegressor(bandwidth=L, reg=REG, iters=0, solver="direct", validation_fraction=0.0,
                         random_state=0, client=client).fit(X, y)
    path = model.save(tmp_path / "m.rfm")
    loaded = load(path)
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    np.testing.assert_array_equal(loaded.model_.target.offset, model.model_.target.offset)

    name, state, arrays = read_model_file(path)
    old = {k: v for k, v in arrays.items() if not k.startswith("target_")}
    write_model_file(tmp_path / "old.rfm", name, state, old)
    legacy = load(tmp_path / "old.rfm")
    np.testing.assert_array_equal(legacy.model_.target.offset, [0.0])
    np.testing.assert_array_equal(legacy.model_.target.scale, [1.0])
    coef, scale, offset = model.model_.coef, model.model_.target.scale, model.model_.target.offset
    np.testing.assert_allclose(legacy.predict(X) * scale[0] + offset[0], model.predict(X), rtol=1e-6)
    assert coef.shape == legacy.model_.coef.shape

    bad = dict(arrays, target_scale=np.array([-1.0]))
    write_model_file(tmp_path / "bad.rfm", name, state, bad)
    with pytest.raises(ModelFileError, match="scale"):
        load(tmp_path / "bad.rfm")
