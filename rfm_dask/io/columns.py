"""Arrow columns by kind (numeric, bool, categorical, timestamp) and their values as NumPy arrays."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rfm_dask.io.errors import DataError

NUMERIC, BOOL, CATEGORICAL, TIMESTAMP = "numeric", "bool", "categorical", "timestamp"
KINDS = (NUMERIC, BOOL, CATEGORICAL, TIMESTAMP)

TIMESTAMP_PARTS = {
    "year": pc.year,
    "month": pc.month,
    "day": pc.day,
    "dayofweek": pc.day_of_week,  # Monday = 0
    "hour": pc.hour,
    "minute": pc.minute,
}


def kind_of(dtype: pa.DataType) -> str | None:
    """The kind of an Arrow type, or None for types that cannot be encoded (lists, structs, binary, null, ...)."""
    if pa.types.is_boolean(dtype):
        return BOOL
    if pa.types.is_integer(dtype) or pa.types.is_floating(dtype) or pa.types.is_decimal(dtype):
        return NUMERIC
    if pa.types.is_dictionary(dtype):
        value = dtype.value_type
        return CATEGORICAL if _is_text(value) or pa.types.is_integer(value) else None
    if _is_text(dtype):
        return CATEGORICAL
    if pa.types.is_timestamp(dtype) or pa.types.is_date(dtype):
        return TIMESTAMP
    return None


def check_kind(name: str, expected: str, dtype: pa.DataType) -> None:
    """Raise ``DataError`` unless a column of type ``dtype`` has the kind ``expected`` (or is all null)."""
    if pa.types.is_null(dtype):
        return
    kind = kind_of(dtype)
    if kind != expected:
        found = f"{kind} ({dtype})" if kind else f"unsupported type {dtype}"
        raise DataError(f"column {name!r} must be {expected} (as in training) but is {found}")


def column(batch: pa.RecordBatch | pa.Table, name: str) -> pa.Array:
    """One column of a record batch or table as a single Arrow array."""
    col = batch.column(name)
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def numeric_values(name: str, arr: pa.Array) -> np.ndarray:
    """(b,) float64 values of a numeric or bool column; nulls and NaN become NaN, +-inf raises ``DataError``."""
    values = np.asarray(arr.cast(pa.float64(), safe=False).to_numpy(zero_copy_only=False), dtype=np.float64)
    n_inf = int(np.isinf(values).sum())
    if n_inf:
        raise DataError(f"column {name!r} holds {n_inf} infinite value(s): replace or remove them first")
    return values


def category_values(arr: pa.Array) -> pa.Array:
    """A categorical column (string or dictionary) as an Arrow string array; nulls stay null."""
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    return arr if pa.types.is_string(arr.type) else arr.cast(pa.string())


def timestamp_values(arr: pa.Array, parts: list[str]) -> np.ndarray:
    """(b, len(parts)) float64 calendar parts of a timestamp or date column (local time when it has a time zone);
    nulls become NaN."""
    if pa.types.is_date(arr.type) or pa.types.is_null(arr.type):
        arr = arr.cast(pa.timestamp("s"))
    cols = [TIMESTAMP_PARTS[p](arr).to_numpy(zero_copy_only=False) for p in parts]
    return np.stack(cols, axis=1).astype(np.float64) if cols else np.empty((len(arr), 0))


def null_rows(arr: pa.Array) -> np.ndarray:
    """(b,) bool: the rows where ``arr`` is null (or NaN)."""
    return pc.is_null(arr, nan_is_null=True).to_numpy(zero_copy_only=False)


def raw_values(arr: pa.Array) -> np.ndarray:
    """(b,) values as NumPy, as they are: categories decoded, nulls as None (objects) or NaN (numbers)."""
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    return arr.to_numpy(zero_copy_only=False)


def id_dtype(name: str, dtype: pa.DataType) -> object:
    """The Zarr dtype of the ids in column ``name``: int64 for integers, variable-length strings for strings and
    dictionaries; other types raise ``DataError``."""
    if pa.types.is_integer(dtype):
        return "int64"
    if kind_of(dtype) == CATEGORICAL:
        return str
    raise DataError(f"id column {name!r} has type {dtype}: ids must be integers or strings")


def id_values(name: str, arr: pa.Array) -> np.ndarray:
    """(b,) ids of column ``name`` as int64 or str; other types, and nulls, raise ``DataError``."""
    id_dtype(name, arr.type)
    if arr.null_count:
        raise DataError(f"id column {name!r} has {arr.null_count} null(s): ids must be present in every row")
    if pa.types.is_integer(arr.type):
        return arr.cast(pa.int64()).to_numpy()
    return category_values(arr).to_numpy(zero_copy_only=False)


def _is_text(dtype: pa.DataType) -> bool:
    return pa.types.is_string(dtype) or pa.types.is_large_string(dtype)
