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
from rfm_dask import RFMRegressor
from rfm_dask.cli import main
from rfm_dask.datasets import low_rank_golden

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
