"""The ``rfm-dask`` command line: ingest, fit, predict, evaluate, inspect.

Every command takes ``--scheduler ADDRESS`` (else it runs on a local in-process cluster where it needs one) and
``--config FILE`` (YAML or TOML: a table per command, e.g. ``[fit]`` with ``iters = 8``; command-line options win).
Bad input ends the command with a one-line reason on stderr and exit status 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import tomllib
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 1

def _float_or_auto(text: str) -> float | str:
    """A number, or the word "auto" (a hyperparameter chosen on the validation rows)."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from None


# fit options: (flag, type, help); the estimator parameter is the flag's name with underscores
FIT_PARAMS: tuple[tuple[str, Any, str], ...] = (
    ("--iters", int, "RFM iterations (feature updates); 0 fits the lazy kernel only"),
    ("--solver", str, "auto, direct, cg or nystrom"),
    ("--kernel", str, "laplace or gaussian"),
    ("--bandwidth", _float_or_auto, "kernel bandwidth L, or auto (chosen on the validation rows)"),
    ("--reg", _float_or_auto, "ridge, as in (K + reg I) alpha = y, or auto (chosen on the validation rows)"),
    ("--exponent", float, "Laplace exponent q, 0 < q <= 2"),
    ("--diag", argparse.BooleanOptionalAction, "learn a diagonal M"),
    ("--feature-update", str, "agop or fact"),
    ("--agop-power", float, "AGOP power, 1 or 0.5"),
    ("--centre-agop", argparse.BooleanOptionalAction, "centre the gradients before the AGOP"),
    ("--n-centers", int, "Nystrom centres m"),
    ("--tol", float, "CG relative residual tolerance"),
    ("--validation-fraction", float, "share of rows held out to pick the best iteration"),
    ("--patience", int, "stop after this many iterations without improvement"),
    ("--agop-samples", int, "rows sampled for the feature update"),
    ("--random-state", int, "seed (default 0)"),
)


class ConfigError(ValueError):
    """A config file that cannot be read or names options a command does not have."""


def load_config(path: Path) -> dict:
    """A config file as a dict: YAML (.yaml/.yml) or TOML (.toml)."""
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found")
    text = path.read_text()
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"config file {path} is not valid {path.suffix.lstrip('.').upper()}: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of commands to options")
    return data


PATH_OPTIONS = frozenset({"checkpoint", "plot"})  # options naming files: confined to the config file's directory


def _confined(base: Path, value: Any, key: str) -> str:
    """A path from a config file, relative to the file's directory ``base``; one that escapes it is refused."""
    path = (base / str(value)).resolve()
    if not path.is_relative_to(base.resolve()):
        raise ConfigError(f"config option {key!r} = {value!r} points outside the config file's directory {base}")
    return str(path)


def _apply_config(parser: argparse.ArgumentParser, command: str, config: dict, base: Path) -> None:
    """Use the config's section for ``command`` (and a top-level ``scheduler``) as the parser's defaults; path
    options are resolved against (and confined to) ``base``, the config file's directory."""
    section = config.get(command) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"config section {command!r} must be a mapping of options")
    known = {action.dest for action in parser._actions if action.option_strings} - {"help", "config"}
    values = {key.replace("-", "_"): value for key, value in section.items()}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"config section {command!r} has unknown option(s): {', '.join(unknown)}")
    for key in PATH_OPTIONS & set(values):
        values[key] = _confined(base, values[key], key)
    if "scheduler" in config and "scheduler" not in values:
        values["scheduler"] = config["scheduler"]
    parser.set_defaults(**values)


# -- commands -------------------------------------------------------------------------------------------------------
def _progress(label: str, quiet: bool) -> Callable[[int, int], None] | None:
    """A callback printing ``label: done/total rows`` to stderr at most twice a second."""
    if quiet:
        return None
    last = [0.0]

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= 0.5 or (total and done >= total):
            last[0] = now
            share = f" ({100 * done / total:.0f}%)" if total else ""
            print(f"{label}: {done:,}{f'/{total:,}' if total else ''} rows{share}", file=sys.stderr, flush=True)

    return report


def cmd_ingest(args: argparse.Namespace, client: Any) -> None:
    from .io import ingest

    options = dict(
        target=args.target,
        id_column=args.id_column,
        task=args.task or "auto",
        max_categories=args.max_categories,
        high_cardinality=args.high_cardinality,
        nulls=args.nulls,
        timestamps=args.timestamps,
        exclude=tuple(args.exclude or ()),
        chunk_rows=args.chunk_rows,
        batch_rows=args.batch_rows,
        overwrite=args.overwrite,
    )
    if client is not None:
        print("ingest: running on the cluster (paths are read where the workers are)", file=sys.stderr)
        report = client.submit(ingest, args.data, args.store, pure=False, **options).result()
    else:
        report = ingest(args.data, args.store, progress=_progress("ingest (2 passes)", args.quiet), **options)
    print(json.dumps(asdict(report), indent=2, default=str))


def cmd_fit(args: argparse.Namespace, client: Any) -> None:
    from .jobs import fit_store
    from .tables import HISTORY_COLUMNS, text_table

    if Path(args.model).exists() and not args.overwrite:
        raise FileExistsError(f"{args.model} already exists (pass --overwrite to replace it)")
    params = {
        flag.lstrip("-").replace("-", "_"): getattr(args, flag.lstrip("-").replace("-", "_"))
        for flag, _, _ in FIT_PARAMS
    }
    params = {key: value for key, value in params.items() if value is not None}
    params.setdefault("random_state", 0)
    checkpoint = Path(args.checkpoint or f"{args.model}.ckpt")
    if args.resume and not checkpoint.exists():
        print(f"rfm-dask fit: no checkpoint at {checkpoint}, starting from iteration 0", file=sys.stderr)
    start = time.perf_counter()
    model = fit_store(args.store, task=args.task, client=client, checkpoint=str(checkpoint), resume=args.resume,
                      **params)
    seconds = time.perf_counter() - start
    model.set_params(checkpoint=None, resume=False)
    model.save(args.model, overwrite=args.overwrite)
    checkpoint.unlink(missing_ok=True)
    if not args.quiet:
        print(text_table(model.history_, HISTORY_COLUMNS), file=sys.stderr)
    summary = {"model": str(args.model), "estimator": type(model).__name__, "best_iter": int(model.best_iter_),
               "fit_seconds": round(seconds, 3), "history": model.history_}
    print(json.dumps(summary, indent=2))


def cmd_predict(args: argparse.Namespace, client: Any) -> None:
    from . import load
    from .jobs import predict_parquet

    model = load(args.model)
    rows = predict_parquet(
        model, args.data, args.out, id_column=args.id_column, client=client, batch_rows=args.batch_rows,
        overwrite=args.overwrite, progress=_progress("predict", args.quiet),
    )
    print(json.dumps({"out": str(args.out), "rows": rows}))


def cmd_evaluate(args: argparse.Namespace, client: Any) -> None:
    from . import load
    from .jobs import evaluate

    model = load(args.model)
    print(json.dumps(evaluate(model, args.data, client=client, target=args.target, batch_rows=args.batch_rows),
                     indent=2))


def cmd_inspect(args: argparse.Namespace, client: Any) -> None:
    from . import load
    from .jobs import inspect_model, plot_feature_matrix
    from .tables import text_table

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
    if args.plot:
        print(f"\nwrote {report['plot']}")


# -- parser ---------------------------------------------------------------------------------------------------------
def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scheduler", metavar="ADDRESS", help="Dask scheduler address (default: a local cluster)")
    parser.add_argument("--config", type=Path, metavar="FILE", help="YAML or TOML file of options per command")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser and each command's parser by name."""
    parser = argparse.ArgumentParser(prog="rfm-dask", description="Recursive Feature Machines on Dask.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ingest = commands.add_parser("ingest", help="Parquet to a Zarr store (encoded, standardised, streamed)")
    ingest.add_argument("data", help="Parquet file, directory, glob or fsspec URL")
    ingest.add_argument("store", help="output Zarr store")
    ingest.add_argument("--target", required=False, help="target column")
    ingest.add_argument("--id-column", help="column passed through as row ids")
    ingest.add_argument("--task", choices=("auto", "regression", "classification"))
    ingest.add_argument("--max-categories", type=int, default=32, help="one-hot cap per categorical column")
    ingest.add_argument("--high-cardinality", choices=("error", "top"), default="error",
                        help="above the cap: fail, or keep the most frequent categories plus 'other'")
    ingest.add_argument("--nulls", choices=("impute", "drop"), default="impute")
    ingest.add_argument("--timestamps", choices=("expand", "drop"), default="expand")
    ingest.add_argument("--exclude", nargs="*", metavar="COLUMN", help="columns to leave out")
    ingest.add_argument("--chunk-rows", type=int, help="rows per Zarr chunk")
    ingest.add_argument("--batch-rows", type=int, default=65536, help="rows per Parquet read batch")
    ingest.add_argument("--overwrite", action="store_true")
    ingest.set_defaults(handler=cmd_ingest, needs_cluster=False)

    fit = commands.add_parser("fit", help="fit an RFM on an ingested store and save the model")
    fit.add_argument("store", help="Zarr store written by `rfm-dask ingest`")
    fit.add_argument("model", help="output model file")
    fit.add_argument("--task", choices=("regression", "classification"), help="default: the task recorded at ingest")
    for flag, kind, text in FIT_PARAMS:
        if kind is argparse.BooleanOptionalAction:
            fit.add_argument(flag, action=kind, default=None, help=text)
        else:
            fit.add_argument(flag, type=kind, help=text)
    fit.add_argument("--checkpoint", metavar="PATH", help="state after each iteration (default: MODEL.ckpt)")
    fit.add_argument("--resume", action="store_true", help="continue from the checkpoint's last complete iteration")
    fit.add_argument("--overwrite", action="store_true")
    fit.set_defaults(handler=cmd_fit, needs_cluster=True)

    predict = commands.add_parser("predict", help="predict Parquet rows, writing Parquet")
    predict.add_argument("model")
    predict.add_argument("data", help="Parquet file, directory, glob or fsspec URL")
    predict.add_argument("out", help="output Parquet file")
    predict.add_argument("--id-column", help="column passed through (default: the one named at ingest)")
    predict.add_argument("--batch-rows", type=int, default=65536)
    predict.add_argument("--overwrite", action="store_true")
    predict.set_defaults(handler=cmd_predict, needs_cluster=False)

    evaluate = commands.add_parser("evaluate", help="JSON metrics on Parquet (with the target) or a Zarr store")
    evaluate.add_argument("model")
    evaluate.add_argument("data", help="Parquet source or Zarr store")
    evaluate.add_argument("--target", help="target column (default: the one named at ingest)")
    evaluate.add_argument("--batch-rows", type=int, default=65536)
    evaluate.set_defaults(handler=cmd_evaluate, needs_cluster=False)

    inspect = commands.add_parser("inspect", help="feature importances, eigen-directions of M, a PNG of M")
    inspect.add_argument("model")
    inspect.add_argument("--plot", type=Path, metavar="FILE.png", help="write a picture of M")
    inspect.add_argument("--top", type=int, default=10, help="features listed (default 10)")
    inspect.add_argument("--json", action="store_true", help="print the report as JSON")
    inspect.set_defaults(handler=cmd_inspect, needs_cluster=False)

    by_name = {"ingest": ingest, "fit": fit, "predict": predict, "evaluate": evaluate, "inspect": inspect}
    for sub in by_name.values():
        _common(sub)
    return parser, by_name


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line; with ``--config``, parse again over the config section's defaults."""
    parser, commands = build_parser()
    args = parser.parse_args(argv)
    if args.config is not None:
        _apply_config(commands[args.command], args.command, load_config(args.config), args.config.parent)
        args = parser.parse_args(argv)
    if args.command == "ingest" and not args.target:
        raise ConfigError("ingest needs --target COLUMN (on the command line or in the config file)")
    return args


@contextmanager
def _client(args: argparse.Namespace) -> Iterator[Any]:
    """The scheduler's client if an address is given; else a local cluster for commands that need one."""
    if args.scheduler:
        from distributed import Client

        try:
            client = Client(args.scheduler, timeout="10s")
        except (OSError, TimeoutError) as exc:
            raise ConnectionError(f"cannot connect to the Dask scheduler at {args.scheduler}: {exc}") from None
        with client:
            yield client
        return
    if not args.needs_cluster:
        yield None
        return
    from .cluster import close_local_client, local_client

    try:
        yield local_client()
    finally:
        close_local_client()


def _log_progress(quiet: bool) -> None:
    """Per-iteration fit lines from the ``rfm_dask`` logger on stderr (not with --quiet)."""
    logger = logging.getLogger("rfm_dask")
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    if not any(getattr(h, "_rfm_cli", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("rfm-dask: %(message)s"))
        handler._rfm_cli = True
        logger.addHandler(handler)


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status (0 ok, 2 bad input, 1 internal error, 130 interrupted)."""
    args = build_parser()[0].parse_args(argv)  # usage errors exit here with argparse's message and status 2
    try:
        args = _parse(argv)
        _log_progress(args.quiet)
        with _client(args) as client:
            args.handler(args, client)
    except KeyboardInterrupt:
        print("rfm-dask: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, KeyError, RuntimeError) as exc:
        if args.debug:
            raise
        print(f"rfm-dask {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as exc:  # noqa: BLE001 - the CLI's last resort: one line, not a traceback
        if args.debug:
            raise
        print(f"rfm-dask {args.command}: internal error: {type(exc).__name__}: {_one_line(exc)} "
              "(run again with --debug for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL
    return 0


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, KeyError):
        text = f"missing key {text}"
    return " ".join(text.split())


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
