"""Build a loss from its configuration name."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from pipeline.losses.bce_lambda_dice import BceLambdaDiceLoss
from pipeline.losses.ce_class_dice import CeClassDiceLoss
from pipeline.losses.dice import DiceLoss
from pipeline.losses.focal import BinaryFocalLoss, SigmoidFocalLoss
from pipeline.losses.lambda_bce_dice import LambdaBceDiceLoss

DICE_KINDS = ("squared", "smooth")


def build_dice(dice: str) -> DiceLoss:
    """``"squared"``: SAC Dice (Σp²+Σt², eps 1e-6); ``"smooth"``: +1-smoothed linear Dice."""
    if dice == "squared":
        return DiceLoss(squared=True)
    if dice == "smooth":
        return DiceLoss(squared=False, smooth=1.0)
    raise ValueError(f"unknown dice variant {dice!r}; expected one of {', '.join(DICE_KINDS)}")


@dataclass(frozen=True)
class LossSettings:
    """The ``loss.*`` params a builder may read; each kind reads only its own."""

    lam: float
    dice: str
    focal_alpha: float
    focal_gamma: float
    sigmoid_focal_alpha: float
    ce_weight: float


# One entry per ``loss.kind``; LOSS_KINDS (and the error for an unknown kind) come from it.
_LOSS_BUILDERS: dict[str, Callable[[LossSettings], nn.Module]] = {
    "lambda_bce_dice": lambda s: LambdaBceDiceLoss(s.lam, build_dice(s.dice)),
    "bce_lambda_dice": lambda s: BceLambdaDiceLoss(s.lam, build_dice(s.dice)),
    "dice": lambda s: build_dice(s.dice),
    "focal": lambda s: BinaryFocalLoss(alpha=s.focal_alpha, gamma=s.focal_gamma),
    "sigmoid_focal": lambda s: SigmoidFocalLoss(alpha=s.sigmoid_focal_alpha, gamma=s.focal_gamma),
    "ce_class_dice": lambda s: CeClassDiceLoss(ce_weight=s.ce_weight),
}
LOSS_KINDS = tuple(_LOSS_BUILDERS)


def build_loss(
    kind: str,
    lam: float,
    dice: str = "squared",
    focal_alpha: float = 3.0,
    focal_gamma: float = 2.0,
    sigmoid_focal_alpha: float = 0.25,
    ce_weight: float = 0.2,
) -> nn.Module:
    """Return the loss module for ``kind``; ``lam`` is read only by the BCE+Dice kinds."""
    builder = _LOSS_BUILDERS.get(kind)
    if builder is None:
        raise ValueError(f"unknown loss kind {kind!r}; expected one of {', '.join(LOSS_KINDS)}")
    return builder(LossSettings(lam, dice, focal_alpha, focal_gamma, sigmoid_focal_alpha, ce_weight))
