"""``tuning.method`` for the non-SAM families: everything (``full``) or the head only (``decoder``)."""
from __future__ import annotations

from torch import nn

from pipeline.params import HEAD_FAMILY_METHODS


def apply_head_tuning(model: nn.Module, head: nn.Module, method: str, family: str) -> nn.Module:
    """Make ``model`` trainable in full, or freeze it and open ``head`` only."""
    if method == "full":
        model.requires_grad_(True)
    elif method == "decoder":
        model.requires_grad_(False)
        head.requires_grad_(True)
    else:
        raise ValueError(f"tuning.method {method!r} does not apply to model.family {family!r}; "
                         f"choose from {', '.join(HEAD_FAMILY_METHODS)}")
    return model


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
