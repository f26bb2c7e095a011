"""Binary focal loss as used by the DeepLabV3 crack study."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BinaryFocalLoss(nn.Module):
    """Binary focal loss, mean over pixels, with ``p = sigmoid(logits)``::

        FL = −[ α·t·(1−p)^γ·log p  +  (1−t)·p^γ·log(1−p) ]

    ``α`` weights only the positive (crack) term. Cracks are a few percent of the
    pixels, so ``α > 1`` up-weights the rare class; that is why the study's α=3 is
    valid here, unlike RetinaNet's α∈[0,1] which splits a unit weight between classes.
    ``γ`` down-weights well-classified pixels; γ=0, α=1 is plain BCE.
    """

    def __init__(self, alpha: float = 3.0, gamma: float = 2.0) -> None:
        super().__init__()
        if alpha < 0.0:
            raise ValueError(f"focal alpha must be >= 0, got {alpha}")
        if gamma < 0.0:
            raise ValueError(f"focal gamma must be >= 0, got {gamma}")
        self.alpha = float(alpha)
        self.gamma = float(gamma)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape != target.shape:
            # Broadcasting would silently compute a wrong loss.
            raise ValueError(f"logits shape {tuple(logits.shape)} != target shape {tuple(target.shape)}")
        x = logits.float()
        t = target.float()
        # log p and log(1−p) from logsigmoid: no log(0) for saturated logits.
        log_p = F.logsigmoid(x)
        log_1mp = F.logsigmoid(-x)
        # (1−p)^γ as exp(γ·log(1−p)): finite gradient even where 1−p underflows to 0.
        pos = self.alpha * t * torch.exp(self.gamma * log_1mp) * log_p
        neg = (1.0 - t) * torch.exp(self.gamma * log_p) * log_1mp
        return -(pos + neg).mean()

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}"
