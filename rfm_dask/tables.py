"""Plain-text and Markdown tables of records (lists of dicts), for the CLI, the demo and the pipelines, laid out by
``tabulate``: numbers right-aligned on their decimal point, Markdown columns marked left or right aligned."""

from __future__ import annotations

from typing import Any, Sequence

from tabulate import tabulate

FLOAT_FORMAT = ".4g"  # 4 significant digits


def format_cell(value: Any) -> str:
    """A compact cell: 4 significant digits for floats, empty for None."""
    if value is None:
        return ""
    if isinstance(value, float):
        return format(value, FLOAT_FORMAT)
    return str(value)


def _columns(records: Sequence[dict], columns: Sequence[str] | None) -> list[str]:
    if columns is None:
        columns = list(dict.fromkeys(key for record in records for key in record))
    return [c for c in columns if any(c in record for record in records)]


def _table(records: Sequence[dict], columns: Sequence[str] | None, fmt: str, escape: bool = False) -> str:
    cols = _columns(records, columns)
    rows = [[record.get(c) for c in cols] for record in records]
    if escape:  # a "|" inside a cell would end it
        rows = [[v.replace("|", "\\|") if isinstance(v, str) else v for v in row] for row in rows]
    return tabulate(rows, headers=cols, tablefmt=fmt, floatfmt=FLOAT_FORMAT, missingval="")


def text_table(records: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    """A fixed-width table with a header and a rule; ``columns`` picks and orders the keys (default: all)."""
    return _table(records, columns, "simple")


def markdown_table(records: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    """A Markdown (pipe) table of the records: numeric columns right-aligned, "|" in a cell escaped."""
    return _table(records, columns, "pipe", escape=True)

