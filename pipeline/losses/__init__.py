"""Segmentation losses for one-logit-per-pixel crack prediction."""
from __future__ import annotations

from pipeline.losses.bce_lambda_dice import BceLambdaDiceLoss
from pipeline.losses.ce_class_dice import CeClassDiceLoss
from pipeline.losses.dice import DiceLoss
from pipeline.losses.factory import DICE_KINDS, LOSS_KINDS, build_dice, build_loss
from pipeline.losses.focal import BinaryFocalLoss, SigmoidFocalLoss
from pipeline.losses.lambda_bce_dice import LambdaBceDiceLoss

__all__ = [
    "DICE_KINDS",
    "LOSS_KINDS",
    "BceLambdaDiceLoss",
    "BinaryFocalLoss",
    "CeClassDiceLoss",
    "DiceLoss",
    "LambdaBceDiceLoss",
    "SigmoidFocalLoss",
    "build_dice",
    "build_loss",
]
