"""Tabular data in and out: Parquet -> Zarr ingestion (``ingest``) and predict-time encoding (``read_batches``),
both through a fitted, JSON-serialisable ``Preprocessor``; ``TableEncoder`` applies it to in-memory tables as a
scikit-learn transformer."""

from .errors import DataError, DataWarning, SourceNotFoundError
from .ingest import IngestReport, ingest
from .predict import FeatureBatch, read_batches
from .preprocess import Preprocessor
from .transformer import TableEncoder

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
