"""Text and Markdown tables (rfm_dask.tables, laid out by tabulate)."""

from __future__ import annotations

from rfm_dask.tables import markdown_table, text_table

RECORDS = [
    {"model": "RFM", "r2": 0.51234, "rmse": 12.345678, "best_iter": 3, "note": None},
    {"model": "lazy | M = I", "r2": -0.4, "rmse": 9.1, "best_iter": 0, "note": "x"},
]


def _spans(rule: str) -> list[tuple[int, int]]:
    """(start, stop) of each column, from the rule of dashes under the header."""
    spans, start = [], None
    for i, ch in enumerate(rule + " "):
        if ch == "-" and start is None:
            start = i
        elif ch != "-" and start is not None:
            spans.append((start, i))
            start = None
    return spans


def test_text_table_aligns_decimal_points_and_formats_cells():
    lines = text_table(RECORDS, ["model", "rmse", "r2", "best_iter", "note"]).splitlines()
    assert lines[0].split() == ["model", "rmse", "r2", "best_iter", "note"]
    (_, _), (a, b), *_ = _spans(lines[1])
    rmse = [line[a:b] for line in lines[2:]]
    assert [cell.strip() for cell in rmse] == ["12.35", "9.1"]  # 4 significant digits
    assert rmse[0].index(".") == rmse[1].index(".")  # decimal points in one column
    assert lines[2].rstrip().endswith("3")  # a missing value is an empty cell


def test_markdown_table_right_aligns_numbers_and_escapes_pipes():
    lines = markdown_table(RECORDS).splitlines()
    assert [c.strip() for c in lines[0].strip("|").split("|")] == ["model", "r2", "rmse", "best_iter", "note"]
    rule = [c.strip() for c in lines[1].strip("|").split("|")]
    assert rule[0].startswith(":") and all(c.endswith(":") and not c.startswith(":") for c in rule[1:4])
    assert "lazy \\| M = I" in lines[3] and lines[3].count(" | ") == 4
    assert "0.5123" in lines[2]


def test_columns_pick_and_order_keys_present_in_some_record():
    history = [{"iteration": 0, "val_mse": 0.25, "solver": "direct"}, {"iteration": 1, "val_mse": 0.125}]
    columns = ("iteration", "val_accuracy", "val_mse", "solver", "cg_iterations", "residual", "seconds")
    header = text_table(history, columns).splitlines()[0].split()
    assert header == ["iteration", "val_mse", "solver"]
