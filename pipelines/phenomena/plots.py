"""Plots of one task: test metric against iteration per model, and M as an image (AGOP and FACT), written atomically."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from rfm_dask.files.atomic import atomic_path

COLOURS = {"agop": "tab:blue", "fact": "tab:orange", "lazy": "tab:grey"}
LABEL = {"agop": "AGOP-RFM", "fact": "FACT-RFM"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    plt = _pyplot()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)


def plot_curves(record: dict, path: Path) -> None:
    plt = _pyplot()
    metric = record["metric"]
    has_train = any(record[rule].get("train_curve") for rule in ("agop", "fact"))
    first = metric + (" (test solid, train dotted)" if has_train else " (test)")
    panels = [(f"test_{metric}", f"train_{metric}", first)]
    if metric == "accuracy":
        second = "MSE on one-hot / 0-1 targets" + (" (train dotted)" if has_train else "")
        panels.append(("test_mse", "train_mse", second))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.4), squeeze=False)
    for ax, (key, train_key, ylabel) in zip(axes[0], panels):
        for rule in ("agop", "fact"):
            rec = record[rule]
            its = [h["iteration"] for h in rec["test_curve"]]
            ax.plot(its, [h[key] for h in rec["test_curve"]], "o-", ms=3, color=COLOURS[rule],
                    label=f"{LABEL[rule]} test")
            if rec.get("train_curve") and train_key in rec["train_curve"][0]:
                ax.plot(its, [h[train_key] for h in rec["train_curve"]], ":", color=COLOURS[rule],
                        label=f"{LABEL[rule]} train")
            best = rec["selected"]["best_iter"]
            ax.plot([best], [rec["test_curve"][best][key]], "*", ms=14, color=COLOURS[rule], mec="k",
                    label=f"{LABEL[rule]} selected on validation (it. {best})")
        lazy = record["lazy"]["test"].get(key[5:])
        if lazy is not None:
            ax.axhline(lazy, ls="--", color=COLOURS["lazy"], label="lazy kernel (iters=0) test")
        published = record["facts"].get("published_test_mse_by_iteration")
        if published and key == "test_mse":
            ax.plot(range(len(published)), published, "s", mfc="none", color="k",
                    label="published (reference notebook)")
        if metric == "mse" or key == "test_mse":
            ax.set_yscale("log")
        ax.set_xlabel("RFM iteration (0 = lazy kernel, M = I)")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="best")
    title = (f"{record['task']}: test metric recorded at every iteration (test rows passed as X_val, no early "
             "stopping); stars: iteration chosen on separate validation rows")
    fig.suptitle("\n".join(textwrap.wrap(title, 60 * len(panels))), fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def plot_matrices(record: dict, task, matrices: dict, path: Path) -> None:
    """M at the last iteration for AGOP and FACT; a second row in the task's display basis if it has one."""
    plt = _pyplot()
    rows = [("M", lambda M: (np.diag(M) if M.ndim == 1 else M, "M"))]
    if task.display is not None:
        rows.append(("display", task.display))
    fig, axes = plt.subplots(len(rows), 2, figsize=(11, 5.0 * len(rows)), squeeze=False)
    for r, (_, view) in enumerate(rows):
        for c, rule in enumerate(("agop", "fact")):
            ax = axes[r][c]
            shown, what = view(np.asarray(matrices[rule]["last"], dtype=np.float64))
            lim = float(np.max(np.abs(shown))) or 1.0
            im = ax.imshow(shown, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
            if task.block:
                for x in range(task.block, shown.shape[0], task.block):
                    ax.axhline(x - 0.5, color="k", lw=0.6)
                    ax.axvline(x - 0.5, color="k", lw=0.6)
            ax.set_title(f"{LABEL[rule]}: {what} after iteration {record[rule]['last']['iteration']}", fontsize=9)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(f"{record['task']}: learned feature matrix", fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def plot_task(record: dict, task, matrices: dict, out_dir: Path) -> list[str]:
    curves, mats = out_dir / f"{record['task']}_curves.png", out_dir / f"{record['task']}_M.png"
    plot_curves(record, curves)
    plot_matrices(record, task, matrices, mats)
    return [str(curves), str(mats)]
