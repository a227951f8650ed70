"""The CLI's habits: --version, defaults in --help, strict config values, command-line spelling in errors, options
checked before a cluster starts, one history, progress bars, a clear word for a Zarr store given to predict."""

from __future__ import annotations

import io
import json
import logging
import re
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from test_cli import _table

import rfm_dask
from rfm_dask.app import cli
from rfm_dask.app.cli import build_parser, main


def _run(capsys, *argv):
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def _error(capsys, *argv) -> str:
    """The one-line error of a command that must fail with exit status 2."""
    status, out, err = _run(capsys, *argv)
    lines = [line for line in err.strip().splitlines() if line]
    assert status == 2 and len(lines) == 1 and "Traceback" not in err, (status, out, err)
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("habits")
    pq.write_table(_table(300, 0), root / "train.parquet", row_group_size=100)
    pq.write_table(_table(100, 1), root / "test.parquet")
    assert main(["ingest", str(root / "train.parquet"), str(root / "train.zarr"), "--target", "y", "--exclude",
                 "label", "--quiet"]) == 0
    assert main(["fit", str(root / "train.zarr"), str(root / "model.rfm"), "--iters", "1", "--solver", "direct",
                 "--quiet"]) == 0
    return root


@pytest.fixture
def no_cluster(monkeypatch):
    """Fail the test if a command starts the local cluster."""
    def refuse():
        raise AssertionError("a cluster was started")

    monkeypatch.setattr("rfm_dask.parallel.cluster.local_client", refuse)


def test_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"rfm-dask {rfm_dask.__version__}"


def test_every_help_shows_the_defaults_and_the_positionals():
    parser, commands = build_parser()
    for name, sub in commands.items():
        text = " ".join(sub.format_help().split())
        for action in sub._actions:
            if action.dest in {"help", "version"}:
                continue
            assert action.help, f"{name} {action.dest} has no help"
            if action.option_strings and action.default is not None:
                assert f"(default: {action.default})" in text, f"{name} {action.option_strings[0]}"
        if any(a.dest == "model" for a in sub._actions):
            assert re.search(r"\bmodel\s+\S", sub.format_help()), f"{name}: model is not documented"
    fit = " ".join(commands["fit"].format_help().split())
    assert ("--iters ITERS RFM iterations (feature updates); 0 fits the lazy kernel only (iteration 0, M = I). "
            "(default: 5)") in fit
    assert "(None: the rfm.agop-sample setting)" in fit and "(default: None)" not in fit


# (config file name, text, words the one-line error must hold besides the file and the key)
BAD_CONFIGS = {
    "quoted boolean (TOML)": ("c.toml", '[fit]\noverwrite = "no"\n', "overwrite", "true or false"),
    "quoted boolean (YAML)": ("c.yaml", 'fit:\n  diag: "false"\n', "diag", "true or false"),
    "boolean for a number": ("c.yaml", "fit:\n  reg: true\n", "reg", "single value"),
    "list for a number": ("c.yaml", "fit:\n  bandwidth: [1]\n", "bandwidth", "single value"),
    "number for an address": ("c.yaml", "scheduler: 5\n", "scheduler", "string"),
    "float for an integer": ("c.toml", "[fit]\niters = 2.5\n", "iters", "int"),
    "text for a number": ("c.yaml", "fit:\n  reg: small\n", "reg", "float"),
    "null value": ("c.yaml", "fit:\n  tol:\n", "tol", "single value"),
    "misspelled section": ("c.yaml", "fti:\n  iters: 1\n", "fti", "unknown section"),
    "unknown key": ("c.toml", "[fit]\nitres = 3\n", "itres", "unknown option"),
    "section not a table": ("c.yaml", "fit: 3\n", "fit", "mapping"),
}


@pytest.mark.parametrize("name", BAD_CONFIGS)
def test_config_values_are_parsed_as_the_command_line_parses_them(files, capsys, tmp_path, no_cluster, name):
    filename, text, key, words = BAD_CONFIGS[name]
    config = tmp_path / filename
    config.write_text(text)
    model = tmp_path / "m.rfm"
    model.write_bytes(b"keep me")
    line = _error(capsys, "fit", files / "train.zarr", model, "--config", config)
    assert str(config) in line and key in line and words in line, line
    assert model.read_bytes() == b"keep me"


def test_config_values_take_the_command_line_types(tmp_path):
    parser, commands = build_parser()
    (tmp_path / "c.yaml").write_text("ingest:\n  exclude: label\n  target: y\n  max-categories: '7'\n"
                                     "fit:\n  reg: '1e-2'\n  diag: false\n  iters: 3\n  checkpoint: ck/state\n")
    args = cli._parse(parser, commands, ["ingest", "a.parquet", "s.zarr", "--config", str(tmp_path / "c.yaml")])
    assert args.exclude == ["label"] and args.max_categories == 7 and args.target == "y"
    args = cli._parse(parser, commands, ["fit", "s.zarr", "m.rfm", "--config", str(tmp_path / "c.yaml")])
    assert args.reg == 0.01 and args.diag is False and args.iters == 3
    assert args.checkpoint == str((tmp_path / "ck" / "state").resolve())
    args = cli._parse(parser, commands, ["fit", "s.zarr", "m.rfm", "--config", str(tmp_path / "c.yaml"),
                                         "--iters", "1", "--diag"])
    assert args.iters == 1 and args.diag is True  # the command line wins


def test_errors_use_command_line_spelling(files, capsys, tmp_path, no_cluster):
    line = _error(capsys, "ingest", files / "train.parquet", files / "train.zarr", "--target", "y")
    assert "--overwrite" in line and "overwrite=" not in line, line
    line = _error(capsys, "ingest", files / "train.parquet", tmp_path / "s.zarr", "--target", "y",
                  "--max-categories", "2")
    assert "--high-cardinality top" in line and "--max-categories" in line and "high_cardinality" not in line, line
    line = _error(capsys, "fit", files / "train.zarr", tmp_path / "m.rfm", "--reg", "-1")
    assert line.startswith("rfm-dask fit: error: --reg must"), line
    line = _error(capsys, "predict", files / "model.rfm", files / "test.parquet", files / "test.parquet")
    assert "--overwrite" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_bad_fit_options_are_refused_before_a_cluster_starts(files, capsys, tmp_path, no_cluster):
    for options, words in [(["--solver", "magic"], "--solver"), (["--iters", "-2"], "--iters"),
                           (["--kernel", "cosine"], "cosine"), (["--validation-fraction", "1.5"], "validation")]:
        line = _error(capsys, "fit", files / "train.zarr", tmp_path / "m.rfm", *options)
        assert words in line, line
    line = _error(capsys, "fit", files / "test.parquet", tmp_path / "m.rfm")
    assert "not a readable Zarr store" in line
    line = _error(capsys, "fit", files / "train.zarr", files / "model.rfm")
    assert "already exists" in line and "--overwrite" in line


def test_fit_prints_its_history_once(files, capsys, tmp_path):
    status, out, err = _run(capsys, "fit", files / "train.zarr", tmp_path / "m.rfm", "--iters", "2",
                            "--solver", "direct")
    summary = json.loads(out)
    assert status == 0 and [h["iteration"] for h in summary["history"]] == [0, 1, 2]
    # stderr holds progress lines only (one per iteration where no progress bar is drawn), no history table
    lines = err.strip().splitlines()
    assert all(line.startswith("rfm-dask: ") for line in lines), err
    assert sum("iteration" in line for line in lines) == 3, err


def test_predict_on_a_zarr_store_says_what_it_wants(files, capsys, tmp_path):
    line = _error(capsys, "predict", files / "model.rfm", files / "train.zarr", tmp_path / "p.parquet")
    assert "is a Zarr store" in line and "Parquet" in line and "rfm-dask evaluate" in line, line


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bars_on_a_terminal(files, capsys, monkeypatch, tmp_path):
    """ingest, fit (iterations and CG steps) and predict draw tqdm bars on a terminal; --quiet draws none."""
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["ingest", str(files / "train.parquet"), str(tmp_path / "s.zarr"), "--target", "y"]) == 0
    assert main(["fit", str(tmp_path / "s.zarr"), str(tmp_path / "m.rfm"), "--iters", "1", "--solver", "cg",
                 "--patience", "5"]) == 0
    assert main(["predict", str(tmp_path / "m.rfm"), str(files / "test.parquet"), str(tmp_path / "p.parquet")]) == 0
    shown = terminal.getvalue()
    assert re.search(r"ingest \(2 passes\): +100%", shown), shown
    assert re.search(r"fit: +100%\|.*\| 2/2 ", shown), shown
    assert re.search(r"CG steps: [1-9]\d* ?step", shown), shown
    assert re.search(r"predict: 100 ?rows", shown), shown
    assert "rfm-dask: iteration" not in shown  # the bars show the iterations
    quiet = _Terminal()
    monkeypatch.setattr(sys, "stderr", quiet)
    assert main(["predict", str(tmp_path / "m.rfm"), str(files / "test.parquet"), str(tmp_path / "p.parquet"),
                 "--overwrite", "--quiet"]) == 0
    assert quiet.getvalue() == ""


@pytest.mark.parametrize("seed", [0, 25], ids=["no-retry", "retry"])
def test_python_fits_log_one_line_per_iteration(client, caplog, seed):
    """From Python, the documented ``rfm_dask`` logger at INFO shows one line per solve, in history order: one per
    iteration, and where ``centre_agop="auto"`` solves iteration 1 again (seed 25's validation rows make the first
    update score below iteration 0), a line that says so and one for the second try."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    y = X[:, 0] ** 2
    with caplog.at_level(logging.INFO, logger="rfm_dask"):
        model = rfm_dask.RFMRegressor(iters=2, patience=None, solver="direct", random_state=seed,
                                      client=client).fit(X, y)
    lines = [r.getMessage() for r in caplog.records if r.name == "rfm_dask"]
    retry = [line for line in lines if "solving it again centred" in line]
    solves = [line.split(":")[0] for line in lines if line not in retry]
    assert solves == [f"iteration {h['iteration']}" for h in model.history_], lines
    expected = ["iteration 0", "iteration 1", "iteration 2"] if seed == 0 else \
        ["iteration 0", "iteration 1", "iteration 1", "iteration 2"]
    assert solves == expected and len(retry) == (seed == 25), lines
    if retry:
        assert lines.index(retry[0]) == 2, lines  # between the two tries of iteration 1


def test_fit_dashboard_on_request_prints_a_loopback_link(files, capsys, tmp_path):
    status, _, err = _run(capsys, "fit", files / "train.zarr", tmp_path / "m.rfm", "--iters", "0", "--solver",
                          "direct", "--dashboard")
    assert status == 0 and re.search(r"^rfm-dask: Dask dashboard at http://127\.0\.0\.1:\d+/status$", err, re.M), err
    status, _, err = _run(capsys, "fit", files / "train.zarr", tmp_path / "n.rfm", "--iters", "0", "--solver",
                          "direct")
    assert status == 0 and "dashboard" not in err, err
