"""Reading new Parquet data for prediction: features encoded with a fitted ``Preprocessor``, no rows dropped."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from rfm_dask.io.columns import column, id_values, raw_values
from rfm_dask.io.errors import located
from rfm_dask.io.preprocess import Preprocessor
from rfm_dask.io.sources import Source, open_source


@dataclass(frozen=True)
class FeatureBatch:
    """b rows: ``X`` (b, d) float32 features; ``y`` (b,) raw target values (None when not asked for; nulls as None
    or NaN); ``ids`` (b,) int64 or str ids (None when not asked for); ``unseen``: per categorical column with any,
    the number of its values not seen in training (encoded as zeros)."""

    X: np.ndarray
    y: np.ndarray | None
    ids: np.ndarray | None
    unseen: dict[str, int]


def read_batches(source: Source, preprocessor: Preprocessor, *, target: str | None = None,
                 id_column: str | None = None, batch_rows: int = 65536) -> Iterator[FeatureBatch]:
    """The rows of the Parquet ``source`` in batches of at most ``batch_rows``, encoded by ``preprocessor``.

    Columns are matched by name (order does not matter, extra columns are ignored); a missing feature column, or
    a missing ``target`` / ``id_column`` when one is named, raises ``DataError``. Nulls are imputed as in training.
    Ids must be integers or strings without nulls, as ``ingest`` requires.
    """
    extra = [c for c in (target, id_column) if c is not None and c not in preprocessor.columns]
    src = open_source(source)
    for where, batch in src.batches([*preprocessor.columns, *extra], batch_rows):
        with located(where):
            X, unseen = preprocessor.transform_with_unseen(batch)
            ids = id_values(id_column, column(batch, id_column)) if id_column is not None else None
        yield FeatureBatch(X, raw_values(column(batch, target)) if target is not None else None, ids, unseen)
