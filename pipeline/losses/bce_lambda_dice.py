"""BCE plus weighted Dice (SAC config 3)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.losses.dice import DiceLoss


class BceLambdaDiceLoss(nn.Module):
    """``BCE + λ·Dice`` with ``λ ≥ 0`` (the SAC study's best is λ=0.65)."""

    def __init__(self, lam: float, dice: DiceLoss) -> None:
        super().__init__()
        if lam < 0.0:
            raise ValueError(f"bce_lambda_dice needs lam >= 0, got {lam}")
        self.lam = float(lam)
        self.dice = dice

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # float32 BCE from logits: stable for saturated logits and autocast-safe.
        bce = F.binary_cross_entropy_with_logits(logits.float(), target.float())
        return bce + self.lam * self.dice(logits, target)

    def extra_repr(self) -> str:
        return f"lam={self.lam}"
