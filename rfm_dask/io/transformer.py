"""``TableEncoder``: the ingest preprocessing as a scikit-learn transformer over in-memory tables (pandas or Arrow),
so raw columns can go through it in a ``Pipeline``, or through the encoding a model recorded at ingest."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pyarrow as pa
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from rfm_dask.io.errors import DataError
from rfm_dask.io.preprocess import Preprocessor, PreprocessorFit


def as_arrow_table(X: Any) -> pa.Table:
    """A pandas DataFrame (its index dropped), an Arrow table or a record batch as an Arrow table; columns keep
    their names. Anything else raises ``TypeError``: raw columns are matched by name, so a bare array will not do."""
    if isinstance(X, pa.Table):
        return X
    if isinstance(X, pa.RecordBatch):
        return pa.Table.from_batches([X])
    if is_pandas_frame(X):
        return pa.Table.from_pandas(X, preserve_index=False)
    raise TypeError(f"raw columns must come as a pandas DataFrame or a pyarrow Table (matched by column name), "
                    f"got {type(X).__name__}")


def is_pandas_frame(X: Any) -> bool:
    """True for a pandas DataFrame (without importing pandas when it was never imported)."""
    return type(X).__name__ == "DataFrame" and type(X).__module__.startswith("pandas")


def model_preprocessor(info: dict | None, n_features: int) -> Preprocessor:
    """The ``Preprocessor`` a model recorded when it was fitted on an ingested store (its ``preprocessing_`` dict
    ``info``); ``ValueError`` when there is none or it does not make the model's ``n_features`` features."""
    if not info or info.get("preprocessor") is None:
        raise ValueError(
            "this model was not fitted on an ingested store, so it cannot read raw columns; "
            "fit it with `rfm-dask fit STORE.zarr` (or rfm_dask.app.workflows.fit_store)"
        )
    pre = Preprocessor.from_dict(info["preprocessor"])
    if pre.n_features != n_features:
        raise ValueError(f"the model's preprocessing makes {pre.n_features} features but the model takes "
                         f"{n_features}: the model file is inconsistent")
    return pre


class TableEncoder(TransformerMixin, BaseEstimator):
    """Raw table columns -> float32 features, as ``rfm_dask.io.ingest`` encodes them, for in-memory data.

    Every column but those in ``exclude`` is a feature: numbers and bools standardised, timestamps expanded into
    standardised calendar parts (or dropped, ``timestamps="drop"``), strings and categoricals one-hot encoded up
    to ``max_categories`` values (above it: an error, or ``high_cardinality="top"`` keeps the most frequent plus
    an ``<col>=__other__`` column). Nulls are imputed with the training mean, with a ``<col>__missing`` indicator
    for columns that had nulls when fitted (a transformer cannot drop rows, so ingest's ``nulls="drop"`` has no
    counterpart here). At transform time columns are matched by name: order does not matter, extra columns are
    ignored, a missing one raises ``DataError``, and a category not seen in fit is encoded as all zeros.

    Parameters
    ----------
    max_categories : int
        Most one-hot columns per categorical column.
    high_cardinality : {"error", "top"}
        What to do with a categorical column of more than ``max_categories`` distinct values.
    timestamps : {"expand", "drop"}
        Expand timestamp and date columns into calendar parts, or leave them out.
    exclude : sequence of str
        Columns that are not features (targets, identifiers).

    Attributes
    ----------
    preprocessor_ : Preprocessor
        The fitted encodings (the same object ingest records in a store and a model file).
    feature_names_in_ : ndarray of str
        The input columns the features are made from (``n_features_in_`` of them).
    n_features_in_ : int
        Their number.

    Examples
    --------
    >>> import pandas as pd
    >>> from rfm_dask.io import TableEncoder
    >>> df = pd.DataFrame({"x": [1.0, 2.0, None], "colour": ["red", "blue", "red"]})
    >>> TableEncoder().fit(df).get_feature_names_out().tolist()
    ['x', 'x__missing', 'colour=blue', 'colour=red']
    """

    def __init__(self, max_categories: int = 32, high_cardinality: str = "error", timestamps: str = "expand",
                 exclude: Sequence[str] = ()) -> None:
        self.max_categories = max_categories
        self.high_cardinality = high_cardinality
        self.timestamps = timestamps
        self.exclude = exclude

    def fit(self, X: Any, y: Any = None) -> TableEncoder:
        """Fit the encodings on a table of n rows (pandas DataFrame or pyarrow Table); ``y`` is ignored."""
        table = as_arrow_table(X)
        unknown = [c for c in self.exclude if c not in table.column_names]
        if unknown:
            raise DataError(f"exclude names unknown column(s) {unknown}; available columns: {table.column_names}")
        columns = [c for c in table.column_names if c not in set(self.exclude)]
        fit = PreprocessorFit(table.schema, columns, max_categories=self.max_categories,
                              high_cardinality=self.high_cardinality, timestamps=self.timestamps)
        fit.update(table)
        self._set_preprocessor(fit.finish())
        return self

    def transform(self, X: Any) -> np.ndarray:
        """(n, d) float32 features of a table of n rows, columns as ``get_feature_names_out()``."""
        check_is_fitted(self, "preprocessor_")
        return self.preprocessor_.transform(as_arrow_table(X))

    def get_feature_names_out(self, input_features: Sequence[str] | None = None) -> np.ndarray:
        """The d feature names, e.g. ``x``, ``x__missing``, ``colour=red``, ``when__hour`` (ndarray of str)."""
        check_is_fitted(self, "preprocessor_")
        if input_features is not None and list(input_features) != list(self.feature_names_in_):
            raise ValueError(f"input_features {list(input_features)} are not the fitted columns "
                             f"{list(self.feature_names_in_)}")
        return np.asarray(self.preprocessor_.feature_names, dtype=object)

    @classmethod
    def from_preprocessor(cls, preprocessor: Preprocessor) -> TableEncoder:
        """A fitted encoder that applies ``preprocessor`` (from a store's or a model's recorded preprocessing)."""
        encoder = cls(max_categories=preprocessor.max_categories, high_cardinality=preprocessor.high_cardinality,
                      timestamps=preprocessor.timestamps)
        encoder._set_preprocessor(preprocessor)
        return encoder

    @classmethod
    def from_model(cls, model: Any) -> TableEncoder:
        """The encoder a model fitted on an ingested store recorded (``rfm_dask.app.workflows.fit_store``, ``rfm-dask fit``):
        it turns raw columns into that model's input features."""
        check_is_fitted(model)
        return cls.from_preprocessor(model_preprocessor(getattr(model, "preprocessing_", None), model.n_features_in_))

    def _set_preprocessor(self, preprocessor: Preprocessor) -> None:
        self.preprocessor_ = preprocessor
        self.feature_names_in_ = np.asarray(preprocessor.columns, dtype=object)
        self.n_features_in_ = len(preprocessor.columns)
