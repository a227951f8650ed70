"""Thin cluster fixtures of our own (distributed.utils_test is not a stable API)."""

from __future__ import annotations

import faulthandler
import os

import dask
import pytest
from distributed import Client, LocalCluster

from rfm_dask.parallel.cluster import close_local_client


@pytest.fixture(scope="session")
def client():
    """An in-process LocalCluster: one worker, two threads."""
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        with Client(cluster, set_as_default=False) as c:
            yield c


@pytest.fixture(scope="module")
def process_client():
    """A LocalCluster of two worker processes, one thread each."""
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster, set_as_default=False) as c:
            yield c


@pytest.fixture(scope="session", autouse=True)
def _close_shared_local_cluster():
    """Close the estimators' shared in-process cluster while pytest's output streams are still open."""
    yield
    close_local_client()


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    config.addinivalue_line("markers", "shipped_device: leaves rfm.device at its shipped default (no forced cpu)")
    # A crash in native code prints the crashing thread's stack only. pytest's default prints every thread, and the
    # session cluster's idle threads then fill the tail of a CI log and hide the one that crashed. (Output capture is
    # suspended while plugins configure, so descriptor 2 is the terminal's stderr here.)
    faulthandler.enable(file=os.dup(2), all_threads=False)


@pytest.fixture(autouse=True)
def _cpu_blocks_outside_gpu_tests(request, monkeypatch):
    """Keep row blocks in NumPy (``rfm.device: cpu``) in every test not marked ``gpu`` or ``shipped_device``, also
    in the subprocesses a test starts: on a GPU machine "auto" would move the CPU suite's fits to the device."""
    if request.node.get_closest_marker("gpu") or request.node.get_closest_marker("shipped_device"):
        yield
        return
    monkeypatch.setenv("DASK_RFM__DEVICE", "cpu")
    with dask.config.set({"rfm.device": "cpu"}):
        yield
