"""How far an exported graph is from the PyTorch model it came from: probabilities and test F1."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import nn

from pipeline.data.dataset import CrackDataset
from pipeline.inference.probabilities import Segmenter, predict_probabilities
from pipeline.metrics.pixel import Counts, count

# FP32 ONNX must give PyTorch's probabilities to within this (the bound; typical is 1e-6).
FP32_TOLERANCE = 1e-4


def load_split(prepared_dir: Path, split: str) -> CrackDataset:
    """A prepared split in memory, its RGB uint8 ``images`` and 0/1 ``masks`` (a DatasetError says to
    run ``crackops prepare`` when it is absent)."""
    return CrackDataset(Path(prepared_dir) / split)


def max_probability_gap(reference: Segmenter, exported: Segmenter, images: list[np.ndarray]) -> float:
    """Largest absolute difference of the two models' probabilities over ``images`` (at the input size)."""
    gap = 0.0
    for image in images:
        batch = image[None]
        gap = max(gap, float(np.abs(reference.probabilities(batch) - exported.probabilities(batch)).max()))
    return gap


def pooled_f1(model: nn.Module | Segmenter, data: CrackDataset, img_size: int, threshold: float) -> float:
    """F1 of all the split's pixels pooled, as ``crackops evaluate`` reports it (same resizing as predict)."""
    total = Counts()
    for image, mask in zip(data.images, data.masks):
        probability = predict_probabilities(model, [image], img_size, batch_size=1)[0]
        total = total + count(probability, mask, threshold)
    return total.f1

