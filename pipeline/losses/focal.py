"""Focal losses: the DeepLabV3 crack study's Eq. 2 (``focal``) and torchvision's (``sigmoid_focal``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _check_shapes(logits: torch.Tensor, target: torch.Tensor) -> None:
    if logits.shape != target.shape:
        # Broadcasting would silently compute a wrong loss.
        raise ValueError(f"logits shape {tuple(logits.shape)} != target shape {tuple(target.shape)}")


def _loss_dtype(logits: torch.Tensor) -> torch.Tensor:
    """At least float32 (bf16/fp16 under autocast are promoted); float64 stays float64."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def _focal_weighted_mean(
    member: torch.Tensor, log_weight: torch.Tensor, pixel_loss: torch.Tensor
) -> torch.Tensor:
    """``Σ member·w·ℓ / Σ member·w`` with ``w = exp(log_weight)``, 0 when no pixel is a member.

    The weights are shifted by their largest member value before ``exp``, which cancels in the
    ratio: the largest weight is then exactly 1, so the denominator is ≥ 1 whenever there is a
    member (no underflow to 0/0 when every member is classified confidently right, where
    ``(1−ŷ)^γ`` underflows float32) and exactly 0 when there is none. Clamping the denominator
    at 1 therefore only acts on the empty set, whose term becomes 0/1 = 0. The shift is detached
    because the ratio does not depend on it; the weights themselves keep their gradient.
    """
    masked = torch.where(member, log_weight, torch.full_like(log_weight, -torch.inf))
    shift = masked.amax().detach()
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    weight = torch.exp(masked - shift)  # exactly 0 off the set (exp(−inf)); never exp of a large value
    return (weight * pixel_loss).sum() / weight.sum().clamp_min(1.0)


class _FocalLoss(nn.Module):
    """What both focal losses share: a class weight ``alpha`` (each defines its range) and ``gamma``."""

    def __init__(self, alpha: float, gamma: float) -> None:
        super().__init__()
        if gamma < 0.0:
            raise ValueError(f"focal gamma must be >= 0, got {gamma}")
        self.alpha = float(alpha)
        self.gamma = float(gamma)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}"


class BinaryFocalLoss(_FocalLoss):
    """The DeepLabV3 crack study's binary focal loss (its Eq. 2), ``ŷ = sigmoid(logits)``::

        L = Σ_crack (1−ŷ)^γ·(−log ŷ) / Σ_crack (1−ŷ)^γ
            + α · Σ_non-crack ŷ^γ·(−log(1−ŷ)) / Σ_non-crack ŷ^γ

    Each class term is a mean of its pixels' log loss weighted by their focal weights, so the
    two classes count equally however rare cracks are, and ``α`` (3 in the study) up-weights the
    non-crack term: it is not RetinaNet's α on the positive class. γ=0 gives
    ``mean_crack BCE + α·mean_non-crack BCE``.

    The sums run over every pixel of the batch, the literal reading of the equation: a
    per-image normalisation would give an image with ten crack pixels as much crack weight as
    one with ten thousand, and would need a rule for images without cracks. A class absent from
    the batch contributes 0 (see ``_focal_weighted_mean``). The focal weights are not detached,
    as the equation does not detach them: the gradient is that of the formula as written,
    including the weights' own dependence on the logits. Log terms use ``logsigmoid`` so
    saturated logits give finite values and gradients.
    """

    def __init__(self, alpha: float = 3.0, gamma: float = 2.0) -> None:
        if alpha < 0.0:
            raise ValueError(f"focal alpha must be >= 0, got {alpha}")
        super().__init__(alpha, gamma)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_shapes(logits, target)
        x = _loss_dtype(logits)
        crack = target > 0.5  # the equation's two pixel sets; masks are 0/1
        log_p = F.logsigmoid(x)  # log ŷ
        log_1mp = F.logsigmoid(-x)  # log(1−ŷ)
        crack_term = _focal_weighted_mean(crack, self.gamma * log_1mp, -log_p)
        non_crack_term = _focal_weighted_mean(~crack, self.gamma * log_p, -log_1mp)
        return crack_term + self.alpha * non_crack_term


class SigmoidFocalLoss(_FocalLoss):
    """torchvision's ``sigmoid_focal_loss`` (RetinaNet), mean over pixels, ``p = sigmoid(logits)``::

        FL = −[ α·t·(1−p)^γ·log p  +  (1−α)·(1−t)·p^γ·log(1−p) ]

    Here α ∈ [0, 1] weights the positive (crack) term, as torchvision defines it (default 0.25).
    Written with ``logsigmoid`` rather than calling ``torchvision.ops.sigmoid_focal_loss``,
    whose ``(1−p_t)**γ`` gives NaN gradients for γ < 1 on saturated logits; values and
    gradients match it elsewhere (tested).
    """

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"sigmoid focal alpha must be in [0, 1], got {alpha}")
        super().__init__(alpha, gamma)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_shapes(logits, target)
        x = _loss_dtype(logits)
        t = target.to(x.dtype)
        log_p = F.logsigmoid(x)
        log_1mp = F.logsigmoid(-x)
        # (1−p)^γ as exp(γ·log(1−p)): finite gradient even where 1−p underflows to 0.
        pos = self.alpha * t * torch.exp(self.gamma * log_1mp) * log_p
        neg = (1.0 - self.alpha) * (1.0 - t) * torch.exp(self.gamma * log_p) * log_1mp
        return -(pos + neg).mean()
