"""Frozen BatchNorm stays frozen in train mode: the backbones of the non-SAM families need it."""
from __future__ import annotations

from torch import nn


def freeze_frozen_batchnorm(model: nn.Module) -> None:
    """Put BatchNorm layers whose weights are frozen into eval mode.

    ``requires_grad=False`` does not stop BatchNorm from updating its running statistics in train
    mode; a frozen pretrained backbone must keep the statistics it was trained with.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                module.eval()
