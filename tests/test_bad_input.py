"""Bad input everywhere: the estimators, ``rfm_dask.load``, ``ingest``, ``read_batches``, the batch jobs and the CLI.

Every case must stop with an error that names the problem (the column, the path, "NaN", "already exists", ...) and
leave no partial output: no store, no model file, no Parquet file, no temporary ``.*.tmp-*`` sibling, no directory
made for the output. The CLI prints exactly one line on stderr and exits with status 2.
"""

from __future__ import annotations

import json
import os
import re
import struct
import warnings
import zipfile
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import rfm_dask
from rfm_dask import ModelFileError, RFMClassifier, RFMRegressor
from rfm_dask.app.cli import main
from rfm_dask.io import DataError, DataWarning, Preprocessor, ingest, read_batches
from rfm_dask.app.workflows import evaluate, fit_store, predict_parquet
from rfm_dask.core.errors import NumericalError

FAST = {"iters": 1, "solver": "direct", "random_state": 0}


def _table(n: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    x0, x1 = rng.normal(size=n), rng.normal(size=n)
    colour = rng.choice(["red", "green", "blue"], size=n)
    y = x0 - x1 + (colour == "red") + 0.1 * rng.normal(size=n)
    return pa.table({"row_id": np.arange(n), "x0": x0, "x1": x1, "colour": colour, "y": y,
                     "label": np.where(y > 0, "high", "low")})


def _write(path: Path, table: pa.Table, **kwargs) -> Path:
    pq.write_table(table, path, **kwargs)
    return path


def _listing(directory: Path) -> list[str]:
    """Everything under ``directory`` (relative paths, hidden files included), sorted."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def _one_line_error(capsys, argv: list, match: str) -> str:
    """Run the CLI with --quiet (no progress lines); it must exit with status 2 and one line on stderr, holding
    ``match``, and no traceback."""
    status = main([*(str(a) for a in argv), "--quiet"])
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2, (status, out, err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert match in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, client):
    """(model file, test Parquet file, store): a regression model fitted on an ingested store, iters=1, direct."""
    root = tmp_path_factory.mktemp("trained")
    train = _write(root / "train.parquet", _table(60, seed=0))
    test = _write(root / "test.parquet", _table(20, seed=1))
    ingest(train, root / "train.zarr", "y", id_column="row_id", exclude=["label"])
    model = fit_store(root / "train.zarr", client=client, **FAST)
    model.save(root / "model.rfm")
    return root / "model.rfm", test, root / "train.zarr"


@pytest.fixture(scope="module")
def numpy_model(client):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3)).astype(np.float32)
    return RFMRegressor(client=client, **FAST).fit(X, X[:, 0] - X[:, 1]), X


# -- estimators: fit -----------------------------------------------------------------------------------------------
def _fit_cases() -> dict:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(30, 3)).astype(np.float32)
    y = X[:, 0].astype(np.float64)
    with_nan, with_inf = X.copy(), X.copy()
    with_nan[4, 1], with_inf[7, 2] = np.nan, np.inf
    strings = np.array([["a", "b", "c"]] * 30)
    objects = pd.DataFrame({"a": X[:, 0], "b": ["u", "v"] * 15})
    return {
        "NaN in X": (RFMRegressor, with_nan, y, "NaN"),
        "inf in X": (RFMRegressor, with_inf, y, "infinity"),
        "NaN in y": (RFMRegressor, X, np.where(np.arange(30) == 3, np.nan, y), "NaN"),
        "1-D X": (RFMRegressor, X[:, 0], y, "Expected 2D array"),
        "3-D X": (RFMRegressor, X[:, :, None], y, "dim 3"),
        "string array": (RFMRegressor, strings, y, "could not convert string to float"),
        "object column": (RFMRegressor, objects, y, "could not convert string to float"),
        "X and y lengths": (RFMRegressor, X, y[:20], "inconsistent numbers of samples: [30, 20]"),
        "0 rows": (RFMRegressor, X[:0], y[:0], "0 sample(s)"),
        "0 columns": (RFMRegressor, X[:, :0], y, "0 feature(s)"),
        "one class": (RFMClassifier, X, np.full(30, "only"), "only one class"),
        "dask NaN in X": (RFMRegressor, da.from_array(with_nan, chunks=(10, 3)), y, "NaN"),
        "dask 1-D X": (RFMRegressor, da.from_array(X[:, 0]), y, "2D"),
        "dask string array": (RFMRegressor, da.from_array(strings), y, "real numbers"),
        "dask lengths": (RFMRegressor, da.from_array(X, chunks=(10, 3)), y[:20], "30 rows but y has 20"),
        "dask 0 rows": (RFMRegressor, da.from_array(X[:0]), y[:0], "0 sample(s)"),
        "dask one class": (RFMClassifier, da.from_array(X, chunks=(10, 3)), np.ones(30), "only one class"),
    }


FIT_CASES = _fit_cases()


@pytest.mark.parametrize("case", FIT_CASES)
def test_estimator_fit_refuses_bad_input(case, client):
    estimator, X, y, match = FIT_CASES[case]
    with pytest.raises(ValueError, match=re.escape(match)):
        estimator(client=client, **FAST).fit(X, y)


#: parameter -> values it refuses (each with the error naming the parameter)
BAD_PARAMETERS = {
    "reg": [-1.0, np.inf, np.nan, True, "1e-3"],
    "bandwidth": [0.0, -2.0, np.inf, np.nan],
    "exponent": [0.0, 2.5],
    "tol": [0.0, -1.0, 1.0, np.nan, np.inf],
    "iters": [-1, 1.5, None],
    "agop_samples": [0, -5, 2.0],
    "patience": [-3, 1.5],
    "n_centers": [0],
    "agop_power": [0.0, np.inf],
    "validation_fraction": [1.0, -0.1],
    "kernel": ["cosine"],
    "solver": ["magic"],
    "feature_update": ["pca"],
    "diag": ["false", 1],
    "random_state": [-1, 1.5],
    "checkpoint": [5],
}
PARAMETER_CASES = {f"{name}={value!r}": (name, value) for name, values in BAD_PARAMETERS.items() for value in values}


@pytest.mark.parametrize("case", PARAMETER_CASES)
def test_estimator_refuses_bad_parameters(case, client):
    name, value = PARAMETER_CASES[case]
    X = np.random.default_rng(0).normal(size=(20, 2)).astype(np.float32)
    with pytest.raises(ValueError, match=re.escape(f"The '{name}' parameter of RFMRegressor must be")):
        RFMRegressor(client=client, **{**FAST, name: value}).fit(X, X[:, 0])


@pytest.mark.parametrize("key", ["agop-sample", "nystrom-centres"])
def test_config_defaults_of_parameters_are_checked(key, client):
    X = np.random.default_rng(0).normal(size=(20, 2)).astype(np.float32)
    with dask.config.set({f"rfm.{key}": 0}), pytest.raises(ValueError, match="with the rfm config's defaults"):
        RFMRegressor(client=client, **FAST).fit(X, X[:, 0])


def _numerical_cases() -> dict:
    """name -> (X, y, parameters, error type, text): fits that must stop with a clear error, not return a model."""
    rng = np.random.default_rng(4)
    X = rng.normal(size=(200, 3)).astype(np.float32)
    y = X[:, 0] - X[:, 1]
    # pairs of rows one float32 step apart with different targets, reg=0: their kernel entries round to the same
    # float32 values, so K is singular and the system inconsistent (exactly equal rows would be solved as one
    # weighted row, ``core.duplicates``: a consistent system)
    twice = np.repeat(X[:100], 2, axis=0)
    twice[1::2] = np.nextafter(twice[1::2], np.float32(np.inf))
    noisy = np.repeat(y[:100], 2) + rng.normal(size=200)
    too_large = "Input X is too large in magnitude"
    return {
        "X at 1e30": (X * np.float32(1e30), y, {}, ValueError, too_large),
        "dask X at 1e30": (da.from_array(X * np.float32(1e30), chunks=(50, 3)), y, {}, ValueError, too_large),
        "y at 1e300": (da.from_array(X, chunks=(50, 3)), y.astype(np.float64) * 1e300, {}, ValueError,
                       "Input y is too large in magnitude"),
        "CG diverges": (twice, noisy, {"reg": 0.0, "solver": "cg"}, NumericalError, "CG diverged"),
    }


NUMERICAL_CASES = _numerical_cases()


@pytest.mark.parametrize("case", NUMERICAL_CASES)
def test_numerically_failed_fits_raise(case, client):
    X, y, params, error, match = NUMERICAL_CASES[case]
    with dask.config.set({"rfm.cg.preconditioner-rank": 20}), pytest.raises(error, match=re.escape(match)):
        RFMRegressor(client=client, **{**FAST, **params}).fit(X, y)


def test_estimator_predict_refuses_bad_input(numpy_model):
    model, X = numpy_model
    with_nan = X.copy()
    with_nan[2, 0] = np.nan
    cases = {
        "NaN": (with_nan, "NaN"),
        "infinity": (np.where(X > 1, np.inf, X), "infinity"),
        "width": (X[:, :2], "X has 2 features, but RFMRegressor is expecting 3"),
        "1-D": (X[0], "Expected 2D array"),
        "0 rows": (X[:0], "0 sample(s)"),
        "strings": (np.array([["a", "b", "c"]]), "could not convert string"),
        "dask width": (da.from_array(X[:, :2]), "X has 2 features"),
        "dask 0 rows": (da.from_array(X[:0]), "0 sample(s)"),
    }
    for name, (bad, match) in cases.items():
        with pytest.raises(ValueError, match=re.escape(match)):
            model.predict(bad)
    lazy = model.predict(da.from_array(with_nan, chunks=(10, 3)))  # values are checked as the graph runs
    with pytest.raises(ValueError, match="NaN"):
        lazy.compute()


def test_dataframe_columns_at_predict(client):
    rng = np.random.default_rng(2)
    frame = pd.DataFrame(rng.normal(size=(30, 3)), columns=["a", "b", "c"])
    model = RFMRegressor(client=client, **FAST).fit(frame, frame["a"] * frame["b"])
    with pytest.raises(ValueError, match="yet now missing:\n- b"):
        model.predict(frame.drop(columns=["b"]))
    assert np.isfinite(model.predict(frame)).all()


@pytest.mark.parametrize("estimator", [RFMRegressor, RFMClassifier])
def test_constant_columns_fit_and_predict_finite_values(estimator, client):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(40, 3)).astype(np.float32)
    X[:, 1] = 7.0
    y = X[:, 0] if estimator is RFMRegressor else (X[:, 0] > 0).astype(int)
    for features in (X, np.ones_like(X)):  # one constant column; every column constant
        model = estimator(client=client, **FAST).fit(features, y)
        out = model.predict_proba(features) if estimator is RFMClassifier else model.predict(features)
        assert np.isfinite(out).all() and np.isfinite(model.feature_matrix_).all()


# -- ingest: the Python API and the CLI ----------------------------------------------------------------------------
def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def _non_utf8_name(table: pa.Table) -> bytes:
    """Parquet bytes of ``table`` with a column named b"x\\xffy" (no Arrow schema stored: the name is read from the
    Parquet schema)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table.append_column("xQy", table["x0"]), sink, store_schema=False)
    blob = sink.getvalue().to_pybytes()
    assert b"xQy" in blob  # in the schema and in the column chunk's path
    return blob.replace(b"xQy", b"x\xffy")


def _ingest_cases() -> dict:
    """name -> (the input: a table, raw bytes or None for no file; ingest options; text the error must contain).
    The input is written to ``<name with underscores>.parquet``."""
    base = _table(30)
    n = base.num_rows
    inf_x0 = pa.array(np.where(np.arange(n) == 5, np.inf, base["x0"].to_numpy()))
    blob = _parquet_bytes(base)
    corrupt = bytearray(blob)
    corrupt[4:20] = b"\xde\xad\xbe\xef" * 4  # the first page header: the footer still reads
    huge = pa.array(np.full(n, 1e300) * (-1) ** np.arange(n))
    return {
        "inf in a feature": (base.set_column(1, "x0", inf_x0), {}, "'x0' holds 1 infinite"),
        "inf in the target": (base.set_column(4, "y", inf_x0), {}, "'y' holds 1 infinite"),
        "huge values": (base.set_column(2, "x1", huge), {}, "'x1' has values too large"),
        "target squares overflow": (base.set_column(4, "y", pa.array(np.full(n, 1e308) * (-1) ** np.arange(n))),
                                    {}, "target 'y' has values too large for float64 arithmetic (up to 1e+308"),
        "target sum of squares overflows": (base.set_column(4, "y", pa.array(np.full(n, 1e154))), {},
                                            "target 'y' has values too large for float64 arithmetic"),
        "schema and 0 rows": (base.slice(0, 0), {}, "no rows left to ingest: 0 read"),
        "0 feature columns": (base.select(["y"]), {}, "no feature columns"),
        "all-null column": (base.append_column("gone", pa.nulls(n, pa.float64())), {},
                            "'gone' has no non-null values"),
        "null-typed column": (base.append_column("void", pa.nulls(n)), {},
                              "null-typed_column.parquet: column(s) of unsupported type: 'void' (null)"),
        "bogus time zone": (base.append_column("when", pa.array(np.arange(n), pa.timestamp("ms", "Mars/Olympus"))),
                            {}, "bogus_time_zone.parquet: column 'when' (timestamp[ms, tz=Mars/Olympus]): Cannot locate"),
        "non-UTF-8 column name": (_non_utf8_name(base), {},
                                  "non-UTF-8_column_name.parquet: a column name is not valid UTF-8: 'x\\xffy'"),
        "list column": (base.append_column("nested", pa.array([[1, 2]] * n)), {}, "unsupported type: 'nested'"),
        "missing target": (base, {"target": "price"}, "target column 'price' not found"),
        "all targets null": (base.set_column(4, "y", pa.nulls(n, pa.float64())), {}, "'target_null': 30"),
        "one class": (base.set_column(5, "label", pa.array(["only"] * n)),
                      {"target": "label", "exclude": ["y"], "task": "classification"}, "1 class(es) ['only']"),
        "regression on labels": (base, {"target": "label", "task": "regression"}, "'label' holds labels"),
        "repeated column name": (pa.Table.from_arrays([base["x0"], base["x1"], base["y"]], names=["x0", "x0", "y"]),
                                 {}, "['x0'] appear more than once"),
        "too many categories": (base, {"max_categories": 2}, "'colour' has at least 3 distinct"),
        "id column with nulls": (base.set_column(0, "row_id", pa.array([None, *range(1, n)])),
                                 {"id_column": "row_id"}, "id column 'row_id' has nulls"),
        "float id column": (base, {"id_column": "x0"}, "id column 'x0' has type double"),
        "unknown exclude": (base, {"exclude": ["nope"]}, "unknown column(s) ['nope']"),
        "garbage bytes": (b"this is not parquet" * 20, {}, "garbage_bytes.parquet is not a readable Parquet file"),
        "truncated Parquet": (blob[: len(blob) // 2], {}, "truncated_Parquet.parquet is not a readable Parquet"),
        "corrupt page": (bytes(corrupt), {}, "corrupt_page.parquet: cannot read Parquet data"),
        "no such file": (None, {}, "no_such_file.parquet does not exist"),
        "bad option": (base, {"nulls": "zero"}, "nulls must be one of"),
    }


INGEST_CASES = _ingest_cases()


@pytest.fixture(scope="module")
def ingest_inputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ingest_inputs")
    paths = {}
    for name, (data, _, _) in INGEST_CASES.items():
        paths[name] = root / f"{name.replace(' ', '_')}.parquet"
        if isinstance(data, pa.Table):
            _write(paths[name], data)
        elif data is not None:
            paths[name].write_bytes(data)
    return paths


def _cli_options(options: dict) -> list[str]:
    argv = ["--target", options.get("target", "y")]
    for key, value in options.items():
        if key != "target":
            flag = "--" + key.replace("_", "-")
            argv += [flag, *value] if isinstance(value, list) else [flag, str(value)]
    return argv


@pytest.mark.parametrize("via", ["api", "cli"])
@pytest.mark.parametrize("case", INGEST_CASES)
def test_ingest_refuses_bad_input_and_leaves_nothing(case, via, ingest_inputs, tmp_path, capsys):
    src, (_, options, match) = ingest_inputs[case], INGEST_CASES[case]
    store = tmp_path / "out" / "store.zarr"
    if via == "api":
        options = dict(options)
        target = options.pop("target", "y")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DataWarning)
            with pytest.raises((DataError, ValueError)) as info:
                ingest(src, store, target, **options)
        assert match in str(info.value)
    elif case == "bad option":  # a usage error: argparse exits with status 2 and the usage
        with pytest.raises(SystemExit) as info:
            main(["ingest", str(src), str(store), *_cli_options(options)])
        assert info.value.code == 2 and "invalid choice: 'zero'" in capsys.readouterr().err
    else:
        _one_line_error(capsys, ["ingest", src, store, *_cli_options(options)], match)
    assert _listing(tmp_path) == []


def test_ingest_constant_columns_warn_and_still_fit(tmp_path, client):
    """Constant columns (a number, a category, a timestamp) are kept or dropped with a warning, also with
    nulls='drop' (whose row filter then reads a column that encodes to no feature); fit and predict are finite."""
    base = _table(40)
    stamp = pa.array(np.full(40, np.datetime64("2024-01-01T10:00", "us")))
    table = base.append_column("k", pa.array(np.full(40, 3.5))).append_column("s", pa.array(["z"] * 40))
    table = table.append_column("when", stamp)
    src = _write(tmp_path / "constant.parquet", table)
    for nulls in ("impute", "drop"):
        with pytest.warns(DataWarning, match=r"constant in the training data.*'k', 's', 'when'"):
            report = ingest(src, tmp_path / f"{nulls}.zarr", "y", exclude=["label"], nulls=nulls)
        assert "when__hour" not in report.feature_names and report.n_rows == 40  # all its parts are constant
    model = fit_store(tmp_path / "drop.zarr", client=client, **FAST)
    assert np.isfinite(model.predict(rfm_dask.open_zarr(tmp_path / "drop.zarr").X.compute())).all()
    model.save(tmp_path / "m.rfm")
    assert predict_parquet(rfm_dask.load(tmp_path / "m.rfm"), src, tmp_path / "p.parquet")["rows"] == 40
    assert np.isfinite(pq.read_table(tmp_path / "p.parquet")["prediction"].to_numpy()).all()


def test_ingest_tiny_spreads_are_finite(tmp_path):
    """A column whose spread underflows (subnormal values) is standardised with scale 1, not divided by 0."""
    table = pa.table({"tiny": [0.0, 5e-324, 0.0, 1e-320], "x": [1.0, 2.0, 3.0, 4.0], "y": [1.0, 2.0, 3.0, 4.0]})
    src = _write(tmp_path / "t.parquet", table)
    ingest(src, tmp_path / "s.zarr", "y")
    opened = rfm_dask.open_zarr(tmp_path / "s.zarr")
    assert np.isfinite(opened.X.compute()).all()
    pre = Preprocessor.from_dict(opened.attrs["preprocessing"])
    assert np.isfinite(np.concatenate([b.X for b in read_batches(src, pre)])).all()


def test_ingest_existing_store_is_refused_and_untouched(tmp_path, capsys):
    src = _write(tmp_path / "t.parquet", _table(20))
    store = tmp_path / "s.zarr"
    ingest(src, store, "y", exclude=["label"])
    before = {p: p.read_bytes() for p in store.rglob("*") if p.is_file()}
    with pytest.raises(FileExistsError, match="s.zarr already exists"):
        ingest(src, store, "y", exclude=["label"])
    _one_line_error(capsys, ["ingest", src, store, "--target", "y", "--exclude", "label"], "already exists")
    assert {p: p.read_bytes() for p in store.rglob("*") if p.is_file()} == before
    assert _listing(tmp_path) == ["s.zarr", *(str(p.relative_to(tmp_path)) for p in sorted(store.rglob("*"))),
                                  "t.parquet"]
    assert main(["ingest", str(src), str(store), "--target", "y", "--exclude", "label", "--overwrite",
                 "--quiet"]) == 0


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(DataError, match="target column 'nope' not found"):
        main(["ingest", str(_write(tmp_path / "t.parquet", _table(5))), str(tmp_path / "s.zarr"),
              "--target", "nope", "--debug"])


# -- predict time: read_batches, predict_parquet, evaluate, and the CLI ----------------------------------------------
def test_read_batches_columns_by_name(trained, tmp_path):
    model_path, test, _ = trained
    pre = Preprocessor.from_dict(rfm_dask.load(model_path).preprocessing_["preprocessor"])
    table = pq.read_table(test)
    X = np.concatenate([b.X for b in read_batches(test, pre)])
    shuffled = table.select(["y", "colour", "x1", "label", "x0"]).append_column("extra", pa.array(["?"] * 20))
    X_shuffled = np.concatenate([b.X for b in read_batches(_write(tmp_path / "s.parquet", shuffled), pre)])
    np.testing.assert_array_equal(X_shuffled, X)  # extra columns ignored, order does not matter
    cases = {
        "missing": (table.drop_columns(["x1", "colour"]), "missing required column(s) ['x1', 'colour']"),
        "wrong type": (table.set_column(1, "x0", pa.array(["1.0"] * 20)), "column 'x0' must be numeric"),
        "bool for number": (table.set_column(2, "x1", pa.array([True] * 20)), "column 'x1' must be numeric"),
        "number for category": (table.set_column(3, "colour", pa.array(np.arange(20))),
                                "column 'colour' must be categorical"),
        "inf": (table.set_column(1, "x0", pa.array(np.full(20, -np.inf))), "column 'x0' holds 20 infinite"),
        "huge": (table.set_column(1, "x0", pa.array(np.full(20, 1e300))), "column 'x0' holds 20 value(s) too large"),
    }
    for name, (bad, match) in cases.items():
        src = _write(tmp_path / f"{name}.parquet", bad)
        with pytest.raises(DataError, match=re.escape(match)):
            list(read_batches(src, pre))
    nulls = table.set_column(1, "x0", pa.nulls(20, pa.float64())).set_column(3, "colour", pa.nulls(20, pa.string()))
    X_nulls = np.concatenate([b.X for b in read_batches(_write(tmp_path / "nulls.parquet", nulls), pre)])
    assert np.isfinite(X_nulls).all()  # imputed as in training; unseen null categories are all zeros


def test_predict_parquet_refuses_bad_input_and_writes_nothing(trained, tmp_path, numpy_model):
    model_path, test, _ = trained
    model = rfm_dask.load(model_path)
    table = pq.read_table(test)
    out = tmp_path / "new" / "dir" / "pred.parquet"
    ids = pa.array([*range(19), None])
    cases = {
        "missing column": (_write(tmp_path / "short.parquet", table.drop_columns(["x1"])), "['x1']", {}),
        "inf": (_write(tmp_path / "inf.parquet", table.set_column(1, "x0", pa.array(np.full(20, np.inf)))),
                "'x0' holds 20 infinite", {}),
        "0 rows": (_write(tmp_path / "empty.parquet", table.slice(0, 0)), "holds no rows to predict", {}),
        "garbage": (tmp_path / "garbage.parquet", "not a readable Parquet file", {}),
        "second file bad": ([test, tmp_path / "short.parquet"], "short.parquet: missing required column(s)", {}),
        "null id": (_write(tmp_path / "null_id.parquet", table.set_column(0, "row_id", ids)),
                    "null_id.parquet: id column 'row_id' has 1 null(s)", {}),
        "list ids": (_write(tmp_path / "list_ids.parquet", table.set_column(0, "row_id", pa.array([[1, 2]] * 20))),
                     "id column 'row_id' has type list<element: int64>: ids must be", {}),
        "id column named prediction": (_write(tmp_path / "named.parquet", table.append_column(
            "prediction", pa.array(np.arange(20)))), "id column 'prediction' has the name of an output column",
            {"id_column": "prediction"}),
    }
    (tmp_path / "garbage.parquet").write_bytes(b"\x00" * 64)
    inputs = _listing(tmp_path)
    for name, (src, match, options) in cases.items():
        with pytest.raises(ValueError) as info:
            predict_parquet(model, src, out, **options)
        assert match in str(info.value), (name, info.value)
        assert _listing(tmp_path) == inputs, name  # not even the output's directory
    with pytest.raises(ValueError, match="not fitted on an ingested store"):
        predict_parquet(numpy_model[0], test, out)
    with pytest.raises(ValueError, match="id column|missing required column"):
        predict_parquet(model, test, out, id_column="nope")
    assert _listing(tmp_path) == inputs


def test_evaluate_refuses_bad_targets(trained, tmp_path):
    model_path, test, _ = trained
    model = rfm_dask.load(model_path)
    table = pq.read_table(test)
    cases = {
        "no target column": (table.drop_columns(["y"]), "missing required column(s) ['y']"),
        "labels for regression": (table.set_column(4, "y", pa.array(["a"] * 20)), "'y' holds labels such as 'a'"),
        "infinite target": (table.set_column(4, "y", pa.array(np.full(20, np.inf))), "'y' holds 20 infinite"),
        "null targets only": (table.set_column(4, "y", pa.nulls(20, pa.float64())), "no rows with a known target"),
        "0 rows": (table.slice(0, 0), "no rows with a known target"),
    }
    for name, (bad, match) in cases.items():
        with pytest.raises(ValueError) as info:
            evaluate(model, _write(tmp_path / f"{name}.parquet", bad), batch_rows=8)
        assert match in str(info.value), (name, info.value)
    # a batch whose targets are all null is skipped, not an error
    y = table["y"].to_numpy().copy()
    y[:8] = np.nan
    partly = _write(tmp_path / "partly.parquet", table.set_column(4, "y", pa.array(y, from_pandas=True)))
    assert evaluate(model, partly, batch_rows=8)["skipped_rows"] == 8


def test_unseen_categories_are_counted_per_column(trained, tmp_path, capsys):
    """Values of a categorical column not seen in training are counted per column in the outputs of predict and
    evaluate (API and CLI), not only encoded as zeros."""
    model_path, test, _ = trained
    table = pq.read_table(test)
    colour = np.array(["purple"] * 15 + ["red"] * 5)
    src = _write(tmp_path / "new.parquet", table.set_column(3, "colour", pa.array(colour)))
    model = rfm_dask.load(model_path)
    assert predict_parquet(model, src, tmp_path / "p.parquet") == {"rows": 20, "unseen_categories": {"colour": 15}}
    assert evaluate(model, src, batch_rows=8)["unseen_categories"] == {"colour": 15}
    assert evaluate(model, test)["unseen_categories"] == {}
    assert main(["predict", str(model_path), str(src), str(tmp_path / "q.parquet"), "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["unseen_categories"] == {"colour": 15}
    assert main(["evaluate", str(model_path), str(src), "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["unseen_categories"] == {"colour": 15}
    written = pq.read_table(tmp_path / "p.parquet")
    assert written.column_names[:2] == ["row_id", "prediction"]
    np.testing.assert_array_equal(written["row_id"].to_numpy(), table["row_id"].to_numpy())


def test_cli_predict_and_evaluate_errors(trained, tmp_path, capsys):
    model_path, test, _ = trained
    table = pq.read_table(test)
    short = _write(tmp_path / "short.parquet", table.drop_columns(["colour"]))
    out = tmp_path / "sub" / "p.parquet"
    _one_line_error(capsys, ["predict", model_path, short, out], "missing required column(s) ['colour']")
    _one_line_error(capsys, ["predict", model_path, _write(tmp_path / "huge.parquet", table.set_column(
        2, "x1", pa.array(np.full(20, 1e300)))), out], "'x1' holds 20 value(s) too large")
    _one_line_error(capsys, ["evaluate", model_path, short], "['colour']")
    _one_line_error(capsys, ["evaluate", model_path, test, "--target", "label"], "'label' holds labels")
    _one_line_error(capsys, ["fit", test, tmp_path / "m.rfm"], "is not a readable Zarr store")
    _one_line_error(capsys, ["inspect", model_path, "--plot", tmp_path / "plots" / "M.txt"], "'txt' is not supported")
    assert _listing(tmp_path) == ["huge.parquet", "short.parquet"]  # no directory made for an output either


def test_existing_outputs_are_refused_and_untouched(trained, tmp_path, capsys):
    model_path, test, store = trained
    existing = tmp_path / "existing"
    existing.write_bytes(b"precious")
    _one_line_error(capsys, ["predict", model_path, test, existing], "already exists")
    with pytest.raises(FileExistsError, match="already exists"):
        predict_parquet(rfm_dask.load(model_path), test, existing)
    _one_line_error(capsys, ["fit", store, existing, "--iters", "1"], "already exists")
    with pytest.raises(FileExistsError, match="already exists"):
        rfm_dask.load(model_path).save(existing)
    _one_line_error(capsys, ["ingest", test, existing, "--target", "y"], "already exists")
    assert existing.read_bytes() == b"precious" and _listing(tmp_path) == ["existing"]
    assert main(["predict", str(model_path), str(test), str(existing), "--overwrite", "--quiet"]) == 0
    assert pq.read_table(existing).num_rows == 20


def test_unwritable_outputs_are_refused_before_fitting(trained, tmp_path, capsys, monkeypatch):
    _, _, store = trained
    monkeypatch.setattr("rfm_dask.estimator_base.run_rfm", lambda *a, **k: pytest.fail("fitted before the check"))
    blocker = tmp_path / "a_file"
    blocker.write_bytes(b"")
    read_only = tmp_path / "read_only"
    read_only.mkdir(mode=0o500)
    cases = {
        "model under a file": ([blocker / "sub" / "m.rfm"], "cannot write the model file"),
        "checkpoint under a file": ([tmp_path / "m.rfm", "--checkpoint", blocker / "ck"], "cannot write the checkpoint"),
    }
    if os.geteuid() != 0:  # root writes into read-only directories
        cases["read-only directory"] = ([read_only / "m.rfm"], "cannot write the model file")
    for name, (argv, match) in cases.items():
        _one_line_error(capsys, ["fit", store, *argv, "--iters", "1"], match)
    with pytest.raises(NotADirectoryError, match="cannot write the checkpoint"):
        RFMRegressor(checkpoint=blocker / "ck", **FAST).fit(np.ones((10, 2)), np.arange(10.0))
    assert _listing(tmp_path) == ["a_file", "read_only"]


def test_cli_single_class_through_ingest_and_fit(tmp_path, capsys):
    table = _table(30).set_column(5, "label", pa.array(["only"] * 30))
    src = _write(tmp_path / "t.parquet", table.append_column("one", pa.array(np.ones(30))))
    _one_line_error(capsys, ["ingest", src, tmp_path / "a.zarr", "--target", "label", "--exclude", "y", "one"],
                    "target 'label' has 1 class(es) ['only']")
    assert main(["ingest", str(src), str(tmp_path / "b.zarr"), "--target", "one", "--task", "regression",
                 "--exclude", "y", "label", "--quiet"]) == 0
    _one_line_error(capsys, ["fit", tmp_path / "b.zarr", tmp_path / "m.rfm", "--task", "classification",
                             "--iters", "1", "--solver", "direct"], "only one class")
    assert _listing(tmp_path) == ["b.zarr", *sorted(str(p.relative_to(tmp_path))
                                                    for p in (tmp_path / "b.zarr").rglob("*")), "t.parquet"]


# -- model files ---------------------------------------------------------------------------------------------------
def _set_in_central_directory(blob: bytes, offset: int, value: int) -> bytes:
    """Overwrite a 2-byte field of every central directory entry of a zip archive."""
    out = bytearray(blob)
    start = 0
    while (start := out.find(b"PK\x01\x02", start)) >= 0:
        out[start + offset:start + offset + 2] = struct.pack("<H", value)
        start += 4
    return bytes(out)


def _stored_copy(src: Path, dst: Path) -> bytes:
    """The model archive rewritten without compression; the bytes of the copy."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_STORED) as zout:
        for name in zin.namelist():
            zout.writestr(name, zin.read(name))
    return dst.read_bytes()


def _edited(src: Path, dst: Path, edit) -> Path:
    """A copy of the model archive with its metadata dict edited."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "metadata.json":
                meta = json.loads(data)
                edit(meta)
                data = json.dumps(meta).encode()
            zout.writestr(item, data)
    return dst


def _with_coef(src: Path, dst: Path, shape: tuple, data: bytes) -> Path:
    """A copy of the model archive whose coefficients are a float64 .npy of ``shape`` (its header) followed by
    ``data``, recorded in the metadata with that shape and their SHA-256 (as a forger would)."""
    import hashlib
    import io

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": shape})
    blob = header.getvalue() + data
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            content = blob if item.filename == "arrays/coef.npy" else zin.read(item.filename)
            if item.filename == "metadata.json":
                meta = json.loads(content)
                meta["arrays"]["coef"] = {"shape": list(shape), "dtype": "<f8",
                                          "sha256": hashlib.sha256(blob).hexdigest()}
                content = json.dumps(meta).encode()
            zout.writestr(item.filename, content)
    return dst


def _bad_model_files(good: Path, root: Path) -> dict[str, tuple[Path, str]]:
    blob = good.read_bytes()
    stored = _stored_copy(good, root / "stored.rfm")
    files = {
        "truncated": (blob[: len(blob) // 2], "corrupt or truncated"),
        "cut short by 10 bytes": (blob[:-10], "corrupt or truncated"),
        "empty": (b"", "corrupt or truncated"),
        "garbage": (b"\x89PNG not a model" * 8, "corrupt or truncated"),
        "bad deflate stream": (_set_in_central_directory(stored, 10, zipfile.ZIP_DEFLATED), "corrupt"),
        "unknown compression": (_set_in_central_directory(stored, 10, 97), "zip features"),
        "encrypted": (_set_in_central_directory(stored, 8, 1), "zip features"),
    }
    cases = {}
    for name, (data, match) in files.items():
        path = root / f"{name.replace(' ', '_')}.rfm"
        path.write_bytes(data)
        cases[name] = (path, match)
    edits = {
        "newer format": (lambda m: m.update(format_version=99), "format 99"),
        "not a model": (lambda m: m.update(format="something.else"), "not an rfm_dask model file"),
        "array entry not a dict": (lambda m: m["arrays"].update(coef=5), "array 'coef' by 5"),
        "unknown estimator": (lambda m: m.update(estimator="Pipeline"), "unknown estimator 'Pipeline'"),
        "missing state key": (lambda m: m["state"].pop("best_iter"), "not a valid RFMRegressor"),
    }
    for name, (edit, match) in edits.items():
        cases[name] = (_edited(good, root / f"{name.replace(' ', '_')}.rfm", edit), match)
    coef = np.lib.format.read_array(zipfile.ZipFile(good).open("arrays/coef.npy"))
    cases["NaN coefficients"] = (_with_coef(good, root / "nan_coef.rfm", coef.shape, np.where(
        np.arange(coef.size).reshape(coef.shape) == 0, np.nan, coef).astype("<f8").tobytes()), "holds NaN")
    cases["header bomb"] = (_with_coef(good, root / "header_bomb.rfm", (100000, 100000), b""),
                            "declares 80000000000 bytes of data")
    (root / "directory.rfm").mkdir()
    cases["a directory"] = (root / "directory.rfm", "no model file at")
    return cases


@pytest.fixture(scope="module")
def bad_models(trained, tmp_path_factory):
    return _bad_model_files(trained[0], tmp_path_factory.mktemp("bad_models"))


def test_bad_model_files_are_refused_by_load(bad_models):
    for name, (path, match) in bad_models.items():
        error = FileNotFoundError if name == "a directory" else ModelFileError
        with pytest.raises(error) as info:
            rfm_dask.load(path)
        assert match in str(info.value) and path.name in str(info.value), (name, info.value)


@pytest.mark.parametrize("command", ["predict", "evaluate", "inspect"])
def test_bad_model_files_are_refused_by_the_cli(command, bad_models, trained, tmp_path, capsys):
    test = trained[1]
    for name, (path, match) in bad_models.items():
        argv = {"predict": [path, test, tmp_path / "p.parquet"], "evaluate": [path, test],
                "inspect": [path, "--plot", tmp_path / "M.png"]}[command]
        line = _one_line_error(capsys, [command, *argv], match)
        assert path.name in line, line
    assert _listing(tmp_path) == []


def _inconsistent(edit):
    return lambda m: edit(m["state"])


INCONSISTENT_STATES = {
    "n_features_in differs from the arrays": lambda s: s.update(n_features_in=2),
    "one class": lambda s: s.update(classes=["a"], classes_dtype="<U1"),
    "preprocessing not a dict": lambda s: s.update(preprocessing="x"),
    "feature names of the wrong length": lambda s: s.update(feature_names_in=["a"]),
}


@pytest.mark.parametrize("case", INCONSISTENT_STATES)
def test_inconsistent_model_state_is_refused_at_load(case, trained, tmp_path, client):
    good = trained[0]
    if case in ("one class",):
        clf = RFMClassifier(client=client, **FAST).fit(np.random.default_rng(0).normal(size=(20, 2)),
                                                       np.arange(20) % 2)
        good = clf.save(tmp_path / "clf.rfm")
    path = _edited(good, tmp_path / "bad.rfm", _inconsistent(INCONSISTENT_STATES[case]))
    try:
        rfm_dask.load(path)
    except ModelFileError as err:
        assert "bad.rfm" in str(err)
        return
    raise AssertionError("loaded")
