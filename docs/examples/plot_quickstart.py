"""
Quick start: an RFM against the lazy kernel
===========================================

A target that depends on 3 of 10 inputs. The lazy Laplace kernel (iteration 0, ``M = I``) weighs all inputs
alike; the RFM learns ``M`` and with it which inputs matter.
"""

import matplotlib.pyplot as plt
import numpy as np

from rfm_dask import RFMRegressor
from rfm_dask.app.inspection import draw_history

rng = np.random.default_rng(0)
X = rng.normal(size=(1500, 10))
y = X[:, 0] * X[:, 1] + np.sin(2 * X[:, 2])
X_test = rng.normal(size=(500, 10))
y_test = X_test[:, 0] * X_test[:, 1] + np.sin(2 * X_test[:, 2])

# %%
# Fit the RFM (``client=None``: an in-process local cluster is started once and shared) and the lazy kernel.
rfm = RFMRegressor(iters=4, bandwidth=5.0, solver="direct", random_state=0).fit(X, y)
lazy = RFMRegressor(iters=0, bandwidth=5.0, solver="direct", random_state=0).fit(X, y)
print(f"test R^2: RFM {rfm.score(X_test, y_test):.3f}, lazy kernel {lazy.score(X_test, y_test):.3f}")
print(f"kept iteration: {rfm.best_iter_}")

# %%
# The validation error by iteration (the kept one marked) and the learned importances.
fig, (ax_history, ax_importance) = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
draw_history(ax_history, rfm.history_, rfm.best_iter_)
ax_importance.bar([f"x{i}" for i in range(10)], rfm.feature_importances_)
ax_importance.set_ylabel("importance (diagonal of M / trace)")
ax_importance.set_title("x0, x1 and x2 carry the target", fontsize=10)
plt.show()
