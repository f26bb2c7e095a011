"""Evaluation metrics for binary crack segmentation."""
from __future__ import annotations

from pipeline.metrics.meter import SegmentationMeter
from pipeline.metrics.pixel import Counts, count, count_batch, summarize
from pipeline.metrics.pixel_ap import PixelAPMeter
from pipeline.metrics.tolerance import ToleranceMeter, average_precision, threshold_grid

__all__ = [
    "Counts",
    "PixelAPMeter",
    "SegmentationMeter",
    "ToleranceMeter",
    "average_precision",
    "count",
    "count_batch",
    "summarize",
    "threshold_grid",
]
