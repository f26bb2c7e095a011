"""MLflow tracking: run setup, lineage tags, the epoch callback, the pyfunc model and tracked training.

Import the submodules directly (``pipeline.tracking.tracked_training``); this package file stays
empty so that importing one piece does not pull in torch or MLflow for the others.
"""
