"""Pure NumPy math of the package: no Dask, no config (see ``metrics``)."""
