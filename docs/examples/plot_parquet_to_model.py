"""
Parquet to model, and raw columns from Python
=============================================

Raw columns (numbers with nulls, categories, timestamps) go through the ingest encoding, either streamed from
Parquet into a Zarr store, or in memory through the scikit-learn transformer
:class:`rfm_dask.io.TableEncoder`. A model fitted on the store predicts on a raw pandas DataFrame.
"""

import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.pipeline import make_pipeline

from rfm_dask import RFMRegressor
from rfm_dask.io import TableEncoder, ingest
from rfm_dask.app.workflows import fit_store


def trips(n: int, seed: int) -> pd.DataFrame:
    """Taxi-like trips: the fare depends on the distance, the hour and the zone."""
    rng = np.random.default_rng(seed)
    distance = rng.gamma(2.0, 2.0, n)
    zone = rng.choice(["airport", "centre", "suburb"], n)
    start = pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 60 * 24 * 30, n), unit="min")
    fare = 3 + 2 * distance + 8 * (zone == "airport") + 4 * (start.hour >= 22) + rng.normal(0, 0.5, n)
    tip = np.where(rng.random(n) < 0.2, np.nan, rng.gamma(1.0, 1.0, n))  # nulls: imputed, with an indicator
    return pd.DataFrame({"trip_id": np.arange(n), "distance": distance, "zone": zone, "start": start,
                         "tip": tip, "fare": fare})


train, test = trips(1200, 0), trips(300, 1)
workdir = Path(tempfile.mkdtemp())
train.to_parquet(workdir / "train.parquet", row_group_size=256)

# %%
# Ingest the Parquet file into a Zarr store (two streaming passes) and fit on the store.
report = ingest(workdir / "train.parquet", workdir / "train.zarr", target="fare", id_column="trip_id")
print(report.n_rows, "rows,", report.n_features, "features:", report.feature_names)
model = fit_store(workdir / "train.zarr", iters=2, solver="direct", bandwidth=5.0, random_state=0)

# %%
# The model recorded the encoding, so it predicts on raw columns: a DataFrame with the original columns, in any
# order (the target and the id column are ignored).
pred = model.predict(test)
print(f"test R^2 from raw columns: {model.score(test, test['fare']):.3f}")

# %%
# The same encoding as a transformer in a scikit-learn Pipeline, fitted in memory.
pipe = make_pipeline(TableEncoder(exclude=["trip_id", "fare"]),
                     RFMRegressor(iters=2, solver="direct", bandwidth=5.0, random_state=0))
pipe.fit(train, train["fare"])
print("pipeline features:", list(pipe[:-1].get_feature_names_out()))
print(f"pipeline test R^2: {pipe.score(test, test['fare']):.3f}")

fig, ax = plt.subplots(figsize=(4.5, 4), layout="constrained")
ax.scatter(test["fare"], pred, s=6, alpha=0.6)
ax.axline((10, 10), slope=1, color="C3", linewidth=1)
ax.set_xlabel("true fare")
ax.set_ylabel("predicted from raw columns")
plt.show()
