"""The ``Preprocessor``: input columns (matched by name) -> float32 feature matrix, fitted in one streaming pass."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pyarrow as pa

from rfm_dask.io import validate as v
from rfm_dask.io.columns import CATEGORICAL, TIMESTAMP, column, kind_of
from rfm_dask.io.encoders import HIGH_CARDINALITY, Encoder, OneHotFit, StandardisedFit, encoder_from_dict
from rfm_dask.io.errors import DataError, DataWarning

FORMAT = "rfm_dask.preprocessor"
VERSION = 1
NULLS = ("impute", "drop")
TIMESTAMPS = ("expand", "drop")


@dataclass
class Preprocessor:
    """Fitted encodings of the feature columns, in feature order.

    ``transform`` maps a record batch (or table) of b rows to a (b, d) float32 matrix whose columns are
    ``feature_names``: numbers and bools standardised, timestamps expanded to standardised calendar parts,
    categories one-hot; nulls imputed with the training mean (0 after standardising), with a ``<col>__missing``
    indicator for the columns that had nulls in training. ``nulls`` records the policy used at fit time.
    """

    encoders: list[Encoder]
    nulls: str = "impute"
    max_categories: int = 32
    high_cardinality: str = "error"
    timestamps: str = "expand"

    @property
    def columns(self) -> list[str]:
        """The input columns the features are made from."""
        return [e.name for e in self.encoders]

    @property
    def feature_names(self) -> list[str]:
        """The d feature names, e.g. ``dep_delay``, ``dep_delay__missing``, ``carrier=UA``, ``time_hour__hour``."""
        return [name for e in self.encoders for name in e.feature_names]

    @property
    def n_features(self) -> int:
        return sum(len(e.feature_names) for e in self.encoders)

    def transform(self, batch: pa.RecordBatch | pa.Table) -> np.ndarray:
        """(b, d) float32 features of a batch of b rows."""
        return self.transform_with_unseen(batch)[0]

    def transform_with_unseen(self, batch: pa.RecordBatch | pa.Table) -> tuple[np.ndarray, dict[str, int]]:
        """(b, d) float32 features, and per categorical column with any, the number of its values not seen in
        training (encoded as zeros)."""
        missing = [c for c in self.columns if c not in batch.schema.names]
        if missing:
            raise DataError(f"missing required column(s) {missing} (available: {batch.schema.names})")
        out = np.zeros((batch.num_rows, self.n_features), dtype=np.float32)
        start, unseen = 0, {}
        for encoder in self.encoders:
            stop = start + len(encoder.feature_names)
            count = encoder.encode(column(batch, encoder.name), out[:, start:stop])
            if count:
                unseen[encoder.name] = count
            start = stop
        return out, unseen

    def to_dict(self) -> dict:
        """A JSON-ready description, read back by ``from_dict``."""
        return {"format": FORMAT, "version": VERSION, "nulls": self.nulls, "max_categories": self.max_categories,
                "high_cardinality": self.high_cardinality, "timestamps": self.timestamps,
                "columns": [e.to_dict() for e in self.encoders], "feature_names": self.feature_names}

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessor:
        """The preprocessor ``to_dict`` described; a malformed dict or an unknown version raises ``ValueError``."""
        where = "preprocessor dict"
        if v.get(d, "format", str, where) != FORMAT:
            raise ValueError(f"{where}: format must be {FORMAT!r}, got {d['format']!r}")
        if v.get(d, "version", int, where) != VERSION:
            raise ValueError(f"{where}: unsupported version {d['version']} (this rfm_dask reads version {VERSION})")
        columns = v.get_list(d, "columns", dict, where)
        pre = cls([encoder_from_dict(c, f"{where}, column {i}") for i, c in enumerate(columns)],
                  v.get_choice(d, "nulls", NULLS, where), v.get(d, "max_categories", int, where),
                  v.get_choice(d, "high_cardinality", HIGH_CARDINALITY, where),
                  v.get_choice(d, "timestamps", TIMESTAMPS, where))
        if len(set(pre.columns)) != len(pre.columns):
            raise ValueError(f"{where}: a column appears twice in {pre.columns}")
        if v.get_list(d, "feature_names", str, where) != pre.feature_names:
            raise ValueError(f"{where}: 'feature_names' do not match the column encodings")
        return pre


class PreprocessorFit:
    """One streaming pass over record batches -> a fitted ``Preprocessor``.

    ``columns`` are the candidate feature columns of ``schema``. Columns of other types (lists, structs, binary,
    ...) are an error; timestamp columns are dropped with a warning when ``timestamps="drop"``.
    """

    def __init__(self, schema: pa.Schema, columns: Sequence[str], *, max_categories: int = 32,
                 high_cardinality: str = "error", nulls: str = "impute", timestamps: str = "expand") -> None:
        v.check_option("high_cardinality", high_cardinality, HIGH_CARDINALITY)
        v.check_option("nulls", nulls, NULLS)
        v.check_option("timestamps", timestamps, TIMESTAMPS)
        if isinstance(max_categories, bool) or not isinstance(max_categories, int) or max_categories < 1:
            raise ValueError(f"max_categories must be a positive integer, got {max_categories!r}")
        self.settings = {"nulls": nulls, "max_categories": max_categories, "high_cardinality": high_cardinality,
                         "timestamps": timestamps}
        types = {c: schema.field(c).type for c in columns}
        unsupported = [f"{c!r} ({t})" for c, t in types.items() if kind_of(t) is None]
        if unsupported:
            raise DataError(f"column(s) of unsupported type: {', '.join(unsupported)}; pass them in exclude")
        dropped = [c for c, t in types.items() if kind_of(t) == TIMESTAMP and timestamps == "drop"]
        if dropped:
            warnings.warn(f"timestamps='drop': dropping timestamp column(s) {dropped}", DataWarning, stacklevel=3)
        self._fits = [
            OneHotFit(c, t, max_categories, high_cardinality) if kind_of(t) == CATEGORICAL
            else StandardisedFit(c, kind_of(t), t)
            for c, t in types.items() if c not in dropped
        ]

    @property
    def columns(self) -> list[str]:
        """The columns that will be used as features."""
        return [f.name for f in self._fits]

    def update(self, batch: pa.RecordBatch) -> None:
        """Add a batch of training rows (after any row drops)."""
        for fit in self._fits:
            fit.update(column(batch, fit.name))

    def finish(self) -> Preprocessor:
        encoders = [e for e in (fit.finish() for fit in self._fits) if e is not None]
        constant = [fit.name for fit in self._fits if fit.constant]
        if constant:
            warnings.warn(f"column(s) constant in the training data (they carry no information): {constant}",
                          DataWarning, stacklevel=3)
        if not encoders:
            raise DataError("no feature columns left to encode")
        return Preprocessor(encoders, **self.settings)
