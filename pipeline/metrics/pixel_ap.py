"""Pixel-level average precision from probability histograms: a threshold-free score per epoch."""
from __future__ import annotations

import torch

from pipeline.metrics.curves import average_precision


class PixelAPMeter:
    """Average precision of crack pixels ranked by probability, without tolerance.

    Unlike F1 at a fixed threshold, it rewards a model that ranks crack pixels above background
    before its probabilities cross the threshold, so it separates configurations after the first
    epoch, when F1 at 0.5 is still 0 for most of them (the signal a sweep's pruner needs).
    Probabilities are binned into ``bins`` equal-width bins; each batch adds two histograms on its
    own device, cheap enough for every validation epoch.
    """

    def __init__(self, bins: int = 10_000) -> None:
        if bins < 2:
            raise ValueError(f"bins must be >= 2, got {bins}")
        self.bins = int(bins)
        self._positive: torch.Tensor | None = None
        self._negative: torch.Tensor | None = None

    def update(self, probs: torch.Tensor, targets: torch.Tensor) -> None:
        """Add probabilities in [0, 1] and {0, 1} targets of the same shape."""
        if probs.shape != targets.shape:
            raise ValueError(f"probs {tuple(probs.shape)} and targets {tuple(targets.shape)} differ")
        index = (probs.detach().float().clamp(0.0, 1.0) * self.bins).long().clamp_(max=self.bins - 1).flatten()
        gt = (targets.detach() > 0.5).flatten()
        positive = torch.bincount(index[gt], minlength=self.bins).cpu()
        negative = torch.bincount(index[~gt], minlength=self.bins).cpu()
        if self._positive is None:
            self._positive, self._negative = positive, negative
        else:
            self._positive += positive
            self._negative += negative

    def compute(self) -> float:
        """AP over bin edges from the highest down (``average_precision``); 1.0 without crack pixels."""
        if self._positive is None or self._negative is None:
            raise ValueError("PixelAPMeter.compute() called before any update()")
        # Predicted positive at the lower edge of bin k: every pixel in bin k or above.
        tp = self._positive.flip(0).cumsum(0).double()
        fp = self._negative.flip(0).cumsum(0).double()
        n_positive = float(tp[-1])
        if n_positive == 0:
            return 1.0
        recall = tp / n_positive
        precision = torch.where(tp + fp > 0, tp / (tp + fp).clamp(min=1), torch.ones_like(tp))
        return average_precision(precision.numpy(), recall.numpy())
