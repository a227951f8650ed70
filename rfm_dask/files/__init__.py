"""What is written to disk: model files (``model_file``, arrays + JSON, no pickle), checkpoints, Zarr stores and
atomic writes."""
