"""Pipelines run from the repository root (``python -m pipelines...``); not part of the installed package."""
