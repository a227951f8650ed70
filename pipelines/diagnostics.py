"""Cluster diagnostics for tests and benchmarks: peak worker memory sampled during a piece of work."""

from __future__ import annotations

import threading
import time

from distributed import Client


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


class PeakWorkerMemory:
    """Context manager sampling every worker's resident memory (and this process's) every ``interval`` seconds.

    After the block: ``peak`` (bytes, max over workers and samples; 0 without workers), ``per_worker`` (address ->
    bytes), ``local_peak`` (bytes, this process), ``samples`` (how many rounds were taken), ``failures`` and
    ``last_error`` (rounds in which a worker could not be asked, e.g. while it restarted), ``timeline`` (one
    ``(time.time(), {address: bytes})`` per round in which the workers answered). With ``client=None`` only this
    process is sampled.

    Kept rather than ``distributed.diagnostics.MemorySampler``, which does worse here: it records the cluster-wide
    sum over workers (tests and benchmarks need each worker's peak), reads the memory the workers last reported in
    their heartbeats (every 0.5 s or more, so a short peak between two heartbeats is missed whatever the
    interval), and needs a cluster (a benchmark's peer may run in this process, without one).
    """

    def __init__(self, client: Client | None, interval: float = 0.2) -> None:
        self.client = client
        self.interval = float(interval)
        self.per_worker: dict[str, int] = {}
        self.local_peak = 0
        self.samples = 0
        self.failures = 0
        self.last_error: str | None = None
        self.timeline: list[tuple[float, dict[str, int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-memory", daemon=True)

    @property
    def peak(self) -> int:
        return max(self.per_worker.values(), default=0)

    def _sample(self) -> None:
        self.local_peak = max(self.local_peak, _rss())
        if self.client is not None:
            try:
                rss = self.client.run(_rss)
            except Exception as exc:  # a worker restarting between samples: count it, keep sampling
                self.failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                return
            for address, value in rss.items():
                self.per_worker[address] = max(self.per_worker.get(address, 0), value)
            self.timeline.append((time.time(), rss))
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> "PeakWorkerMemory":
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
