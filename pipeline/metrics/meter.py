"""Accumulates a whole evaluation: threshold metrics, per-image scores, tolerance metrics."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from pipeline.metrics.pixel import Counts, count_batch, summarize
from pipeline.metrics.pixel_ap import PixelAPMeter
from pipeline.metrics.tolerance import tolerance_meter

if TYPE_CHECKING:
    from pipeline.params import EvalParams

# Per-image means of the thresholded scores, CrackSAM's test numbers: "<metric>_image_mean".
IMAGE_MEAN_SUFFIX = "_image_mean"


class SegmentationMeter:
    """P/R/F1/IoU at ``threshold`` both ways, pixel AP, per-image scores, and optionally ODS/OIS/AP.

    ``precision/recall/f1/iou`` are pooled: TP/FP/FN summed over all pixels of all images.
    ``<metric>_image_mean`` is the mean of each image's score, as CrackSAM's test code reports
    them; an image with neither crack nor predicted crack scores 1 on each, an image with only
    one of them 0 on each (:mod:`pipeline.metrics.pixel`, the same cases as CrackSAM's
    ``calculate_metric_percase``). ``with_tolerance=False`` only reduces each batch to three
    counts per image on its own device, cheap enough for every validation epoch.
    ``rule`` names the tolerance rule of ODS/OIS/AP (:data:`pipeline.metrics.tolerance.TOLERANCE_RULES`).
    """

    def __init__(
        self,
        threshold: float = 0.5,
        tolerance: int = 2,
        n_thresholds: int = 99,
        with_tolerance: bool = True,
        rule: str = "square",
    ) -> None:
        self.threshold = float(threshold)
        self.with_tolerance = with_tolerance
        self.total = Counts()
        self._images: list[tuple[str, Counts]] = []
        self._tolerance = tolerance_meter(rule, tolerance, n_thresholds) if with_tolerance else None
        self._pixel_ap = PixelAPMeter()

    @classmethod
    def from_params(cls, eval_params: EvalParams, with_tolerance: bool = True) -> SegmentationMeter:
        """The meter `crackops evaluate` and `crackops score` both use, from the ``eval`` params."""
        return cls(eval_params.threshold, eval_params.tolerance, eval_params.n_thresholds, with_tolerance,
                   eval_params.tolerance_rule)

    def __len__(self) -> int:
        return len(self._images)

    @staticmethod
    def _squeeze(x: torch.Tensor, what: str) -> torch.Tensor:
        if x.dim() == 4 and x.shape[1] == 1:
            return x[:, 0]
        if x.dim() == 3:
            return x
        raise ValueError(f"{what} must be (B, 1, H, W) or (B, H, W), got {tuple(x.shape)}")

    def update(
        self, probs: torch.Tensor, targets: torch.Tensor, names: list[str] | None = None
    ) -> None:
        """Add a batch of probabilities (not logits) and {0, 1} targets, shape ``(B, 1, H, W)``."""
        probs = self._squeeze(probs.detach(), "probs")
        targets = self._squeeze(targets.detach(), "targets")
        if probs.shape != targets.shape:
            raise ValueError(f"probs {tuple(probs.shape)} and targets {tuple(targets.shape)} differ")
        batch = probs.shape[0]
        if names is None:
            start = len(self._images)
            names = [str(start + i) for i in range(batch)]
        elif len(names) != batch:
            raise ValueError(f"{len(names)} names for a batch of {batch} images")
        for name, c in zip(names, count_batch(probs, targets, self.threshold)):
            self._images.append((name, c))
            self.total = self.total + c
        self._pixel_ap.update(probs, targets)
        if self._tolerance is not None:
            prob_np = probs.float().cpu().numpy()
            target_np = targets.float().cpu().numpy()
            for i in range(batch):
                self._tolerance.update(prob_np[i], target_np[i])

    def image_means(self) -> dict[str, float]:
        """``<metric>_image_mean``: the mean over images of each image's precision/recall/f1/iou."""
        table = np.array([list(summarize(c).values()) for _, c in self._images], dtype=np.float64)
        return {f"{key}{IMAGE_MEAN_SUFFIX}": float(value)
                for key, value in zip(summarize(Counts()), table.mean(axis=0))}

    def compute(self) -> dict[str, float]:
        """Pooled ``precision/recall/f1/iou`` at the threshold, their ``*_image_mean``, ``pixel_ap``,
        plus the tolerance rule's ``ods/ods_threshold/ois/ap`` (and ``ois_std`` under ``square``)."""
        if not self._images:
            raise ValueError("SegmentationMeter.compute() called before any update()")
        out = summarize(self.total)
        out.update(self.image_means())
        out["pixel_ap"] = self._pixel_ap.compute()
        if self._tolerance is not None:
            out.update({k: v for k, v in self._tolerance.compute().items() if k != "pr_curve"})
        return out

    def per_image(self) -> list[dict]:
        """One dict per image in update order: name, precision, recall, f1, iou and raw counts."""
        rows = []
        for name, c in self._images:
            rows.append({"name": name, **summarize(c), "tp": c.tp, "fp": c.fp, "fn": c.fn, "tn": c.tn})
        return rows

    def pr_curve(self) -> dict[str, list[float]]:
        """Dataset-level tolerance PR curve ``{"threshold", "precision", "recall"}``."""
        if self._tolerance is None:
            raise ValueError("pr_curve() needs SegmentationMeter(with_tolerance=True)")
        return self._tolerance.compute()["pr_curve"]
