"""Raw columns from Python: the ingest preprocessing as a scikit-learn transformer (``TableEncoder``), a model fitted
on an ingested store predicting on a raw pandas DataFrame, and ``write_zarr`` keeping a DataFrame's column names."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.base import clone
from sklearn.pipeline import Pipeline, make_pipeline

import rfm_dask
from rfm_dask.io import DataError, TableEncoder, ingest, read_batches
from rfm_dask.app.workflows import fit_store, predict_parquet

pd = pytest.importorskip("pandas")


def _frame(n: int, seed: int) -> pd.DataFrame:
    """Numbers with nulls, a string column with nulls, a timestamp, an id and a target."""
    rng = np.random.default_rng(seed)
    x0, x1 = rng.normal(size=n), rng.normal(3.0, 2.0, size=n)
    colour = rng.choice(["red", "green", "blue"], size=n).astype(object)
    colour[rng.random(n) < 0.05] = None
    x1_null = rng.random(n) < 0.1
    stamps = np.datetime64("2021-03-01T00:00", "m") + rng.integers(0, 60 * 24 * 90, n).astype("timedelta64[m]")
    y = np.sin(x0) + 0.3 * x1 + (colour == "red") + 0.05 * rng.normal(size=n)
    return pd.DataFrame({"row_id": np.arange(n) + 1000 * seed, "x0": x0, "x1": np.where(x1_null, np.nan, x1),
                         "colour": colour, "when": stamps.astype("datetime64[us]"), "y": y})


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    """A training DataFrame written as Parquet and ingested; a model fitted on the store."""
    root = tmp_path_factory.mktemp("raw")
    train = _frame(300, 0)
    pq.write_table(pa.Table.from_pandas(train, preserve_index=False), root / "train.parquet", row_group_size=64)
    ingest(root / "train.parquet", root / "train.zarr", "y", id_column="row_id")
    return root, train


@pytest.fixture(scope="module")
def store_model(ingested, client):
    root, _ = ingested
    return fit_store(root / "train.zarr", iters=1, solver="direct", random_state=0, client=client)


def test_table_encoder_encodes_as_ingest_does(ingested):
    """Fitted on the same rows, the transformer's encodings and features are ingest's, exactly."""
    root, train = ingested
    encoder = TableEncoder(exclude=["row_id", "y"]).fit(train)
    stored = rfm_dask.open_zarr(root / "train.zarr")
    assert encoder.preprocessor_.to_dict() == stored.attrs["preprocessing"]
    np.testing.assert_array_equal(encoder.transform(train), stored.X.compute())
    assert list(encoder.get_feature_names_out()) == stored.attrs["preprocessing"]["feature_names"]
    assert list(encoder.feature_names_in_) == ["x0", "x1", "colour", "when"] and encoder.n_features_in_ == 4


def test_table_encoder_matches_columns_by_name(ingested):
    """Column order does not matter, extra columns are ignored, a missing one is an error, an Arrow table works."""
    _, train = ingested
    encoder = TableEncoder(exclude=["row_id", "y"]).fit(train)
    expected = encoder.transform(train)
    shuffled = train[["y", "when", "colour", "x1", "x0"]].assign(extra="ignored")
    np.testing.assert_array_equal(encoder.transform(shuffled), expected)
    np.testing.assert_array_equal(encoder.transform(pa.Table.from_pandas(train)), expected)
    with pytest.raises(DataError, match=r"missing required column\(s\) \['colour'\]"):
        encoder.transform(train.drop(columns=["colour"]))
    with pytest.raises(TypeError, match="pandas DataFrame or a pyarrow Table"):
        encoder.transform(expected)
    with pytest.raises(DataError, match="exclude names unknown"):
        TableEncoder(exclude=["nope"]).fit(train)


def test_table_encoder_in_a_pipeline(ingested, client):
    """Raw columns -> TableEncoder -> RFMRegressor in a Pipeline: fits, predicts, clones, names its features."""
    _, train = ingested
    test = _frame(80, 1)
    pipe = make_pipeline(TableEncoder(exclude=["row_id", "y"]),
                         rfm_dask.RFMRegressor(iters=1, solver="direct", random_state=0, client=client))
    pipe.fit(train, train["y"])
    pred = pipe.predict(test)
    assert pred.shape == (80,) and np.isfinite(pred).all()
    features = pipe[0].transform(test)
    np.testing.assert_array_equal(pred, pipe[-1].predict(features))
    assert list(pipe[:-1].get_feature_names_out()) == list(pipe[0].preprocessor_.feature_names)
    cloned = clone(pipe)
    assert isinstance(cloned, Pipeline) and not hasattr(cloned[0], "preprocessor_")
    assert cloned[0].get_params() == pipe[0].get_params()
    framed = clone(pipe[0]).set_output(transform="pandas").fit(train).transform(test)
    assert list(framed.columns) == list(pipe[0].get_feature_names_out())


def test_store_model_predicts_on_raw_dataframe(ingested, store_model, tmp_path):
    """A model fitted on an ingested store predicts on a raw pandas DataFrame through the recorded preprocessing:
    the same numbers as on the encoded features and as ``predict_parquet`` on the same rows."""
    root, _ = ingested
    test = _frame(90, 2)
    pq.write_table(pa.Table.from_pandas(test, preserve_index=False), tmp_path / "test.parquet")
    features = np.concatenate([b.X for b in read_batches(tmp_path / "test.parquet",
                                                          TableEncoder.from_model(store_model).preprocessor_)])
    pred = store_model.predict(test.drop(columns=["y"]))
    np.testing.assert_array_equal(pred, store_model.predict(features))
    predict_parquet(store_model, tmp_path / "test.parquet", tmp_path / "pred.parquet")
    np.testing.assert_array_equal(pred, pq.read_table(tmp_path / "pred.parquet")["prediction"].to_numpy())
    assert np.isfinite(store_model.score(test, test["y"]))

    path = store_model.save(tmp_path / "m.rfm")
    np.testing.assert_array_equal(rfm_dask.load(path).predict(test[test.columns[::-1]]), pred)


def test_predict_parquet_on_the_cluster_keeps_the_order_of_many_batches(ingested, store_model, client, tmp_path):
    """Batches predicted on the cluster (far more than are in flight at a time) come back in order, with the same
    numbers as predicted in this process batch by batch."""
    test = _frame(90, 3)
    pq.write_table(pa.Table.from_pandas(test, preserve_index=False), tmp_path / "test.parquet")
    local = predict_parquet(store_model, tmp_path / "test.parquet", tmp_path / "local.parquet", batch_rows=4)
    remote = predict_parquet(store_model, tmp_path / "test.parquet", tmp_path / "remote.parquet", batch_rows=4,
                             client=client)
    assert local == remote and remote["rows"] == 90
    assert pq.read_table(tmp_path / "remote.parquet").equals(pq.read_table(tmp_path / "local.parquet"))
    np.testing.assert_array_equal(pq.read_table(tmp_path / "remote.parquet")["row_id"].to_numpy(), test["row_id"])


def test_model_without_recorded_preprocessing_has_no_encoder(client):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3))
    model = rfm_dask.RFMRegressor(iters=0, solver="direct", client=client).fit(X, X[:, 0])
    with pytest.raises(ValueError, match="not fitted on an ingested store"):
        TableEncoder.from_model(model)


def test_write_zarr_keeps_dataframe_column_names_and_list_targets(tmp_path):
    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": [4.0, 5.0, 6.0]})
    rfm_dask.write_zarr(tmp_path / "s.zarr", frame, [0.5, 1.5, 2.5])
    data = rfm_dask.open_zarr(tmp_path / "s.zarr")
    assert data.attrs["feature_names"] == ["a", "b"]
    np.testing.assert_array_equal(data.X.compute(), frame.to_numpy(np.float32))
    np.testing.assert_array_equal(data.y.compute(), [0.5, 1.5, 2.5])
    dd = pytest.importorskip("dask.dataframe")
    rfm_dask.write_zarr(tmp_path / "d.zarr", dd.from_pandas(frame, npartitions=2), [1, 2, 3])
    assert rfm_dask.open_zarr(tmp_path / "d.zarr").attrs["feature_names"] == ["a", "b"]
    rfm_dask.write_zarr(tmp_path / "n.zarr", frame.to_numpy())
    assert "feature_names" not in rfm_dask.open_zarr(tmp_path / "n.zarr").attrs
