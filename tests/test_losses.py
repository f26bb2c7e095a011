"""Losses against values computed by hand."""
from __future__ import annotations

import math
from typing import get_args

import pytest
import torch

from pipeline.losses import (
    LOSS_KINDS,
    BceLambdaDiceLoss,
    BinaryFocalLoss,
    CeClassDiceLoss,
    DiceLoss,
    LambdaBceDiceLoss,
    SigmoidFocalLoss,
    build_loss,
)
from pipeline.params import LossParams

BIG = 100.0  # sigmoid(±100) is 1 / 0 to float32 precision


def t4(values: list[list[float]]) -> torch.Tensor:
    """A (1, 1, H, W) tensor."""
    return torch.tensor(values, dtype=torch.float32)[None, None]


# p = sigmoid(logits) = [[1, 0], [0.5, 0.5]], target = [[1, 0], [1, 0]].
LOGITS = t4([[BIG, -BIG], [0.0, 0.0]])
TARGET = t4([[1.0, 0.0], [1.0, 0.0]])
# BCE per pixel: 0, 0, ln 2, ln 2  ->  mean = ln2 / 2
BCE = math.log(2) / 2
# Squared Dice: Σpt = 1 + 0.5 = 1.5, Σp² = 1 + 0.25 + 0.25 = 1.5, Σt² = 2
#   loss = 1 − 3 / 3.5 = 1/7
SQUARED = 1 / 7
# Smooth Dice: Σp = 2, Σt = 2  ->  loss = 1 − (3 + 1) / (4 + 1) = 0.2
SMOOTH = 0.2


def test_dice_squared_hand_value() -> None:
    assert DiceLoss(squared=True)(LOGITS, TARGET).item() == pytest.approx(SQUARED, abs=1e-6)


def test_dice_smooth_hand_value() -> None:
    assert DiceLoss(squared=False, smooth=1.0)(LOGITS, TARGET).item() == pytest.approx(SMOOTH, abs=1e-6)


def test_dice_is_mean_of_per_image_losses() -> None:
    # Image 2: p = 0.5 everywhere, empty target.
    #   squared: (0 + eps) / (4·0.25 + 0 + eps) ≈ 0  -> loss ≈ 1; batch mean = (1/7 + 1) / 2 = 4/7
    #   smooth:  (0 + 1) / (2 + 0 + 1) = 1/3         -> loss 2/3; batch mean = (0.2 + 2/3) / 2 = 13/30
    # (a global Dice over the batch would give 1 − 3/4.5 = 1/3 for the squared variant instead)
    logits = torch.cat([LOGITS, torch.zeros_like(LOGITS)])
    target = torch.cat([TARGET, torch.zeros_like(TARGET)])
    assert DiceLoss(squared=True)(logits, target).item() == pytest.approx(4 / 7, abs=1e-5)
    assert DiceLoss(squared=False, smooth=1.0)(logits, target).item() == pytest.approx(13 / 30, abs=1e-6)


@pytest.mark.parametrize("dice", [DiceLoss(squared=True), DiceLoss(squared=False, smooth=1.0)])
def test_dice_perfect_prediction_is_zero(dice: DiceLoss) -> None:
    target = t4([[1, 0, 0], [1, 1, 0], [0, 0, 0]])
    logits = (target * 2 - 1) * BIG
    assert dice(logits, target).item() == pytest.approx(0.0, abs=1e-6)
    # Empty target predicted empty: eps / eps (squared) or 1 / 1 (smooth) -> Dice 1, loss 0.
    empty = torch.zeros_like(target)
    assert dice(empty - BIG, empty).item() == pytest.approx(0.0, abs=1e-6)


def test_lambda_bce_dice_endpoints_and_mix() -> None:
    dice = DiceLoss(squared=True)
    assert LambdaBceDiceLoss(0.0, dice)(LOGITS, TARGET).item() == pytest.approx(dice(LOGITS, TARGET).item())
    assert LambdaBceDiceLoss(1.0, dice)(LOGITS, TARGET).item() == pytest.approx(BCE, abs=1e-6)
    # 0.3 · ln2/2 + 0.7 · 1/7 = 0.3 · 0.346574 + 0.1 = 0.203972
    assert LambdaBceDiceLoss(0.3, dice)(LOGITS, TARGET).item() == pytest.approx(0.3 * BCE + 0.1, abs=1e-6)


@pytest.mark.parametrize("lam", [-0.1, 1.1])
def test_lambda_bce_dice_rejects_out_of_range(lam: float) -> None:
    with pytest.raises(ValueError, match="lam"):
        LambdaBceDiceLoss(lam, DiceLoss())


def test_bce_lambda_dice_is_bce_plus_weighted_dice() -> None:
    smooth = DiceLoss(squared=False, smooth=1.0)
    # ln2/2 + 0.65 · 0.2 = 0.346574 + 0.13 = 0.476574
    assert BceLambdaDiceLoss(0.65, smooth)(LOGITS, TARGET).item() == pytest.approx(BCE + 0.65 * SMOOTH, abs=1e-6)
    assert BceLambdaDiceLoss(0.0, smooth)(LOGITS, TARGET).item() == pytest.approx(BCE, abs=1e-6)
    with pytest.raises(ValueError, match="lam"):
        BceLambdaDiceLoss(-0.5, smooth)


def test_ce_class_dice_hand_value() -> None:
    # CE on d is BCE = ln2/2. Crack Dice: Σpt = 1.5, Σp² = 1.5, Σt² = 2 -> 1/7; background
    # (p = [0, 1, .5, .5], t = [0, 1, 0, 1]) is the mirror image, also 1/7; smoothing 1e-5 is below 1e-5.
    loss = build_loss("ce_class_dice", lam=0.65, ce_weight=0.2)
    assert isinstance(loss, CeClassDiceLoss) and loss.ce_weight == 0.2
    assert loss(LOGITS, TARGET).item() == pytest.approx(0.2 * BCE + 0.8 * (1 / 7), abs=1e-5)
    with pytest.raises(ValueError, match="ce_weight"):
        CeClassDiceLoss(ce_weight=1.5)


def _cracksam_loss(z: torch.Tensor, label: torch.Tensor, dice_weight: float) -> torch.Tensor:
    """CrackSAM's trainer.calc_loss with its utils.DiceLoss(2), written out from its code."""
    ce = torch.nn.functional.cross_entropy(z, label)
    score = torch.softmax(z, dim=1)
    dice = 0.0
    for c in range(2):
        s, t = score[:, c], (label == c).float()
        dice = dice + 1 - (2 * (s * t).sum() + 1e-5) / ((s * s).sum() + (t * t).sum() + 1e-5)
    return (1 - dice_weight) * ce + dice_weight * dice / 2


def test_ce_class_dice_on_the_crack_logit_is_cracksams_two_class_loss() -> None:
    # Two class logits (z_bg, z_crack) per pixel; the model returns d = z_crack - z_bg.
    gen = torch.Generator().manual_seed(3)
    z = 3 * torch.randn(3, 2, 8, 8, generator=gen)
    label = (torch.rand(3, 8, 8, generator=gen) > 0.7).long()
    label[1] = 0  # a crack-free image: batch-wide sums keep its crack Dice from being 1 alone
    d = (z[:, 1] - z[:, 0]).unsqueeze(1)
    ours = build_loss("ce_class_dice", lam=0.0, ce_weight=0.2)(d, label.unsqueeze(1).float())
    assert ours.item() == pytest.approx(_cracksam_loss(z, label, dice_weight=0.8).item(), rel=1e-5)


@pytest.mark.parametrize("kind", LOSS_KINDS)
@pytest.mark.parametrize("dice", ["squared", "smooth"])
def test_extreme_logits_give_finite_loss_and_gradients(kind: str, dice: str) -> None:
    # Every combination of confident-right and confident-wrong pixels.
    logits = t4([[BIG, -BIG], [BIG, -BIG]]).requires_grad_(True)
    target = t4([[1.0, 0.0], [0.0, 1.0]])
    loss = build_loss(kind, lam=0.5, dice=dice, focal_gamma=0.5)(logits, target)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all()
    if kind != "dice":
        # Log-based terms keep pushing confidently wrong pixels the right way; pure Dice goes
        # through sigmoid'(±100) = 0 and saturates, which is expected, not a bug.
        assert logits.grad[0, 0, 1, 0] > 0 and logits.grad[0, 0, 1, 1] < 0


def test_losses_are_float32_under_autocast() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 1, 16, 16, generator=gen)
    target = (torch.rand(2, 1, 16, 16, generator=gen) > 0.8).float()
    for kind in LOSS_KINDS:
        loss_fn = build_loss(kind, lam=0.5)
        reference = loss_fn(logits.bfloat16().float(), target)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = loss_fn(logits.bfloat16(), target)
        assert loss.dtype == torch.float32
        assert loss.item() == pytest.approx(reference.item(), rel=1e-5)


def test_factory_builds_each_kind() -> None:
    lbd = build_loss("lambda_bce_dice", lam=0.4, dice="smooth")
    assert isinstance(lbd, LambdaBceDiceLoss) and lbd.lam == 0.4
    assert lbd.dice.squared is False and lbd.dice.smooth == 1.0
    bld = build_loss("bce_lambda_dice", lam=0.65)
    assert isinstance(bld, BceLambdaDiceLoss) and bld.dice.squared is True
    dice = build_loss("dice", lam=0.0, dice="smooth")
    assert isinstance(dice, DiceLoss)
    assert dice(LOGITS, TARGET).item() == pytest.approx(SMOOTH, abs=1e-6)
    focal = build_loss("focal", lam=0.0, focal_alpha=2.0, focal_gamma=1.0)
    assert isinstance(focal, BinaryFocalLoss) and (focal.alpha, focal.gamma) == (2.0, 1.0)
    assert isinstance(build_loss("sigmoid_focal", lam=0.0), SigmoidFocalLoss)
    assert isinstance(build_loss("ce_class_dice", lam=0.0), CeClassDiceLoss)


def test_every_loss_kind_is_a_valid_loss_kind_param() -> None:
    assert get_args(LossParams.model_fields["kind"].annotation) == LOSS_KINDS


def test_factory_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match=r"'tversky'.*lambda_bce_dice.*focal"):
        build_loss("tversky", lam=0.5)
    with pytest.raises(ValueError, match=r"'cubed'.*squared.*smooth"):
        build_loss("dice", lam=0.5, dice="cubed")


def test_shape_mismatch_is_an_error() -> None:
    for kind in LOSS_KINDS:
        with pytest.raises(ValueError):
            build_loss(kind, lam=0.5)(torch.zeros(2, 1, 4, 4), torch.zeros(1, 1, 4, 4))
