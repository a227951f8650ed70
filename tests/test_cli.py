"""The rfm-dask CLI end to end on small Parquet files: ingest, fit, predict, evaluate, inspect; configs; errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score

import rfm_dask
from rfm_dask.app.cli import _parse as _parse_with, build_parser, main


def _parse(argv: list[str]):
    """The CLI's parse of ``argv`` (config file applied)."""
    return _parse_with(*build_parser(), argv)


def _table(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    x0, x1 = rng.normal(size=n), rng.normal(size=n)
    colour = rng.choice(["red", "green", "blue"], size=n)
    y = x0 * x1 + np.where(colour == "red", 1.0, 0.0) + 0.05 * rng.normal(size=n)
    x2 = rng.normal(size=n)
    x2[rng.random(n) < 0.05] = np.nan
    return pa.table({
        "row_id": np.arange(n) + 1000 * seed,
        "x0": x0, "x1": x1, "x2": pa.array(x2, from_pandas=True), "colour": colour,
        "y": y, "label": np.where(y > 0.5, "high", "low"),
    })


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    pq.write_table(_table(500, 0), root / "train.parquet", row_group_size=128)
    pq.write_table(_table(200, 1), root / "test.parquet")
    return root


def _run(capsys, *argv):
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture(scope="module")
def fitted(files):
    """ingest + fit once for the module (through main, output not captured)."""
    store, model = files / "train.zarr", files / "model.rfm"
    assert main(["ingest", str(files / "train.parquet"), str(store), "--target", "y", "--id-column", "row_id",
                 "--exclude", "label", "--quiet"]) == 0
    assert main(["fit", str(store), str(model), "--iters", "2", "--solver", "direct", "--quiet"]) == 0
    return store, model


def test_ingest_fit_predict_evaluate_inspect(files, fitted, capsys, tmp_path):
    store, model_path = fitted
    model = rfm_dask.load(model_path)
    assert isinstance(model, rfm_dask.RFMRegressor) and model.preprocessing_["target"] == "y"

    status, out, _ = _run(capsys, "predict", model_path, files / "test.parquet", tmp_path / "pred.parquet")
    assert status == 0 and json.loads(out)["rows"] == 200
    pred = pq.read_table(tmp_path / "pred.parquet")
    assert pred.column_names == ["row_id", "prediction"]
    np.testing.assert_array_equal(pred["row_id"].to_numpy(), np.arange(200) + 1000)

    status, out, _ = _run(capsys, "evaluate", model_path, files / "test.parquet")
    metrics = json.loads(out)
    assert status == 0 and metrics["rows"] == 200 and metrics["r2"] > 0.5, metrics
    y = _table(200, 1)["y"].to_numpy()
    r2 = 1 - np.sum((pred["prediction"].to_numpy() - y) ** 2) / np.sum((y - y.mean()) ** 2)
    assert metrics["r2"] == pytest.approx(r2, rel=1e-9)

    status, out, _ = _run(capsys, "evaluate", model_path, store)
    assert status == 0 and json.loads(out)["rows"] == 500

    status, out, _ = _run(capsys, "inspect", model_path, "--plot", tmp_path / "M.png", "--json")
    report = json.loads(out)
    assert status == 0 and (tmp_path / "M.png").stat().st_size > 0
    names = [item["feature"] for item in report["importances"]]
    assert {"x0", "x1"} <= set(names[:3]), names
    status, out, _ = _run(capsys, "inspect", model_path)
    assert status == 0 and "feature importances" in out and "eigen-direction 1" in out


def test_classification_and_config_files(files, capsys, tmp_path):
    store = tmp_path / "cls.zarr"
    assert _run(capsys, "ingest", files / "train.parquet", store, "--target", "label", "--exclude", "y")[0] == 0
    (tmp_path / "cfg.toml").write_text('[fit]\niters = 1\nsolver = "direct"\nfeature-update = "fact"\n')
    (tmp_path / "cfg.yaml").write_text("fit:\n  iters: 0\n  diag: true\n")
    status, out, _ = _run(capsys, "fit", store, tmp_path / "a.rfm", "--config", tmp_path / "cfg.toml")
    assert status == 0 and len(json.loads(out)["history"]) == 2
    model = rfm_dask.load(tmp_path / "a.rfm")
    assert model.feature_update == "fact" and list(model.classes_) == ["high", "low"]
    status, out, _ = _run(capsys, "fit", store, tmp_path / "b.rfm", "--config", tmp_path / "cfg.yaml", "--iters", "1")
    assert status == 0 and len(json.loads(out)["history"]) == 2 and rfm_dask.load(tmp_path / "b.rfm").diag
    status, out, _ = _run(capsys, "evaluate", tmp_path / "a.rfm", files / "test.parquet")
    metrics = json.loads(out)
    assert status == 0 and metrics["accuracy"] > 0.7
    assert _run(capsys, "predict", tmp_path / "a.rfm", files / "test.parquet", tmp_path / "p.parquet")[0] == 0
    predicted = pq.read_table(tmp_path / "p.parquet")
    assert predicted.column_names == ["prediction", "proba_high", "proba_low"]
    # the ROC AUC the CLI reports is scikit-learn's on the probabilities it writes (positive class: "low")
    labels = _table(200, 1)["label"].to_numpy(zero_copy_only=False)
    auc = roc_auc_score(labels == "low", predicted["proba_low"].to_numpy())
    assert metrics["roc_auc"] == pytest.approx(auc, rel=1e-12) and auc > 0.7


def _one_line_error(capsys, *argv, match):
    status, out, err = _run(capsys, *argv)
    assert status == 2, (out, err)
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and "Traceback" not in err and match in lines[0], err
    return lines[0]


def test_bad_input_is_one_line_and_leaves_nothing(files, fitted, capsys, tmp_path):
    store, model_path = fitted
    _one_line_error(capsys, "ingest", tmp_path / "missing.parquet", tmp_path / "s.zarr", "--target", "y",
                    match="missing.parquet")
    _one_line_error(capsys, "ingest", files / "train.parquet", tmp_path / "s.zarr", "--target", "nope",
                    match="nope")
    _one_line_error(capsys, "fit", store, model_path, match="already exists")
    (tmp_path / "corrupt.rfm").write_bytes(b"\x00" * 100)
    _one_line_error(capsys, "predict", tmp_path / "corrupt.rfm", files / "test.parquet", tmp_path / "o.parquet",
                    match="corrupt")
    (tmp_path / "bad.yaml").write_text("fit:\n  itres: 3\n")
    _one_line_error(capsys, "fit", store, tmp_path / "m.rfm", "--config", tmp_path / "bad.yaml", match="itres")
    _one_line_error(capsys, "fit", store, tmp_path / "m.rfm", "--solver", "magic", match="solver")
    pq.write_table(_table(20, 2).drop_columns(["x1"]), tmp_path / "short.parquet")
    _one_line_error(capsys, "predict", model_path, tmp_path / "short.parquet", tmp_path / "o.parquet", match="x1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml", "corrupt.rfm", "short.parquet"]


def test_saved_model_predicts_identically_in_a_new_process(files, fitted, capsys, tmp_path):
    _, model_path = fitted
    assert _run(capsys, "predict", model_path, files / "test.parquet", tmp_path / "here.parquet")[0] == 0
    subprocess.run([sys.executable, "-m", "rfm_dask.app.cli", "predict", str(model_path), str(files / "test.parquet"),
                    str(tmp_path / "there.parquet"), "--quiet"], check=True, timeout=120, capture_output=True)
    assert pq.read_table(tmp_path / "here.parquet").equals(pq.read_table(tmp_path / "there.parquet"))


def test_config_paths_are_confined_to_the_config_directory(files, fitted, capsys, tmp_path):
    store, model_path = fitted
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "escape.yaml").write_text("inspect:\n  plot: ../../outside.png\n")
    _one_line_error(capsys, "inspect", model_path, "--config", tmp_path / "conf" / "escape.yaml", match="outside")
    (tmp_path / "conf" / "abs.toml").write_text('[inspect]\nplot = "/tmp/elsewhere.png"\n')
    _one_line_error(capsys, "inspect", model_path, "--config", tmp_path / "conf" / "abs.toml", match="outside")
    (tmp_path / "conf" / "ok.yaml").write_text("inspect:\n  plot: plots/M.png\n")
    assert _run(capsys, "inspect", model_path, "--config", tmp_path / "conf" / "ok.yaml")[0] == 0
    assert (tmp_path / "conf" / "plots" / "M.png").exists() and not (tmp_path.parent / "outside.png").exists()


def test_command_line_overrides_config_for_every_kind_of_option(tmp_path):
    """Config values become defaults; any option given on the command line wins (numbers, strings, booleans)."""
    (tmp_path / "cfg.yaml").write_text(
        "fit:\n  iters: 4\n  bandwidth: 4.0\n  reg: 0.01\n  solver: cg\n  kernel: gaussian\n  diag: true\n"
        "  centre-agop: true\n  agop-power: 0.5\n  random-state: 3\n"
    )
    base = ["fit", "s.zarr", "m.rfm", "--config", str(tmp_path / "cfg.yaml")]
    args = _parse(base)
    assert (args.iters, args.bandwidth, args.reg, args.solver, args.kernel) == (4, 4.0, 0.01, "cg", "gaussian")
    assert (args.diag, args.centre_agop, args.agop_power, args.random_state) == (True, True, 0.5, 3)
    args = _parse(base + ["--bandwidth", "7", "--solver", "direct", "--no-diag", "--no-centre-agop",
                          "--agop-power", "1", "--random-state", "0"])
    assert (args.bandwidth, args.solver, args.diag, args.centre_agop, args.agop_power, args.random_state) == (
        7.0, "direct", False, False, 1.0, 0)
    assert (args.iters, args.reg, args.kernel) == (4, 0.01, "gaussian")  # not given: still the config's


def test_the_scoring_option(files, capsys, tmp_path):
    """``--scoring`` (derived from the estimator) picks the validation metric; the model file keeps it and the
    calibrated probabilities; a scoring of the other task is a one-line error."""
    parser, commands = build_parser()
    help_text = " ".join(commands["fit"].format_help().split())
    assert "--scoring {accuracy,balanced_accuracy,log_loss,mae,mse,r2,roc_auc,none}" in help_text
    store = tmp_path / "cls.zarr"
    assert _run(capsys, "ingest", files / "train.parquet", store, "--target", "label", "--exclude", "y")[0] == 0
    status, out, _ = _run(capsys, "fit", store, tmp_path / "a.rfm", "--iters", "1", "--solver", "direct",
                          "--scoring", "roc_auc")
    assert status == 0 and all("val_roc_auc" in record for record in json.loads(out)["history"])
    model = rfm_dask.load(tmp_path / "a.rfm")
    assert model.scoring == "roc_auc" and model.calibration_ > 0
    _one_line_error(capsys, "fit", store, tmp_path / "b.rfm", "--scoring", "r2", match="scoring")
