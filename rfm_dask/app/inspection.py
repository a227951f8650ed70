"""Reading a fitted model: feature importances and the eigen-directions of M by feature name, a tree's splits and
leaves, and the pictures of M and of the fit's history (matplotlib)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from rfm_dask.files.atomic import atomic_path


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


#: The metric drawn by iteration: the first one the history records (a ``scoring`` other than the default records its
#: own, which comes first).
HISTORY_METRICS = {"val_balanced_accuracy": "validation balanced accuracy", "val_roc_auc": "validation ROC AUC",
                   "val_log_loss": "validation log-loss (calibrated)", "val_r2": "validation R\u00b2",
                   "val_mae": "validation MAE", "val_accuracy": "validation accuracy", "val_mse": "validation MSE"}
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
    # an iteration solved twice (centre_agop="auto") records its replaced try first: drawn apart, off the line
    replaced = [i + 1 < len(history) and history[i + 1]["iteration"] == h["iteration"] for i, h in enumerate(history)]
    points = [(h["iteration"], h[key]) for h, r in zip(history, replaced) if key in h and not r]
    ax.plot(*zip(*points), marker="o", color="C0", label=HISTORY_METRICS[key])
    tries = [(h["iteration"], h[key]) for h, r in zip(history, replaced) if key in h and r]
    if tries:
        ax.plot(*zip(*tries), marker="o", markerfacecolor="none", color="C7", linestyle="none",
                label="replaced: uncentred AGOP")
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
