"""The benchmark scripts run end to end on tiny sizes (their numbers are measured by hand, not asserted here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.benchmarks import gpu, scaling

REPO = Path(__file__).resolve().parents[1]


def test_scaling_benchmark_layers_configs_and_applies_rfm_settings(tmp_path):
    extra = tmp_path / "extra.toml"
    extra.write_text('[cluster]\nmemory_limit = "2GiB"\n[rfm_config]\nkernel-cache-fraction = 0.0\n')
    argv = [
        "--config", str(REPO / "pipelines/benchmarks/scaling.toml"), "--config", str(extra),
        "--sizes", "1500", "--no-xrfm", "--no-flights", "--out", str(tmp_path / "out"),
    ]
    config = scaling.resolve_config(scaling.parse_args(argv))
    assert config["cluster"]["memory_limit"] == "2GiB" and config["rfm_dask"]["solver"] == "nystrom"
    assert config["rfm_config"] == {"kernel-cache-fraction": 0.0}
    assert scaling.main(argv) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    (row,) = results["rows"]
    assert row["rfm_dask"]["status"] == "ok" and row["rfm_dask"]["test_r2"] > 0.5
    assert (tmp_path / "out" / "results.md").exists()


def test_gpu_benchmark_refuses_without_a_gpu(capsys):
    if gpu.missing_requirement(gpu.load_config(None)) is None:
        pytest.skip("this machine has a GPU")
    assert gpu.main(["--config", str(REPO / "pipelines/benchmarks/gpu.toml")]) == 2
    assert "gpu benchmark: needs CuPy" in capsys.readouterr().err
