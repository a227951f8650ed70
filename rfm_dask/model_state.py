"""An estimator's fitted model as a model file's JSON state and arrays, and back: one predictor (format 1) or a
tree of leaf predictors (format 2, arrays ``tree_*`` and ``leaf<j>_*``). Nothing here executes code from a file;
every state is checked against its arrays (``check_state``)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from rfm_dask.core.kernel_spec import KernelSpec
from rfm_dask.core.targets import TargetScaling
from rfm_dask.model import KernelModel
from rfm_dask.parameters import RUN_PARAMS
from rfm_dask.rfm_loop import FitResult
from rfm_dask.tree.fit import TreeFit
from rfm_dask.tree.model import TreeModel
from rfm_dask.tree.structure import Tree


def check_state(state: dict, arrays: dict[str, np.ndarray], classifier: bool) -> None:
    """Raise ``ValueError`` unless a model file's state fits its arrays (``load`` reports it as ``ModelFileError``)."""
    tree = state.get("tree")
    if tree is not None and not (isinstance(tree, dict) and isinstance(tree.get("leaves"), list)
                                 and isinstance(tree.get("leaf_sizes"), list)
                                 and len(tree["leaves"]) == len(tree["leaf_sizes"]) >= 1):
        raise ValueError(f"tree must be a dict of equally long lists 'leaves' and 'leaf_sizes', got {tree!r}")
    prefixes = [""] if tree is None else [f"leaf{j}_" for j in range(len(tree["leaves"]))]
    d = state["n_features_in"]
    for prefix in prefixes:
        centres, coef = arrays[prefix + "centres"], arrays[prefix + "coef"]
        if isinstance(d, bool) or not isinstance(d, int) or centres.ndim != 2 or centres.shape[1] != d:
            raise ValueError(f"n_features_in {d!r} does not match the centres' shape {centres.shape}")
    names = state.get("feature_names_in")
    if names is not None and not (isinstance(names, list) and len(names) == d
                                  and all(isinstance(n, str) for n in names)):
        raise ValueError(f"feature_names_in must be null or a list of {d} strings, got {names!r}")
    if state.get("preprocessing") is not None and not isinstance(state["preprocessing"], dict):
        raise ValueError(f"preprocessing must be null or a dict, got {state['preprocessing']!r}")
    if not isinstance(state["history"], list):
        raise ValueError(f"history must be a list, got {state['history']!r}")
    if state.get("solver_options") is not None and not isinstance(state["solver_options"], dict):
        raise ValueError(f"solver_options must be null or a dict, got {state['solver_options']!r}")
    outputs = coef.shape[1] if coef.ndim == 2 else None
    if classifier:
        classes = state["classes"]
        if not isinstance(classes, list) or len(classes) < 2 or len(set(map(str, classes))) < len(classes):
            raise ValueError(f"classes must be a list of at least 2 distinct labels, got {classes!r}")
        if outputs != (1 if len(classes) == 2 else len(classes)):
            raise ValueError(f"{len(classes)} classes do not fit coefficients of shape {coef.shape}")
        temperature = state.get("calibration")
        if temperature is not None and not (isinstance(temperature, float) and np.isfinite(temperature)
                                            and temperature > 0):
            raise ValueError(f"calibration must be null or a finite temperature > 0, got {temperature!r}")
    elif state["single_output"] is True and outputs != 1:
        raise ValueError(f"a single-output model has coefficients of shape {coef.shape}")


def model_arrays(model: KernelModel, prefix: str = "") -> dict[str, np.ndarray]:
    """A predictor's arrays for a model file, named with ``prefix`` (a tree's leaf j: ``leaf<j>_``)."""
    arrays = {"centres": model.centres, "coef": model.coef, "feature_matrix": model.feature_matrix,
              "shift": model.shift, "target_offset": model.target.offset, "target_scale": model.target.scale}
    return {prefix + name: a for name, a in arrays.items()}


def saved_model(arrays: dict[str, np.ndarray], prefix: str, spec: KernelSpec) -> KernelModel:
    """The predictor of a model file's arrays named with ``prefix`` (see ``model_arrays``); files saved before
    targets were scaled have no target arrays (the identity)."""
    scaling = None
    if prefix + "target_offset" in arrays or prefix + "target_scale" in arrays:
        scaling = TargetScaling(arrays[prefix + "target_offset"], arrays[prefix + "target_scale"])
    return KernelModel(arrays[prefix + "centres"], arrays[prefix + "coef"], arrays[prefix + "feature_matrix"], spec,
                       arrays[prefix + "shift"], scaling)


def saved_tree(info: dict, arrays: dict[str, np.ndarray], spec: KernelSpec, temperature: float | None) -> TreeFit:
    """A tree's fit from a model file: its ``state["tree"]`` (per-leaf sizes, iterations, kernels, histories) and
    its arrays (``tree_*`` and ``leaf<j>_*``)."""
    tree = Tree(arrays["tree_directions"], arrays["tree_thresholds"], arrays["tree_scales"],
                arrays["tree_children"])
    leaves, results = [], []
    for j, leaf in enumerate(info["leaves"]):
        leaf_spec = replace(spec, bandwidth=float(leaf["bandwidth"]))
        model = saved_model(arrays, f"leaf{j}_", leaf_spec)
        leaves.append(model)
        results.append(FitResult(model.feature_matrix, model.coef, model.shift, int(leaf["best_iter"]), leaf_spec,
                                 float(leaf["reg"]), model.centres, list(leaf["history"])))
    sizes = np.asarray(info["leaf_sizes"], dtype=np.int64)
    if np.any(sizes < 1):
        raise ValueError(f"leaf sizes must be positive, got {info['leaf_sizes']!r}")
    return TreeFit(TreeModel(tree, leaves, None if temperature is None else float(temperature)), sizes, results)


def fitted_state(est: Any) -> tuple[dict, dict[str, np.ndarray]]:
    """A fitted estimator's model-file state (JSON) and arrays; run parameters (``RUN_PARAMS``) are not saved."""
    params = {k: v for k, v in est.get_params(deep=False).items() if k not in RUN_PARAMS}
    state = {
        "params": params,
        "n_features_in": int(est.n_features_in_),
        "feature_names_in": [str(c) for c in getattr(est, "feature_names_in_", [])] or None,
        "best_iter": int(est.best_iter_),
        "bandwidth": est.bandwidth_,
        "reg": est.reg_,
        "history": est.history_,
        "preprocessing": getattr(est, "preprocessing_", None),
        "solver_options": est.solver_options_,
        **est._target_state(),
    }
    model = est.model_
    if isinstance(model, TreeModel):
        state["tree"] = {"leaf_sizes": est.leaf_sizes_.tolist(), "leaves": [
            {"best_iter": int(i), "bandwidth": float(b), "reg": float(r), "history": h} for i, b, r, h in zip(
                est.leaf_best_iters_, est.leaf_bandwidths_, est.leaf_regs_, est.leaf_histories_)]}
        tree = model.tree
        arrays = {"tree_directions": tree.directions, "tree_thresholds": tree.thresholds,
                  "tree_scales": tree.scales, "tree_children": tree.children}
        for j, leaf in enumerate(model.leaves):
            arrays.update(model_arrays(leaf, f"leaf{j}_"))
    else:
        arrays = model_arrays(model)
    return state, arrays


def restore_fitted(est: Any, settings: Any, state: dict, arrays: dict[str, np.ndarray]) -> None:
    """Set a new estimator's fitted attributes from a model file's checked state and arrays; ``settings`` are the
    estimator's ``RFMSettings`` (their kernel, whose bandwidth the file's fitted one replaces)."""
    est.n_features_in_ = int(state["n_features_in"])
    if state.get("feature_names_in"):
        est.feature_names_in_ = np.asarray(state["feature_names_in"], dtype=object)
    if state.get("preprocessing") is not None:
        est.preprocessing_ = state["preprocessing"]
    est._restore_target_state(state)
    # the solver options the model was fitted with (rfm.* settings); files from before they were recorded: None
    est.solver_options_ = state.get("solver_options")
    if "tree" in state:
        est._set_tree(saved_tree(state["tree"], arrays, settings.spec, est.split_temperature))
        return
    # files from before tuning existed hold no fitted bandwidth and reg: the parameters are the fitted values
    spec = replace(settings.spec, bandwidth=float(state.get("bandwidth", settings.spec.bandwidth)))
    est._set_model(saved_model(arrays, "", spec), float(state.get("reg", settings.reg)), int(state["best_iter"]),
                   list(state["history"]))
