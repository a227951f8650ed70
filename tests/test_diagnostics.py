"""PeakWorkerMemory: the one memory sampler of the tests and benchmarks (workers' and this process's peak RSS)."""

from __future__ import annotations

import time

import psutil

from pipelines.diagnostics import PeakWorkerMemory


def test_samples_workers_and_this_process(client):
    with PeakWorkerMemory(client, interval=0.05) as memory:
        time.sleep(0.3)
    assert memory.samples >= 3 and memory.failures == 0
    assert set(memory.per_worker) == set(client.scheduler_info()["workers"])
    assert memory.peak == max(memory.per_worker.values()) > 0
    assert 0 < memory.local_peak <= psutil.Process().memory_info().rss * 2


def test_without_a_client_only_this_process():
    with PeakWorkerMemory(None, interval=0.05) as memory:
        time.sleep(0.15)
    assert memory.per_worker == {} and memory.peak == 0 and memory.local_peak > 0 and memory.samples >= 2


def test_a_failed_round_is_counted_and_sampling_goes_on(client, monkeypatch):
    calls = []

    def flaky_run(function):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("worker restarting")
        return {"tcp://w:1": function()}

    monkeypatch.setattr(client, "run", flaky_run)
    with PeakWorkerMemory(client, interval=0.05) as memory:
        time.sleep(0.3)
    assert memory.failures == 1 and memory.last_error == "OSError: worker restarting"
    assert memory.samples == len(calls) - 1 and memory.per_worker["tcp://w:1"] > 0
