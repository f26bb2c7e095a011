"""CrackSAM's bottleneck adapters and the wrappers that place them in a SAM encoder block."""
from __future__ import annotations

import torch
from torch import nn


class Adapter(nn.Module):
    """Down-project to ``dim``, GELU, up-project; the up-projection starts at zero so an adapted
    model begins exactly as the pretrained one."""

    def __init__(self, embed_dim: int, dim: int) -> None:
        super().__init__()
        self.down = nn.Linear(embed_dim, dim)
        self.act = nn.GELU()
        self.up = nn.Linear(dim, embed_dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(x)))


class SequentialAdapterAttention(nn.Module):
    """Attention followed by a residual adapter (CrackSAM's sequential adapter)."""

    def __init__(self, attn: nn.Module, embed_dim: int, dim: int) -> None:
        super().__init__()
        self.attn = attn
        self.adapter = Adapter(embed_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attn(x)
        return x + self.adapter(x)


class ParallelAdapterMlp(nn.Module):
    """MLP with an adapter beside it, scaled by ``scale`` (CrackSAM's parallel adapter)."""

    def __init__(self, mlp: nn.Module, embed_dim: int, dim: int, scale: float) -> None:
        super().__init__()
        self.mlp = mlp
        self.adapter = Adapter(embed_dim, dim)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x) + self.scale * self.adapter(x)
