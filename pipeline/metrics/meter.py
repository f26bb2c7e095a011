"""Accumulates a whole evaluation: threshold metrics, per-image scores, tolerance metrics."""
from __future__ import annotations

import torch

from pipeline.metrics.pixel import Counts, count_batch, summarize
from pipeline.metrics.pixel_ap import PixelAPMeter
from pipeline.metrics.tolerance import ToleranceMeter


class SegmentationMeter:
    """Dataset-level P/R/F1/IoU at ``threshold``, pixel AP, per-image scores, and optionally ODS/OIS/AP.

    Dataset-level scores come from TP/FP/FN summed over all pixels of all images, not from
    the mean of per-image scores. ``with_tolerance=False`` only reduces each batch to three
    counts per image on its own device, cheap enough for every validation epoch.
    """

    def __init__(
        self,
        threshold: float = 0.5,
        tolerance: int = 2,
        n_thresholds: int = 99,
        with_tolerance: bool = True,
    ) -> None:
        self.threshold = float(threshold)
        self.with_tolerance = with_tolerance
        self.total = Counts()
        self._images: list[tuple[str, Counts]] = []
        self._tolerance = ToleranceMeter(tolerance, n_thresholds) if with_tolerance else None
        self._pixel_ap = PixelAPMeter()

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

    def compute(self) -> dict[str, float]:
        """``precision/recall/f1/iou`` at the threshold and ``pixel_ap`` (dataset level), plus
        ``ods/ods_threshold/ois/ap`` with tolerance."""
        if not self._images:
            raise ValueError("SegmentationMeter.compute() called before any update()")
        out = summarize(self.total)
        out["pixel_ap"] = self._pixel_ap.compute()
        if self._tolerance is not None:
            tol = self._tolerance.compute()
            out.update({k: tol[k] for k in ("ods", "ods_threshold", "ois", "ap")})
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
