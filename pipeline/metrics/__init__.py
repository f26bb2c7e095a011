"""Evaluation metrics for binary crack segmentation."""
from __future__ import annotations

from pipeline.metrics.meter import SegmentationMeter
from pipeline.metrics.pixel import Counts, count, count_batch, summarize
from pipeline.metrics.pixel_ap import PixelAPMeter
from pipeline.metrics.bsds_rule import BSDSRuleMeter
from pipeline.metrics.curves import average_precision, threshold_grid
from pipeline.metrics.square_rule import SquareRuleMeter
from pipeline.metrics.tolerance import TOLERANCE_RULES, tolerance_meter

__all__ = [
    "BSDSRuleMeter",
    "Counts",
    "PixelAPMeter",
    "SegmentationMeter",
    "SquareRuleMeter",
    "TOLERANCE_RULES",
    "average_precision",
    "count",
    "count_batch",
    "summarize",
    "threshold_grid",
    "tolerance_meter",
]
