"""Tabular data in and out: Parquet -> Zarr ingestion (``ingest``) and predict-time encoding (``read_batches``),
both through a fitted, JSON-serialisable ``Preprocessor``."""

from .errors import DataError, DataWarning, SourceNotFoundError
from .ingest import IngestReport, ingest
from .predict import FeatureBatch, read_batches
from .preprocess import Preprocessor

__all__ = [
    "DataError",
    "DataWarning",
    "FeatureBatch",
    "IngestReport",
    "Preprocessor",
    "SourceNotFoundError",
    "ingest",
    "read_batches",
]
