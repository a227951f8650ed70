"""
Reading M: importances and directions
=====================================

The target depends on two directions, ``x0 + x1`` and ``x2 - x3``, of eight inputs. The learned ``M`` shows them:
large diagonal entries for x0..x3, positive ``M_01`` and negative ``M_23``, and two leading eigenvectors spanning
those directions.
"""

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from rfm_dask import RFMRegressor
from rfm_dask.app.inspection import draw_inspection, inspect_model

rng = np.random.default_rng(1)
X = pd.DataFrame(rng.normal(size=(1500, 8)), columns=[f"x{i}" for i in range(8)])
y = np.tanh(X["x0"] + X["x1"]) + 0.5 * (X["x2"] - X["x3"]) ** 2

model = RFMRegressor(iters=4, bandwidth=5.0, solver="direct", random_state=0).fit(X, y)

# %%
# The report ``rfm-dask inspect`` prints: importances by name and the top eigen-directions with their loadings.
report = inspect_model(model, top=4, directions=2)
for item in report["importances"]:
    print(f"{item['feature']:>4}  {item['importance']:.3f}")
for k, direction in enumerate(report["eigen_directions"], 1):
    loadings = ", ".join(f"{w['feature']} {w['weight']:+.2f}" for w in direction["loadings"])
    print(f"direction {k} (eigenvalue {direction['eigenvalue']:.3f}): {loadings}")

# %%
# The picture ``rfm-dask inspect --plot`` writes, drawn on a figure of our own.
fig = plt.figure(figsize=(15, 5), layout="constrained")
draw_inspection(fig, model)
plt.show()
