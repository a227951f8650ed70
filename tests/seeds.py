"""Seeds of the tests whose tolerances are set by the arithmetic rather than by one run: a few in the default run,
more on request (``RFM_TEST_SEEDS=100 pytest ...`` checks 100 seeds in every such test)."""

from __future__ import annotations

import os


def seeds(default: int) -> list[int]:
    """Seeds 0 .. n-1: n from ``RFM_TEST_SEEDS`` when set, else ``default`` (kept small for the default run)."""
    return list(range(int(os.environ.get("RFM_TEST_SEEDS") or default)))
