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
