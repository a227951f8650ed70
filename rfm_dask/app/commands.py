"""The commands of ``rfm-dask``: what each may refuse before a cluster starts (``check_*``) and what it does
(``cmd_*``, with the command's parsed arguments and a Dask client or None)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rfm_dask.app.config_file import ConfigError
from rfm_dask.app.progress import fit_progress, row_progress


def _refuse_existing(path: str | Path, overwrite: bool, what: str) -> None:
    if Path(path).exists() and not overwrite:
        raise FileExistsError(f"{path} already exists (pass --overwrite to replace the {what})")


def check_ingest(args: argparse.Namespace) -> None:
    """What ``ingest`` can refuse before any work starts."""
    if not args.target:
        raise ConfigError("ingest needs --target COLUMN (on the command line or in the config file)")
    _refuse_existing(args.store, args.overwrite, "store")


def cmd_ingest(args: argparse.Namespace, client: Any) -> None:
    from rfm_dask.io import ingest

    options = dict(
        target=args.target,
        id_column=args.id_column,
        task=args.task,
        max_categories=args.max_categories,
        high_cardinality=args.high_cardinality,
        nulls=args.nulls,
        timestamps=args.timestamps,
        exclude=tuple(args.exclude),
        chunk_rows=args.chunk_rows,
        batch_rows=args.batch_rows,
        overwrite=args.overwrite,
    )
    if client is not None:
        print("ingest: running on the cluster (paths are read where the workers are)", file=sys.stderr)
        report = client.submit(ingest, args.data, args.store, pure=False, **options).result()
    else:
        with row_progress("ingest (2 passes)", args.quiet) as progress:
            report = ingest(args.data, args.store, progress=progress, **options)
    print(json.dumps(asdict(report), indent=2, default=str))


def fit_parameters() -> list[str]:
    """The estimator parameters that are ``fit`` options (all but ``client``, ``checkpoint`` and ``resume``, which
    ``fit`` spells its own way), in signature order."""
    from rfm_dask.app.param_flags import parameter_names
    from rfm_dask.estimators import RFMRegressor
    from rfm_dask.parameters import RUN_PARAMS

    return [name for name in parameter_names(RFMRegressor) if name not in RUN_PARAMS]


def fit_params(args: argparse.Namespace) -> dict[str, Any]:
    """The estimator parameters given by the fit options (see ``_fit_options``)."""
    return {name: getattr(args, name) for name in fit_parameters()}


def check_fit(args: argparse.Namespace) -> None:
    """What ``fit`` can refuse before a cluster starts: an existing model file, a model file or checkpoint that
    cannot be written, a path that is no store, and estimator parameters out of range (for the store's task)."""
    from rfm_dask.app.workflows import is_zarr_store, store_estimator
    from rfm_dask.files.atomic import check_writable

    _refuse_existing(args.model, args.overwrite, "model file")
    check_writable(args.model, "model file")
    check_writable(args.checkpoint or f"{args.model}.ckpt", "checkpoint")
    if not is_zarr_store(args.store):
        raise ValueError(f"{args.store} is not a readable Zarr store of X and y (write one with `rfm-dask ingest`)")
    store_estimator(args.store, args.task)(**fit_params(args))._settings()


def cmd_fit(args: argparse.Namespace, client: Any) -> None:
    from rfm_dask.app.workflows import fit_store

    checkpoint = Path(args.checkpoint or f"{args.model}.ckpt")
    if args.resume and not checkpoint.exists():
        print(f"rfm-dask fit: no checkpoint at {checkpoint}, starting from iteration 0", file=sys.stderr)
    start = time.perf_counter()
    with fit_progress(args.quiet, args.iters):
        model = fit_store(args.store, task=args.task, client=client, checkpoint=str(checkpoint),
                          resume=args.resume, **fit_params(args))
    seconds = time.perf_counter() - start
    model.set_params(checkpoint=None, resume=False)
    model.save(args.model, overwrite=args.overwrite)
    checkpoint.unlink(missing_ok=True)
    summary = {"model": str(args.model), "estimator": type(model).__name__, "best_iter": int(model.best_iter_),
               "fit_seconds": round(seconds, 3), "history": model.history_}
    print(json.dumps(summary, indent=2))


def check_predict(args: argparse.Namespace) -> None:
    """What ``predict`` can refuse before reading the model: an existing output, and a Zarr store as input."""
    from rfm_dask.app.workflows import is_zarr_store

    _refuse_existing(args.out, args.overwrite, "output file")
    if is_zarr_store(args.data):
        raise ValueError(f"{args.data} is a Zarr store, but predict reads raw Parquet rows (the columns given to "
                         "`rfm-dask ingest`); for metrics on a store use `rfm-dask evaluate MODEL STORE`, for its "
                         "predictions use Python: rfm_dask.load(MODEL).predict(rfm_dask.open_zarr(STORE).X)")


def cmd_predict(args: argparse.Namespace, client: Any) -> None:
    from rfm_dask import load
    from rfm_dask.app.workflows import predict_parquet

    model = load(args.model)
    with row_progress("predict", args.quiet) as progress:
        report = predict_parquet(
            model, args.data, args.out, id_column=args.id_column, client=client, batch_rows=args.batch_rows,
            overwrite=args.overwrite, progress=progress,
        )
    print(json.dumps({"out": str(args.out), **report}))


def cmd_evaluate(args: argparse.Namespace, client: Any) -> None:
    from rfm_dask import load
    from rfm_dask.app.workflows import evaluate

    model = load(args.model)
    print(json.dumps(evaluate(model, args.data, client=client, target=args.target, batch_rows=args.batch_rows),
                     indent=2))


def cmd_inspect(args: argparse.Namespace, client: Any) -> None:
    from rfm_dask import load
    from rfm_dask.app.inspection import inspect_model, plot_feature_matrix
    from rfm_dask.tables import text_table

    model = load(args.model)
    report = inspect_model(model, top=args.top)
    if args.plot:
        report["plot"] = str(plot_feature_matrix(model, args.plot))
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{report['estimator']}, {report['n_features']} features, best iteration {report['best_iter']}")
    if "note" in report:
        print(f"note: {report['note']}")
    print("\nfeature importances (normalised diagonal of M):")
    print(text_table(report["importances"]))
    for k, direction in enumerate(report.get("eigen_directions", [])):
        loadings = ", ".join(f"{item['feature']} {item['weight']:+.2f}" for item in direction["loadings"][:6])
        print(f"\neigen-direction {k + 1} (eigenvalue {direction['eigenvalue']:.4g}): {loadings}")
    if "tree" in report:
        tree = report["tree"]
        print(f"\ntree of {tree['n_leaves']} leaves (importances above: the leaf-size-weighted mean); splits "
              "(rows with direction . x <= threshold go left):")
        for split in tree["splits"]:
            direction = ", ".join(f"{item['feature']} {item['weight']:+.2f}" for item in split["direction"])
            print(f"  node {split['node']}: {direction} <= {split['threshold']:.4g} -> {split['left']} | "
                  f"{split['right']}")
        for leaf in tree["leaves"]:
            top = ", ".join(f"{item['feature']} {item['importance']:.2f}" for item in leaf["importances"])
            print(f"  leaf {leaf['leaf']}: {leaf['rows']} rows, best iteration {leaf['best_iter']}, top features {top}")
    if args.plot:
        print(f"\nwrote {report['plot']}")


# -- parser ---------------------------------------------------------------------------------------------------------
