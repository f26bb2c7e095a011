"""Focal losses: the DeepLabV3 study's Eq. 2 (`focal`) against a literal transcription, and torchvision's."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from pipeline.losses import BinaryFocalLoss, SigmoidFocalLoss, build_loss

BIG = 100.0  # sigmoid(±100) is 1 / 0 to float32 precision


def eq2_literal(logits: torch.Tensor, target: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """Eq. 2 as printed, sums over every pixel of the batch, no numerical safeguards."""
    p = torch.sigmoid(logits)
    crack = target == 1
    p_crack, p_non_crack = p[crack], p[~crack]
    w_crack = (1 - p_crack) ** gamma
    w_non_crack = p_non_crack ** gamma
    crack_term = -(w_crack * torch.log(p_crack)).sum() / w_crack.sum()
    non_crack_term = -(w_non_crack * torch.log(1 - p_non_crack)).sum() / w_non_crack.sum()
    return crack_term + alpha * non_crack_term


def random_batch(seed: int, crack_share: float = 0.2, shape=(3, 1, 16, 16)) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 logits in about ±9 (no saturation, so the literal formula is exact) and a 0/1 mask."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(*shape, generator=gen, dtype=torch.float64) * 3
    target = (torch.rand(*shape, generator=gen) < crack_share).double()
    return logits, target


def value_and_grad(loss_fn, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = logits.clone().requires_grad_(True)
    loss = loss_fn(x, target)
    (grad,) = torch.autograd.grad(loss, x)
    return loss.detach(), grad


@pytest.mark.parametrize("gamma", [1.0, 2.0, 4.0, 0.5])
@pytest.mark.parametrize("seed", [0, 1])
def test_focal_matches_eq2_values_and_gradients(gamma: float, seed: int) -> None:
    # Multi-image batch: equality pins the sums to run over the whole batch, not per image.
    logits, target = random_batch(seed)
    loss, grad = value_and_grad(BinaryFocalLoss(alpha=3.0, gamma=gamma), logits, target)
    expected, expected_grad = value_and_grad(lambda x, t: eq2_literal(x, t, 3.0, gamma), logits, target)
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(expected.item(), rel=1e-10)
    # The focal weights are not detached: the gradient is the literal formula's, weights included.
    torch.testing.assert_close(grad, expected_grad, rtol=1e-9, atol=1e-12)


def test_focal_float32_matches_eq2() -> None:
    logits, target = random_batch(2)
    loss, grad = value_and_grad(BinaryFocalLoss(alpha=3.0, gamma=2.0), logits.float(), target.float())
    expected, expected_grad = value_and_grad(lambda x, t: eq2_literal(x, t, 3.0, 2.0), logits, target)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(grad.double(), expected_grad, rtol=1e-4, atol=1e-7)


def test_alpha_weights_the_non_crack_term() -> None:
    logits, _ = random_batch(3)
    all_crack = torch.ones_like(logits)
    all_background = torch.zeros_like(logits)
    gamma = 2.0
    # Only crack pixels: α has nothing to weight.
    assert BinaryFocalLoss(3.0, gamma)(logits, all_crack).item() == pytest.approx(
        BinaryFocalLoss(1.0, gamma)(logits, all_crack).item(), rel=1e-12)
    # Only non-crack pixels: the loss is α times the non-crack term.
    background_term = BinaryFocalLoss(1.0, gamma)(logits, all_background)
    assert background_term.item() > 0
    assert BinaryFocalLoss(3.0, gamma)(logits, all_background).item() == pytest.approx(
        3.0 * background_term.item(), rel=1e-12)


@pytest.mark.parametrize("absent", ["crack", "non-crack"])
def test_a_class_absent_from_the_batch_contributes_zero(absent: str) -> None:
    logits, _ = random_batch(4)
    target = torch.zeros_like(logits) if absent == "crack" else torch.ones_like(logits)
    x = logits.float().requires_grad_(True)
    loss = BinaryFocalLoss(3.0, 2.0)(x, target.float())
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    # The literal formula gives 0/0 = nan for the absent class; the present class alone remains.
    present = (3.0 if absent == "crack" else 1.0) * BinaryFocalLoss(1.0, 2.0)(logits, target).item()
    assert loss.item() == pytest.approx(present, rel=1e-5)
    assert math.isnan(eq2_literal(logits, target, 3.0, 2.0).item())


def test_underflowing_focal_weights_stay_finite() -> None:
    # Every crack pixel confidently right: (1−ŷ)^4 = e^-120 underflows float32, so the literal
    # Σw·ℓ / Σw is 0/0. The loss is the weighted mean of −log ŷ ≈ e^-30 and its gradient ≈ −e^-30.
    logits = torch.full((2, 1, 4, 4), 30.0, requires_grad=True)
    target = torch.ones(2, 1, 4, 4)
    assert math.isnan(eq2_literal(logits.detach(), target, 3.0, 4.0).item())
    loss = BinaryFocalLoss(3.0, 4.0)(logits, target)
    loss.backward()
    assert loss.item() == pytest.approx(math.exp(-30.0), rel=1e-5)
    assert torch.isfinite(logits.grad).all() and (logits.grad < 0).all()


def test_gamma_zero_is_class_balanced_bce() -> None:
    logits, target = random_batch(5)
    crack = target == 1
    crack_bce = F.binary_cross_entropy_with_logits(logits[crack], target[crack])
    non_crack_bce = F.binary_cross_entropy_with_logits(logits[~crack], target[~crack])
    expected = crack_bce + 2.5 * non_crack_bce
    assert BinaryFocalLoss(alpha=2.5, gamma=0.0)(logits, target).item() == pytest.approx(expected.item(), rel=1e-12)


# Hand example: logits [[0, ln3], [0, −ln3]] -> ŷ = [[0.5, 0.75], [0.5, 0.25]], target [[1, 1], [0, 0]]
#   crack:     weights (1−ŷ)^γ = 0.5^γ, 0.25^γ on −log ŷ     = ln 2, ln(4/3)
#   non-crack: weights ŷ^γ     = 0.5^γ, 0.25^γ on −log(1−ŷ) = ln 2, ln(4/3)
#   both terms are T = (0.5^γ·ln2 + 0.25^γ·ln(4/3)) / (0.5^γ + 0.25^γ); with α = 3, L = 4·T
FOCAL_HAND = {
    1: 4 * (0.5 * math.log(2) + 0.25 * math.log(4 / 3)) / 0.75,  # 4 · 0.418495 / 0.75 = 2.231974
    2: 4 * (0.25 * math.log(2) + 0.0625 * math.log(4 / 3)) / 0.3125,  # 4 · 0.191267 / 0.3125 = 2.448217
    4: 4 * (0.0625 * math.log(2) + 0.00390625 * math.log(4 / 3)) / 0.06640625,  # 4 · 0.044446 / 0.066406 = 2.677242
}


@pytest.mark.parametrize("gamma", [1, 2, 4])
def test_focal_hand_values(gamma: int) -> None:
    logits = torch.tensor([[0.0, math.log(3)], [0.0, -math.log(3)]])[None, None]
    target = torch.tensor([[1.0, 1.0], [0.0, 0.0]])[None, None]
    loss = BinaryFocalLoss(alpha=3.0, gamma=float(gamma))(logits, target)
    assert loss.item() == pytest.approx(FOCAL_HAND[gamma], abs=1e-6)


def test_focal_extreme_logits_values() -> None:
    # Per class, one pixel confidently right (weight e^-200 ≈ 0, loss 0) and one confidently wrong
    # (weight 1, loss 100): each weighted mean is 100, so L = 100 + 3·100.
    logits = torch.tensor([[BIG, -BIG], [BIG, -BIG]])[None, None]
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0]])[None, None]
    assert BinaryFocalLoss(alpha=3.0, gamma=2.0)(logits, target).item() == pytest.approx(400.0, rel=1e-5)


@pytest.mark.parametrize("crack_share", [0.02, 0.1])
def test_at_zero_logits_crack_pixels_get_one_over_one_plus_alpha_of_the_gradient(crack_share: float) -> None:
    # Each class term is a weighted mean, so the classes share the gradient 1 : α however rare
    # cracks are; a plain mean over pixels would give cracks a share that grows with their count.
    _, target = random_batch(6, crack_share=crack_share, shape=(2, 1, 32, 32))
    logits = torch.zeros_like(target)
    _, grad = value_and_grad(BinaryFocalLoss(alpha=3.0, gamma=2.0), logits, target)
    share = (grad.abs() * target).sum() / grad.abs().sum()
    assert share.item() == pytest.approx(1 / 4, rel=1e-9)


def test_focal_rejects_negative_parameters() -> None:
    with pytest.raises(ValueError, match="alpha"):
        BinaryFocalLoss(alpha=-1.0)
    with pytest.raises(ValueError, match="gamma"):
        BinaryFocalLoss(gamma=-1.0)


# --- torchvision's sigmoid focal loss ------------------------------------------------------------


@pytest.mark.parametrize("alpha, gamma", [(0.25, 2.0), (0.75, 0.5), (0.5, 0.0)])
def test_sigmoid_focal_matches_torchvision(alpha: float, gamma: float) -> None:
    logits, target = random_batch(7)
    loss, grad = value_and_grad(SigmoidFocalLoss(alpha, gamma), logits, target)
    expected, expected_grad = value_and_grad(
        lambda x, t: sigmoid_focal_loss(x, t, alpha=alpha, gamma=gamma, reduction="mean"), logits, target)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-10)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-9, atol=1e-12)


def test_sigmoid_focal_is_finite_where_torchvision_is_not() -> None:
    # γ < 1 on a confidently right pixel: torchvision's (1−p_t)**γ has an infinite derivative at 0.
    logits = torch.tensor([[BIG, -BIG]])[None, None]
    target = torch.tensor([[1.0, 0.0]])[None, None]
    _, torchvision_grad = value_and_grad(
        lambda x, t: sigmoid_focal_loss(x, t, alpha=0.25, gamma=0.5, reduction="mean"), logits, target)
    assert torch.isnan(torchvision_grad).any()
    _, grad = value_and_grad(SigmoidFocalLoss(0.25, 0.5), logits, target)
    assert torch.isfinite(grad).all() and grad.abs().max().item() < 1e-12


def test_factory_gives_sigmoid_focal_its_own_alpha() -> None:
    sigmoid = build_loss("sigmoid_focal", lam=0.0, focal_alpha=3.0, focal_gamma=4.0)
    # focal_alpha is the study's non-crack weight; sigmoid_focal reads its own α (default 0.25).
    assert isinstance(sigmoid, SigmoidFocalLoss) and (sigmoid.alpha, sigmoid.gamma) == (0.25, 4.0)
    assert build_loss("sigmoid_focal", lam=0.0, sigmoid_focal_alpha=0.6).alpha == 0.6
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        build_loss("sigmoid_focal", lam=0.0, sigmoid_focal_alpha=3.0)
