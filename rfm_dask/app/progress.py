"""Progress on stderr for the command line: tqdm bars (ingest and predict rows, fit iterations and CG steps), or
the ``rfm_dask`` logger's lines where stderr is not a terminal."""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator


def progress_bar(label: str, unit: str, quiet: bool, total: int | None = None, position: int = 0) -> Any:
    """A tqdm progress bar on stderr: off with --quiet, or when stderr is not a terminal."""
    from tqdm.auto import tqdm

    return tqdm(desc=label, unit=unit, total=total, position=position, file=sys.stderr, leave=position == 0,
                disable=quiet or not sys.stderr.isatty(), dynamic_ncols=True, unit_scale=unit == "rows")


@contextmanager
def row_progress(label: str, quiet: bool) -> Iterator[Callable[[int, int], None]]:
    """A ``row_progress(done, total)`` callback (rows; total 0 when unknown) drawing a progress bar, closed on exit."""
    bar = progress_bar(label, "rows", quiet)

    def report(done: int, total: int) -> None:
        if total and bar.total != total:
            bar.reset(total=total)
        bar.update(done - bar.n)

    try:
        yield report
    finally:
        bar.close()


def bars_on(quiet: bool) -> bool:
    """Whether progress bars are drawn: not with --quiet, and only on a terminal (logs get lines instead)."""
    return not quiet and sys.stderr.isatty()


def log_progress(quiet: bool) -> None:
    """Lines from the ``rfm_dask`` logger on stderr (not with --quiet); per-iteration lines only where no progress
    bar shows the iterations (stderr is not a terminal)."""
    logger = logging.getLogger("rfm_dask")
    logger.setLevel(logging.WARNING if quiet else logging.DEBUG if bars_on(quiet) else logging.INFO)
    for old in [h for h in logger.handlers if getattr(h, "_rfm_cli", False)]:  # an earlier main() in this process
        logger.removeHandler(old)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("rfm-dask: %(message)s"))
    handler.setLevel(logging.INFO)
    handler._rfm_cli = True
    logger.addHandler(handler)
    if bars_on(quiet):
        handler.addFilter(lambda record: not hasattr(record, "rfm_step"))


class FitBars(logging.Handler):
    """Progress bars of a fit, driven by the ``rfm_dask`` logger's records that carry ``rfm_step`` = (kind, step,
    total): RFM iterations ("iteration", with the iteration's metrics) and the CG steps of the current solve
    ("cg")."""

    def __init__(self, quiet: bool, iters: int) -> None:
        super().__init__(logging.DEBUG)
        self.iterations = progress_bar("fit", "iteration", quiet, total=iters + 1)
        self.steps = progress_bar("CG steps", "step", quiet, position=1)

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
def fit_progress(quiet: bool, iters: int) -> Iterator[None]:
    """Fit progress bars (iterations, CG steps) while the block runs."""
    logger = logging.getLogger("rfm_dask")
    bars = FitBars(quiet, iters)
    logger.addHandler(bars)
    try:
        yield
    finally:
        logger.removeHandler(bars)
        bars.close()
