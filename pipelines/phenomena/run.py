"""Phenomena of DESIGN section 4: AGOP-RFM, FACT-RFM and the lazy kernel on the same seeded data.

Run from the repository root::

    .venv/bin/python -m pipelines.phenomena --config pipelines/phenomena/phenomena.toml [--only grokking,parity]
        [--out out/phenomena]

For every task of the config (low-rank golden task, grokking modular addition, sparse parity, feature learning can
hurt, emergence from input structure) three models are fitted on the same training rows:

* **AGOP-RFM** (``feature_update="agop"``) and **FACT-RFM** (``feature_update="fact"``), each fitted
  1. once with the *test* rows passed as ``X_val`` and no early stopping, only to record the test metric of every
     iteration (the curves; this fit's own "best iteration" is never reported);
  2. once with the task's separate *validation* rows as ``X_val`` (early stopping as configured): the reported
     model, scored once on the test rows; its ``best_iter_`` is the iteration validation kept;
  3. once without validation rows when fit 1 did not keep its last iteration, to get M after the last iteration;
  4. optionally (``train_curve = true``) once with the training rows as ``X_val``: train metric per iteration.
  All fits share data, seed and settings, so iteration t is the same model in each of them (checked: the
  reported model's test metric must equal the curve's value at its best iteration).
* **lazy kernel**: the same estimator with ``iters=0`` (M = I), same kernel, bandwidth and ridge.

Writes ``results.md`` (tables), ``results.json``, per task ``<task>_curves.png`` and ``<task>_M.png``, and the
feature matrices as ``matrices/<task>_<rule>_{last,selected}.npy``, all atomically, after every task. Whether each
phenomenon reproduced is decided by the fixed checks in ``criteria.py``. ``--render`` rewrites results.md from
results.json without fitting; ``--verbose`` logs every RFM iteration.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import logging
import math
import os
import platform
import subprocess
import sys
import time
import tomllib
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.toml_values import none_values
from rfm_dask.files.atomic import atomic_path, write_text

from . import criteria
from .tasks import Task, make_task

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = Path(__file__).with_name("phenomena.toml")
RULES = ("agop", "fact")
LABEL = {"agop": "AGOP-RFM", "fact": "FACT-RFM", "lazy": "lazy kernel"}
RUN_DEFAULTS = {"out_dir": "out/phenomena", "threads": 2, "random_state": 0, "plots": True}
TASK_KEYS = {"kind", "enabled", "train_curve", "model", "agop", "fact", "selection"}
SELECTION_DEFAULTS = {"patience": 2}


def _load() -> float | None:
    """The machine's 1-minute load average (other people's work slows the fits down; recorded with the times)."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return None


def _log(msg: str) -> None:
    print(f"[{dt.datetime.now().strftime('%H:%M:%S')}] {msg}", flush=True)


# -- configuration ------------------------------------------------------------------------------------------------


def load_config(path: Path) -> dict:
    with open(path, "rb") as fh:
        loaded = none_values(tomllib.load(fh))
    unknown = set(loaded) - {"run", "tasks"}
    if unknown:
        raise SystemExit(f"{path}: unknown tables {sorted(unknown)} (known: run, tasks)")
    config = {"run": {**RUN_DEFAULTS, **loaded.get("run", {})}, "tasks": loaded.get("tasks", {})}
    if not config["tasks"]:
        raise SystemExit(f"{path}: no [tasks.<name>] tables")
    return config


def select_tasks(config: dict, only: str | None) -> dict[str, dict]:
    """Enabled tasks, or those named in ``only`` (comma-separated task names or kinds)."""
    tasks = config["tasks"]
    if not only:
        return {name: t for name, t in tasks.items() if t.get("enabled", True)}
    wanted = {w.strip() for w in only.split(",") if w.strip()}
    chosen = {name: t for name, t in tasks.items() if name in wanted or t.get("kind", name) in wanted}
    missing = wanted - set(chosen) - {t.get("kind", n) for n, t in chosen.items()}
    if missing or not chosen:
        known = sorted(set(tasks) | {t.get("kind", n) for n, t in tasks.items()})
        raise SystemExit(f"--only: no task named {sorted(missing) or sorted(wanted)} (known: {', '.join(known)})")
    return chosen


def estimator_params(tcfg: dict, rule: str | None, run_cfg: dict) -> dict:
    """Keyword arguments of the estimator: the task's [model] table, the rule's own table on top (lazy: iters=0).
    The AGOP is the papers' uncentred one unless a table says otherwise (the estimator's "auto" would choose on the
    rows passed as validation rows, which are the test rows in the test-curve fit)."""
    params = {"random_state": int(run_cfg["random_state"]), "centre_agop": False, **tcfg.get("model", {})}
    if rule is None:
        params["iters"] = 0
    else:
        params.update(tcfg.get(rule, {}))
        params["feature_update"] = rule
    return params


def generator_params(tcfg: dict) -> dict:
    return {k: v for k, v in tcfg.items() if k not in TASK_KEYS}


# -- metrics ------------------------------------------------------------------------------------------------------
def score(model: Any, task: Task, X: np.ndarray, y: np.ndarray) -> dict:
    pred = model.predict(X)
    if task.classification:
        return {"accuracy": float(np.mean(pred == y))}
    return {"mse": float(np.mean((pred - y) ** 2)), "relative_mse": float(np.mean((pred - y) ** 2) / np.var(y))}


def primary(task: Task) -> str:
    return "accuracy" if task.classification else "mse"


def renamed(history: list[dict], prefix: str) -> list[dict]:
    """History records with val_* metrics renamed to ``prefix``_* (the rows passed as X_val were not validation)."""
    out = []
    for h in history:
        rec = {"iteration": int(h["iteration"])}
        rec.update({f"{prefix}_{k[4:]}": float(v) for k, v in h.items() if k.startswith("val_")})
        rec["seconds"] = float(h.get("seconds", math.nan))
        out.append(rec)
    return out


def _quality(h: dict) -> tuple:
    return (h.get("val_accuracy", 0.0), -h["val_mse"])  # the estimator's own rule: accuracy first, then MSE


def early_stop_point(val_history: list[dict], patience: int) -> int:
    """The iteration at which a fit with this ``patience`` would have stopped, replayed on a validation history."""
    best, stale = None, 0
    for h in val_history:
        q = _quality(h)
        if best is None or q > best:
            best, stale = q, 0
        else:
            stale += 1
        if stale >= patience:
            return int(h["iteration"])
    return int(val_history[-1]["iteration"])


# -- fitting ------------------------------------------------------------------------------------------------------
def _estimator(task: Task, params: dict, client: Any) -> Any:
    from rfm_dask import RFMClassifier, RFMRegressor

    return (RFMClassifier if task.classification else RFMRegressor)(client=client, **params)


def _timed_fit(model: Any, *args: Any, label: str = "", **kwargs: Any) -> float:
    start = time.perf_counter()
    model.fit(*args, **kwargs)
    seconds = time.perf_counter() - start
    if label:
        _log(f"  {label}: {len(model.history_)} iterations in {seconds:.1f} s")
    return seconds


def fit_rule(task: Task, params: dict, selection: dict, train_curve: bool, client: Any) -> tuple[dict, dict]:
    """The fits of one update rule (see the module docstring). Returns (record, {"last": M, "selected": M})."""
    t = task
    seconds: dict[str, float] = {}
    # 1. test metric per iteration
    curve = _estimator(t, {**params, "patience": None}, client)
    tag = f"{t.name} {params['feature_update']}"
    seconds["test_curve_fit"] = _timed_fit(curve, t.X_train, t.y_train, X_val=t.X_test, y_val=t.y_test,
                                           label=f"{tag} test-curve fit")
    iters = int(curve.get_params()["iters"])
    # 2. the reported model: selection on the validation rows
    chosen = _estimator(t, {**params, "patience": selection["patience"]}, client)
    seconds["selection_fit"] = _timed_fit(chosen, t.X_train, t.y_train, X_val=t.X_val, y_val=t.y_val,
                                          label=f"{tag} selection fit")
    # 3. M after the last iteration
    if curve.best_iter_ == iters:
        M_last = curve.feature_matrix_
    else:
        last = _estimator(t, {**params, "patience": None, "validation_fraction": 0.0}, client)
        seconds["last_iterate_fit"] = _timed_fit(last, t.X_train, t.y_train, label=f"{tag} last-iterate fit")
        M_last = last.feature_matrix_
    record: dict[str, Any] = {"params": params, "test_curve": renamed(curve.history_, "test")}
    # 4. train metric per iteration
    if train_curve:
        tr = _estimator(t, {**params, "patience": None}, client)
        seconds["train_curve_fit"] = _timed_fit(tr, t.X_train, t.y_train, X_val=t.X_train, y_val=t.y_train,
                                                label=f"{tag} train-curve fit")
        record["train_curve"] = renamed(tr.history_, "train")
    test = score(chosen, t, t.X_test, t.y_test)
    best = int(chosen.best_iter_)
    curve_at_best = record["test_curve"][best][f"test_{primary(t)}"]
    record["selected"] = {
        "best_iter": best,
        "stopped_after": int(chosen.history_[-1]["iteration"]),
        "patience": selection["patience"],
        "test": test,
        "train": score(chosen, t, t.X_train, t.y_train),
        "val_history": [dict(h) for h in chosen.history_],
        "evidence": t.evidence(chosen.feature_matrix_),
        "matches_curve": bool(np.isclose(test[primary(t)], curve_at_best, rtol=1e-3, atol=1e-6)),
    }
    if selection["patience"] is None:
        record["selected"]["patience_2_would_stop_at"] = early_stop_point(chosen.history_, 2)
    final = record["test_curve"][-1]
    record["last"] = {"iteration": iters, "test": {k[5:]: v for k, v in final.items() if k.startswith("test_")},
                      "evidence": t.evidence(M_last)}
    if t.classification:
        record["first_iteration_test_accuracy_above_0.9"] = next(
            (h["iteration"] for h in record["test_curve"] if h["test_accuracy"] > 0.9), None)
    record["seconds"] = seconds
    return record, {"last": M_last, "selected": chosen.feature_matrix_}


def fit_lazy(task: Task, params: dict, client: Any) -> dict:
    model = _estimator(task, params, client)
    seconds = _timed_fit(model, task.X_train, task.y_train, X_val=task.X_val, y_val=task.y_val)
    return {"params": params, "test": score(model, task, task.X_test, task.y_test),
            "train": score(model, task, task.X_train, task.y_train), "seconds": {"fit": seconds}}


def run_task(name: str, tcfg: dict, run_cfg: dict, client: Any, out_dir: Path) -> dict:
    start = time.perf_counter()
    task = make_task(name, generator_params(tcfg) | {"kind": tcfg.get("kind", name)})
    selection = {**SELECTION_DEFAULTS, **tcfg.get("selection", {})}
    record: dict[str, Any] = {
        "task": name, "kind": task.kind, "classification": task.classification, "metric": primary(task),
        "description": task.description, "sizes": task.sizes, "generator": generator_params(tcfg),
        "facts": task.facts, "selection": selection,
    }
    _log(f"{name}: {task.description}; sizes {task.sizes}")
    record["lazy"] = fit_lazy(task, estimator_params(tcfg, None, run_cfg), client)
    _log(f"{name}: lazy test {_metrics_text(record['lazy']['test'])}")
    matrices: dict[str, dict[str, np.ndarray]] = {}
    for rule in RULES:
        rec, mats = fit_rule(task, estimator_params(tcfg, rule, run_cfg), selection,
                             bool(tcfg.get("train_curve", False)), client)
        record[rule], matrices[rule] = rec, mats
        curve = ", ".join(f"{h[f'test_{primary(task)}']:.4g}" for h in rec["test_curve"])
        _log(f"{name}: {LABEL[rule]} test {primary(task)} by iteration [{curve}]; selected iteration "
             f"{rec['selected']['best_iter']}, test {_metrics_text(rec['selected']['test'])}")
        for which, M in mats.items():
            with atomic_path(out_dir / "matrices" / f"{name}_{rule}_{which}.npy") as tmp:
                np.save(tmp, np.asarray(M))
    for rule in RULES:
        record[rule]["verdict"] = criteria.verdict(record, rule)
    record["seconds"] = time.perf_counter() - start
    record["load_average_1min_after"] = _load()
    if run_cfg.get("plots", True):
        from . import plots

        record["plots"] = plots.plot_task(record, task, matrices, out_dir)
    _log(f"{name}: done in {record['seconds']:.1f} s; reproduced: "
         + ", ".join(f"{LABEL[r]} {'yes' if record[r]['verdict']['reproduced'] else 'NO'}" for r in RULES))
    return record


# -- report -------------------------------------------------------------------------------------------------------
def _f(x: Any, spec: str = ".4g") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return format(x, spec) if isinstance(x, (int, float)) and not isinstance(x, bool) else str(x)


def summary_table(records: list[dict]) -> str:
    cols = ["task", "test metric", "lazy", "AGOP-RFM (selected it.)", "FACT-RFM (selected it.)",
            "AGOP last it.", "FACT last it.", "reproduced AGOP / FACT", "seconds"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(["---"] + ["---:"] * (len(cols) - 2) + ["---:"]) + "|"]
    for r in records:
        m = r["metric"]
        better = " (higher better)" if m == "accuracy" else " (lower better)"
        cells = [r["task"], m + better, _f(r["lazy"]["test"][m])]
        for rule in RULES:
            s = r[rule]["selected"]
            cells.append(f"{_f(s['test'][m])} ({s['best_iter']})")
        for rule in RULES:
            cells.append(f"{_f(r[rule]['last']['test'][m])} ({r[rule]['last']['iteration']})")
        cells.append(" / ".join("yes" if r[rule]["verdict"]["reproduced"] else "**no**" for rule in RULES))
        cells.append(f"{r['seconds']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def curve_table(r: dict) -> str:
    m = r["metric"]
    has_train = any("train_curve" in r[rule] for rule in RULES)
    cols = ["iteration"] + [f"{LABEL[rule]} test {m}" for rule in RULES]
    if m == "accuracy":
        cols += [f"{LABEL[rule]} test MSE" for rule in RULES]
    if has_train:
        cols += [f"{LABEL[rule]} train {m}" for rule in RULES]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(["---:"] * len(cols)) + "|"]
    n = max(len(r[rule]["test_curve"]) for rule in RULES)
    for t in range(n):
        def get(rule: str, curve: str, key: str) -> str:
            c = r[rule].get(curve) or []
            return _f(c[t].get(key)) if t < len(c) else "—"

        cells = [str(t)] + [get(rule, "test_curve", f"test_{m}") for rule in RULES]
        if m == "accuracy":
            cells += [get(rule, "test_curve", "test_mse") for rule in RULES]
        if has_train:
            cells += [get(rule, "train_curve", f"train_{m}") for rule in RULES]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _metrics_text(m: dict) -> str:
    return ", ".join(f"{k} {_f(v)}" for k, v in m.items())


def _evidence_text(ev: dict) -> str:
    return ", ".join(f"{k} = {_f(v, '.3f') if isinstance(v, float) else v}" for k, v in ev.items())


def results_markdown(results: dict) -> str:
    lines = [
        "# Phenomena of DESIGN section 4: AGOP-RFM, FACT-RFM and the lazy kernel",
        "",
        f"- date: {results['date']}",
        f"- command: `{results['command']}`",
        f"- rfm_dask git commit: {results['machine']['git_commit']}"
        + (" (with uncommitted changes under rfm_dask/)" if results["machine"].get("rfm_dask_dirty") else ""),
        f"- machine: {results['machine']['cpu_count']} CPU cores; one in-process Dask LocalCluster, "
        f"{results['config']['run']['threads']} worker threads, shared by all fits",
        "",
        "How to read this: every model of a task is fitted on the same training rows. **Curves** (and the *last it.* "
        "columns) are the test metric recorded at every RFM iteration by a fit that was given the test rows as "
        "`X_val` purely for recording, with early stopping off; that fit's choice of iteration is not used. The "
        "**selected** columns are a second fit of the same model that picks its iteration (in brackets; 0 = lazy "
        "kernel) on separate validation rows, scored once on the test rows. The **lazy kernel** is the same "
        "estimator with `iters=0`. M images and M evidence are at the last iteration unless marked *selected*.",
        "",
        summary_table(results["tasks"]),
        "",
        "Criteria (`pipelines/phenomena/criteria.py`, set before the first full run; the grokking one was revised "
        "once after it, as recorded there):",
        "",
        *[f"- {kind}: {text}" for kind, text in criteria.TEXT.items()
          if any(r["kind"] == kind for r in results["tasks"])],
        "",
    ]
    for r in results["tasks"]:
        lines += [f"## {r['task']} ({r['kind']})", "", f"- data: {r['description']}; sizes {r['sizes']}"]
        if r["facts"]:
            lines.append("- task facts: " + _evidence_text(r["facts"]))
        lines.append(f"- lazy kernel: `{r['lazy']['params']}`; test {_metrics_text(r['lazy']['test'])}; train "
                     f"{_metrics_text(r['lazy']['train'])}")
        for rule in RULES:
            x = r[rule]
            s = x["selected"]
            lines += [
                f"- {LABEL[rule]}: `{x['params']}`",
                f"  - selected on validation (patience {s['patience']}): iteration {s['best_iter']} of "
                f"{s['stopped_after']} run; test {_metrics_text(s['test'])}; train {_metrics_text(s['train'])}"
                + ("" if s["matches_curve"] else " — **differs from the curve at that iteration**")
                + (f"; with patience 2 the fit would have stopped at iteration {s['patience_2_would_stop_at']}"
                   if "patience_2_would_stop_at" in s else ""),
                f"  - M at the last iteration ({x['last']['iteration']}): {_evidence_text(x['last']['evidence'])}",
                f"  - M selected: {_evidence_text(s['evidence'])}",
            ]
            if "first_iteration_test_accuracy_above_0.9" in x:
                first = x["first_iteration_test_accuracy_above_0.9"]
                lines.append(f"  - first iteration with test accuracy > 0.9: {'never' if first is None else first}")
            lines.append(f"  - reproduced: {'yes' if x['verdict']['reproduced'] else '**no**'} ({x['verdict']['why']})")
            lines.append("  - fit seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in x["seconds"].items()))
        lines.append(f"- task wall time {r['seconds']:.0f} s (1-minute load average afterwards "
                     f"{_f(r.get('load_average_1min_after'), '.1f')} on {results['machine']['cpu_count']} cores)")
        lines += ["", curve_table(r), ""]
        if r.get("plots"):
            lines += [" ".join(f"![{Path(p).stem}]({Path(p).name})" for p in r["plots"]), ""]
    return "\n".join(lines)


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_outputs(results: dict, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / "results.json", json.dumps(results, indent=2, default=_json_default))
    write_text(out_dir / "results.md", results_markdown(results))
    return [out_dir / "results.md", out_dir / "results.json"]


def machine_info() -> dict:
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10,
                                  check=True).stdout.strip()
        except Exception:
            return None

    return {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "git_commit": git("rev-parse", "--short", "HEAD"),
            "rfm_dask_dirty": bool(git("status", "--porcelain", "--", "rfm_dask"))}


# -- main ---------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipelines.phenomena", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                        help=f"TOML config (default: {DEFAULT_CONFIG.name} next to the pipeline)")
    parser.add_argument("--only", help="comma-separated task names or kinds, e.g. grokking,parity")
    parser.add_argument("--out", type=Path, help="output directory (default [run] out_dir)")
    parser.add_argument("--no-plots", action="store_true", help="write the tables and JSON only")
    parser.add_argument("--verbose", action="store_true", help="log every RFM iteration")
    parser.add_argument("--render", action="store_true",
                        help="fit nothing: rewrite results.md from the output directory's results.json")
    return parser.parse_args(argv)


def preflight() -> None:
    from rfm_dask import RFMRegressor

    if "feature_update" not in RFMRegressor().get_params():
        raise SystemExit("this rfm_dask has no feature_update parameter: FACT-RFM cannot be fitted")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = load_config(args.config)
    tasks = select_tasks(config, args.only)
    run_cfg = config["run"]
    if args.no_plots:
        run_cfg["plots"] = False
    out_dir = args.out or Path(run_cfg["out_dir"])
    if args.render:
        results = json.loads((out_dir / "results.json").read_text())
        write_text(out_dir / "results.md", results_markdown(results))
        print(summary_table(results["tasks"]))
        return 0
    preflight()
    logging.getLogger("distributed").setLevel(logging.ERROR)
    if args.verbose:
        logging.basicConfig(format="[%(asctime)s] %(name)s: %(message)s", datefmt="%H:%M:%S")
        logging.getLogger("rfm_dask").setLevel(logging.INFO)
    warnings.filterwarnings("ignore", message=".*Port 8787 is already in use.*")

    from distributed import Client, LocalCluster

    results: dict[str, Any] = {
        "pipeline": "phenomena (DESIGN section 4)",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", "-m", "pipelines.phenomena", *(sys.argv[1:] if argv is None else argv)]),
        "config": copy.deepcopy({"run": run_cfg, "tasks": tasks}),
        "machine": machine_info(),
        "criteria": dict(criteria.TEXT),
        "tasks": [],
    }
    start = time.perf_counter()
    _log(f"tasks: {', '.join(tasks)}; output {out_dir}")
    with LocalCluster(n_workers=1, threads_per_worker=int(run_cfg["threads"]), processes=False,
                      dashboard_address=None) as cluster, Client(cluster, set_as_default=False) as client:
        for name, tcfg in tasks.items():
            results["tasks"].append(run_task(name, tcfg, run_cfg, client, out_dir))
            results["seconds"] = time.perf_counter() - start
            write_outputs(results, out_dir)
    results["seconds"] = time.perf_counter() - start
    written = write_outputs(results, out_dir)
    print()
    print(summary_table(results["tasks"]))
    print()
    print(f"total {results['seconds']:.0f} s; wrote: " + ", ".join(str(p) for p in written)
          + f" and {sum(len(r.get('plots', [])) for r in results['tasks'])} plots in {out_dir}")
    return 0
