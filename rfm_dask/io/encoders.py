"""Column encoders: standardised numbers and timestamp parts, one-hot categories; each fitted in one streaming
pass and serialisable to a JSON-ready dict."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rfm_dask.io import validate as v
from rfm_dask.io.columns import (
    BOOL,
    CATEGORICAL,
    KINDS,
    NUMERIC,
    TIMESTAMP,
    TIMESTAMP_PARTS,
    category_values,
    check_kind,
    numeric_values,
    timestamp_values,
)
from rfm_dask.io.errors import DataError
from rfm_dask.io.stats import Moments

MISSING = "__missing"
NULL_CATEGORY = "__null__"
OTHER_CATEGORY = "__other__"
MAX_TRACKED_CATEGORIES = 1 << 16  # distinct values counted per column before giving up (identifier-like column)
HIGH_CARDINALITY = ("error", "top")
FLOAT32_MAX = float(np.finfo(np.float32).max)


def _values(name: str, kind: str, parts: list[str], arr: pa.Array) -> np.ndarray:
    """(b, len(parts)) float64 values of a standardised column, NaN where null."""
    check_kind(name, kind, arr.type)
    if kind != TIMESTAMP:
        return numeric_values(name, arr)[:, None]
    try:
        return timestamp_values(arr, parts)
    except pa.ArrowInvalid as err:  # a time zone that is not in the time zone database
        raise DataError(f"column {name!r} ({arr.type}): {err}") from None


@dataclass
class Standardised:
    """Numeric, bool or timestamp column -> (b, len(parts) + indicator) float features.

    Each part (the value itself for numbers, calendar parts for timestamps) becomes (x - mean) / scale, with nulls
    imputed by the training mean (so 0); then a 0/1 ``<name>__missing`` column if ``indicator``.
    """

    name: str
    kind: str
    arrow_type: str
    parts: list[str]
    mean: list[float]
    scale: list[float]
    indicator: bool

    @property
    def feature_names(self) -> list[str]:
        names = [f"{self.name}__{p}" for p in self.parts] if self.kind == TIMESTAMP else [self.name]
        return names + [self.name + MISSING] * self.indicator

    def encode(self, arr: pa.Array, out: np.ndarray) -> int:
        """Write the (b, width) features into ``out``; returns 0 (no unseen values for numbers)."""
        values = _values(self.name, self.kind, self.parts, arr)
        missing = np.isnan(values)
        p = len(self.parts)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            scaled = np.where(missing, 0.0, (values - np.asarray(self.mean)) / np.asarray(self.scale))
        n_large = int((~(np.abs(scaled) <= FLOAT32_MAX)).sum())
        if n_large:
            raise DataError(f"column {self.name!r} holds {n_large} value(s) too large for float32 features once "
                            f"standardised: replace or remove them first")
        out[:, :p] = scaled
        if self.indicator:
            out[:, p] = missing.any(axis=1)
        return 0

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "arrow_type": self.arrow_type, "parts": list(self.parts),
                "mean": list(self.mean), "scale": list(self.scale), "indicator": self.indicator}

    @classmethod
    def from_dict(cls, d: dict, where: str) -> Standardised:
        kind = v.get_choice(d, "kind", (NUMERIC, BOOL, TIMESTAMP), where)
        parts = v.get_list(d, "parts", str, where)
        allowed = list(TIMESTAMP_PARTS) if kind == TIMESTAMP else ["value"]
        bad = any(p not in allowed for p in parts) or len(set(parts)) < len(parts)
        if bad or (kind != TIMESTAMP and len(parts) != 1):
            raise ValueError(f"{where}: parts {parts} do not fit a {kind} column (allowed: {allowed})")
        return cls(v.get(d, "name", str, where), kind, v.get(d, "arrow_type", str, where), parts,
                   v.get_finite(d, "mean", len(parts), where),
                   v.get_finite(d, "scale", len(parts), where, positive=True), v.get(d, "indicator", bool, where))


@dataclass
class OneHot:
    """Categorical column -> (b, width) 0/1 features: one per category (sorted), then ``<name>=__null__`` if nulls
    were seen in training, then ``<name>=__other__`` if the column was capped to its most frequent values.

    A value outside ``categories`` goes to ``__other__`` when there is one; otherwise it is unseen: all zeros, and
    counted. A null without a ``__null__`` column is all zeros too (not counted).
    """

    name: str
    arrow_type: str
    categories: list[str]
    null_category: bool
    other: bool
    kind: str = field(default=CATEGORICAL, init=False)

    def __post_init__(self) -> None:
        self._value_set = pa.array(self.categories, type=pa.string())

    @property
    def feature_names(self) -> list[str]:
        extra = [NULL_CATEGORY] * self.null_category + [OTHER_CATEGORY] * self.other
        return [f"{self.name}={c}" for c in self.categories + extra]

    def encode(self, arr: pa.Array, out: np.ndarray) -> int:
        """Write the (b, width) one-hot features into ``out`` (zeros on entry); returns the unseen count."""
        check_kind(self.name, CATEGORICAL, arr.type)
        values = category_values(arr)
        index = pc.fill_null(pc.index_in(values, value_set=self._value_set), -1).to_numpy(zero_copy_only=False)
        found = index >= 0
        out[np.flatnonzero(found), index[found]] = 1.0
        null = values.is_null().to_numpy(zero_copy_only=False)
        k = len(self.categories)
        if self.null_category:
            out[null, k] = 1.0
        outside = ~found & ~null
        if self.other:
            out[outside, k + self.null_category] = 1.0
            return 0
        return int(outside.sum())

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "arrow_type": self.arrow_type,
                "categories": list(self.categories), "null_category": self.null_category, "other": self.other}

    @classmethod
    def from_dict(cls, d: dict, where: str) -> OneHot:
        categories = v.get_list(d, "categories", str, where)
        if categories != sorted(set(categories)):
            raise ValueError(f"{where}: 'categories' must be sorted and distinct")
        return cls(v.get(d, "name", str, where), v.get(d, "arrow_type", str, where), categories,
                   v.get(d, "null_category", bool, where), v.get(d, "other", bool, where))


Encoder = Union[Standardised, OneHot]


def encoder_from_dict(d: dict, where: str) -> Encoder:
    """The encoder a dict written by ``to_dict`` describes (validated)."""
    kind = v.get_choice(d, "kind", KINDS, where)
    return OneHot.from_dict(d, where) if kind == CATEGORICAL else Standardised.from_dict(d, where)


class StandardisedFit:
    """Streaming fit of a ``Standardised`` encoder: float64 moments of each part over the non-null rows."""

    def __init__(self, name: str, kind: str, arrow_type: pa.DataType) -> None:
        self.name, self.kind, self.arrow_type = name, kind, str(arrow_type)
        self.parts = list(TIMESTAMP_PARTS) if kind == TIMESTAMP else ["value"]
        self.moments = Moments(len(self.parts))
        self.n_missing = 0
        self.constant = False

    def update(self, arr: pa.Array) -> None:
        values = _values(self.name, self.kind, self.parts, arr)
        missing = np.isnan(values).any(axis=1)
        self.n_missing += int(missing.sum())
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is checked in finish
            self.moments.add(values[~missing])

    def finish(self) -> Standardised | None:
        """The encoder; a constant number is kept (centred, scale 1), constant timestamp parts are dropped.
        None for a timestamp whose parts are all constant and that had no nulls; ``constant`` says so."""
        m = self.moments
        if m.n == 0:
            raise DataError(f"column {self.name!r} has no non-null values: pass it in exclude")
        if not (np.isfinite(m.mean).all() and np.isfinite(m.std).all()):
            raise DataError(f"column {self.name!r} has values too large to standardise in float64 (from "
                            f"{m.lo.min():g} to {m.hi.max():g}): rescale or exclude it")
        keep = ~m.constant if self.kind == TIMESTAMP else np.ones(len(self.parts), bool)
        self.constant = bool(m.constant.all())
        if not keep.any() and not self.n_missing:
            return None
        scale = np.where(m.constant | ~(m.std > 0), 1.0, m.std)  # std underflows to 0 for subnormal spreads
        return Standardised(self.name, self.kind, self.arrow_type, [p for p, k in zip(self.parts, keep) if k],
                            m.mean[keep].tolist(), scale[keep].tolist(), self.n_missing > 0)


class OneHotFit:
    """Streaming fit of a ``OneHot`` encoder: counts of each value (and of nulls)."""

    def __init__(self, name: str, arrow_type: pa.DataType, max_categories: int, high_cardinality: str) -> None:
        self.name, self.arrow_type = name, str(arrow_type)
        self.max_categories, self.high_cardinality = max_categories, high_cardinality
        self.counts: Counter[str] = Counter()
        self.n_null = 0
        self.constant = False

    def update(self, arr: pa.Array) -> None:
        check_kind(self.name, CATEGORICAL, arr.type)
        counted = pc.value_counts(category_values(arr))
        for value, count in zip(counted.field("values").to_pylist(), counted.field("counts").to_pylist()):
            if value is None:
                self.n_null += count
            else:
                self.counts[value] += count
        n = len(self.counts)
        if n > self.max_categories and self.high_cardinality == "error":
            raise DataError(
                f"column {self.name!r} has at least {n} distinct values, more than max_categories="
                f"{self.max_categories}: raise max_categories, pass high_cardinality='top' to keep the "
                f"{self.max_categories} most frequent (others in '{self.name}={OTHER_CATEGORY}'), or exclude it")
        if n > MAX_TRACKED_CATEGORIES:
            raise DataError(f"column {self.name!r} has more than {MAX_TRACKED_CATEGORIES} distinct values (an "
                            f"identifier?): pass it in exclude")

    def finish(self) -> OneHot:
        capped = len(self.counts) > self.max_categories
        kept = sorted(self.counts, key=lambda c: (-self.counts[c], c))[: self.max_categories]
        self.constant = len(self.counts) + (self.n_null > 0) <= 1
        return OneHot(self.name, self.arrow_type, sorted(kept), self.n_null > 0, capped)

