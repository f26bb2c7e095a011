"""Tolerance rule ``square``: the DeepLabV3 crack study's ODS / OIS / AP, as its text defines them.

For each threshold ``t`` of a fixed grid, with ``G`` the ground truth and ``D`` = ``G`` dilated by
a ``(2d+1)x(2d+1)`` square kernel (``d`` = ``eval.tolerance``; every pixel within Chebyshev
distance ``d``, diagonals included):

* each predicted probability map is first min-max normalised per image,
  ``(p - min) / (max - min)``; a constant map becomes all 0 (nothing predicted at any ``t``);
* prediction is ``p >= t``; ``TP = |pred ∩ D|``, ``FP = |pred \\ D|`` (against the dilated truth);
* ``FN = |G \\ pred|``: misses are judged against the ORIGINAL ground truth.

``P = TP/(TP+FP)``, ``R = TP/(TP+FN)``, ``F = 2PR/(P+R)``; a zero denominator gives 0, except
``TP = FP = FN = 0`` (empty prediction on a crack-free image), which gives P = R = F = 1.
ODS is the best F of the counts summed over the set at one threshold, OIS the mean of each
image's best F (``ois_std`` its population std), AP the step integral of the set's PR curve.
A 1-px line predicted 1 px off is fully precise but charged every missed pixel: F = 2/3.
"""
from __future__ import annotations

import cv2
import numpy as np

from pipeline.metrics.curves import PerImageBest, average_precision, prf, threshold_grid


def square_dilate(mask: np.ndarray, tolerance: int) -> np.ndarray:
    """Boolean ``mask`` grown by a ``(2d+1)x(2d+1)`` square kernel (``d = 0``: as is)."""
    if tolerance == 0:
        return mask.astype(bool)
    kernel = np.ones((2 * tolerance + 1, 2 * tolerance + 1), dtype=np.uint8)
    return cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)


def min_max_normalise(prob: np.ndarray) -> np.ndarray:
    """``(p - min) / (max - min)`` in float64; a constant map gives all zeros."""
    prob = np.asarray(prob, dtype=np.float64)
    if prob.size == 0:
        return prob
    low, high = float(prob.min()), float(prob.max())
    if high <= low:
        return np.zeros_like(prob)
    return (prob - low) / (high - low)


class SquareRuleMeter:
    """Accumulates per-threshold counts image by image; ``compute`` gives ODS, OIS (± std) and AP.

    ``min_max=False`` scores the probabilities as they are (the study normalises; tests of the
    counting use it to place probabilities by hand).
    """

    name = "square"

    def __init__(self, tolerance: int = 2, n_thresholds: int = 99, *, min_max: bool = True) -> None:
        if tolerance < 0:
            raise ValueError(f"eval.tolerance must be >= 0, got {tolerance}")
        self.tolerance = int(tolerance)
        self.min_max = min_max
        self.thresholds = threshold_grid(n_thresholds)
        n = len(self.thresholds)
        self._tp = np.zeros(n, dtype=np.int64)
        self._fp = np.zeros(n, dtype=np.int64)
        self._fn = np.zeros(n, dtype=np.int64)
        self._per_image = PerImageBest(self.thresholds)

    def __len__(self) -> int:
        return len(self._per_image)

    @staticmethod
    def describe(tolerance: int, n_thresholds: int) -> str:
        """One report paragraph saying how ODS/OIS/AP were computed."""
        side = 2 * tolerance + 1
        return (f"**ODS, OIS, AP**, tolerance rule `square` (the DeepLabV3 crack study's): each probability map "
                f"min-max normalised per image, thresholded at {n_thresholds} values in (0, 1); the ground truth "
                f"dilated by a {side}×{side} square ({tolerance}-pixel tolerance) counts TP and FP, misses (FN) "
                "are counted against the original mask. ODS is the best dataset-level F at one threshold, OIS "
                "the mean (± population std) of each image's best F, AP the step integral of the PR curve.")

    def _predicted_counts(self, bins: np.ndarray) -> np.ndarray:
        """Pixels predicted at each threshold, from their bin indices.

        ``bins[i]`` is how many thresholds are ``<= prob[i]``, so the pixel is predicted at
        thresholds ``0 .. bins[i]-1``: the count at threshold ``k`` is ``#{bins > k}``, a
        reverse cumulative sum of the histogram shifted by one.
        """
        n = len(self.thresholds)
        hist = np.bincount(bins, minlength=n + 1)
        return np.cumsum(hist[::-1])[::-1][1:]

    def image_counts(self, prob: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-threshold ``(TP, FP, FN)`` arrays for one image, without a loop over thresholds."""
        prob = np.asarray(prob)
        target = np.asarray(target)
        if prob.ndim != 2 or prob.shape != target.shape:
            raise ValueError(f"expected matching HxW arrays, got prob {prob.shape}, target {target.shape}")
        gt = target > 0.5
        near = square_dilate(gt, self.tolerance)
        # float64 so the comparison with the grid matches a naive `prob >= t` exactly.
        values = min_max_normalise(prob) if self.min_max else prob.astype(np.float64, copy=False)
        bins = np.digitize(values, self.thresholds, right=False)
        tp = self._predicted_counts(bins[near])
        fp = self._predicted_counts(bins[~near])
        fn = int(np.count_nonzero(gt)) - self._predicted_counts(bins[gt])
        return tp, fp, fn

    def update(self, prob: np.ndarray, target: np.ndarray) -> None:
        """Add ONE image: ``prob`` HxW probabilities, ``target`` HxW {0, 1}."""
        tp, fp, fn = self.image_counts(prob, target)
        self._tp += tp
        self._fp += fp
        self._fn += fn
        _, _, f = prf(tp, fp, fn)
        self._per_image.add(f)

    def per_image_best(self) -> list[tuple[float, float]]:
        """``(best F, its threshold)`` for each image, in update order."""
        return self._per_image.pairs()

    def compute(self) -> dict:
        """``ods, ods_threshold, ois, ois_std, ap`` and ``pr_curve``; ties in F pick the lowest threshold."""
        self._per_image.require_images()
        p, r, f = prf(self._tp, self._fp, self._fn)
        k = int(np.argmax(f))
        # Decreasing thresholds = increasing recall, the order the AP step sum walks.
        ap = average_precision(p[::-1], r[::-1])
        return {
            "ods": float(f[k]),
            "ods_threshold": float(self.thresholds[k]),
            "ois": float(np.mean(self._per_image.f)),
            "ois_std": float(np.std(self._per_image.f, ddof=0)),
            "ap": ap,
            "pr_curve": {"threshold": self.thresholds.tolist(), "precision": p.tolist(), "recall": r.tolist()},
        }
