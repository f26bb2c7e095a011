"""Confusion counts and threshold-based pixel metrics for binary crack masks.

Conventions:

* Prediction is ``prob >= threshold`` (a probability exactly at the threshold counts as crack).
* Ground truth is ``target > 0.5``, so float {0, 1} masks and uint8 {0, 1} masks both work.
* A zero denominator gives 0.0, EXCEPT when prediction and ground truth are both empty
  (``tp == fp == fn == 0``): then precision = recall = F1 = IoU = 1.0, the perfect answer on a
  crack-free image. The same rule applies to dataset-level sums.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def _ratio(num: int, den: int, all_empty: bool) -> float:
    if all_empty:
        return 1.0
    return num / den if den > 0 else 0.0


@dataclass(frozen=True)
class Counts:
    """Pixel confusion counts; ``+`` sums them (dataset level = sum over images)."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def __add__(self, other: Counts) -> Counts:
        if not isinstance(other, Counts):
            return NotImplemented
        return Counts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn)

    @property
    def empty(self) -> bool:
        """True when neither prediction nor ground truth has a crack pixel."""
        return self.tp == 0 and self.fp == 0 and self.fn == 0

    @property
    def precision(self) -> float:
        return _ratio(self.tp, self.tp + self.fp, self.empty)

    @property
    def recall(self) -> float:
        return _ratio(self.tp, self.tp + self.fn, self.empty)

    @property
    def f1(self) -> float:
        # 2TP/(2TP+FP+FN) equals 2PR/(P+R) and avoids the 0/0 when P = R = 0.
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn, self.empty)

    @property
    def iou(self) -> float:
        return _ratio(self.tp, self.tp + self.fp + self.fn, self.empty)


def _as_numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x)


def count(
    prob: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray, threshold: float = 0.5
) -> Counts:
    """Confusion counts for one image: prediction ``prob >= threshold``, truth ``target > 0.5``."""
    p = _as_numpy(prob)
    t = _as_numpy(target)
    if p.shape != t.shape:
        raise ValueError(f"prob shape {p.shape} != target shape {t.shape}")
    pred = p >= threshold
    gt = t > 0.5
    tp = int(np.count_nonzero(pred & gt))
    fp = int(np.count_nonzero(pred & ~gt))
    fn = int(np.count_nonzero(~pred & gt))
    return Counts(tp=tp, fp=fp, fn=fn, tn=int(pred.size) - tp - fp - fn)


def count_batch(probs: torch.Tensor, targets: torch.Tensor, threshold: float = 0.5) -> list[Counts]:
    """Per-image counts for a batch ``(B, ...)``, reduced on the tensors' device in one pass."""
    if probs.shape != targets.shape:
        raise ValueError(f"probs shape {tuple(probs.shape)} != targets shape {tuple(targets.shape)}")
    pred = (probs.detach() >= threshold).flatten(1)
    gt = (targets.detach() > 0.5).flatten(1)
    # One small (B, 3) transfer instead of moving full-resolution masks to the CPU.
    sums = torch.stack(
        [(pred & gt).sum(1), (pred & ~gt).sum(1), (~pred & gt).sum(1)], dim=1
    ).cpu().tolist()
    n = pred.shape[1]
    return [Counts(tp=tp, fp=fp, fn=fn, tn=n - tp - fp - fn) for tp, fp, fn in sums]


def summarize(counts: Counts) -> dict[str, float]:
    """``{"precision", "recall", "f1", "iou"}`` of ``counts``."""
    return {
        "precision": counts.precision,
        "recall": counts.recall,
        "f1": counts.f1,
        "iou": counts.iou,
    }
