"""Smoke test of the phenomena pipeline (pipelines/phenomena) on a tiny config: every task kind runs end to end and
writes the table, the JSON and the plots; the fits agree with each other where they must."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from pipelines.phenomena import criteria, run  # noqa: E402

TINY = """
[run]
threads = 2
[tasks.low_rank]
n_train = 200
n_test = 200
n_val = 80
d = 8
seed = 0
[tasks.low_rank.model]
bandwidth = 10.0
iters = 1
solver = "direct"
[tasks.grokking]
p = 7
train_fraction = 0.5
val_fraction = 0.2
seed = 0
train_curve = true
[tasks.grokking.model]
kernel = "gaussian"
bandwidth = 2.5
reg = 1e-6
iters = 1
solver = "direct"
[tasks.grokking.agop]
agop_power = 0.5
centre_agop = true
[tasks.grokking.selection]
patience = "none"
[tasks.parity]
d = 10
k = 2
n_train = 200
n_val = 80
n_test = 100
seed = 0
[tasks.parity.model]
bandwidth = 5.0
iters = 1
solver = "direct"
[tasks.hurt]
d = 5
n_features = 100
omega = 2.0
noise = 0.0
n_train = 200
n_val = 80
n_test = 100
seed = 0
[tasks.hurt.model]
bandwidth = 1.0
iters = 1
solver = "direct"
[tasks.emergence]
d = 10
k = 2
background_prob = 0.5
noise = 0.2
n_train = 200
n_val = 80
n_test = 100
seed = 0
[tasks.emergence.model]
bandwidth = 5.0
iters = 1
solver = "direct"
[tasks.patches]
patches = 3
q = 4
classes = 2
noise = 0.3
n_train = 150
n_val = 50
n_test = 100
seed = 0
[tasks.patches.model]
bandwidth = 3.0
iters = 1
solver = "direct"
[tasks.disabled]
kind = "parity"
enabled = false
"""


def _reproduced(task: dict, rec: dict) -> bool:
    """The verdict restated from criteria.TEXT and the recorded numbers (grokking: the run's own train/test curves)."""
    lazy, selected, evidence = task["lazy"]["test"], rec["selected"]["test"], rec["last"]["evidence"]
    kind = task["kind"]
    if kind == "low_rank":
        return selected["mse"] <= criteria.LOW_RANK_RATIO * lazy["mse"] and evidence["top3_is_0_1_5"]
    if kind == "parity":
        return (selected["accuracy"] >= criteria.PARITY_RFM and lazy["accuracy"] <= criteria.PARITY_LAZY
                and evidence["top_k_is_support"])
    if kind == "hurt":
        curve = rec["test_curve"]
        return curve[-1]["test_mse"] > curve[0]["test_mse"] and rec["selected"]["best_iter"] == 0
    if kind in ("emergence", "patches"):
        return (selected["accuracy"] >= lazy["accuracy"] + criteria.EMERGENCE_GAIN
                and evidence["relevant_subspace_share"] >= criteria.EMERGENCE_SHARE)
    acc = [h["test_accuracy"] for h in rec["test_curve"]]
    plateau = next((t for t, a in enumerate(acc) if a > criteria.GROK_LOW), len(acc))
    return (plateau >= criteria.GROK_PLATEAU and max(acc) > criteria.GROK_HIGH
            and all(h["train_accuracy"] == 1.0 for h in rec.get("train_curve") or [])
            and task["lazy"]["train"].get("accuracy", 1.0) == 1.0
            and evidence.get("block_circulant_r2", float("nan")) >= criteria.GROK_CIRCULANT
            and evidence.get("off_diagonal_share", float("nan")) >= criteria.GROK_OFF_DIAGONAL)


def test_phenomena_pipeline_tiny(tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    out = tmp_path / "out"
    start = time.perf_counter()
    assert run.main(["--config", str(config), "--out", str(out)]) == 0
    seconds = time.perf_counter() - start
    print(f"phenomena pipeline, tiny config: {seconds:.1f} s")

    results = json.loads((out / "results.json").read_text())
    names = [r["task"] for r in results["tasks"]]
    assert names == ["low_rank", "grokking", "parity", "hurt", "emergence", "patches"]  # the disabled task is left out
    table = (out / "results.md").read_text()
    for name in names:
        assert f"| {name} |" in table
        for suffix in ("curves", "M"):
            png = out / f"{name}_{suffix}.png"
            assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
        for rule in ("agop", "fact"):
            assert (out / "matrices" / f"{name}_{rule}_last.npy").exists()
    assert not list(out.glob(".*tmp*"))  # atomic writes leave no temporaries behind

    for r in results["tasks"]:
        m = r["metric"]
        for rule in ("agop", "fact"):
            rec = r[rule]
            assert rec["params"]["feature_update"] == rule
            assert len(rec["test_curve"]) == rec["params"]["iters"] + 1
            # iteration 0 of every fit is the lazy kernel, and the reported model is the curve's model at its iteration
            assert rec["test_curve"][0][f"test_{m}"] == pytest.approx(r["lazy"]["test"][m], rel=1e-3, abs=1e-6)
            assert rec["selected"]["matches_curve"]
            assert rec["verdict"]["reproduced"] is _reproduced(r, rec)
    grok = results["tasks"][1]
    for rule in ("agop", "fact"):  # near ridgeless: the training pairs are interpolated at every iteration
        assert all(h["train_accuracy"] == 1.0 for h in grok[rule]["train_curve"])
        assert "patience_2_would_stop_at" in grok[rule]["selected"]
    M = np.load(out / "matrices" / "grokking_agop_last.npy")
    assert M.shape == (14, 14)


def test_only_and_unknown_task(tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    cfg = run.load_config(config)
    assert list(run.select_tasks(cfg, "parity")) == ["parity", "disabled"]  # by kind: disabled tasks may be named
    assert list(run.select_tasks(cfg, "grokking,hurt")) == ["grokking", "hurt"]
    with pytest.raises(SystemExit, match=r"--only: no task named \['nope'\]") as exit_info:
        run.select_tasks(cfg, "nope")
    assert exit_info.value.code not in (0, None)  # a message: exit status 1
