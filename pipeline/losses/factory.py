"""Build a loss from its configuration name."""
from __future__ import annotations

from torch import nn

from pipeline.losses.bce_lambda_dice import BceLambdaDiceLoss
from pipeline.losses.dice import DiceLoss
from pipeline.losses.focal import BinaryFocalLoss
from pipeline.losses.lambda_bce_dice import LambdaBceDiceLoss

LOSS_KINDS = ("lambda_bce_dice", "bce_lambda_dice", "dice", "focal")
DICE_KINDS = ("squared", "smooth")


def build_dice(dice: str) -> DiceLoss:
    """``"squared"``: SAC Dice (Σp²+Σt², eps 1e-6); ``"smooth"``: +1-smoothed linear Dice."""
    if dice == "squared":
        return DiceLoss(squared=True)
    if dice == "smooth":
        return DiceLoss(squared=False, smooth=1.0)
    raise ValueError(f"unknown dice variant {dice!r}; expected one of {', '.join(DICE_KINDS)}")


def build_loss(
    kind: str,
    lam: float,
    dice: str = "squared",
    focal_alpha: float = 3.0,
    focal_gamma: float = 2.0,
) -> nn.Module:
    """Return the loss module for ``kind``; ``lam`` is ignored by ``"dice"`` and ``"focal"``."""
    if kind == "lambda_bce_dice":
        return LambdaBceDiceLoss(lam, build_dice(dice))
    if kind == "bce_lambda_dice":
        return BceLambdaDiceLoss(lam, build_dice(dice))
    if kind == "dice":
        return build_dice(dice)
    if kind == "focal":
        return BinaryFocalLoss(alpha=focal_alpha, gamma=focal_gamma)
    raise ValueError(f"unknown loss kind {kind!r}; expected one of {', '.join(LOSS_KINDS)}")
