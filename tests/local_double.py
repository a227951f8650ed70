"""TEMPORARY test double of ``rfm_dask.local.fit_local`` (the lead's local engine, not on this branch yet): the same
signature and result, from the dense float64 reference loop. Removed when ``rfm_dask.local`` lands."""

from __future__ import annotations

import sys
import types

import numpy as np

import reference as ref
from rfm_dask.targets import TargetScaling
from rfm_dask.training import FitResult, _quality, regression_metrics


def fit_local(X, Y, settings, rng, X_val=None, Y_val=None, metrics=regression_metrics, scaling=None, weights=None,
              initial_M=None, worker_memory=0):
    X64 = np.asarray(X, dtype=np.float64)
    n, d = X64.shape
    s = settings.spec
    scaling = TargetScaling.identity(Y.shape[1]) if scaling is None else scaling
    Z = scaling.transform(Y)
    M = (np.ones(d) if settings.diag else np.eye(d)) if initial_M is None else np.asarray(initial_M, np.float64)
    best, best_quality, history = None, None, []
    for t in range(settings.iters + 1):
        coef = np.linalg.solve(ref.kernel(X64, X64, M, s.kind, s.bandwidth, s.exponent) + settings.reg * np.eye(n), Z)
        record = {"iteration": t}
        if X_val is not None:
            record.update(metrics(scaling.inverse(ref.predictor(X_val, X64, coef, M, s.kind, s.bandwidth,
                                                                s.exponent)), Y_val))
        quality = _quality(record) if X_val is not None else None
        if best is None or quality is None or quality > best_quality:
            best, best_quality = FitResult(M, coef, X64.mean(axis=0), t, s, settings.reg), quality
        history.append(record)
        if t < settings.iters:
            sample = np.sort(rng.choice(n, min(n, 60), replace=False))
            G = ref.masked_gradients(X64[sample], X64, sample, coef * scaling.scale, M, s.kind, s.bandwidth,
                                     s.exponent)
            M = ref.agop_update(G, settings.diag, settings.agop_power, settings.centre_agop)
    best.history, best.centres = history, np.asarray(X, dtype=np.float32)
    return best


def install() -> None:
    """Make ``rfm_dask.local.fit_local`` importable as this double when the real module is missing."""
    try:
        import rfm_dask.local  # noqa: F401
    except ImportError:
        module = types.ModuleType("rfm_dask.local")
        module.fit_local = fit_local
        sys.modules["rfm_dask.local"] = module
