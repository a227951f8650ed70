"""A real multi-process cluster: ``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1, started here.

A fit through the CLI (``--scheduler tcp://...``) and through the Python API with a ``Client`` must equal the
in-process fits; the processes must shut down cleanly and leave nothing behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dask.array as da
import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from distributed import Client

import rfm_dask
from pipelines.datasets import low_rank_golden
from rfm_dask import RFMRegressor
from rfm_dask.app.cli import main

DASK = str(Path(sys.executable).with_name("dask"))


def _start(args: list[str], log: Path) -> subprocess.Popen:
    """A process in a session of its own (so the whole tree can be signalled), output to ``log``."""
    return subprocess.Popen(args, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def _stop(process: subprocess.Popen) -> list[psutil.Process]:
    """SIGTERM the process tree; returns the processes of its session that are still alive afterwards."""
    tree = [process.pid] + [child.pid for child in psutil.Process(process.pid).children(recursive=True)]
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=30)
    time.sleep(0.5)
    return [psutil.Process(pid) for pid in tree if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(scheduler address) of a scheduler and two single-threaded worker processes."""
    root = tmp_path_factory.mktemp("cluster")
    scheduler_file = root / "scheduler.json"
    scheduler = _start([DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                        "--scheduler-file", str(scheduler_file)], root / "scheduler.log")
    workers = []
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists():
            assert time.monotonic() < deadline and scheduler.poll() is None, (root / "scheduler.log").read_text()
            time.sleep(0.2)
        for i in range(2):
            workers.append(_start([DASK, "worker", "--scheduler-file", str(scheduler_file), "--nthreads", "1",
                                   "--memory-limit", "2GiB", "--no-dashboard", "--name", f"w{i}"],
                                  root / f"worker{i}.log"))
        with Client(scheduler_file=str(scheduler_file), timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
            address = client.scheduler.address
        yield address
    finally:
        leftovers = [p for proc in (*workers, scheduler) for p in _stop(proc)]
        assert not leftovers, f"processes left running: {leftovers}"


def test_cli_fit_on_the_cluster_equals_in_process(cluster, tmp_path, capsys):
    X, y, X_test, _ = low_rank_golden(n_train=1000, n_test=200, seed=1)
    table = pa.table({**{f"x{j}": X[:, j] for j in range(X.shape[1])}, "y": y})
    pq.write_table(table, tmp_path / "train.parquet", row_group_size=400)
    assert main(["ingest", str(tmp_path / "train.parquet"), str(tmp_path / "train.zarr"), "--target", "y",
                 "--chunk-rows", "250", "--quiet"]) == 0
    common = ["--iters", "2", "--solver", "cg", "--tol", "1e-10", "--quiet"]
    assert main(["fit", str(tmp_path / "train.zarr"), str(tmp_path / "remote.rfm"), "--scheduler", cluster,
                 *common]) == 0
    assert main(["fit", str(tmp_path / "train.zarr"), str(tmp_path / "local.rfm"), *common]) == 0
    capsys.readouterr()
    remote, local = rfm_dask.load(tmp_path / "remote.rfm"), rfm_dask.load(tmp_path / "local.rfm")
    assert remote.history_[-1]["cg_iterations"] > 0
    p_remote, p_local = remote.predict(X_test), local.predict(X_test)
    np.testing.assert_allclose(p_remote, p_local, rtol=0, atol=1e-9 * np.abs(p_local).max())
    np.testing.assert_allclose(remote.feature_matrix_, local.feature_matrix_, rtol=0, atol=1e-9)


def test_python_api_on_the_cluster_equals_in_process(cluster, client):
    X, y, X_test, _ = low_rank_golden(n_train=800, n_test=200, seed=2)
    params = dict(iters=2, solver="cg", tol=1e-10, random_state=0)
    with Client(cluster) as remote_client:
        remote = RFMRegressor(client=remote_client, **params).fit(X, y)
        lazy = remote.predict(da.from_array(X_test, chunks=100))
        p_lazy = remote_client.compute(lazy).result()
    local = RFMRegressor(client=client, **params).fit(X, y)
    p_remote, p_local = remote.predict(X_test), local.predict(X_test)
    np.testing.assert_allclose(p_remote, p_local, rtol=0, atol=1e-9 * np.abs(p_local).max())
    # lazy prediction runs on the workers in chunks of 100 rows: float32 GEMM rounding depends on the chunking
    np.testing.assert_allclose(p_lazy, p_remote, rtol=0, atol=1e-4 * np.abs(p_local).max())
    assert json.dumps(remote.history_)  # plain data, no futures


@pytest.fixture()
def doomed_schedulers(tmp_path):
    """A function starting a scheduler with one worker process, for a test that kills the scheduler: returns its
    (address, process). Everything started is killed at the end."""
    processes: list[subprocess.Popen] = []

    def start() -> tuple[str, subprocess.Popen]:
        k = len(processes)
        scheduler_file = tmp_path / f"doomed{k}.json"
        scheduler = _start([DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                            "--scheduler-file", str(scheduler_file)], tmp_path / f"doomed{k}.log")
        processes.append(scheduler)
        deadline = time.monotonic() + 60
        while not scheduler_file.exists():
            assert time.monotonic() < deadline and scheduler.poll() is None, (tmp_path / f"doomed{k}.log").read_text()
            time.sleep(0.2)
        processes.append(_start([DASK, "worker", "--scheduler-file", str(scheduler_file), "--nthreads", "1",
                                 "--memory-limit", "1GiB", "--no-dashboard"], tmp_path / f"doomed{k}-worker.log"))
        with Client(scheduler_file=str(scheduler_file), timeout="30s") as client:
            client.wait_for_workers(1, timeout=60)
            return client.scheduler.address, scheduler

    yield start
    for process in processes:
        _kill(process)


def _kill(process: subprocess.Popen) -> None:
    """SIGKILL the process's session, if it still runs."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def _cli_error_line(capsys, argv: list) -> str:
    """Run the CLI; it must exit with status 2 and print one line on stderr (returned), no traceback."""
    status = main([*(str(a) for a in argv), "--quiet"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2 and len(lines) == 1 and "Traceback" not in err, (status, err)
    return lines[0]


@pytest.mark.slow  # about 85 s: two schedulers started, each lost, with the client's connection timeouts
def test_scheduler_lost_mid_fit_says_resume_and_mid_predict_one_line(doomed_schedulers, tmp_path, capsys,
                                                                       monkeypatch):
    import rfm_dask.app.workflows
    import rfm_dask.rfm_loop

    X, y, _, _ = low_rank_golden(n_train=600, n_test=10, seed=3)
    table = pa.table({**{f"x{j}": X[:, j] for j in range(X.shape[1])}, "y": y})
    pq.write_table(table, tmp_path / "train.parquet", row_group_size=100)
    assert main(["ingest", str(tmp_path / "train.parquet"), str(tmp_path / "train.zarr"), "--target", "y",
                 "--chunk-rows", "200", "--quiet"]) == 0
    model = tmp_path / "model.rfm"
    fit = ["fit", str(tmp_path / "train.zarr"), str(model), "--iters", "2", "--solver", "cg", "--overwrite"]

    address, scheduler = doomed_schedulers()
    save_checkpoint = rfm_dask.rfm_loop.save_checkpoint

    def save_then_lose_the_scheduler(*args, **kwargs):
        save_checkpoint(*args, **kwargs)
        _kill(scheduler)

    monkeypatch.setattr(rfm_dask.rfm_loop, "save_checkpoint", save_then_lose_the_scheduler)
    line = _cli_error_line(capsys, [*fit, "--scheduler", address])
    assert f"lost the connection to the Dask scheduler at {address}" in line and "--resume" in line, line
    assert Path(f"{model}.ckpt").exists() and not model.exists()
    monkeypatch.undo()
    assert main([*fit, "--resume", "--quiet"]) == 0  # on a local cluster, from the checkpoint
    capsys.readouterr()
    assert not Path(f"{model}.ckpt").exists() and rfm_dask.load(model).history_[-1]["iteration"] == 2

    address, scheduler = doomed_schedulers()
    predicted_batches = rfm_dask.app.workflows._predicted_batches

    def lose_the_scheduler_after_a_batch(*args):
        for k, item in enumerate(predicted_batches(*args)):
            if k == 1:
                _kill(scheduler)
            yield item

    monkeypatch.setattr(rfm_dask.app.workflows, "_predicted_batches", lose_the_scheduler_after_a_batch)
    out = tmp_path / "p.parquet"
    line = _cli_error_line(capsys, ["predict", model, tmp_path / "train.parquet", out, "--batch-rows", "100",
                                    "--scheduler", address])
    assert f"lost the connection to the Dask scheduler at {address}; nothing was written" in line, line
    assert not out.exists()


def test_cluster_failures_are_told_in_one_line():
    """The messages of ``_cluster_failure`` for a worker that kept dying and a lost scheduler."""
    import argparse
    from concurrent.futures import CancelledError

    from distributed import KilledWorker

    from rfm_dask.app.cli import _cluster_failure

    class Worker:
        address, memory_limit = "tcp://127.0.0.1:1", 150 * 2**20

    fit = argparse.Namespace(command="fit", scheduler="tcp://h:1", checkpoint=None, model="/nowhere/m.rfm")
    predict = argparse.Namespace(command="predict", scheduler=None)
    killed = KilledWorker("agop_sums-0123456789abcdef0123456789abcdef", Worker(), 3)
    assert "running 'agop_sums' (4 tries), most likely of their memory limit (150.00 MiB per worker)" in \
        _cluster_failure(fit, killed, None)
    assert "at tcp://h:1 before the first iteration was complete" in _cluster_failure(fit, CancelledError(), None)
    assert "nothing was written" in _cluster_failure(predict, CancelledError(), None)
    assert _cluster_failure(fit, ValueError("x"), None) is None
    assert _cluster_failure(fit, OSError("disk full"), None) is None  # an OSError is the cluster's only when the
    # client has lost its scheduler
