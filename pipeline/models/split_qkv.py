"""SAM's fused qkv projection exposed as three linears, so LoRA can target q or v alone."""
from __future__ import annotations

import torch
from torch import nn


class SplitQkv(nn.Module):
    """Drop-in replacement for a fused ``qkv`` Linear with children ``q``, ``k`` and ``v``.

    Output is ``cat([q(x), k(x), v(x)])``, the same layout as the fused weight's row blocks, so
    SAM's attention code reads it unchanged.
    """

    def __init__(self, fused: nn.Linear) -> None:
        super().__init__()
        dim = fused.in_features
        if fused.out_features != 3 * dim:
            raise ValueError(f"expected a fused qkv Linear of {dim}->{3 * dim}, got {fused}")
        has_bias = fused.bias is not None
        self.q, self.k, self.v = (nn.Linear(dim, dim, bias=has_bias) for _ in range(3))
        with torch.no_grad():
            for index, part in enumerate((self.q, self.k, self.v)):
                part.weight.copy_(fused.weight[index * dim : (index + 1) * dim])
                if has_bias:
                    part.bias.copy_(fused.bias[index * dim : (index + 1) * dim])
                part.weight.requires_grad_(fused.weight.requires_grad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.q(x), self.k(x), self.v(x)], dim=-1)
