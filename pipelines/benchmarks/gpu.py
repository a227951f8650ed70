"""GPU benchmark: the fused kernel tile against the chip's GEMM rates, and rfm_dask on dask-cuda against xRFM on CUDA.

Run from the repository root on a machine with a CUDA GPU (CuPy, dask-cuda; torch with CUDA and xRFM for the peer)::

    .venv/bin/python -m pipelines.benchmarks.gpu --config pipelines/benchmarks/gpu.toml [--sizes 100000] [--no-xrfm]

1. GEMM rates: median time of a float32 (n x n) @ (n x n) CuPy product, in FP32 and in TF32 (tensor cores).
2. Tiles: for each d, K(X, C) @ V on one large tile (rows x centres pairs, Laplace kernel) by the fused CUDA tile
   (``rfm_dask.core.cuda_tiles``), by the unfused chain (``kernels.kernel_matvec`` with the spec's ``gpu_fused`` off: distance
   GEMM, near-pair fix-up, kernel, product with V, in row tiles of ``unfused_tile`` entries) and by that chain with
   TF32 GEMMs (``rfm.gpu.precision: tf32``). Effective TFLOP/s = 2 b m d / seconds: the distance flops only, as
   ``pipelines/benchmarks/tiles.py`` counts (the kernel evaluation and the product with V are not counted), against
   the FP32 and TF32 GEMM rates; relative error ||f - f64|| / ||f64|| on the first ``check_rows`` rows against the
   same product computed in float64.
3. Fits on the DESIGN section 6 task (``pipelines.datasets.low_rank_projection``), same rows for both peers:
   rfm_dask (``RFMRegressor``, [rfm_dask] settings as in scaling.toml) on a dask-cuda LocalCUDACluster with
   ``rfm.device = "gpu"``, then xRFM (``xrfm.RFM(device="cuda")``, driven as scaling.py drives it on CPU) in this
   process after the cluster is closed; fit seconds (after a small warm-up fit of each), test R^2, their ratio.

Writes ``results.json`` and ``results.md`` to the output directory (atomically, after every part). Without CuPy or
a CUDA device it prints one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import statistics
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import dask
import numpy as np

from pipelines.benchmarks import scaling
from pipelines.benchmarks.scaling import (
    MIB,
    _fmt,
    _json_default,
    _log,
    _peer_cells,
    _size,
    _summarise,
    fit_rfm_dask,
    machine_info,
    r2_score,
    synthetic_case,
    xrfm_settings,
)
from pipelines.toml_values import layered_config
from rfm_dask.files.atomic import write_text
from rfm_dask.parallel import devices

FLOPS_CONVENTION = (
    "effective TFLOP/s = 2 b m d / seconds (the distance flops of a (b, m) tile at d features, as "
    "pipelines/benchmarks/tiles.py counts; the kernel evaluation and the product with V are not counted)"
)

DEFAULTS: dict[str, dict[str, Any]] = {
    "run": {"out_dir": "out/benchmarks/gpu", "repeats": 5},
    "gemm": {"size": 8192},
    "tiles": {
        "enabled": True,
        "rows": 262144,
        "centres": 50000,
        "dims": [20, 64, 100],
        "columns": 1,
        "bandwidth": 10.0,
        "unfused_tile": 2**27,
        "check_rows": 2048,
        "seed": 0,
    },
    # the CPU benchmark's synthetic task (test rows, d, seeds, validation share), at the GPU sizes
    "fits": {
        **{k: v for k, v in scaling.DEFAULTS["run"].items() if k not in ("sizes", "out_dir")},
        "enabled": True,
        "sizes": [100000, 1000000],
        "warmup_rows": 5000,
    },
    "cluster": {"restart_between_fits": False, "memory_sample_s": 0.5},
    "rfm_config": {},  # rfm_dask package settings set around each fit (as in scaling.py)
    # the CPU benchmark's peer settings, with Nystrom fixed and xRFM's GPU solver choice by size
    "rfm_dask": {**scaling.DEFAULTS["rfm_dask"], "solver": "nystrom", "n_centers": 2000},
    "xrfm": {**scaling.DEFAULTS["xrfm"], "method": "eigenpro", "lstsq_max_rows": 50000},
}


# -- configuration ------------------------------------------------------------------------------------------------
def load_config(paths: list[Path] | Path | None) -> dict:
    """DEFAULTS updated with the TOML files at ``paths`` (see ``pipelines.toml_values.layered_config``)."""
    return layered_config(DEFAULTS, paths)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipelines.benchmarks.gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=None, help="TOML config (built-in defaults where omitted)")
    parser.add_argument("--sizes", type=_size, nargs="+", help="override [fits] sizes, e.g. --sizes 100k 1M")
    parser.add_argument("--dims", type=int, nargs="+", help="override [tiles] dims")
    parser.add_argument("--out", type=Path, help="output directory (default [run] out_dir)")
    parser.add_argument("--no-tiles", action="store_true", help="skip the GEMM rates and tile timings")
    parser.add_argument("--no-fits", action="store_true", help="skip the rfm_dask and xRFM fits")
    parser.add_argument("--no-xrfm", action="store_true", help="fit rfm_dask only")
    return parser.parse_args(argv)


def resolve_config(args: argparse.Namespace) -> dict:
    config = load_config(args.config)
    overrides = (
        (args.sizes, "fits", "sizes"),
        (args.dims, "tiles", "dims"),
        (None if args.out is None else str(args.out), "run", "out_dir"),
        (False if args.no_tiles else None, "tiles", "enabled"),
        (False if args.no_fits else None, "fits", "enabled"),
        (False if args.no_xrfm else None, "xrfm", "enabled"),
    )
    for value, table, key in overrides:
        if value is not None:
            config[table][key] = value
    return config


def missing_requirement(config: dict) -> str | None:
    """What this machine lacks for the configured parts (one line), or None."""
    problem = devices.cuda_problem()
    if problem is not None:
        return f"needs CuPy and a CUDA device: {problem}"
    if config["fits"]["enabled"] and importlib.util.find_spec("dask_cuda") is None:
        return "the fits need dask-cuda: pip install -e '.[gpu]' (or pass --no-fits)"
    if config["fits"]["enabled"] and config["xrfm"]["enabled"]:
        if any(importlib.util.find_spec(p) is None for p in ("torch", "xrfm")):
            return "xRFM needs torch and xrfm: pip install -e '.[bench]' with a CUDA build of torch (or --no-xrfm)"
        import torch

        if not torch.cuda.is_available():
            return "xRFM needs torch with CUDA: this torch build sees no GPU (or pass --no-xrfm)"
    return None


# -- GPU timing ---------------------------------------------------------------------------------------------------
def gpu_seconds(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of ``fn`` on the current stream (CUDA events), after one warm-up call."""
    import cupy

    fn()
    cupy.cuda.Device().synchronize()
    times = []
    for _ in range(repeats):
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, end) / 1e3)
    return statistics.median(times)


def gpu_info() -> dict:
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"]
    return {
        "name": name.decode() if isinstance(name, bytes) else str(name),
        "memory_gib": round(props["totalGlobalMem"] / 2**30, 1),
        "compute_capability": cupy.cuda.Device().compute_capability,
        "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
        "cuda_driver": cupy.cuda.runtime.driverGetVersion(),
        "cupy": cupy.__version__,
    }


def gemm_rates(size: int, repeats: int) -> dict:
    """TFLOP/s of a float32 (size x size) @ (size x size) product in FP32 and in TF32 (2 size^3 flops)."""
    import cupy

    from rfm_dask.core.cuda_tiles import tf32_gemms

    rng = np.random.default_rng(0)
    A, B = (cupy.asarray(rng.standard_normal((size, size), dtype=np.float32)) for _ in range(2))
    flops = 2.0 * size**3
    fp32 = flops / gpu_seconds(lambda: A @ B, repeats) / 1e12
    with tf32_gemms():
        tf32 = flops / gpu_seconds(lambda: A @ B, repeats) / 1e12
    return {"size": size, "fp32_tflops": fp32, "tf32_tflops": tf32}


# -- tiles --------------------------------------------------------------------------------------------------------
def tile_variants(X: Any, C: Any, V: Any, spec: Any, tile: int) -> dict[str, Callable[[], Any]]:
    """{name: the product K(X, C) @ V by that route (fused; unfused float32; unfused with TF32 GEMMs)}."""
    import cupy

    from rfm_dask.core import cuda_tiles
    from rfm_dask.core import kernels as kn

    c_sq = kn.sq_norms(cupy, C)

    def unfused(variant: Any) -> Callable[[], Any]:
        return lambda: kn.kernel_matvec(cupy, X, C, c_sq, V, variant, tile)

    return {
        "fused": lambda: cuda_tiles.matvec(X, C, V, spec),
        "unfused": unfused(replace(spec, gpu_fused=False)),
        "unfused_tf32": unfused(replace(spec, gpu_precision="tf32")),
    }


def float64_reference(X: Any, C: Any, V: Any, spec: Any, tile: int) -> Any:
    """K(X, C) @ V with X, C in float64 (the tiled path; float64 data never takes the fused route)."""
    import cupy

    from rfm_dask.core import kernels as kn

    X64, C64 = X.astype(cupy.float64), C.astype(cupy.float64)
    return kn.kernel_matvec(cupy, X64, C64, kn.sq_norms(cupy, C64), V, spec, tile)


def measure_tile(d: int, cfg: dict, repeats: int, rates: dict) -> dict:
    """One d: seconds, effective TFLOP/s, ratios to the GEMM rates and relative error of every variant."""
    import cupy

    from rfm_dask.core import kernels as kn

    rng = np.random.default_rng(int(cfg["seed"]))
    b, m, tile, check = int(cfg["rows"]), int(cfg["centres"]), int(cfg["unfused_tile"]), int(cfg["check_rows"])
    X = cupy.asarray(rng.standard_normal((b, d), dtype=np.float32))
    C = cupy.asarray(rng.standard_normal((m, d), dtype=np.float32))
    V = cupy.asarray(rng.standard_normal((m, int(cfg["columns"]))))
    spec = kn.KernelSpec("laplace", float(cfg["bandwidth"]))
    reference = float64_reference(X[:check], C, V, spec, tile)
    row: dict[str, Any] = {"d": d, "rows": b, "centres": m, "columns": int(cfg["columns"])}
    for name, product in tile_variants(X, C, V, spec, tile).items():
        seconds = gpu_seconds(product, repeats)
        error = cupy.linalg.norm(product()[:check] - reference) / cupy.linalg.norm(reference)
        tflops = 2.0 * b * m * d / seconds / 1e12
        row[name] = {
            "seconds": seconds,
            "tflops": tflops,
            "vs_fp32_gemm": tflops / rates["fp32_tflops"],
            "vs_tf32_gemm": tflops / rates["tf32_tflops"],
            "relative_error": float(error),
        }
        _log(f"  d={d} {name}: {seconds * 1e3:.1f} ms, {tflops:.1f} TFLOP/s, relative error {float(error):.1e}")
    return row


def release_gpu_memory() -> None:
    """Hand CuPy's cached device memory back to the driver (for the next part, or the peer's fit)."""
    import cupy

    cupy.get_default_memory_pool().free_all_blocks()


def run_tiles(config: dict) -> dict:
    repeats = int(config["run"]["repeats"])
    _log(f"GEMM rates: float32 {config['gemm']['size']}^2 products, median of {repeats}")
    rates = gemm_rates(int(config["gemm"]["size"]), repeats)
    _log(f"  FP32 {rates['fp32_tflops']:.1f} TFLOP/s, TF32 {rates['tf32_tflops']:.1f} TFLOP/s")
    rows = [measure_tile(int(d), config["tiles"], repeats, rates) for d in config["tiles"]["dims"]]
    release_gpu_memory()
    return {"gemm": rates, "tiles": rows}


# -- fits ---------------------------------------------------------------------------------------------------------
def xrfm_method(n_fit: int, cfg: dict) -> str:
    """"lstsq" (dense solve) up to ``lstsq_max_rows`` fit rows, else the configured method (EigenPro)."""
    return "lstsq" if n_fit <= int(cfg["lstsq_max_rows"]) else str(cfg["method"])


def fit_xrfm_cuda(data: tuple, config: dict) -> dict:
    """One xRFM fit on the GPU in this process, as ``scaling.fit_xrfm`` on CPU: wall time, test R^2, peak GPU MiB."""
    import torch
    from xrfm import RFM

    X_fit, y_fit, X_val, y_val, X_test, y_test = data
    as_x = lambda A: torch.from_numpy(np.ascontiguousarray(A, dtype=np.float32))  # noqa: E731
    as_y = lambda v: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32).reshape(-1, 1))  # noqa: E731
    init, fit = xrfm_settings(config)
    init["device"], fit["method"] = "cuda", xrfm_method(X_fit.shape[0], config["xrfm"])
    torch.manual_seed(0)
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.synchronize()
    start = time.perf_counter()
    model = RFM(**init)
    model.fit((as_x(X_fit), as_y(y_fit)), (as_x(X_val), as_y(y_val)), **fit)
    torch.cuda.synchronize()
    fit_seconds = time.perf_counter() - start
    with torch.no_grad():
        pred = model.predict(as_x(X_test))
    pred = pred.cpu().numpy() if hasattr(pred, "cpu") else np.asarray(pred)
    return {
        "fit_seconds": fit_seconds,
        "predict_seconds": None,
        "test_r2": r2_score(y_test, pred),
        "peak_gpu_mib": torch.cuda.max_memory_allocated() / MIB,
        "best_iter": None if model.best_iter is None else int(model.best_iter),
        "method": fit["method"],
    }


def _compile_fused_kernels() -> None:
    """On a worker: compile the fused CUDA tiles, so that no timed fit pays for it."""
    from rfm_dask.core import cuda_tiles

    cuda_tiles.compiled(cuda_tiles.LAPLACE_Q1)


def _repeated(label: str, fit: Callable[[], dict], repeats: int) -> tuple[list[dict], list[str]]:
    """``repeats`` fits (stopping at the first error): (their records, the errors)."""
    fits, errors = [], []
    for r in range(repeats):
        _log(f"{label}: fit {r + 1}/{repeats} ...")
        try:
            fits.append(fit())
            _log(f"  {fits[-1]['fit_seconds']:.1f} s, test R^2 {fits[-1]['test_r2']:.4f}")
        except Exception as exc:  # noqa: BLE001 - record the failure in the table, go on with the other cases
            errors.append(f"{type(exc).__name__}: {exc}")
            _log(f"  failed: {errors[-1]}")
            traceback.print_exc()
            break
    return fits, errors


def rfm_dask_fits(cases: list[dict], config: dict) -> list[dict]:
    """rfm_dask on a LocalCUDACluster (one worker per GPU, blocks on the device), after a warm-up fit."""
    repeats = int(config["fits"]["repeats"])
    with dask.config.set({"rfm.device": "gpu"}):
        client = devices.local_cuda_client()
        try:
            client.run(_compile_fused_kernels)
            fit_rfm_dask(client, warmup_case(config)["data"], config)
            results = []
            for case in cases:
                fit = lambda: fit_rfm_dask(client, case["data"], config)  # noqa: E731
                results.append(_summarise(*_repeated(f"{case['case']}: rfm_dask", fit, repeats), ("peak_worker_mib",)))
            return results
        finally:
            cluster = client.cluster
            client.close()
            cluster.close()


def xrfm_fits(cases: list[dict], config: dict) -> list[dict]:
    """xRFM on the GPU in this process, after a warm-up fit."""
    if not config["xrfm"]["enabled"]:
        return [{"status": "disabled", "reason": "not run (disabled)"} for _ in cases]
    repeats = int(config["fits"]["repeats"])
    fit_xrfm_cuda(warmup_case(config)["data"], config)
    results = []
    for case in cases:
        fits = _repeated(f"{case['case']}: xRFM", lambda: fit_xrfm_cuda(case["data"], config), repeats)
        summary = _summarise(*fits, ("peak_gpu_mib",))
        summary["method"] = xrfm_method(case["data"][0].shape[0], config["xrfm"])
        results.append(summary)
    return results


def warmup_case(config: dict) -> dict:
    return synthetic_case(int(config["fits"]["warmup_rows"]), config["fits"])


def run_fits(config: dict) -> list[dict]:
    cases = [synthetic_case(int(n), config["fits"]) for n in sorted(config["fits"]["sizes"])]
    rfm = rfm_dask_fits(cases, config)
    xrfm = xrfm_fits(cases, config)
    rows = []
    for case, r, x in zip(cases, rfm, xrfm):
        t_r, t_x = r.get("fit_seconds"), x.get("fit_seconds")
        rows.append({
            "case": case["case"],
            "size": case["size"],
            "n_fit": int(case["data"][0].shape[0]),
            "n_test": int(case["data"][4].shape[0]),
            "rfm_dask": r,
            "xrfm": x,
            "speedup_xrfm_over_rfm_dask": t_x / t_r if t_r and t_x else None,
        })
    return rows


# -- reporting ----------------------------------------------------------------------------------------------------
def tiles_table(tiles: list[dict]) -> str:
    head = ["d", "variant", "ms", "effective TFLOP/s", "vs FP32 GEMM", "vs TF32 GEMM", "relative error vs float64"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for row in tiles:
        for name in ("fused", "unfused", "unfused_tf32"):
            v = row[name]
            lines.append(
                f"| {row['d']} | {name} | {v['seconds'] * 1e3:.1f} | {v['tflops']:.2f} | {v['vs_fp32_gemm']:.2f} "
                f"| {v['vs_tf32_gemm']:.3f} | {v['relative_error']:.1e} |"
            )
    return "\n".join(lines)


def fits_table(rows: list[dict]) -> str:
    head = ["size", "rfm_dask fit s", "rfm_dask test R^2", "xRFM fit s", "xRFM test R^2", "xRFM method",
            "speed-up (xRFM s / rfm_dask s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for row in rows:
        r_time, r_r2 = _peer_cells(row["rfm_dask"])
        x_time, x_r2 = _peer_cells(row["xrfm"])
        method = row["xrfm"].get("method", "—")
        speedup = _fmt(row["speedup_xrfm_over_rfm_dask"], ".2f")
        lines.append(f"| {row['size']} | {r_time} | {r_r2} | {x_time} | {x_r2} | {method} | {speedup} |")
    return "\n".join(lines)


def results_markdown(results: dict) -> str:
    gpu, cfg = results["gpu"], results["config"]
    lines = [
        "# GPU: fused kernel tile and fits, rfm_dask vs xRFM",
        "",
        f"- date: {results['date']}",
        f"- command: `{results['command']}`",
        f"- GPU: {gpu['name']} ({gpu['memory_gib']} GiB, compute capability {gpu['compute_capability']}), "
        f"CUDA runtime {gpu['cuda_runtime']}, driver {gpu['cuda_driver']}, CuPy {gpu['cupy']}",
        f"- rfm_dask git commit: {results['machine']['git_commit']}",
    ]
    if "gemm" in results:
        g, t = results["gemm"], cfg["tiles"]
        lines += [
            f"- GEMM rates (float32 {g['size']}^2 @ {g['size']}^2, median of {cfg['run']['repeats']}): "
            f"FP32 {g['fp32_tflops']:.1f} TFLOP/s, TF32 {g['tf32_tflops']:.1f} TFLOP/s",
            f"- tiles: {t['rows']} rows x {t['centres']} centres, V with {t['columns']} column(s), Laplace L = "
            f"{t['bandwidth']}, unfused row tiles of {t['unfused_tile']} entries; {FLOPS_CONVENTION}; relative "
            f"error on the first {t['check_rows']} rows against float64",
            "",
            tiles_table(results["tiles"]),
            "",
        ]
    if "fits" in results:
        f = cfg["fits"]
        params = ", ".join(f"{k}={v!r}" for k, v in scaling.rfm_dask_params(cfg).items())
        lines += [
            f"- fits: `low_rank_projection(n, d={f['d']}, seed={f['train_seed']}, task_seed={f['task_seed']})`, "
            f"{f['test_rows']} test rows; both peers fit on the first {1 - float(f['validation_fraction']):.0%} "
            f"of the n rows; median of {f['repeats']} fit(s) after a warm-up fit of {f['warmup_rows']} rows",
            f"- rfm_dask: `RFMRegressor({params})` on a dask-cuda LocalCUDACluster (one worker per GPU), "
            "rfm.device = gpu",
            "- xRFM: `xrfm.RFM(device='cuda')` with the [xrfm] settings, in the benchmark process after the cluster "
            f"is closed; `method` lstsq up to {cfg['xrfm']['lstsq_max_rows']} fit rows, else {cfg['xrfm']['method']}",
            "",
            fits_table(results["fits"]),
            "",
        ]
    return "\n".join(lines)


def write_outputs(results: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / "results.json", json.dumps(results, indent=2, default=_json_default))
    write_text(out_dir / "results.md", results_markdown(results))


# -- main ---------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    config = resolve_config(parse_args(argv))
    problem = missing_requirement(config)
    if problem is not None:
        print(f"gpu benchmark: {problem}", file=sys.stderr)
        return 2
    import cloudpickle

    # the workers get scaling's functions (and this module's, when it is imported) by value, not by import path
    cloudpickle.register_pickle_by_value(scaling)
    if __name__ != "__main__":
        cloudpickle.register_pickle_by_value(sys.modules[__name__])
    out_dir = Path(config["run"]["out_dir"])
    results: dict[str, Any] = {
        "benchmark": "gpu: fused tile and fits, rfm_dask vs xRFM",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, "-m", "pipelines.benchmarks.gpu", *sys.argv[1:]]),
        "config": config,
        "machine": machine_info(),
        "gpu": gpu_info(),
        "flops_convention": FLOPS_CONVENTION,
    }
    if config["tiles"]["enabled"]:
        results.update(run_tiles(config))
        write_outputs(results, out_dir)
    if config["fits"]["enabled"]:
        results["fits"] = run_fits(config)
    write_outputs(results, out_dir)
    print(results_markdown(results))
    print(f"wrote: {out_dir / 'results.json'}, {out_dir / 'results.md'}")
    failed = any(row[p].get("status") == "error" for row in results.get("fits", []) for p in ("rfm_dask", "xrfm"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
