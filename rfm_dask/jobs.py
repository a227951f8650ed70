"""The batch jobs behind the CLI, usable from Python: fit on an ingested Zarr store, predict Parquet to Parquet,
evaluate, inspect. Each takes an optional Dask ``client`` (None: the default client or a local cluster)."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from distributed import Client
from sklearn import metrics as skm

from .atomic import atomic_path
from .backend import identity
from .cluster import resolve_client
from .estimators import RFMClassifier, RFMRegressor
from .inputs import gather_rows
from .io import FeatureBatch, Preprocessor, read_batches
from .io.transformer import model_preprocessor
from .zarr_store import ZarrData, open_zarr

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


def fit_store(
    store: str | os.PathLike, *, task: str | None = None, client: Client | None = None, **params: Any
) -> RFMRegressor | RFMClassifier:
    """Fit an RFM on a store written by ``rfm_dask.io.ingest`` (or ``write_zarr``); ``params`` are estimator
    parameters. The task defaults to the one recorded at ingest. The store's preprocessing travels with the model
    (``preprocessing_``), so the model can predict from raw Parquet."""
    data = _open_store(store)
    task = task or data.attrs.get("task") or "regression"
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
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
        columns = {"prediction": model.classes_[np.argmax(proba, axis=1)]}
        columns.update({f"proba_{c}": proba[:, i] for i, c in enumerate(model.classes_)})
        return columns
    pred = model.predict(X)
    if pred.ndim == 1:
        return {"prediction": pred}
    return {f"prediction_{j}": pred[:, j] for j in range(pred.shape[1])}


def _predicted_batches(
    model: Any, batches: Iterator[FeatureBatch], client: Client | None
) -> Iterator[tuple[FeatureBatch, dict]]:
    """(batch, output columns) in order; with a client, batches are predicted on the cluster, a few in flight."""
    if client is None:
        for batch in batches:
            yield batch, _predict_columns(model, batch.X)
        return
    remote_model = client.submit(identity, model, pure=False)  # a task, not scattered: survives worker loss
    window = 2 * max(1, sum(client.nthreads().values()))
    pending: list = []
    for batch in batches:
        pending.append((batch, client.submit(_predict_columns, remote_model, batch.X, pure=False)))
        if len(pending) >= window:
            done, future = pending.pop(0)
            yield done, future.result()
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


def regression_report(y: np.ndarray, pred: np.ndarray) -> dict:
    """r2, mse, rmse and mae of predictions (n,) or (n, k) against targets of the same shape."""
    mse = float(skm.mean_squared_error(y, pred))
    return {"r2": float(skm.r2_score(y, pred)), "mse": mse, "rmse": mse**0.5,
            "mae": float(skm.mean_absolute_error(y, pred))}


def classification_report(y: np.ndarray, proba: np.ndarray, classes: np.ndarray) -> dict:
    """accuracy, balanced accuracy and (two classes) ROC AUC of class probabilities (n, k) against labels (n,)."""
    pred = classes[np.argmax(proba, axis=1)]
    out = {"accuracy": float(skm.accuracy_score(y, pred)),
           "balanced_accuracy": float(skm.balanced_accuracy_score(y, pred))}
    if len(classes) == 2 and len(np.unique(y)) == 2:
        out["roc_auc"] = float(skm.roc_auc_score(y == classes[1], proba[:, 1]))
    return out


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


def feature_names(model: Any) -> list[str]:
    """Names of the model's input features: the ingest encodings' names, the DataFrame's columns, or x0..x{d-1}."""
    info = getattr(model, "preprocessing_", None) or {}
    names = (info.get("preprocessor") or {}).get("feature_names")
    if names is None and hasattr(model, "feature_names_in_"):
        names = [str(c) for c in model.feature_names_in_]
    return list(names) if names is not None else [f"x{i}" for i in range(model.n_features_in_)]


def inspect_model(model: Any, top: int = 10, directions: int = 3) -> dict:
    """Feature importances (the normalised diagonal of M) by name, largest first, and the top eigen-directions of
    M with their eigenvalues and largest loadings by name."""
    names = feature_names(model)
    order = np.argsort(model.feature_importances_)[::-1]
    report = {
        "estimator": type(model).__name__,
        "best_iter": int(model.best_iter_),
        "n_features": len(names),
        "importances": [
            {"feature": names[i], "importance": float(model.feature_importances_[i])} for i in order[:top]
        ],
    }
    if model.best_iter_ == 0:
        report["note"] = ("the lazy kernel (M = I, iteration 0) was kept: learned features did not improve the "
                          "validation metric, so the importances are uniform")
    M = model.feature_matrix_
    if M.ndim == 2:
        vals, vecs = np.linalg.eigh((M + M.T) / 2)
        report["eigen_directions"] = [
            {
                "eigenvalue": float(vals[k]),
                "loadings": [
                    {"feature": names[i], "weight": float(vecs[i, k])} for i in np.argsort(-np.abs(vecs[:, k]))[:top]
                ],
            }
            for k in np.argsort(vals)[::-1][:directions]
        ]
    if getattr(model, "n_leaves_", 1) > 1:
        report["tree"] = inspect_tree(model, names)
    return report


def inspect_tree(model: Any, names: list[str], top: int = 3) -> dict:
    """A tree's splits (each direction's ``top`` loadings by name, its threshold and children) and its leaves (rows,
    kept iteration, ``top`` importances by name)."""
    tree = model.tree_

    def child(c: int) -> str:
        return f"leaf {-c - 1}" if c < 0 else f"node {c}"

    splits = [
        {"node": i, "threshold": float(tree.thresholds[i]), "left": child(int(left)), "right": child(int(right)),
         "direction": [{"feature": names[f], "weight": float(tree.directions[i, f])}
                       for f in np.argsort(-np.abs(tree.directions[i]))[:top]]}
        for i, (left, right) in enumerate(tree.children)
    ]
    leaves = [
        {"leaf": j, "rows": int(model.leaf_sizes_[j]), "best_iter": int(model.leaf_best_iters_[j]),
         "importances": [{"feature": names[f], "importance": float(imp[f])} for f in np.argsort(imp)[::-1][:top]]}
        for j, imp in enumerate(model.leaf_feature_importances_)
    ]
    return {"n_leaves": int(model.n_leaves_), "splits": splits, "leaves": leaves}


HISTORY_METRICS = {"val_accuracy": "validation accuracy", "val_mse": "validation MSE"}
MAX_LABEL = 28  # characters of a feature name shown on an axis


def _label(name: str) -> str:
    """A feature name short enough for an axis label."""
    return name if len(name) <= MAX_LABEL else name[: MAX_LABEL - 1] + "\u2026"


def draw_history(ax: Any, history: list[dict], best_iter: int, title: str | None = None) -> None:
    """Draw the validation metric by RFM iteration on the matplotlib axes ``ax``: integer iteration ticks, the kept
    (best) iteration marked. ``history`` is a fitted model's ``history_``; without validation rows (no metric
    recorded) the axes say so."""
    from matplotlib.ticker import MaxNLocator

    key = next((k for k in HISTORY_METRICS if any(k in h for h in history)), None)
    ax.set_title(title or "validation metric by iteration", fontsize=10)
    ax.set_xlabel("RFM iteration (0 = lazy kernel, M = I)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.margins(x=0.08)
    if key is None:
        ax.text(0.5, 0.5, "no validation rows:\nno metric recorded", ha="center", va="center",
                transform=ax.transAxes)
        return
    points = [(h["iteration"], h[key]) for h in history if key in h]
    ax.plot(*zip(*points), marker="o", color="C0", label=HISTORY_METRICS[key])
    best = [value for iteration, value in points if iteration == best_iter]
    if best:
        ax.axvline(best_iter, color="C3", linestyle=":", linewidth=1)
        ax.plot([best_iter], best, marker="*", markersize=15, color="C3", linestyle="none",
                label=f"kept: iteration {best_iter}")
    ax.set_ylabel(HISTORY_METRICS[key])
    ax.legend(loc="best", fontsize=8)


def draw_inspection(fig: Any, model: Any, top: int = 40) -> None:
    """Draw a fitted model on the matplotlib figure ``fig`` (best with ``layout="constrained"``): M restricted to
    the ``top`` most important features, ordered by importance (most important first) with a labelled colour
    bar; the 20 largest importances; and the validation metric by iteration."""
    names = [_label(n) for n in feature_names(model)]
    importances = model.feature_importances_
    M = model.feature_matrix_ if model.feature_matrix_.ndim == 2 else np.diag(model.feature_matrix_)
    order = np.argsort(-importances, kind="stable")[:top]
    ax_m, ax_bar, ax_hist = fig.subplots(1, 3, width_ratios=[1.4, 1, 1])
    # aspect "auto": the layout engine places the tick labels of a free-aspect axes inside the figure
    image = ax_m.imshow(M[np.ix_(order, order)], cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
    size = 7 if len(order) <= 20 else 6
    labels = [names[i] for i in order]
    ax_m.set_xticks(range(len(order)), labels, rotation=90, fontsize=size)
    ax_m.set_yticks(range(len(order)), labels, fontsize=size)
    ax_m.set_title(f"M: {len(order)} most important of {len(names)} features,\nby importance", fontsize=10)
    fig.colorbar(image, ax=ax_m, shrink=0.8, label="entry of M (scaled: largest |entry| = 1)")
    bars = order[:20][::-1]
    ax_bar.barh([names[i] for i in bars], importances[bars], color="C0")
    ax_bar.tick_params(axis="y", labelsize=7)
    ax_bar.set_xlabel("importance (diagonal of M / its trace)")
    ax_bar.set_title("feature importances", fontsize=10)
    draw_history(ax_hist, model.history_, int(model.best_iter_))


def plot_feature_matrix(model: Any, path: str | os.PathLike, top: int = 40) -> Path:
    """A PNG of ``draw_inspection`` (M ordered by importance, the importances, the validation metric by
    iteration), written atomically. Needs matplotlib (the ``demo`` extra)."""
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise RuntimeError("plotting needs matplotlib: pip install 'rfm_dask[demo]'") from exc
    fig = Figure(figsize=(18, 7), dpi=110, layout="constrained")  # laid out at the dpi it is saved at
    draw_inspection(fig, model, top)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    return path
