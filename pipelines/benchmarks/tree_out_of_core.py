"""Worker memory of the tree of leaf RFMs on a Zarr store larger than a worker's memory, phase by phase.

Writes (once) a store of the low-rank projection task (``datasets.low_rank_projection_lazy``), fits
``RFMRegressor(leaf_size, split_samples, reg=1e-3, bandwidth=20, iters=1)`` on a LocalCluster of worker processes
with one thread and a memory limit each, samples every worker's RSS (``diagnostics.PeakWorkerMemory``) and splits the
timeline into phases at the fit's log lines: the split levels (up to "tree: N leaves"), the validation rows' routing
and the leaf-ordered stores (up to "tree: the rows of N leaves gathered"), and the leaf fits.

    python -m pipelines.benchmarks.tree_out_of_core [--rows 420000] [--features 512] [--chunk-rows 2048]
        [--memory-mib 600] [--workers 2] [--leaf-size 2000] [--split-samples 1000] [--store PATH] [--out DIR]

Writes DIR/results.json (default out/benchmarks/tree_out_of_core).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path

import dask
from distributed import Client, LocalCluster

from pipelines.datasets import low_rank_projection_lazy
from pipelines.diagnostics import PeakWorkerMemory
from rfm_dask import RFMRegressor, open_zarr, write_zarr
from rfm_dask.files.atomic import write_text

MIB = 1 << 20
#: The fit's log lines that end a phase, in order (the last phase ends with the fit).
PHASE_ENDS = (("split levels", "tree: %d leaves of %s rows"),
              ("routing and leaf stores", "tree: the rows of %d leaves gathered"))


class _Marks(logging.Handler):
    """Records the time of each log record of the ``rfm_dask`` logger by its message template."""

    def __init__(self) -> None:
        super().__init__()
        self.times: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        self.times.setdefault(str(record.msg), record.created)


def phase_peaks(timeline: list[tuple[float, dict[str, int]]], bounds: list[tuple[str, float]]) -> dict[str, dict]:
    """Peak RSS in MiB per phase and worker: ``bounds`` lists (phase, end time) in order; a sample belongs to the
    first phase that ends after it."""
    peaks: dict[str, dict] = {name: {} for name, _ in bounds}
    for t, rss in timeline:
        name = next((name for name, end in bounds if t <= end), bounds[-1][0])
        for worker, value in rss.items():
            peaks[name][worker] = max(peaks[name].get(worker, 0.0), value / MIB)
    return peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=420_000)
    parser.add_argument("--features", type=int, default=512)
    parser.add_argument("--chunk-rows", type=int, default=2048)
    parser.add_argument("--memory-mib", type=int, default=600)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--leaf-size", type=int, default=2000)
    parser.add_argument("--split-samples", type=int, default=1000)
    parser.add_argument("--store", type=Path, default=None, help="the Zarr store (written if missing)")
    parser.add_argument("--out", type=Path, default=Path("out/benchmarks/tree_out_of_core"))
    args = parser.parse_args()
    store = args.store or args.out / f"data-{args.rows}x{args.features}.zarr"
    if not store.exists():
        X, y = low_rank_projection_lazy(args.rows, args.features, args.chunk_rows)
        with dask.config.set(scheduler="threads"):
            write_zarr(store, X, y, chunk_rows=args.chunk_rows)
    data = open_zarr(store)
    marks = _Marks()
    logging.getLogger("rfm_dask").addHandler(marks)
    logging.getLogger("rfm_dask").setLevel(logging.INFO)
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                      memory_limit=args.memory_mib * MIB, dashboard_address=None) as cluster, \
            Client(cluster, set_as_default=False) as client:
        model = RFMRegressor(client=client, leaf_size=args.leaf_size, split_samples=args.split_samples, reg=1e-3,
                             bandwidth=20.0, iters=1, patience=None, random_state=0)
        load = os.getloadavg()
        start = time.time()
        with PeakWorkerMemory(client, interval=0.1) as memory:
            model.fit(data.X, data.y)
        seconds = time.time() - start
        logs = "\n".join(line for entries in client.get_worker_logs().values() for _, line in entries)
    bounds = [(name, marks.times.get(template, float("inf"))) for name, template in PHASE_ENDS]
    peaks = phase_peaks(memory.timeline, bounds + [("leaf fits", float("inf"))])
    result = {
        "rows": args.rows, "features": args.features, "chunk_rows": args.chunk_rows, "data_MiB": data.X.nbytes / MIB,
        "workers": args.workers, "memory_limit_MiB": args.memory_mib, "leaf_size": args.leaf_size,
        "split_samples": args.split_samples, "n_leaves": int(model.n_leaves_),
        "leaf_rows": [int(model.leaf_sizes_.min()), int(model.leaf_sizes_.max())],
        "phase_seconds": {name: end - start for name, end in bounds},
        "peak_rss_MiB": {name: {w: round(v) for w, v in per.items()} for name, per in peaks.items()},
        "peak_MiB": memory.peak / MIB, "samples": memory.samples, "fit_seconds": seconds,
        "paused": "Pausing worker" in logs, "pauses": logs.count("Pausing worker"),
        "load_average_at_start": load, "machine": platform.platform(),
    }
    write_text(args.out / "results.json", json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
