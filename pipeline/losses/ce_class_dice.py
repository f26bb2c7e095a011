"""CrackSAM's loss: 2-class cross-entropy plus class-averaged squared Dice, on one crack logit."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# CrackSAM's (SAMed's) utils.DiceLoss smoothing.
SMOOTH = 1e-5


class CeClassDiceLoss(nn.Module):
    """``w·CE + (1−w)·Dice`` as CrackSAM's ``trainer.calc_loss`` computes it, ``w = ce_weight``.

    CrackSAM weights Dice by ``--dice_param`` (default 0.8) and CE by ``1 − dice_param``, so the
    paper's λ=0.2 is the CE weight: ``0.2·CE + 0.8·Dice``. Its model predicts (z_bg, z_crack) under
    a softmax; crackops' models return ``d = z_crack − z_bg`` (pipeline/models/mask_heads.py), and
    ``p_crack = softmax(z)[crack] = sigmoid(d)``, ``p_bg = 1 − p_crack``, so on ``d``:

    - CE (mean over every pixel of the batch) is BCE with logits on ``d``;
    - Dice is, per class c in (background, crack), ``1 − (2·Σp_c·t_c + s) / (Σp_c² + Σt_c² + s)``
      with the sums over the whole batch (not per image) and ``s = 1e-5``, averaged over the 2 classes.

    Any single-logit model may use it; for the ``sam_token`` head the two classes are implicit.
    """

    def __init__(self, ce_weight: float = 0.2, smooth: float = SMOOTH) -> None:
        super().__init__()
        if not 0.0 <= ce_weight <= 1.0:
            raise ValueError(f"ce_class_dice needs 0 <= ce_weight <= 1, got {ce_weight}")
        self.ce_weight = float(ce_weight)
        self.smooth = float(smooth)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape != target.shape:
            # Broadcasting would silently compute a wrong loss.
            raise ValueError(f"logits shape {tuple(logits.shape)} != target shape {tuple(target.shape)}")
        # float32 so the batch-wide sums stay accurate under autocast.
        d, t = logits.float(), target.float()
        ce = F.binary_cross_entropy_with_logits(d, t)
        crack = torch.sigmoid(d)
        dice = 0.0
        for p, y in ((1.0 - crack, 1.0 - t), (crack, t)):
            dice = dice + 1.0 - (2.0 * (p * y).sum() + self.smooth) / ((p * p).sum() + (y * y).sum() + self.smooth)
        return self.ce_weight * ce + (1.0 - self.ce_weight) * dice / 2.0

    def extra_repr(self) -> str:
        return f"ce_weight={self.ce_weight}, smooth={self.smooth}"
