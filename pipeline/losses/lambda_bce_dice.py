"""Convex mix of BCE and Dice (CrackSAM; SAC configs 1-2)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.losses.dice import DiceLoss


class LambdaBceDiceLoss(nn.Module):
    """``λ·BCE + (1−λ)·Dice`` with ``0 ≤ λ ≤ 1``; λ=0 is pure Dice, λ=1 pure BCE."""

    def __init__(self, lam: float, dice: DiceLoss) -> None:
        super().__init__()
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"lambda_bce_dice needs 0 <= lam <= 1, got {lam}")
        self.lam = float(lam)
        self.dice = dice

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # float32 BCE from logits: stable for saturated logits and autocast-safe.
        bce = F.binary_cross_entropy_with_logits(logits.float(), target.float())
        return self.lam * bce + (1.0 - self.lam) * self.dice(logits, target)

    def extra_repr(self) -> str:
        return f"lam={self.lam}"
