"""Sphinx configuration of the rfm_dask documentation: numpydoc API reference, sphinx-gallery examples.

Build with ``make docs`` (warnings are errors); the gallery's examples run during the build on tiny data.
"""

from __future__ import annotations


import rfm_dask

project = "rfm_dask"
author = "rfm_dask developers"
copyright = "rfm_dask developers"
release = version = rfm_dask.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
]

exclude_patterns = ["_build", "_templates", "examples", "**.ipynb_checkpoints"]
templates_path = ["_templates"]
html_theme = "alabaster"
html_static_path: list[str] = []
html_theme_options = {"description": "Recursive Feature Machines on Dask", "page_width": "1100px"}

autosummary_generate = True
autodoc_typehints = "none"  # the numpydoc sections state the types and shapes
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
default_role = "literal"  # `x` in a docstring is code, as ``x``

# no network during the build: cross-references to other projects are not resolved online
intersphinx_mapping: dict[str, tuple[str, None]] = {}

sphinx_gallery_conf = {
    "examples_dirs": ["examples"],
    "gallery_dirs": ["auto_examples"],
    "filename_pattern": r"/plot_",
    "download_all_examples": False,
    "remove_config_comments": True,
    "abort_on_example_error": True,
    "plot_gallery": "True",
    "within_subsection_order": "FileNameSortKey",
}

