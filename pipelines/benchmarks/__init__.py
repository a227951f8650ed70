"""Benchmarks of rfm_dask: ``python -m pipelines.benchmarks.scaling --config pipelines/benchmarks/scaling.toml``."""
