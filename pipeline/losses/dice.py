"""Soft Dice loss in the two variants used by the crack segmentation studies."""
from __future__ import annotations

import torch
from torch import nn

# Only guards 0/0 on an empty image with an empty prediction; small enough not to bias the loss.
_EPS = 1e-6


class DiceLoss(nn.Module):
    """``1 - Dice`` on ``p = sigmoid(logits)``, computed per image then averaged over the batch.

    ``squared=True`` (SAC study): ``1 - (2·Σp·t + s) / (Σp² + Σt² + s)``.
    ``squared=False, smooth=1.0`` (lightweight-SAM study): ``1 - (2·Σp·t + 1) / (Σp + Σt + 1)``.
    ``s`` is ``smooth``, or 1e-6 when ``smooth`` is None.
    """

    def __init__(self, squared: bool = True, smooth: float | None = None) -> None:
        super().__init__()
        if smooth is not None and smooth < 0:
            raise ValueError(f"smooth must be >= 0, got {smooth}")
        self.squared = squared
        self.smooth = _EPS if smooth is None else float(smooth)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape != target.shape:
            # Broadcasting would silently compute a wrong loss.
            raise ValueError(f"logits shape {tuple(logits.shape)} != target shape {tuple(target.shape)}")
        # float32 so the sums stay accurate under autocast (fp16/bf16 sums over 10^5 pixels drift).
        p = torch.sigmoid(logits.float()).flatten(1)
        t = target.float().flatten(1)
        inter = (p * t).sum(dim=1)
        if self.squared:
            denom = (p * p).sum(dim=1) + (t * t).sum(dim=1)
        else:
            denom = p.sum(dim=1) + t.sum(dim=1)
        dice = (2.0 * inter + self.smooth) / (denom + self.smooth)
        return (1.0 - dice).mean()

    def extra_repr(self) -> str:
        return f"squared={self.squared}, smooth={self.smooth}"
