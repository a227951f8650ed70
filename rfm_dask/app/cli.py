"""The ``rfm-dask`` command line: ingest, fit, predict, evaluate, inspect.

Every command takes ``--scheduler ADDRESS`` (else it runs on a local in-process cluster where it needs one) and
``--config FILE`` (YAML or TOML: a table per command, e.g. ``[fit]`` with ``iters = 8``; each value is parsed as
the command line parses it; command-line options win). Bad input ends the command with a one-line reason on stderr,
in command-line spelling, and exit status 2; ``--debug`` shows the traceback. Progress bars (tqdm) are drawn on
stderr when it is a terminal.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from rfm_dask.app.commands import (
    check_fit,
    check_ingest,
    check_predict,
    cmd_evaluate,
    cmd_fit,
    cmd_ingest,
    cmd_inspect,
    cmd_predict,
    fit_parameters,
)
from rfm_dask.app.config_file import apply_config, load_config
from rfm_dask.app.progress import log_progress

EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 1


class ClusterError(RuntimeError):
    """The Dask cluster failed under a command (see ``_cluster_failure``)."""


# -- parsers -------------------------------------------------------------------------------------------------------
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
    """The estimator's parameters as ``fit`` options (``param_flags``: names, defaults, help and parsing from the
    estimator; see ``fit_parameters``). Values are checked by the estimator, before a cluster starts (see
    ``check_fit``); ``--random-state`` defaults to 0, so the command line is reproducible by default."""
    from rfm_dask.app.param_flags import add_parameter_options
    from rfm_dask.estimators import RFMRegressor

    add_parameter_options(fit, RFMRegressor, fit_parameters(), defaults={"random_state": 0})


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser and each command's parser by name."""
    from rfm_dask import __version__

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
        apply_config(commands[args.command], args.command, load_config(args.config), args.config, commands)
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

    from rfm_dask.parallel.cluster import close_local_client, local_client

    try:
        with dask.config.set({"rfm.dashboard": args.dashboard}):
            client = local_client()
        yield client
    finally:
        close_local_client()


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
        log_progress(args.quiet)
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
