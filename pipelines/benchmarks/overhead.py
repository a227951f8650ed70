"""Dask overhead per CG iteration: how much of a distributed pass is not spent computing tiles.

One Nystrom CG iteration is one pass sum_b K_b^T (K_b w) over the row blocks. For each pass this script records the
wall time and, from the scheduler's task stream, the compute time of every task; the overhead is the share of
worker-thread time not spent in task compute:

    overhead = 1 - sum(task compute seconds) / (wall seconds * worker threads)

It counts scheduling, serialisation, transfers, the client-side reduction and load imbalance.

    python -m pipelines.benchmarks.overhead [--rows 100000 1000000] [--centres 2000] [--passes 5]

Writes out/benchmarks/overhead/results.json and results.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
from distributed import Client, LocalCluster, get_task_stream

from pipelines.datasets import low_rank_projection
from rfm_dask import config
from rfm_dask.core import kernels as kn
from rfm_dask.files.atomic import write_text
from rfm_dask.parallel.cluster import total_threads
from rfm_dask.parallel.distributed_operator import KernelPasses
from rfm_dask.parallel.row_blocks import block_rows, put_rows, take_rows


def measure(client: Client, n: int, m: int, passes: int) -> dict:
    """Median wall time, task compute time and overhead share of ``passes`` gram passes over n rows."""
    X, _ = low_rank_projection(n, seed=0)
    rows = put_rows(client, X, block_rows(n, X.shape[1]))
    centres = take_rows(client, rows, np.sort(np.random.default_rng(0).choice(n, m, replace=False)))
    kp = KernelPasses(client, centres, np.eye(X.shape[1]), X.mean(axis=0), kn.KernelSpec())
    W = np.random.default_rng(1).normal(size=(m, 1))
    kp.gram_matvec(rows, W)  # warm-up: centres transformed, caches filled
    threads = total_threads(client)
    walls, computes, overheads = [], [], []
    for _ in range(passes):
        with get_task_stream(client) as stream:
            start = time.perf_counter()
            kp.gram_matvec(rows, W)
            wall = time.perf_counter() - start
        compute = sum(
            part["stop"] - part["start"]
            for task in stream.data
            for part in task["startstops"]
            if part["action"] == "compute"
        )
        walls.append(wall)
        computes.append(compute)
        overheads.append(1.0 - compute / (wall * threads))
    return {
        "rows": n,
        "centres": m,
        "blocks": len(rows.futures),
        "threads": threads,
        "wall_s": statistics.median(walls),
        "compute_s": statistics.median(computes),
        "overhead": statistics.median(overheads),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--centres", type=int, default=2000)
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("out/benchmarks/overhead"))
    args = parser.parse_args(argv)
    with LocalCluster(
        n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as cluster, Client(cluster) as client:
        results = [measure(client, n, args.centres, args.passes) for n in args.rows]
    lines = ["| rows | centres | blocks | threads | wall s / pass | task compute s | overhead |", "|" + "---|" * 7]
    for r in results:
        lines.append(
            f"| {r['rows']} | {r['centres']} | {r['blocks']} | {r['threads']} | {r['wall_s']:.3f} "
            f"| {r['compute_s']:.3f} | {100 * r['overhead']:.1f}% |"
        )
    table = "\n".join(lines)
    print(f"block-bytes {config.get('block-bytes')}, median of {args.passes} passes")
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    write_text(args.out / "results.json", json.dumps(results, indent=2))
    write_text(args.out / "results.md", table + "\n")


if __name__ == "__main__":
    main()
