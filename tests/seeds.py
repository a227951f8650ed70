"""Seeds of the tests whose tolerances are set by the arithmetic rather than by one run: a few in the default run,
more on request (``RFM_TEST_SEEDS=100 pytest ...`` checks 100 seeds)."""

from __future__ import annotations

import os

SEEDS = list(range(int(os.environ.get("RFM_TEST_SEEDS", "3"))))
