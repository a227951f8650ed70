"""Cluster diagnostics for tests and benchmarks: peak worker memory sampled during a piece of work."""

from __future__ import annotations

import threading

from distributed import Client


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


class PeakWorkerMemory:
    """Context manager sampling every worker's resident memory every ``interval`` seconds.

    After the block: ``peak`` (bytes, max over workers and samples), ``per_worker`` (address -> bytes), and
    ``samples`` (how many rounds were taken).
    """

    def __init__(self, client: Client, interval: float = 0.2) -> None:
        self.client = client
        self.interval = interval
        self.per_worker: dict[str, int] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def peak(self) -> int:
        return max(self.per_worker.values(), default=0)

    def _sample(self) -> None:
        for address, rss in self.client.run(_rss).items():
            self.per_worker[address] = max(self.per_worker.get(address, 0), rss)
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._sample()
            except Exception:  # a worker restarting between samples: keep sampling the others
                pass
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakWorkerMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
