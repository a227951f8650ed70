"""The demo job: fit an RFM on a bundled real data set on a local Dask cluster and compare with the lazy kernel.

Run with ``python -m rfm_dask.demo [--out DIR]``. Prints the per-iteration table and the test metrics, and writes
``metrics.json`` and ``feature_matrix.png`` (if matplotlib is installed) under the output directory.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from distributed import Client, LocalCluster
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from . import RFMClassifier
from .atomic import atomic_path, write_text


def format_history(history: list[dict]) -> str:
    """A fixed-width table of ``history_`` records."""
    cols = ["iteration", "val_accuracy", "val_mse", "solver", "cg_iterations", "residual", "seconds"]
    cols = [c for c in cols if any(c in h for h in history)]
    fmt = {float: "{:.4g}", int: "{}", str: "{}"}
    rows = [[fmt.get(type(h.get(c)), "{}").format(h.get(c, "")) for c in cols] for h in history]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    line = lambda cells: "  ".join(cell.rjust(w) for cell, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(cols), line(["-" * w for w in widths]), *map(line, rows)])


def _plot_feature_matrix(M: np.ndarray, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    image = axes[0].imshow(M, cmap="viridis")
    axes[0].set_title("learned feature matrix M")
    fig.colorbar(image, ax=axes[0])
    axes[1].imshow(np.diag(M).reshape(8, 8), cmap="viridis")
    axes[1].set_title("diag(M) on the 8x8 pixel grid")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return True


def run(out_dir: Path, iters: int = 5, seed: int = 0) -> dict:
    """Fit lazy and learned-feature models on scikit-learn's digits; return the metrics written to ``out_dir``."""
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, random_state=seed, stratify=y)
    scaler = StandardScaler().fit(X_train)
    X_train, X_test = scaler.transform(X_train), scaler.transform(X_test)
    print(f"data: scikit-learn digits, {X_train.shape[0]} train / {X_test.shape[0]} test rows, {X.shape[1]} features")
    with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster, Client(cluster) as client:
        print(f"cluster: in-process LocalCluster, {sum(client.nthreads().values())} worker threads")
        start = time.perf_counter()
        lazy = RFMClassifier(iters=0, random_state=seed, client=client).fit(X_train, y_train)
        lazy_seconds = time.perf_counter() - start
        start = time.perf_counter()
        rfm = RFMClassifier(iters=iters, random_state=seed, client=client).fit(X_train, y_train)
        rfm_seconds = time.perf_counter() - start
        print("\nRFM iterations (validation rows split off the training set):")
        print(format_history(rfm.history_))
        metrics = {
            "dataset": "sklearn digits",
            "lazy_laplace": {"test_accuracy": float(lazy.score(X_test, y_test)), "fit_seconds": lazy_seconds},
            "rfm": {
                "test_accuracy": float(rfm.score(X_test, y_test)),
                "fit_seconds": rfm_seconds,
                "best_iter": int(rfm.best_iter_),
            },
            "history": rfm.history_,
        }
    print("\nTest accuracy:")
    print(f"  lazy Laplace kernel (M = I): {metrics['lazy_laplace']['test_accuracy']:.4f}")
    print(f"  RFM (best iteration {rfm.best_iter_}):     {metrics['rfm']['test_accuracy']:.4f}")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2))
    written = [out_dir / "metrics.json"]
    if _plot_feature_matrix(rfm.feature_matrix_, out_dir / "feature_matrix.png"):
        written.append(out_dir / "feature_matrix.png")
    print("\nwrote: " + ", ".join(str(p) for p in written))
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="output directory (default out/demo)")
    parser.add_argument("--iters", type=int, default=5, help="RFM iterations (default 5)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    run(args.out, args.iters, args.seed)


if __name__ == "__main__":
    main()
