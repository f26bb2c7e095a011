"""Lightweight SAM (``model.family: sam_lite``): a TinyViT student distilled from SAM plus a crack head."""
from __future__ import annotations

from pipeline.models.sam_lite.crack_head import CrackHead, MultiScaleConv
from pipeline.models.sam_lite.model import (
    PLACEHOLDER_KEY,
    STRIDE_KEY,
    SamLiteSegmenter,
    build_sam_lite,
    build_student,
    embedding_grid,
    load_student_weights,
)
from pipeline.models.sam_lite.student import SamLiteStudent

__all__ = [
    "PLACEHOLDER_KEY",
    "STRIDE_KEY",
    "CrackHead",
    "MultiScaleConv",
    "SamLiteSegmenter",
    "SamLiteStudent",
    "build_sam_lite",
    "build_student",
    "embedding_grid",
    "load_student_weights",
]
