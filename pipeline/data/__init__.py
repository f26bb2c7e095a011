"""Data layer: synthetic crack data, dataset folders, splits, prepared datasets and corruptions."""
from __future__ import annotations

from pipeline.data.augment import build_train_augmentation
from pipeline.data.corruptions import CORRUPTIONS, blur_down_up, gaussian_blur, low_light_blur
from pipeline.data.dataset import CrackDataset
from pipeline.data.folder import (
    IMAGE_EXTENSIONS,
    SamplePair,
    UnreadableFile,
    ValidationReport,
    check_dataset,
    discover_pairs,
    is_strictly_binary,
    mask_from_raw,
    read_image,
    read_mask,
    read_raw_mask,
    validate_pairs,
)
from pipeline.data.prepare import load_manifest, prepare_dataset
from pipeline.data.split import carve_split, split_pairs
from pipeline.data.synthetic import DOMAINS, generate_dataset, render_sample

__all__ = [
    "CORRUPTIONS",
    "DOMAINS",
    "IMAGE_EXTENSIONS",
    "CrackDataset",
    "SamplePair",
    "UnreadableFile",
    "ValidationReport",
    "blur_down_up",
    "build_train_augmentation",
    "carve_split",
    "check_dataset",
    "discover_pairs",
    "gaussian_blur",
    "generate_dataset",
    "is_strictly_binary",
    "load_manifest",
    "low_light_blur",
    "mask_from_raw",
    "prepare_dataset",
    "read_image",
    "read_mask",
    "read_raw_mask",
    "render_sample",
    "split_pairs",
    "validate_pairs",
]
