"""The documentation: every public name in the API reference, the user guide's topics, the build in CI, and (slow)
the Sphinx build itself with warnings as errors, its gallery examples run."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

import rfm_dask
import rfm_dask.io

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"


def test_api_reference_lists_every_public_name():
    listed = set(re.findall(r"^\s{3}(\w+)$", (DOCS / "api.rst").read_text(), flags=re.M))
    public = {n for n in rfm_dask.__all__ if not n.startswith("__")} | set(rfm_dask.io.__all__)
    assert public <= listed, sorted(public - listed)


def test_user_guide_covers_the_topics_and_the_gallery_has_examples():
    index = (DOCS / "index.rst").read_text()
    for page in ("quickstart", "parquet", "larger_than_memory", "cluster", "gpus", "cli", "inspect"):
        assert f"user_guide/{page}" in index and (DOCS / "user_guide" / f"{page}.rst").is_file()
    assert len(list((DOCS / "examples").glob("plot_*.py"))) >= 3


def test_ci_builds_the_docs_after_the_tests():
    steps = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines() if line.startswith("make")]
    assert steps == ["make test", "make test-slow", "make docs"]
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^docs:", makefile, flags=re.M) and "sphinx -W" in makefile


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("sphinx_gallery") is None, reason="needs the docs extra")
def test_sphinx_build_with_warnings_as_errors(tmp_path):
    out = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", "-d",
                          str(tmp_path / "doctrees"), str(DOCS), str(tmp_path / "html")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "html" / "generated" / "rfm_dask.io.TableEncoder.html").is_file()
    assert list((DOCS / "auto_examples" / "images").glob("sphx_glr_plot_*.png"))
