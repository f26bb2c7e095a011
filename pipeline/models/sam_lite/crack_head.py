"""The lightweight-SAM crack head: upsample the 256-channel embedding, mix scales, one logit per pixel."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.sam_lite.layers import LayerNorm2d


class MultiScaleConv(nn.Module):
    """Split channels into ``groups`` equal parts: a 1x1 conv on the first, 3x3 convs with dilation
    1, 2, ... (the group index) on the others, outputs concatenated back to ``channels``.

    Growing dilation gives each group a wider view (3, 5, 7, ... pixels) at the cost of a 3x3 conv,
    so thin and wide cracks both find a matching receptive field.
    """

    def __init__(self, channels: int, groups: int = 4) -> None:
        super().__init__()
        if groups < 1 or channels % groups:
            raise ValueError(f"channels ({channels}) must split into {groups} equal groups")
        self.groups = groups
        width = channels // groups
        branches = [nn.Conv2d(width, width, kernel_size=1)]
        branches += [nn.Conv2d(width, width, kernel_size=3, padding=d, dilation=d) for d in range(1, groups)]
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.chunk(x, self.groups, dim=1)
        return torch.cat([branch(part) for branch, part in zip(self.branches, parts)], dim=1)


def _up(in_channels: int, out_channels: int) -> nn.Sequential:
    # LayerNorm2d + GELU as in SAM's mask-decoder upscaling: per-pixel normalisation works the same
    # for a one-image batch (one-shot training) as for a large one, unlike BatchNorm.
    return nn.Sequential(
        nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2),
        LayerNorm2d(out_channels),
        nn.GELU(),
    )


class CrackHead(nn.Module):
    """(B, 256, G, G) embeddings -> (B, 1, H, W) crack logits.

    Two x2 transposed convolutions (G -> 4G), the multiscale convolution, a 1x1 convolution to one
    logit, then bilinear interpolation to the input size ``(H, W)``.
    """

    def __init__(self, in_channels: int = 256, channels: tuple[int, int] = (256, 128), groups: int = 4) -> None:
        super().__init__()
        first, second = channels
        self.up1 = _up(in_channels, first)
        self.up2 = _up(first, second)
        self.multiscale = MultiScaleConv(second, groups)
        self.mix_norm = LayerNorm2d(second)
        self.act = nn.GELU()
        self.logit = nn.Conv2d(second, 1, kernel_size=1)
        self.to(memory_format=torch.channels_last)  # as the student's embeddings

    def forward(self, embeddings: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = self.up2(self.up1(embeddings))
        x = self.act(self.mix_norm(self.multiscale(x)))
        logits = self.logit(x)
        if tuple(logits.shape[-2:]) != tuple(size):
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits
