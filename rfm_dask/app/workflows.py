"""The batch jobs behind the CLI, usable from Python: fit on an ingested Zarr store, predict Parquet to Parquet,
evaluate (reading a model is in ``inspection``). Each takes an optional Dask ``client`` (None: the default client
or a local cluster)."""

from __future__ import annotations

import os
from collections import Counter, deque
from itertools import tee
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from distributed import Client

from rfm_dask.core.backend import identity
from rfm_dask.core.metrics import classification_report, regression_report, scores_to_index
from rfm_dask.estimators import RFMClassifier, RFMRegressor
from rfm_dask.files.atomic import atomic_path
from rfm_dask.files.zarr_store import ZarrData, open_zarr
from rfm_dask.io import FeatureBatch, Preprocessor, read_batches
from rfm_dask.io.transformer import model_preprocessor
from rfm_dask.parallel.cluster import resolve_client
from rfm_dask.parallel.inputs import gather_rows
from rfm_dask.parallel.scheduling import Submitter

TASKS = ("regression", "classification")
Progress = Callable[[int, int], None]


def is_zarr_store(path: str | os.PathLike) -> bool:
    """True for a directory holding a Zarr v3 group."""
    return (Path(path) / "zarr.json").is_file()


def _store_targets(y: Any, attrs: dict, task: str) -> np.ndarray:
    """The store's targets on the client (n values): class codes become their labels for classification."""
    if y is None:
        raise ValueError("the store has no target array 'y' (ingest it with --target)")
    y = gather_rows(y)
    if task == "classification" and attrs.get("classes") is not None:
        y = np.asarray(attrs["classes"])[y.astype(np.int64)]
    return y


def _open_store(store: str | os.PathLike) -> ZarrData:
    """``open_zarr``, with the store named in the error when the path holds no readable Zarr group."""
    try:
        return open_zarr(store)
    except ValueError as exc:  # zarr's GroupNotFoundError, a JSONDecodeError of corrupt metadata, no X array
        raise ValueError(f"{store} is not a readable Zarr store of X and y (written by `rfm-dask ingest`): "
                         f"{exc}") from None


def _fit_task(attrs: dict, task: str | None) -> str:
    """The task of a fit: ``task``, else the one recorded at ingest in the store's ``attrs``, else regression."""
    task = task or attrs.get("task") or "regression"
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    return task


def store_estimator(store: str | os.PathLike, task: str | None = None) -> type[RFMRegressor | RFMClassifier]:
    """The estimator class a fit on ``store`` uses (see ``fit_store``), without reading its arrays."""
    return RFMClassifier if _fit_task(_open_store(store).attrs, task) == "classification" else RFMRegressor


def fit_store(
    store: str | os.PathLike, *, task: str | None = None, client: Client | None = None, **params: Any
) -> RFMRegressor | RFMClassifier:
    """Fit an RFM on a store written by ``rfm_dask.io.ingest`` (or ``write_zarr``); ``params`` are estimator
    parameters. The task defaults to the one recorded at ingest. The store's preprocessing travels with the model
    (``preprocessing_``), so the model can predict from raw Parquet."""
    data = _open_store(store)
    task = _fit_task(data.attrs, task)
    y = _store_targets(data.y, data.attrs, task)
    estimator = (RFMClassifier if task == "classification" else RFMRegressor)(client=client, **params)
    estimator.fit(data.X, y)
    estimator.preprocessing_ = {
        "preprocessor": data.attrs.get("preprocessing"),
        "target": data.attrs.get("target"),
        "id_column": data.attrs.get("id_column"),
        "task": task,
    }
    return estimator


def _preprocessor(model: Any) -> Preprocessor:
    return model_preprocessor(getattr(model, "preprocessing_", None), model.n_features_in_)


def _batches(model: Any, source: Any, target: str | None, id_column: str | None, batch_rows: int):
    return read_batches(source, _preprocessor(model), target=target, id_column=id_column, batch_rows=batch_rows)


def _predict_columns(model: Any, X: np.ndarray) -> dict[str, np.ndarray]:
    """Output columns for one batch: ``prediction`` (one per output for multi-output regression), and
    ``proba_<class>`` per class for classifiers."""
    if isinstance(model, RFMClassifier):
        proba = model.predict_proba(X)
        columns = {"prediction": model.classes_[scores_to_index(proba)]}
        columns.update({f"proba_{c}": proba[:, i] for i, c in enumerate(model.classes_)})
        return columns
    pred = model.predict(X)
    if pred.ndim == 1:
        return {"prediction": pred}
    return {f"prediction_{j}": pred[:, j] for j in range(pred.shape[1])}


def _predicted_batches(
    model: Any, batches: Iterator[FeatureBatch], client: Client | None
) -> Iterator[tuple[FeatureBatch, dict]]:
    """(batch, output columns) in order; with a client, batches are predicted on the cluster, as many in flight as
    a pass of ``scheduling.Submitter`` keeps (``rfm.tasks-per-thread`` per worker thread)."""
    if client is None:
        for batch in batches:
            yield batch, _predict_columns(model, batch.X)
        return
    remote_model = client.submit(identity, model, pure=False)  # a task, not scattered: survives worker loss
    submitter = Submitter(client)
    window = submitter.limit()
    mine, theirs = tee(batches)
    futures = submitter.stream(((_predict_columns, remote_model, batch.X) for batch in theirs), spread=True)
    pending: deque = deque()
    for batch, future in zip(mine, futures):
        pending.append((batch, future))
        if len(pending) >= window:
            done, oldest = pending.popleft()
            yield done, oldest.result()
    for done, future in pending:
        yield done, future.result()


def predict_parquet(
    model: Any,
    source: Any,
    out: str | os.PathLike,
    *,
    id_column: str | None = None,
    client: Client | None = None,
    batch_rows: int = 65536,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> dict:
    """Predict every row of Parquet ``source`` and write ``out`` (Parquet) with the id column (the model's, from
    ingest, unless given) passed through first. Streams by batch; the file appears only when complete.

    Ids must be integers or strings without nulls (as at ingest), in a column not named like an output column.
    Returns ``{"rows": rows written, "unseen_categories": {column: values not seen in training}}`` (columns with
    none left out; those values are encoded as all zeros).
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (pass overwrite to replace it)")
    id_column = id_column or (getattr(model, "preprocessing_", None) or {}).get("id_column")
    rows, unseen = 0, Counter()
    with atomic_path(out) as tmp:
        writer = None
        try:
            for batch, columns in _predicted_batches(model, _batches(model, source, None, id_column, batch_rows), client):
                if id_column in columns:
                    raise ValueError(f"the id column {id_column!r} has the name of an output column "
                                     f"({list(columns)}): rename it in the data and pass its new name as id_column")
                unseen.update(batch.unseen)
                table = pa.table({**({id_column: batch.ids} if id_column else {}), **columns})
                writer = writer or pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table)
                rows += table.num_rows
                if progress:
                    progress(rows, 0)
        finally:
            if writer is not None:
                writer.close()
        if writer is None:
            raise ValueError(f"{source} holds no rows to predict")
    return {"rows": rows, "unseen_categories": dict(unseen)}


def _metrics(model: Any, y: np.ndarray, scores: Callable[[], Any]) -> dict:
    if isinstance(model, RFMClassifier):
        return classification_report(y, np.asarray(scores()), model.classes_)
    return regression_report(y, np.asarray(scores()))


def evaluate(
    model: Any, source: Any, *, client: Client | None = None, target: str | None = None, batch_rows: int = 65536
) -> dict:
    """Metrics of ``model`` on a Zarr store (ingested, with y) or on Parquet holding the target column.

    Regression: r2, mse, rmse, mae; classification: accuracy, balanced accuracy, ROC AUC (binary). Rows whose
    target is null are skipped (counted in ``skipped_rows``). For Parquet, ``unseen_categories`` counts per
    categorical column the values of the rows read that were not seen in training (encoded as all zeros).
    """
    info = getattr(model, "preprocessing_", None) or {}
    task = "classification" if isinstance(model, RFMClassifier) else "regression"
    score = model.predict_proba if task == "classification" else model.predict
    if isinstance(source, (str, os.PathLike)) and is_zarr_store(source):
        data = _open_store(source)
        y = _store_targets(data.y, data.attrs, task)
        cluster = resolve_client(client)
        result = _metrics(model, y, lambda: gather_rows(score(data.X), scheduler=cluster))
        return {"task": task, "rows": int(y.shape[0]), **result}
    target = target or info.get("target")
    if not target:
        raise ValueError("no target column known for this model: pass target=")
    ys, preds = [], []
    skipped, unseen = 0, Counter()
    for batch in _batches(model, source, target, None, batch_rows):
        unseen.update(batch.unseen)
        keep = _known_targets(batch.y)
        skipped += int((~keep).sum())
        if keep.any():
            ys.append(batch.y[keep])
            preds.append(score(batch.X[keep]))
    y = np.concatenate(ys) if ys else np.zeros(0)
    if y.size == 0:
        raise ValueError(f"{source} holds no rows with a known target {target!r}")
    if task == "regression":
        y = _numeric_targets(y, target)
    result = _metrics(model, y, lambda: np.concatenate(preds))
    return {"task": task, "rows": int(y.shape[0]), "skipped_rows": skipped, **result,
            "unseen_categories": dict(unseen)}


def _numeric_targets(y: np.ndarray, target: str) -> np.ndarray:
    """Raw regression targets as float64; labels or infinite values raise ``ValueError`` naming the column."""
    try:
        y = y.astype(np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"target column {target!r} holds labels such as {y[0]!r}, not the numbers a regression "
                         f"model predicts") from None
    if not np.isfinite(y).all():
        raise ValueError(f"target column {target!r} holds {int((~np.isfinite(y)).sum())} infinite value(s)")
    return y


def _known_targets(y: np.ndarray) -> np.ndarray:
    """Mask of rows whose raw target is present (not None and not NaN)."""
    if y.dtype.kind == "f":
        return ~np.isnan(y)
    return np.array([v is not None and v == v for v in y], dtype=bool)
