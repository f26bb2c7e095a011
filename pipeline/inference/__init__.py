"""All inference: resize-or-tile and thresholding (``probabilities``), tiles (``tiling``), and
``crackops predict`` over files and folders (``predict``).

Import the submodules directly (``pipeline.inference.tiling`` is numpy-only). Nothing here imports
MLflow: the pyfunc model (:mod:`pipeline.tracking.pyfunc`) calls this package, not the reverse.
"""
