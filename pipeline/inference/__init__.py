"""Inference on images of any size: overlapping tiles for large images, and ``crackops predict``.

Import the submodules directly (``pipeline.inference.tiling`` is numpy-only).
"""
