"""Channel LayerNorm for (B, C, H, W) maps, fused: SAM's ``LayerNorm2d`` math in one kernel."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm2d(nn.Module):
    """Normalise each pixel over its channels; same parameters and result as SAM's ``LayerNorm2d``.

    SAM's version spells the mean and variance out in eight elementwise passes; at the crack
    head's 256x256 maps that costs more than the convolutions around it on a CPU. ``F.layer_norm``
    on the channels-last view does it in one, and channels-last inputs need no copy for it.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
        return normed.permute(0, 3, 1, 2)
