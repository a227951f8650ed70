"""The ``rfm-dask`` command line: ingest, fit, predict, evaluate, inspect.

Every command takes ``--scheduler ADDRESS`` (else it runs on a local in-process cluster where it needs one) and
``--config FILE`` (YAML or TOML: a table per command, e.g. ``[fit]`` with ``iters = 8``; each value is parsed as
the command line parses it; command-line options win). Bad input ends the command with a one-line reason on stderr,
in command-line spelling, and exit status 2; ``--debug`` shows the traceback. Progress bars (tqdm) are drawn on
stderr when it is a terminal.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
import tomllib
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

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
    ("--solver", str, "KRR solver: direct (dense Cholesky), cg (exact kernel), nystrom (FALKON), or auto by size"),
    ("--kernel", str, "laplace or gaussian (of the Mahalanobis distance), or l1_laplace (product Laplace, diagonal M)"),
    ("--bandwidth", _float_or_auto, "kernel bandwidth L, or auto (chosen on the validation rows)"),
    ("--reg", _float_or_auto, "ridge, as in (K + reg I) alpha = y, or auto (chosen on the validation rows)"),
    ("--exponent", float, "Laplace exponent q, 0 < q <= 2"),
    ("--diag", argparse.BooleanOptionalAction, "learn a diagonal M"),
    ("--feature-update", str, "update of M: agop or fact"),
    ("--agop-power", float, "AGOP power, 1 or 0.5"),
    ("--centre-agop", argparse.BooleanOptionalAction, "centre the gradients before the AGOP"),
    ("--n-centers", int, "Nystrom centres m (default: rfm.nystrom-centres)"),
    ("--tol", float, "CG relative residual tolerance"),
    ("--validation-fraction", float, "share of rows held out to pick the best iteration"),
    ("--patience", int, "stop after this many iterations without improvement"),
    ("--agop-samples", int, "rows sampled for the feature update (default: rfm.agop-sample)"),
    ("--random-state", int, "seed"),
)


class ClusterError(RuntimeError):
    """The Dask cluster failed under a command (see ``_cluster_failure``)."""


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
FLAG_ACTIONS = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse.BooleanOptionalAction)


def _confined(base: Path, value: str, where: str) -> str:
    """A path from a config file, relative to the file's directory ``base``; one that escapes it is refused."""
    path = (base / value).resolve()
    if not path.is_relative_to(base.resolve()):
        raise ConfigError(f"{where} = {value!r} points outside the config file's directory {base}")
    return str(path)


def _config_scalar(action: argparse.Action, value: Any, where: str) -> Any:
    """One config value parsed as the command line parses the option's argument: by the option's ``type`` (from
    its text, so ``iters = 2.5`` fails as ``--iters 2.5`` does) and checked against its ``choices``. Strings,
    integers and floats are accepted where a number is expected; booleans, lists, tables and nulls are not."""
    if value is None or isinstance(value, (bool, list, dict)):
        raise ConfigError(f"{where} must be a single value, got {value!r}")
    if action.type is None and not isinstance(value, str):
        raise ConfigError(f"{where} must be a string (quote it), got {value!r}")
    try:
        parsed = value if action.type is None else action.type(str(value))
    except (TypeError, ValueError, argparse.ArgumentTypeError):
        kind = getattr(action.type, "__name__", "value")
        raise ConfigError(f"{where} must be {'an' if kind[0] in 'aeiou' else 'a'} {kind}, got {value!r}") from None
    if action.choices is not None and parsed not in action.choices:
        raise ConfigError(f"{where} must be one of {', '.join(map(str, action.choices))}, got {value!r}")
    return parsed


def _config_value(action: argparse.Action, value: Any, where: str) -> Any:
    """A config value as the option's command-line form would give it (see ``_config_scalar``): on/off options
    take true or false only, list options (``nargs``) a list or a single string (one item)."""
    if isinstance(action, FLAG_ACTIONS):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false (unquoted), got {value!r}")
        return value if not isinstance(action, argparse._StoreFalseAction) else not value
    if action.nargs in ("*", "+"):
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or (action.nargs == "+" and not items):
            raise ConfigError(f"{where} must be a list of values, got {value!r}")
        return [_config_scalar(action, item, f"{where}[{i}]") for i, item in enumerate(items)]
    return _config_scalar(action, value, where)


def _apply_config(parser: argparse.ArgumentParser, command: str, config: dict, path: Path, commands: Iterable[str]
                  ) -> None:
    """Use the config's section for ``command`` (and a top-level ``scheduler``) as the parser's defaults.

    Every value goes through the option's command-line parsing (``_config_value``); path options are resolved
    against (and confined to) the config file's directory. A section or key that is not a command or option, and
    a value the command line would refuse, raise ``ConfigError`` naming the file and the key.
    """
    unknown = sorted(str(key) for key in config if key not in {*commands, "scheduler"})
    if unknown:
        raise ConfigError(f"config file {path}: unknown section(s) {', '.join(unknown)} (expected "
                          f"{', '.join(sorted(commands))} or a top-level scheduler)")
    section = config.get(command) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"config file {path}: section {command!r} must be a mapping of options")
    actions = {action.dest: action for action in parser._actions
               if action.option_strings and action.dest not in {"help", "config", "version"}}
    entries = [(f"config file {path}: [{command}] {key}", str(key).replace("-", "_"), value)
               for key, value in section.items()]
    if "scheduler" in config and "scheduler" not in {dest for _, dest, _ in entries}:
        entries.append((f"config file {path}: scheduler", "scheduler", config["scheduler"]))
    values = {}
    for where, dest, value in entries:
        if dest not in actions:
            raise ConfigError(f"{where}: unknown option for {command}")
        values[dest] = _config_value(actions[dest], value, where)
        if dest in PATH_OPTIONS:
            values[dest] = _confined(path.parent, str(values[dest]), where)
    parser.set_defaults(**values)


# -- commands -------------------------------------------------------------------------------------------------------
def _bar(label: str, unit: str, quiet: bool, total: int | None = None, position: int = 0) -> Any:
    """A tqdm progress bar on stderr: off with --quiet, or when stderr is not a terminal."""
    from tqdm.auto import tqdm

    return tqdm(desc=label, unit=unit, total=total, position=position, file=sys.stderr, leave=position == 0,
                disable=quiet or not sys.stderr.isatty(), dynamic_ncols=True, unit_scale=unit == "rows")


@contextmanager
def _progress(label: str, quiet: bool) -> Iterator[Callable[[int, int], None]]:
    """A ``progress(done, total)`` callback (rows; total 0 when unknown) drawing a progress bar, closed on exit."""
    bar = _bar(label, "rows", quiet)

    def report(done: int, total: int) -> None:
        if total and bar.total != total:
            bar.reset(total=total)
        bar.update(done - bar.n)

    try:
        yield report
    finally:
        bar.close()


def _refuse_existing(path: str | Path, overwrite: bool, what: str) -> None:
    if Path(path).exists() and not overwrite:
        raise FileExistsError(f"{path} already exists (pass --overwrite to replace the {what})")


def check_ingest(args: argparse.Namespace) -> None:
    """What ``ingest`` can refuse before any work starts."""
    if not args.target:
        raise ConfigError("ingest needs --target COLUMN (on the command line or in the config file)")
    _refuse_existing(args.store, args.overwrite, "store")


def cmd_ingest(args: argparse.Namespace, client: Any) -> None:
    from .io import ingest

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
        with _progress("ingest (2 passes)", args.quiet) as progress:
            report = ingest(args.data, args.store, progress=progress, **options)
    print(json.dumps(asdict(report), indent=2, default=str))


def _fit_params(args: argparse.Namespace) -> dict[str, Any]:
    """The estimator parameters given by the fit options (None: the estimator's default)."""
    params = {flag.lstrip("-").replace("-", "_"): getattr(args, flag.lstrip("-").replace("-", "_"))
              for flag, _, _ in FIT_PARAMS}
    return {key: value for key, value in params.items() if value is not None}


def check_fit(args: argparse.Namespace) -> None:
    """What ``fit`` can refuse before a cluster starts: an existing model file, a model file or checkpoint that
    cannot be written, a path that is no store, and estimator parameters out of range."""
    from .atomic import check_writable
    from .estimators import RFMRegressor
    from .jobs import is_zarr_store

    _refuse_existing(args.model, args.overwrite, "model file")
    check_writable(args.model, "model file")
    check_writable(args.checkpoint or f"{args.model}.ckpt", "checkpoint")
    if not is_zarr_store(args.store):
        raise ValueError(f"{args.store} is not a readable Zarr store of X and y (write one with `rfm-dask ingest`)")
    RFMRegressor(**_fit_params(args))._settings()


def cmd_fit(args: argparse.Namespace, client: Any) -> None:
    from .jobs import fit_store

    checkpoint = Path(args.checkpoint or f"{args.model}.ckpt")
    if args.resume and not checkpoint.exists():
        print(f"rfm-dask fit: no checkpoint at {checkpoint}, starting from iteration 0", file=sys.stderr)
    start = time.perf_counter()
    with _fit_progress(args.quiet, args.iters):
        model = fit_store(args.store, task=args.task, client=client, checkpoint=str(checkpoint),
                          resume=args.resume, **_fit_params(args))
    seconds = time.perf_counter() - start
    model.set_params(checkpoint=None, resume=False)
    model.save(args.model, overwrite=args.overwrite)
    checkpoint.unlink(missing_ok=True)
    summary = {"model": str(args.model), "estimator": type(model).__name__, "best_iter": int(model.best_iter_),
               "fit_seconds": round(seconds, 3), "history": model.history_}
    print(json.dumps(summary, indent=2))


def check_predict(args: argparse.Namespace) -> None:
    """What ``predict`` can refuse before reading the model: an existing output, and a Zarr store as input."""
    from .jobs import is_zarr_store

    _refuse_existing(args.out, args.overwrite, "output file")
    if is_zarr_store(args.data):
        raise ValueError(f"{args.data} is a Zarr store, but predict reads raw Parquet rows (the columns given to "
                         "`rfm-dask ingest`); for metrics on a store use `rfm-dask evaluate MODEL STORE`, for its "
                         "predictions use Python: rfm_dask.load(MODEL).predict(rfm_dask.open_zarr(STORE).X)")


def cmd_predict(args: argparse.Namespace, client: Any) -> None:
    from . import load
    from .jobs import predict_parquet

    model = load(args.model)
    with _progress("predict", args.quiet) as progress:
        report = predict_parquet(
            model, args.data, args.out, id_column=args.id_column, client=client, batch_rows=args.batch_rows,
            overwrite=args.overwrite, progress=progress,
        )
    print(json.dumps({"out": str(args.out), **report}))


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
class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's help with every option's default shown, except where there is none (None)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None:
            return action.help or ""
        return super()._get_help_string(action)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scheduler", metavar="ADDRESS", help="Dask scheduler address (default: a local cluster)")
    parser.add_argument("--config", type=Path, metavar="FILE", help="YAML or TOML file of options per command")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def _fit_options(fit: argparse.ArgumentParser) -> None:
    """The estimator's parameters as ``fit`` options, with the estimator's defaults (values are checked by the
    estimator, before a cluster starts: see ``check_fit``)."""
    from .estimators import RFMRegressor

    defaults = RFMRegressor().get_params(deep=False)
    for flag, kind, text in FIT_PARAMS:
        default = defaults[flag.lstrip("-").replace("-", "_")]
        if flag == "--random-state":
            default = 0  # the command line is reproducible by default
        if kind is argparse.BooleanOptionalAction:
            fit.add_argument(flag, action=kind, default=default, help=text)
        else:
            fit.add_argument(flag, type=kind, default=default, help=text)


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser and each command's parser by name."""
    from . import __version__

    parser = argparse.ArgumentParser(prog="rfm-dask", description="Recursive Feature Machines on Dask.",
                                     formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=text, description=text, formatter_class=_HelpFormatter)

    model_in = "model file written by `rfm-dask fit` (.rfm)"
    ingest = command("ingest", "Parquet to a Zarr store (encoded, standardised, streamed)")
    ingest.add_argument("data", help="Parquet file, directory, glob or fsspec URL")
    ingest.add_argument("store", help="output Zarr store")
    ingest.add_argument("--target", required=False, help="target column")
    ingest.add_argument("--id-column", help="column passed through as row ids")
    ingest.add_argument("--task", choices=("auto", "regression", "classification"), default="auto",
                        help="auto: classification for string, bool and few-valued integer targets")
    ingest.add_argument("--max-categories", type=int, default=32, help="one-hot cap per categorical column")
    ingest.add_argument("--high-cardinality", choices=("error", "top"), default="error",
                        help="above the cap: fail, or keep the most frequent categories plus 'other'")
    ingest.add_argument("--nulls", choices=("impute", "drop"), default="impute",
                        help="missing values: impute (and flag) them, or drop their rows")
    ingest.add_argument("--timestamps", choices=("expand", "drop"), default="expand",
                        help="timestamp columns: expand into calendar parts, or leave out")
    ingest.add_argument("--exclude", nargs="*", metavar="COLUMN", default=[], help="columns to leave out")
    ingest.add_argument("--chunk-rows", type=int, help="rows per Zarr chunk (default: about 32 MiB of float32)")
    ingest.add_argument("--batch-rows", type=int, default=65536, help="rows per Parquet read batch")
    ingest.add_argument("--overwrite", action="store_true", help="replace an existing store")
    ingest.set_defaults(handler=cmd_ingest, check=check_ingest, needs_cluster=False)

    fit = command("fit", "fit an RFM on an ingested store and save the model")
    fit.add_argument("store", help="Zarr store written by `rfm-dask ingest`")
    fit.add_argument("model", help="output model file (.rfm): the fitted estimator and the store's preprocessing")
    fit.add_argument("--task", choices=("regression", "classification"), help="default: the task recorded at ingest")
    _fit_options(fit)
    fit.add_argument("--checkpoint", metavar="PATH", help="state after each iteration (default: MODEL.ckpt)")
    fit.add_argument("--resume", action="store_true", help="continue from the checkpoint's last complete iteration")
    fit.add_argument("--overwrite", action="store_true", help="replace an existing model file")
    fit.add_argument("--dashboard", action="store_true",
                     help="serve the local cluster's Dask dashboard on 127.0.0.1 and print its link")
    fit.set_defaults(handler=cmd_fit, check=check_fit, needs_cluster=True)

    predict = command("predict", "predict Parquet rows, writing Parquet")
    predict.add_argument("model", help=model_in)
    predict.add_argument("data", help="Parquet file, directory, glob or fsspec URL of raw rows")
    predict.add_argument("out", help="output Parquet file")
    predict.add_argument("--id-column", help="column passed through (default: the one named at ingest)")
    predict.add_argument("--batch-rows", type=int, default=65536, help="rows per Parquet read batch")
    predict.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    predict.set_defaults(handler=cmd_predict, check=check_predict, needs_cluster=False)

    evaluate = command("evaluate", "JSON metrics on Parquet (with the target) or a Zarr store")
    evaluate.add_argument("model", help=model_in)
    evaluate.add_argument("data", help="Parquet source or Zarr store")
    evaluate.add_argument("--target", help="target column (default: the one named at ingest)")
    evaluate.add_argument("--batch-rows", type=int, default=65536, help="rows per Parquet read batch")
    evaluate.set_defaults(handler=cmd_evaluate, needs_cluster=False)

    inspect = command("inspect", "feature importances, eigen-directions of M, a PNG of M")
    inspect.add_argument("model", help=model_in)
    inspect.add_argument("--plot", type=Path, metavar="FILE.png", help="write a picture of M")
    inspect.add_argument("--top", type=int, default=10, help="features listed")
    inspect.add_argument("--json", action="store_true", help="print the report as JSON")
    inspect.set_defaults(handler=cmd_inspect, needs_cluster=False)

    by_name = {"ingest": ingest, "fit": fit, "predict": predict, "evaluate": evaluate, "inspect": inspect}
    for sub in by_name.values():
        _common(sub)
    return parser, by_name


def _parse(parser: argparse.ArgumentParser, commands: dict[str, argparse.ArgumentParser], argv: list[str] | None
           ) -> argparse.Namespace:
    """Parse the command line; with ``--config``, parse again over the config section's defaults."""
    args = parser.parse_args(argv)
    if args.config is not None:
        _apply_config(commands[args.command], args.command, load_config(args.config), args.config, commands)
        args = parser.parse_args(argv)
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
        client_log = logging.getLogger("distributed.client")
        level = client_log.level
        if not args.debug:  # a lost scheduler is reported in one line (``_cluster_failure``), not logged with a traceback
            client_log.setLevel(logging.CRITICAL)
        try:
            yield client
        finally:
            try:
                client.close()
            except OSError:  # a lost scheduler (reported by ``_cluster_failure``): nothing is left to close there
                pass
            client_log.setLevel(level)
        return
    if not args.needs_cluster:
        yield None
        return
    import dask

    from .cluster import close_local_client, local_client

    try:
        with dask.config.set({"rfm.dashboard": args.dashboard}):
            client = local_client()
        yield client
    finally:
        close_local_client()


def _bars_on(quiet: bool) -> bool:
    """Whether progress bars are drawn: not with --quiet, and only on a terminal (logs get lines instead)."""
    return not quiet and sys.stderr.isatty()


def _log_progress(quiet: bool) -> None:
    """Lines from the ``rfm_dask`` logger on stderr (not with --quiet); per-iteration lines only where no progress
    bar shows the iterations (stderr is not a terminal)."""
    logger = logging.getLogger("rfm_dask")
    logger.setLevel(logging.WARNING if quiet else logging.DEBUG if _bars_on(quiet) else logging.INFO)
    for old in [h for h in logger.handlers if getattr(h, "_rfm_cli", False)]:  # an earlier main() in this process
        logger.removeHandler(old)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("rfm-dask: %(message)s"))
    handler.setLevel(logging.INFO)
    handler._rfm_cli = True
    logger.addHandler(handler)
    if _bars_on(quiet):
        handler.addFilter(lambda record: not hasattr(record, "rfm_step"))


class _FitBars(logging.Handler):
    """Progress bars of a fit, driven by the ``rfm_dask`` logger's records that carry ``rfm_step`` = (kind, step,
    total): RFM iterations ("iteration", with the iteration's metrics) and the CG steps of the current solve
    ("cg")."""

    def __init__(self, quiet: bool, iters: int) -> None:
        super().__init__(logging.DEBUG)
        self.iterations = _bar("fit", "iteration", quiet, total=iters + 1)
        self.steps = _bar("CG steps", "step", quiet, position=1)

    def emit(self, record: logging.LogRecord) -> None:
        kind, step, _ = getattr(record, "rfm_step", (None, 0, 0))
        if kind == "iteration":
            self.iterations.set_postfix_str(record.getMessage().split(": ", 1)[-1], refresh=False)
            self.iterations.update(1)
            self.steps.reset()
        elif kind == "cg":
            self.steps.update(step - self.steps.n)

    def close(self) -> None:
        self.steps.close()
        self.iterations.close()
        super().close()


@contextmanager
def _fit_progress(quiet: bool, iters: int) -> Iterator[None]:
    """Fit progress bars (iterations, CG steps) while the block runs."""
    logger = logging.getLogger("rfm_dask")
    bars = _FitBars(quiet, iters)
    logger.addHandler(bars)
    try:
        yield
    finally:
        logger.removeHandler(bars)
        bars.close()


def _cli_spelling(text: str, parser: argparse.ArgumentParser) -> str:
    """An error message with the command's options in their command-line spelling: ``overwrite=True`` becomes
    ``--overwrite``, ``high_cardinality='top'`` becomes ``--high-cardinality top``, ``max_categories``
    ``--max-categories``, and sklearn's "The 'reg' parameter of RFMRegressor" or a leading "reg must" ``--reg``."""
    for action in parser._actions:
        if not action.option_strings or action.dest in {"help", "version"}:
            continue
        flag, dest = action.option_strings[0], re.escape(action.dest)

        def spelled(match: re.Match) -> str:
            value = next((g for g in match.groups() if g is not None), "")
            return flag if value in ("", "True") else f"{flag} {value}"

        text = re.sub(rf"(?<![\w-]){dest}=(?:'([^']*)'|\"([^\"]*)\"|([^\s,;)]*))", spelled, text)
        text = re.sub(rf"The '{dest}' parameter of \w+|^{dest}(?= must)", flag, text)
        if "_" in action.dest:
            text = re.sub(rf"(?<![\w-]){dest}\b", flag, text)
    return text


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status (0 ok, 2 bad input, 1 internal error, 130 interrupted)."""
    parser, commands = build_parser()
    args = parser.parse_args(argv)  # usage errors exit here with argparse's message and status 2
    try:
        args = _parse(parser, commands, argv)
        _log_progress(args.quiet)
        if hasattr(args, "check"):
            args.check(args)  # bad options are refused before a cluster starts
        with _client(args) as client:
            try:
                args.handler(args, client)
            except Exception as exc:  # noqa: BLE001 - re-raised as is unless it is a failure of the cluster
                message = None if args.debug else _cluster_failure(args, exc, client)
                if message is None:
                    raise
                raise ClusterError(message) from None
    except KeyboardInterrupt:
        print("rfm-dask: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, KeyError, RuntimeError) as exc:
        if args.debug:
            raise
        message = _cli_spelling(_one_line(exc), commands[args.command])
        print(f"rfm-dask {args.command}: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as exc:  # noqa: BLE001 - the CLI's last resort: one line, not a traceback
        if args.debug:
            raise
        print(f"rfm-dask {args.command}: internal error: {type(exc).__name__}: {_one_line(exc)} "
              "(run again with --debug for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL
    return 0


def _cluster_failure(args: argparse.Namespace, exc: Exception, client: Any) -> str | None:
    """What to tell the user when ``exc`` is the cluster failing under a command (None for anything else): a worker
    that kept dying (most likely of its memory limit), or the scheduler lost, with how to continue. ``client``: the
    command's Dask client or None; an ``OSError`` is the scheduler lost only when that client is no longer running."""
    from concurrent.futures import CancelledError

    from dask.utils import format_bytes, key_split
    from distributed import KilledWorker
    from distributed.comm.core import CommClosedError

    if isinstance(exc, KilledWorker):
        limit = getattr(exc.last_worker, "memory_limit", 0)
        return (f"the workers kept dying while running {key_split(exc.task)!r} ({exc.allowed_failures + 1} tries), "
                f"most likely of their memory limit ({format_bytes(limit) if limit else 'none set'} per worker): "
                "give the workers more memory, or lower rfm.block-bytes and rfm.tile-elements")
    disconnected = client is not None and client.status != "running"
    if not (isinstance(exc, (CancelledError, CommClosedError)) or (isinstance(exc, OSError) and disconnected)):
        return None
    text = "lost the connection to the Dask scheduler" + (f" at {args.scheduler}" if args.scheduler else "")
    if args.command != "fit":
        return f"{text}; nothing was written: run the command again"
    checkpoint = Path(args.checkpoint or f"{args.model}.ckpt")
    if checkpoint.exists():
        return f"{text}; the checkpoint {checkpoint} holds the iterations done: run the same command with --resume " \
               "to continue from there"
    return f"{text} before the first iteration was complete: run the same command again"


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
