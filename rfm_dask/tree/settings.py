"""The parameters of a tree of leaf RFMs: how it is grown and routed, and the ``leaf_size="auto"`` rule."""

from __future__ import annotations

from dataclasses import dataclass

#: ``leaf_init`` values: a leaf's RFM starts from M = I, or from the M of its parent node's split model.
LEAF_INITS = ("identity", "parent")
#: Tuned leaves (``bandwidth``/``reg="auto"``): the tree first chooses one (bandwidth, ridge) pair on many
#: validation rows (``tree.tuned.tree_pair``: the tuned RFM fitted once on a seeded sample of ``leaf_size`` training
#: rows, validated on a seeded sample of at most ``leaf_size`` validation rows). A leaf with at least this many
#: validation rows tunes on them, with that pair as its untuned candidate (``tuning``: kept unless another pair gains
#: consistently); a leaf with fewer uses the pair as it is. From BENCHMARKS.md ("Issue 13's measurement"): tuning on
#: 600 validation rows (the global RFM) was at or above its untuned twin on 7 of 7 tables, leaves tuning on about 150
#: lost to the untuned tree on 2 of 7. ``centre_agop="auto"`` follows the same rule: a leaf with fewer validation rows
#: takes the tuned tree's decision (``tree_pair``), or the uncentred AGOP in an untuned tree (``rfm_loop.untuned``).
LEAF_TUNE_MIN_ROWS = 600


@dataclass(frozen=True)
class TreeSettings:
    """How the tree is grown: at most ``leaf_size`` training rows per leaf, split models on ``split_samples`` rows
    of their node by ``split_method`` (see ``split.SPLIT_METHODS``), leaves started from ``leaf_init`` (see
    ``LEAF_INITS``), predictions routed hard (``temperature`` None) or soft."""

    leaf_size: int
    split_samples: int = 2000
    split_method: str = "agop"
    leaf_init: str = "identity"
    temperature: float | None = None

    def __post_init__(self) -> None:
        check_leaf_init(self.leaf_init, self.split_method)


def check_leaf_init(leaf_init: str, split_method: str) -> None:
    """Raise ValueError for a ``leaf_init`` that is not one of ``LEAF_INITS`` or that ``split_method`` cannot serve."""
    if leaf_init not in LEAF_INITS:
        raise ValueError(f"leaf_init must be one of {LEAF_INITS}, got {leaf_init!r}")
    if leaf_init == "parent" and split_method != "agop":
        raise ValueError("leaf_init='parent' starts each leaf from its parent's split model's M, which only "
                         f"split_method='agop' fits (got split_method={split_method!r})")


def resolve_leaf_size(leaf_size: int | str | None) -> int | None:
    """The leaf size a fit uses: an int as given, and None or "auto" as None (the global model).

    "auto" is what the measurements show wins (BENCHMARKS.md, "The tuned global RFM against the tuned tree at full
    size"): with its bandwidth and ridge tuned (the defaults) the global RFM was at or above the tuned tree of 4 000-row
    leaves on the four real tables measured (19 000 to 221 000 fit rows; ahead by up to 0.012 R², behind by at most
    0.0002) and 3-10x faster, so "auto" is the global model at every n.
    """
    if isinstance(leaf_size, str) and leaf_size == "auto":
        return None
    return None if leaf_size is None else int(leaf_size)


def leaf_tunes(n_val: int) -> bool:
    """Whether a leaf of a tuned tree with ``n_val`` validation rows tunes on them (``LEAF_TUNE_MIN_ROWS``)."""
    return n_val >= LEAF_TUNE_MIN_ROWS
