"""The scikit-learn contract and the input types: NumPy, pandas and dask arrays (lazy in, lazy out)."""

from __future__ import annotations

import pickle

import dask.array as da
import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.utils.estimator_checks import parametrize_with_checks

from rfm_dask import RFMClassifier, RFMRegressor
from rfm_dask.datasets import low_rank_golden


def _expected_failures(estimator) -> dict[str, str]:
    """Checks we do not pass, each with its reason."""
    return {
        "check_methods_subset_invariance": (
            "kernel tiles are float32: BLAS picks different GEMM kernels for different batch sizes, so a row's "
            "prediction agrees between batches to ~1e-6 relative, not to the check's 1e-7"
        ),
        "check_sample_weight_equivalence_on_dense_data": (
            "the seeded validation split and the AGOP average run over rows, unweighted: a repeated row is drawn "
            "and averaged twice, a weighted one once; the weighted ridge itself equals repetition "
            "(tests/test_sample_weight.py, without validation rows or feature updates)"
        ),
    }


@parametrize_with_checks(
    [RFMRegressor(iters=2, random_state=0), RFMClassifier(iters=2, random_state=0)],
    expected_failed_checks=_expected_failures,
)
def test_sklearn_compatible(estimator, check):
    check(estimator)


@pytest.fixture(scope="module")
def data():
    X, y, X_test, y_test = low_rank_golden(n_train=600, n_test=200, seed=3)
    return X, y, X_test, y_test


def test_dask_input_gives_lazy_output_equal_to_numpy(client, data):
    X, y, X_test, _ = data
    model = RFMRegressor(iters=2, random_state=0, client=client).fit(da.from_array(X, chunks=(150, -1)), y)
    reference = RFMRegressor(iters=2, random_state=0, client=client).fit(X, y)
    lazy = model.predict(da.from_array(X_test, chunks=(64, -1)))
    assert isinstance(lazy, da.Array) and lazy.shape == (len(X_test),)
    # Different row batches let BLAS round the float32 distance GEMM differently (ulps), which the large, mixed-sign
    # KRR coefficients amplify to ~1e-5 of the prediction scale.
    expected = model.predict(X_test)
    np.testing.assert_allclose(lazy.compute(), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    # Same rows, same seed: the dask path splits and solves the same problem as the NumPy path.
    np.testing.assert_allclose(expected, reference.predict(X_test), rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_classifier_dask_outputs_are_lazy(client):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4)).astype(np.float32)
    y = np.where(X[:, 0] + X[:, 1] > 0, "yes", "no")
    model = RFMClassifier(iters=1, random_state=0, client=client).fit(X, y)
    Xd = da.from_array(X, chunks=(100, -1))
    labels, proba = model.predict(Xd), model.predict_proba(Xd)
    assert isinstance(labels, da.Array) and isinstance(proba, da.Array)
    np.testing.assert_array_equal(labels.compute(), model.predict(X))
    np.testing.assert_allclose(proba.compute(), model.predict_proba(X))
    assert set(model.classes_) == {"yes", "no"} and model.score(X, y) > 0.9


def test_pandas_input_records_feature_names(client, data):
    X, y, X_test, _ = data
    columns = [f"f{i}" for i in range(X.shape[1])]
    model = RFMRegressor(iters=1, random_state=0, client=client).fit(pd.DataFrame(X, columns=columns), pd.Series(y))
    assert list(model.feature_names_in_) == columns
    assert model.predict(pd.DataFrame(X_test, columns=columns)).shape == (len(X_test),)


def test_fitted_attributes_and_history(client, data):
    X, y, _, _ = data
    model = RFMRegressor(iters=3, patience=None, random_state=0, client=client).fit(X, y)
    assert model.feature_matrix_.shape == (X.shape[1], X.shape[1])
    np.testing.assert_allclose(model.feature_matrix_, model.feature_matrix_.T)
    assert model.feature_importances_.shape == (X.shape[1],)
    np.testing.assert_allclose(model.feature_importances_.sum(), 1.0)
    assert [h["iteration"] for h in model.history_] == [0, 1, 2, 3]
    for record in model.history_:
        assert {"val_mse", "cg_iterations", "residual", "seconds", "solver"} <= set(record)
    assert model.best_iter_ == int(np.argmin([h["val_mse"] for h in model.history_]))


def test_diagonal_feature_matrix_and_options(client, data):
    X, y, _, _ = data
    model = RFMRegressor(
        iters=2, diag=True, agop_power=0.5, centre_agop=True, kernel="gaussian", bandwidth=3.0, random_state=0,
        client=client,
    ).fit(X, y)
    assert model.feature_matrix_.shape == (X.shape[1],)
    assert model.feature_matrix_.max() == pytest.approx(1.0)


def test_early_stopping_ends_when_validation_stops_improving(client):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 6)).astype(np.float32)
    y = rng.normal(size=400)  # pure noise: no iteration should keep improving
    model = RFMRegressor(iters=10, patience=1, random_state=0, client=client).fit(X, y)
    assert len(model.history_) < 11


def test_validation_split_is_seeded(client, data):
    X, y, X_test, _ = data
    a = RFMRegressor(iters=1, random_state=7, client=client).fit(X, y).predict(X_test)
    b = RFMRegressor(iters=1, random_state=7, client=client).fit(X, y).predict(X_test)
    np.testing.assert_array_equal(a, b)


def test_clone_keeps_client_and_pickle_drops_it(client, data):
    X, y, X_test, _ = data
    model = RFMRegressor(iters=1, random_state=0, client=client)
    assert clone(model).client is client
    model.fit(X, y)
    restored = pickle.loads(pickle.dumps(model))
    assert restored.client is None
    np.testing.assert_array_equal(restored.predict(X_test), model.predict(X_test))


def test_default_client_is_an_in_process_local_cluster(data):
    X, y, X_test, _ = data
    model = RFMRegressor(iters=1, random_state=0).fit(X, y)
    assert model.predict(X_test).shape == (len(X_test),)


def test_bad_inputs_raise_clear_errors(client):
    X = np.ones((20, 3), dtype=np.float32)
    y = np.arange(20.0)
    with pytest.raises(ValueError, match="NaN"):
        RFMRegressor(client=client).fit(np.where(np.eye(20, 3) > 0, np.nan, X), y)
    with pytest.raises(ValueError, match="NaN or infinity"):
        bad = da.from_array(np.where(np.eye(20, 3) > 0, np.inf, X), chunks=(5, -1))
        RFMRegressor(client=client).fit(bad, y)
    with pytest.raises(ValueError, match="at least 2 classes"):
        RFMClassifier(client=client).fit(X, np.zeros(20))
    with pytest.raises(ValueError, match="solver"):
        RFMRegressor(solver="magic", client=client).fit(X, y)
    with pytest.raises(ValueError, match="kernel"):
        RFMRegressor(kernel="cosine", client=client).fit(X, y)
    model = RFMRegressor(iters=0, client=client).fit(X + np.arange(20)[:, None], y)
    with pytest.raises(ValueError, match="features"):
        model.predict(np.ones((4, 5)))
    with pytest.raises(ValueError, match="features"):
        model.predict(da.ones((4, 5), chunks=2))
