"""Run a model over a loader batch by batch: logits for validation, probabilities for evaluation.

Here, in the training layer, because the loop's validation needs it; evaluation and inference sit
above training and import it from here.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader

from pipeline.training.precision import autocast


@torch.no_grad()
def logit_batches(
    model: nn.Module, loader: DataLoader, device: torch.device, amp_dtype: torch.dtype | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(logits, masks)`` per batch: float32 logits on ``device``, masks as the loader gives them."""
    was_training = model.training
    model.eval()
    try:
        for images, masks in loader:
            with autocast(device, amp_dtype):
                logits = model(images.to(device, non_blocking=True))
            yield logits.float(), masks
    finally:
        model.train(was_training)


def predict_batches(
    model: nn.Module, loader: DataLoader, device: torch.device, amp_dtype: torch.dtype | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(probabilities, masks)`` per batch, both (B, 1, H, W) float32 on the CPU."""
    for logits, masks in logit_batches(model, loader, device, amp_dtype):
        yield torch.sigmoid(logits).cpu(), masks
