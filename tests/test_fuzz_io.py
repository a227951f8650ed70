"""Property-based tests of ingestion and predict-time reading: random small Parquet tables (numbers with NaN, null
and infinity, bools, unicode strings, timestamps, dates, all-null columns, random names) and random options.

Ingestion either succeeds with finite float32 features that ``read_batches`` reproduces, or fails with a
``DataError``/``ValueError``/``FileExistsError`` whose message says something, leaving no store and no temporary
directory behind. Reading new tables with a fitted ``Preprocessor`` either gives finite features of the right width
or fails naming a column.
"""

from __future__ import annotations

import datetime as dt
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import rfm_dask
from rfm_dask.io import DataError, DataWarning, Preprocessor, ingest, read_batches
from rfm_dask.io.preprocess import PreprocessorFit

settings.register_profile("io-fuzz", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings.get_profile("io-fuzz")  # used as a decorator: other test files keep their own settings

KINDS = ("float", "float32", "int", "bool", "string", "dictionary", "timestamp", "timestamp_tz", "date", "null")
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=4)  # no lone surrogates: not UTF-8
NAMES = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=6)


def _values(wild: st.SearchStrategy, tame: st.SearchStrategy) -> dict[bool, st.SearchStrategy]:
    """Values of a wild column (anything, nulls half the time) or a tame one (ordinary values, a few nulls)."""
    return {True: st.one_of(st.none(), wild), False: st.one_of(st.none(), *[tame] * 9)}


VALUES = {
    "float": _values(st.floats(allow_nan=True, allow_infinity=True), st.floats(-1e3, 1e3)),
    "float32": _values(st.floats(allow_nan=True, allow_infinity=True, width=32), st.floats(-1e3, 1e3, width=32)),
    "int": _values(st.integers(-(2**63), 2**63 - 1), st.integers(-100, 100)),
    "bool": _values(st.booleans(), st.booleans()),
    "string": _values(TEXT, st.sampled_from(["a", "b", "c", "é"])),
    "dictionary": _values(st.sampled_from(["a", "b", "ü", "日本"]), st.sampled_from(["a", "b"])),
    "timestamp": _values(st.datetimes(dt.datetime(1900, 1, 1), dt.datetime(2200, 1, 1)),
                         st.datetimes(dt.datetime(2020, 1, 1), dt.datetime(2021, 1, 1))),
    "timestamp_tz": _values(st.datetimes(dt.datetime(1970, 1, 2), dt.datetime(2100, 1, 1)),
                            st.datetimes(dt.datetime(2020, 1, 1), dt.datetime(2021, 1, 1))),
    "date": _values(st.dates(dt.date(1900, 1, 1), dt.date(2200, 1, 1)),
                    st.dates(dt.date(2020, 1, 1), dt.date(2021, 1, 1))),
    "null": {True: st.none(), False: st.none()},
}


def _array(kind: str, values: list) -> pa.Array:
    if kind == "float":
        return pa.array(values, pa.float64())
    if kind == "float32":
        return pa.array(values, pa.float32())
    if kind == "int":
        return pa.array(values, pa.int64())
    if kind == "bool":
        return pa.array(values, pa.bool_())
    if kind == "string":
        return pa.array(values, pa.string())
    if kind == "dictionary":
        return pa.array(values, pa.string()).dictionary_encode()
    if kind == "timestamp":
        return pa.array(values, pa.timestamp("us"))
    if kind == "timestamp_tz":
        return pa.array(values, pa.timestamp("us")).cast(pa.timestamp("us", tz="America/New_York"))
    if kind == "date":
        return pa.array(values, pa.date32())
    return pa.nulls(len(values))


@st.composite
def columns(draw, n_rows: int, kind: str | None = None) -> pa.Array:
    """A column of a random (or the given) kind; one in four is wild (extreme values, NaN, inf, many nulls)."""
    kind = kind or draw(st.sampled_from(KINDS[:-1] * 3 + ("null",)))  # all-null columns are refused: rare
    values = VALUES[kind][draw(st.sampled_from([False, False, False, True]))]
    return _array(kind, draw(st.lists(values, min_size=n_rows, max_size=n_rows)))


TARGET_KINDS = ("float", "float", "float", "int", "bool", "string", "dictionary")


@st.composite
def tables(draw) -> pa.Table:
    """A table whose first column is the target candidate, then 0-4 feature columns with distinct random names."""
    n_rows = draw(st.integers(0, 12))
    names = draw(st.lists(NAMES, min_size=2, max_size=5, unique=True))
    target = draw(columns(n_rows, draw(st.sampled_from(TARGET_KINDS))))
    return pa.table([target, *(draw(columns(n_rows)) for _ in names[1:])], names=names)


def _write(path: Path, table: pa.Table, row_group_size: int) -> Path:
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def _read_all(src: Path, pre: Preprocessor, batch_rows: int) -> np.ndarray:
    X = [b.X for b in read_batches(src, pre, batch_rows=batch_rows)]
    return np.concatenate(X) if X else np.zeros((0, pre.n_features), np.float32)


def _kept_rows(table: pa.Table, target: str) -> np.ndarray:
    """Rows ingest keeps with nulls="impute": those with a target that is neither null nor NaN."""
    return ~pc.is_null(table[target], nan_is_null=True).to_numpy(zero_copy_only=False)


@FUZZ
@given(
    table=tables(),
    data=st.data(),
    task=st.sampled_from(["auto", "auto", "auto", "regression", "classification"]),
    nulls=st.sampled_from(["impute", "impute", "drop"]),
    timestamps=st.sampled_from(["expand", "drop"]),
    max_categories=st.integers(1, 4),
    high_cardinality=st.sampled_from(["error", "top"]),
    batch_rows=st.integers(1, 7),
    chunk_rows=st.one_of(st.none(), st.integers(1, 5)),
    row_group_size=st.integers(1, 5),
)
def test_ingest_succeeds_cleanly_or_fails_cleanly(table, data, task, nulls, timestamps, max_categories,
                                                  high_cardinality, batch_rows, chunk_rows, row_group_size):
    target, features = table.column_names[0], table.column_names[1:]
    sometimes = st.sampled_from([False, False, False, True])
    exclude = data.draw(st.lists(st.sampled_from(features), max_size=2, unique=True)) if data.draw(sometimes) else []
    id_column = data.draw(st.sampled_from(features)) if data.draw(sometimes) and data.draw(sometimes) else None
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        src = _write(root / "data.parquet", table, row_group_size)
        store = root / "out" / "store.zarr"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DataWarning)
                report = ingest(src, store, target, id_column=id_column, task=task, max_categories=max_categories,
                                high_cardinality=high_cardinality, nulls=nulls, timestamps=timestamps,
                                exclude=exclude, chunk_rows=chunk_rows, batch_rows=batch_rows)
        except (DataError, ValueError, FileExistsError) as err:
            event(f"ingest refused ({type(err).__name__})")
            assert str(err).strip(), f"{type(err).__name__} without a message"
            left = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
            assert left == ["data.parquet"], f"left behind after {err!r}: {left}"
            return

        event("ingest written")
        opened = rfm_dask.open_zarr(store)
        X = opened.X.compute()
        assert X.dtype == np.float32 and X.shape == (report.n_rows, report.n_features)
        assert np.isfinite(X).all()
        assert report.n_rows >= 1 and report.n_features == len(report.feature_names) >= 1
        assert opened.y.shape == (report.n_rows,)
        assert sorted(p.name for p in store.parent.iterdir()) == ["store.zarr"]
        pre = Preprocessor.from_dict(opened.attrs["preprocessing"])  # the recorded encodings read back
        assert pre.feature_names == report.feature_names
        kept = _kept_rows(table, target)
        if nulls == "impute":
            try:
                X_read = _read_all(src, pre, batch_rows)[kept]
            except DataError:  # a value in a row ingest dropped (null target) may not standardise to float32
                kept_only = _write(root / "kept.parquet", table.filter(pa.array(kept)), row_group_size)
                X_read = _read_all(kept_only, pre, batch_rows)
            np.testing.assert_array_equal(X_read, X)
        else:
            assert report.n_rows <= int(kept.sum())


# -- predict time: a fitted Preprocessor on new tables ----------------------------------------------------------------
def _reference_preprocessor() -> Preprocessor:
    """Fitted on a fixed table of every kind: numbers with nulls, an int, a bool, strings (capped to 2 with
    'other'), a dictionary column, a timestamp and a date."""
    rng = np.random.default_rng(0)
    n = 24
    stamps = np.datetime64("2021-01-01T00:00") + rng.integers(0, 10**6, n).astype("timedelta64[m]")
    table = pa.table({
        "num": pa.array(np.where(rng.random(n) < 0.2, np.nan, rng.normal(size=n)), from_pandas=True),
        "int": pa.array(rng.integers(-5, 5, n)),
        "flag": pa.array(rng.random(n) < 0.5),
        "word": pa.array(rng.choice(["x", "y", "z", "w"], n)),
        "code": pa.array([None if k == 0 else "pq"[k % 2] for k in range(n)]).dictionary_encode(),
        "when": pa.array(stamps.astype("datetime64[us]")),
        "day": pa.array(stamps.astype("datetime64[D]")),
    })
    fit = PreprocessorFit(table.schema, table.column_names, max_categories=2, high_cardinality="top")
    fit.update(table)
    return fit.finish()


PRE = _reference_preprocessor()
SAME_KIND = {"num": "float", "int": "int", "flag": "bool", "word": "string", "code": "dictionary",
             "when": "timestamp", "day": "date"}


@st.composite
def new_tables(draw) -> pa.Table:
    """Each trained column kept (same kind), missing, of another (random) kind or all null; extra columns; shuffled."""
    n_rows = draw(st.integers(0, 10))
    damaged = draw(st.one_of(st.just([]), st.lists(st.sampled_from(list(SAME_KIND)), max_size=2, unique=True)))
    cols: dict[str, pa.Array] = {}
    for name, kind in SAME_KIND.items():
        if name not in damaged:
            cols[name] = draw(columns(n_rows, kind))
        elif draw(st.booleans()):
            cols[name] = draw(columns(n_rows))  # of another kind, or all null: missing otherwise
    for name in draw(st.lists(NAMES.filter(lambda s: s not in SAME_KIND), max_size=2, unique=True)):
        cols[name] = draw(columns(n_rows))
    order = draw(st.permutations(list(cols)))
    return pa.table({name: cols[name] for name in order}) if order else pa.table({"only": pa.nulls(n_rows)})


@FUZZ
@given(table=new_tables(), batch_rows=st.integers(1, 6), row_group_size=st.integers(1, 4))
def test_read_batches_gives_finite_features_or_names_the_column(table, batch_rows, row_group_size):
    with tempfile.TemporaryDirectory() as tmp:
        src = _write(Path(tmp) / "new.parquet", table, row_group_size)
        try:
            batches = list(read_batches(src, PRE, batch_rows=batch_rows))
        except (DataError, ValueError) as err:
            message = str(err)
            event(f"read refused ({type(err).__name__})")
            assert any(repr(name) in message for name in PRE.columns), message
            return
    event("read")
    X = np.concatenate([b.X for b in batches]) if batches else np.zeros((0, PRE.n_features), np.float32)
    assert X.dtype == np.float32 and X.shape == (table.num_rows, PRE.n_features)
    assert np.isfinite(X).all()
