"""Dask DataFrames record and check feature names; dask arrays of unknown chunk sizes fit; NumPy input is placed
on the cluster without a "Sending large graph" warning."""

from __future__ import annotations

import warnings

import dask
import dask.array as da
import numpy as np
import pytest
from dask.utils import parse_bytes

from rfm_dask import RFMClassifier, RFMRegressor

pd = pytest.importorskip("pandas")
dd = pytest.importorskip("dask.dataframe")


def _data(n: int = 240, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    return X, X[:, 0] * X[:, 1] + X[:, 2]


@pytest.mark.parametrize("estimator", [RFMRegressor, RFMClassifier])
def test_dask_dataframe_records_and_checks_feature_names(client, estimator):
    X, y = _data()
    y = y if estimator is RFMRegressor else (y > 0).astype(int)
    frame = pd.DataFrame(X, columns=["a", "b", "c"])
    model = estimator(iters=1, solver="direct", random_state=0, client=client).fit(
        dd.from_pandas(frame, npartitions=3), y)
    assert list(model.feature_names_in_) == ["a", "b", "c"] and model.n_features_in_ == 3
    lazy = model.predict(dd.from_pandas(frame, npartitions=2))
    assert isinstance(lazy, da.Array)
    np.testing.assert_array_equal(lazy.compute(), model.predict(frame))  # same names, pandas or dask
    for reordered in (frame[["c", "b", "a"]], dd.from_pandas(frame[["c", "b", "a"]], npartitions=2)):
        with pytest.raises(ValueError, match="feature names should match"):
            model.predict(reordered)
    renamed = dd.from_pandas(frame.rename(columns={"c": "z"}), npartitions=2)
    with pytest.raises(ValueError, match="unseen at fit time"):
        model.predict(renamed)
    refit = model.fit(da.from_array(X, chunks=(80, 3)), y)  # an array has no names: the old ones are dropped
    assert not hasattr(refit, "feature_names_in_")


def test_dask_array_of_unknown_chunk_sizes_fits(client):
    X, y = _data()
    known = da.from_array(X, chunks=(80, 3))
    unknown = known[known[:, 0] > -np.inf]  # all rows, but the chunk sizes are unknown (nan)
    assert np.isnan(unknown.chunks[0]).all()
    a = RFMRegressor(iters=1, solver="direct", random_state=0, client=client).fit(known, y)
    b = RFMRegressor(iters=1, solver="direct", random_state=0, client=client).fit(unknown, y)
    np.testing.assert_array_equal(a.predict(X), b.predict(X))  # the same blocks: the same model, bit for bit
    assert np.isnan(b.predict(unknown).chunks[0]).all()  # predicting stays lazy


def test_numpy_input_sends_no_large_graph(client):
    d = 8
    threshold = parse_bytes(dask.config.get("distributed.admin.large-graph-warning-threshold"))
    n = int(1.2 * threshold / (4 * d))  # float32 X above the threshold
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, d)).astype(np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # untuned: the search is not what this test checks
        model = RFMRegressor(bandwidth=10.0, reg=1e-3, iters=0, solver="nystrom", n_centers=50, random_state=0,
                             client=client).fit(X, X[:, 0])
    assert not [w for w in caught if "large graph" in str(w.message)], [str(w.message) for w in caught]
    assert np.isfinite(model.predict(X[:100])).all()
