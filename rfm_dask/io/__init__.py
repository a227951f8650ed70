"""Tabular data in and out: Parquet -> Zarr ingestion (``ingest``) and predict-time encoding (``read_batches``),
both through a fitted, JSON-serialisable ``Preprocessor``; ``TableEncoder`` applies it to in-memory tables as a
scikit-learn transformer."""

from rfm_dask.io.errors import DataError, DataWarning, SourceNotFoundError
from rfm_dask.io.ingest import IngestReport, ingest
from rfm_dask.io.predict import FeatureBatch, read_batches
from rfm_dask.io.preprocess import Preprocessor
from rfm_dask.io.transformer import TableEncoder

__all__ = [
    "DataError",
    "DataWarning",
    "FeatureBatch",
    "IngestReport",
    "Preprocessor",
    "SourceNotFoundError",
    "TableEncoder",
    "ingest",
    "read_batches",
]
