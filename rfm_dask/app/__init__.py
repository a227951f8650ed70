"""What users run: the ``rfm-dask`` command line (``cli``, its ``commands``, ``config_file`` and ``progress``), the
options it derives from the estimators (``param_flags``), the batch jobs (``workflows``) and the reading of a fitted
model (``inspection``)."""
