"""``ingest``: Parquet -> Zarr v3 store of float32 X (n, d), y (n,) and ids (n,), in two streaming passes
(fit, then transform and write), built atomically."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa
import zarr

from rfm_dask.files.atomic import atomic_path
from rfm_dask.files.zarr_store import _default_chunk_rows
from rfm_dask.io.columns import column, id_dtype, id_values, null_rows
from rfm_dask.io.errors import DataError, located
from rfm_dask.io.preprocess import Preprocessor, PreprocessorFit
from rfm_dask.io.sources import ParquetSource, Source, open_source
from rfm_dask.io.target import Target, TargetFit
from rfm_dask.io.writer import ChunkWriter

FORMAT_VERSION = 1
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class IngestReport:
    """What ``ingest`` wrote: n rows of d features, and the rows it dropped (by reason)."""

    store: Path
    n_rows: int
    n_features: int
    feature_names: list[str]
    task: str
    classes: list | None
    rows_read: int
    dropped_rows: dict[str, int]
    files: int


def ingest(
    source: Source,
    store: str | os.PathLike,
    target: str,
    *,
    id_column: str | None = None,
    task: str = "auto",
    max_categories: int = 32,
    high_cardinality: str = "error",
    nulls: str = "impute",
    timestamps: str = "expand",
    exclude: Sequence[str] = (),
    chunk_rows: int | None = None,
    batch_rows: int = 65536,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> IngestReport:
    """Encode the Parquet ``source`` into a Zarr v3 group at ``store`` that ``rfm_dask.open_zarr`` opens.

    Every column but ``target``, ``id_column`` and ``exclude`` is a feature (see ``Preprocessor``). Pass 1 fits the
    preprocessor and the target (``task="auto"``: see ``TargetFit``); pass 2 writes ``X`` (n, d) float32, ``y`` (n,)
    (float64, or int64 indices into the ``classes`` attribute) and ``ids`` (n,) (int64 or strings), chunked by
    ``chunk_rows`` rows (default about 32 MiB of X). Rows with a null target are dropped, and with ``nulls="drop"``
    rows with a null in any feature; the counts are in the report and the store's attributes. Memory is bounded
    by a batch of ``batch_rows`` rows, one Parquet row group and one chunk. ``progress(rows_done, rows_total)`` is
    called per batch; both passes count, so ``rows_total`` is twice the number of rows in the source. The store is
    built in a temporary sibling and renamed into place: a failure leaves nothing behind; an existing ``store`` is
    an error unless ``overwrite``.
    """
    store = Path(store)
    if store.exists() and not overwrite:
        raise FileExistsError(f"{store} already exists (pass overwrite=True to replace it)")
    if chunk_rows is not None and chunk_rows < 1:
        raise ValueError(f"chunk_rows must be a positive integer, got {chunk_rows}")
    src = open_source(source)
    with located(src.parts[0].name):  # the schema is the first file's
        features = _feature_columns(src.schema, target, id_column, exclude)
        fit = PreprocessorFit(src.schema, features, max_categories=max_categories, high_cardinality=high_cardinality,
                              nulls=nulls, timestamps=timestamps)
        target_fit = TargetFit(target, src.schema.field(target).type, task)
        ids_dtype = id_dtype(id_column, src.schema.field(id_column).type) if id_column else None
    rows = _Rows(target, fit.columns if nulls == "drop" else [], id_column)
    tick = _Ticker(progress, 2 * src.num_rows)

    read, kept, dropped = 0, 0, {"target_null": 0, "feature_null": 0}
    for where, batch in src.batches([*fit.columns, *rows.columns], batch_rows):
        with located(where):
            batch_kept, batch_dropped = rows.keep(batch)
            fit.update(batch_kept)
            target_fit.update(column(batch_kept, target))
        read, kept = read + batch.num_rows, kept + batch_kept.num_rows
        dropped = {k: dropped[k] + batch_dropped[k] for k in dropped}
        tick(batch.num_rows)
    if kept == 0:
        raise DataError(f"no rows left to ingest: {read} read, dropped {dropped}")
    pre, tgt = fit.finish(), target_fit.finish()

    with atomic_path(store) as tmp:
        group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        _write(group, src, pre, tgt, rows, ids_dtype, kept, chunk_rows, batch_rows, tick)
        group.attrs.update({
            "rfm_dask_format": FORMAT_VERSION,
            "preprocessing": pre.to_dict(),
            "target": target,
            "task": tgt.task,
            **({"classes": tgt.classes} if tgt.classes is not None else {}),
            "id_column": id_column,
            "n_rows": kept,
            "n_features": pre.n_features,
            "rows_read": read,
            "dropped_rows": dropped,
            "source": src.describe(),
        })
    return IngestReport(store, kept, pre.n_features, pre.feature_names, tgt.task, tgt.classes, read, dropped,
                        len(src.parts))


@dataclass(frozen=True)
class _Rows:
    """Which rows are kept: those with a non-null target, and with ``nulls="drop"`` no null in ``drop_columns``."""

    target: str
    drop_columns: list[str]
    id_column: str | None

    @property
    def columns(self) -> list[str]:
        """The columns ``keep`` reads (a column may be in ``drop_columns`` but encode to no feature)."""
        return [self.target, *([self.id_column] if self.id_column else []), *self.drop_columns]

    def keep(self, batch: pa.RecordBatch) -> tuple[pa.RecordBatch, dict[str, int]]:
        """The kept rows of ``batch``, and the number dropped for each reason."""
        target_null = null_rows(column(batch, self.target))
        feature_null = np.zeros(batch.num_rows, dtype=bool)
        for name in self.drop_columns:
            feature_null |= null_rows(column(batch, name))
        feature_null &= ~target_null
        kept = batch.filter(pa.array(~(target_null | feature_null)))
        if self.id_column and column(kept, self.id_column).null_count:
            raise DataError(f"id column {self.id_column!r} has nulls (in rows that are kept)")
        return kept, {"target_null": int(target_null.sum()), "feature_null": int(feature_null.sum())}


class _Ticker:
    """Calls ``progress(rows_done, rows_total)`` as rows are processed."""

    def __init__(self, progress: Progress | None, total: int) -> None:
        self.progress, self.total, self.done = progress, total, 0

    def __call__(self, rows: int) -> None:
        self.done += rows
        if self.progress is not None:
            self.progress(self.done, self.total)


def _write(group: zarr.Group, src: ParquetSource, pre: Preprocessor, tgt: Target, rows: _Rows, ids_dtype: object,
           n: int, chunk_rows: int | None, batch_rows: int, tick: _Ticker) -> None:
    """Pass 2: transform the n kept rows and write them to arrays X, y (and ids) of ``group``."""
    d = pre.n_features
    chunk = min(chunk_rows or _default_chunk_rows(d), n)
    y_dtype = "int64" if tgt.task == "classification" else "float64"
    arrays = {
        "X": group.create_array("X", shape=(n, d), dtype="float32", chunks=(chunk, d)),
        "y": group.create_array("y", shape=(n,), dtype=y_dtype, chunks=(chunk,)),
    }
    if ids_dtype is not None:
        arrays["ids"] = group.create_array("ids", shape=(n,), dtype=ids_dtype, chunks=(chunk,))
    writer = ChunkWriter(arrays, chunk)
    for where, batch in src.batches([*pre.columns, *rows.columns], batch_rows):
        with located(where):
            kept, _ = rows.keep(batch)
            values = {"X": pre.transform(kept), "y": tgt.encode(column(kept, tgt.name))}
            if ids_dtype is not None:
                values["ids"] = id_values(rows.id_column, column(kept, rows.id_column))
            writer.append(values)
        tick(batch.num_rows)
    writer.close()
    if writer.rows_written != n:
        raise DataError(f"wrote {writer.rows_written} rows but the first pass kept {n} (did the data change?)")


def _feature_columns(schema: pa.Schema, target: str, id_column: str | None, exclude: Sequence[str]) -> list[str]:
    """The candidate feature columns: all but the target, the id column and ``exclude``, which must exist."""
    names = schema.names
    repeated = sorted({c for c in names if names.count(c) > 1} - set(exclude))
    if repeated:
        raise DataError(f"column name(s) {repeated} appear more than once (pass them in exclude to leave them out)")
    if target not in names:
        raise DataError(f"target column {target!r} not found; available columns: {names}")
    if id_column is not None and (id_column not in names or id_column == target):
        raise DataError(f"id column {id_column!r} not found (or is the target); available columns: {names}")
    unknown = [c for c in exclude if c not in names]
    if unknown:
        raise DataError(f"exclude names unknown column(s) {unknown}; available columns: {names}")
    return [c for c in names if c not in {target, id_column, *exclude}]


