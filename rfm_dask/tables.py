"""Plain-text and Markdown tables of records (lists of dicts), for the CLI, the demo and the pipelines."""

from __future__ import annotations

from typing import Any, Sequence


def format_cell(value: Any) -> str:
    """A compact cell: 4 significant digits for floats, empty for None."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _columns(records: Sequence[dict], columns: Sequence[str] | None) -> list[str]:
    if columns is None:
        columns = list(dict.fromkeys(key for record in records for key in record))
    return [c for c in columns if any(c in record for record in records)]


def text_table(records: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    """A fixed-width table with a header and a rule; ``columns`` picks and orders the keys (default: all)."""
    cols = _columns(records, columns)
    rows = [[format_cell(record.get(c)) for c in cols] for record in records]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cell.rjust(w) for cell, w in zip(cells, widths))

    return "\n".join([line(cols), line(["-" * w for w in widths]), *map(line, rows)])


def markdown_table(records: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    """A GitHub-flavoured Markdown table of the records."""
    cols = _columns(records, columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(format_cell(record.get(c)) for c in cols) + " |" for record in records]
    return "\n".join(lines)
