"""The target column: the task (regression or classification), the class labels, and y as stored."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rfm_dask.io.columns import BOOL, CATEGORICAL, NUMERIC, check_kind, kind_of, numeric_values
from rfm_dask.io.errors import DataError
from rfm_dask.io.validate import check_option

TASKS = ("auto", "regression", "classification")
MAX_AUTO_CLASSES = 20  # task="auto": an integer target with at most this many distinct values is a class label


@dataclass(frozen=True)
class Target:
    """A fitted target: ``encode`` gives (b,) float64 values (regression) or int64 indices into ``classes``."""

    name: str
    kind: str
    task: str
    label_type: pa.DataType
    classes: list | None

    def encode(self, arr: pa.Array) -> np.ndarray:
        """(b,) y of b non-null target values."""
        check_kind(self.name, self.kind, arr.type)
        if self.task == "regression":
            return numeric_values(self.name, arr)
        codes = pc.index_in(_labels(self.name, self.label_type, arr),
                            value_set=pa.array(self.classes, type=self.label_type))
        if codes.null_count:
            raise DataError(f"target {self.name!r} has labels not seen in the first pass (did the data change?)")
        return codes.to_numpy().astype(np.int64)


class TargetFit:
    """One streaming pass over the (non-null) target values -> ``Target``.

    ``task="auto"`` picks classification for string, dictionary and bool targets, and for integer targets with at
    most ``MAX_AUTO_CLASSES`` distinct values; regression otherwise (floats always). Classes are sorted labels kept
    as they are (strings, ints, floats or bools).
    """

    def __init__(self, name: str, dtype: pa.DataType, task: str = "auto") -> None:
        check_option("task", task, TASKS)
        kind = kind_of(dtype)
        if kind not in (NUMERIC, BOOL, CATEGORICAL):
            raise DataError(f"target {name!r} has type {dtype}: it must be numeric, bool, string or dictionary")
        if task == "regression" and kind == CATEGORICAL:
            raise DataError(f"target {name!r} holds labels ({dtype}): regression needs numbers; use "
                            f"task='classification'")
        if task == "auto":
            integer = pa.types.is_integer(dtype)
            task = "classification" if kind != NUMERIC else ("undecided" if integer else "regression")
        self.name, self.kind, self.task = name, kind, task
        self.label_type = _label_type(kind, dtype)
        self.labels: set = set()
        self.sum_sq = 0.0  # of the numeric values: a fit squares them (residuals, MSE)
        self.largest = 0.0  # their largest magnitude

    def update(self, arr: pa.Array) -> None:
        """Add a batch of non-null target values."""
        check_kind(self.name, self.kind, arr.type)
        if self.kind != CATEGORICAL:
            values = numeric_values(self.name, arr)  # raises on +-inf
            with np.errstate(over="ignore"):  # checked in finish
                self.sum_sq += float(np.sum(np.square(values)))
            self.largest = max(self.largest, float(np.max(np.abs(values), initial=0.0)))
        if self.task == "regression":
            return
        self.labels.update(pc.unique(_labels(self.name, self.label_type, arr)).to_pylist())
        if self.task == "undecided" and len(self.labels) > MAX_AUTO_CLASSES:
            self.task, self.labels = "regression", set()

    def finish(self) -> Target:
        task = "classification" if self.task == "undecided" else self.task
        if task == "regression" and not np.isfinite(self.sum_sq):
            raise DataError(f"target {self.name!r} has values too large for float64 arithmetic (up to "
                            f"{self.largest:g} in magnitude: the sum of their squares overflows): rescale it")
        classes = sorted(self.labels) if task == "classification" else None
        if classes is not None and len(classes) < 2:
            raise DataError(f"target {self.name!r} has {len(classes)} class(es) {classes}: nothing to classify")
        return Target(self.name, self.kind, task, self.label_type, classes)


def _label_type(kind: str, dtype: pa.DataType) -> pa.DataType:
    """The type class labels keep: string, bool, int64 (integers, also as dictionary values) or float64."""
    if pa.types.is_dictionary(dtype):
        dtype = dtype.value_type
    if kind == BOOL:
        return pa.bool_()
    if pa.types.is_integer(dtype):
        return pa.int64()
    return pa.string() if kind == CATEGORICAL else pa.float64()


def _labels(name: str, label_type: pa.DataType, arr: pa.Array) -> pa.Array:
    """Target values as labels of ``label_type``."""
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    try:
        return arr.cast(label_type)
    except pa.ArrowInvalid as err:
        raise DataError(f"target {name!r}: values do not fit the label type {label_type} ({err})") from err
