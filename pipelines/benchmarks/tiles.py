"""Tile throughput of the CPU block functions against this machine's float32 GEMM rate.

The tile matvec (distance GEMM, kernel, product with V) does 2 b m d flops of GEMM plus O(b m) elementwise work.
This script times it on one thread (as a Dask task runs it) and reports the effective GFLOP/s (counting the
2 b m d distance flops) and the ratio to a bare float32 GEMM of the same shape: 1.0 would mean the elementwise
work is free; a low ratio means the tile is dominated by elementwise passes.

    python -m pipelines.benchmarks.tiles [--rows 8192] [--centres 4096] [--dims 20 64 128 512] [--repeats 5]

Writes out/benchmarks/tiles/results.json and results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from rfm_dask.core import kernels as kn
from rfm_dask.files.atomic import write_text


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(rows: int, centres: int, d: int, repeats: int, tile: int) -> dict:
    """One configuration: GEMM time, tile-matvec time, gram-matvec time and their ratios."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(rows, d)).astype(np.float32)
    C = rng.normal(size=(centres, d)).astype(np.float32)
    c_sq = kn.sq_norms(np, C)
    V = rng.normal(size=(centres, 1))
    spec = kn.KernelSpec()
    flops = 2.0 * rows * centres * d
    gemm = _median_seconds(lambda: X @ C.T, repeats)
    matvec = _median_seconds(lambda: kn.kernel_matvec(np, X, C, c_sq, V, spec, tile), repeats)
    gram = _median_seconds(lambda: kn.kernel_gram_matvec(np, X, C, c_sq, V, spec, tile), repeats)
    return {
        "rows": rows,
        "centres": centres,
        "d": d,
        "gemm_gflops": flops / gemm / 1e9,
        "matvec_gflops": flops / matvec / 1e9,
        "gram_gflops": flops / gram / 1e9,
        "matvec_vs_gemm": gemm / matvec,
        "gram_vs_gemm": gemm / gram,
        "matvec_ns_per_entry": matvec / (rows * centres) * 1e9,
    }


def to_markdown(results: list[dict]) -> str:
    head = "| d | GEMM GFLOP/s | tile matvec GFLOP/s | ratio | gram matvec GFLOP/s | ratio | ns per kernel entry |"
    lines = [head, "|" + "---|" * 7]
    for r in results:
        lines.append(
            f"| {r['d']} | {r['gemm_gflops']:.1f} | {r['matvec_gflops']:.1f} | {r['matvec_vs_gemm']:.2f} "
            f"| {r['gram_gflops']:.1f} | {r['gram_vs_gemm']:.2f} | {r['matvec_ns_per_entry']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8192)
    parser.add_argument("--centres", type=int, default=4096)
    parser.add_argument("--dims", type=int, nargs="+", default=[20, 64, 128, 512])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tile", type=int, default=kn.DEFAULT_TILE)
    parser.add_argument("--out", type=Path, default=Path("out/benchmarks/tiles"))
    args = parser.parse_args(argv)
    with threadpool_limits(1, user_api="blas"):
        results = [measure(args.rows, args.centres, d, args.repeats, args.tile) for d in args.dims]
    table = to_markdown(results)
    print(f"one thread, {args.rows} rows x {args.centres} centres, float32 tiles, median of {args.repeats}")
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.platform(), "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}
    write_text(args.out / "results.json", json.dumps({"meta": meta, "results": results}, indent=2))
    write_text(args.out / "results.md", table + "\n")


if __name__ == "__main__":
    main()
