"""The main job (``make demo``) on a tiny configuration: every CLI step runs and every output is written."""

from __future__ import annotations

import json

from pipelines import demo


def test_demo_end_to_end(tmp_path):
    rows = demo.run(tmp_path, {"train_rows": 600, "test_rows": 300, "iters": 1, "row_group_rows": 256})
    assert [r["model"] for r in rows] == ["RFM", "lazy Laplace (M = I)"]
    assert all(r["r2"] > 0.5 for r in rows), rows
    for name in ("results.md", "metrics.json", "plots/history.png", "plots/arr_delay_feature_matrix.png",
                 "models/arr_delay.rfm", "predictions/arr_delay.parquet", "stores/arr_delay.zarr/zarr.json"):
        assert (tmp_path / name).exists(), name
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["results"] == json.loads(json.dumps(rows))
    assert not list(tmp_path.rglob(".*tmp-*"))
