"""Phenomena pipelines (DESIGN section 4): AGOP-RFM, FACT-RFM and the lazy kernel on the papers' synthetic tasks.

Run ``python -m pipelines.phenomena --config pipelines/phenomena/phenomena.toml`` from the repository root.
"""
