"""ODS / OIS F-measure and AP with a pixel distance tolerance (DeepLabV3 crack study).

For each threshold ``t`` of a fixed grid, prediction is ``prob >= t`` and, with ``G`` the ground
truth and ``D = dilate(G, disk of radius d)``:

* ``TP = |pred ∩ D|`` — a predicted pixel within ``d`` pixels of a crack pixel is correct;
* ``FP = |pred \\ D|``;
* ``FN = |G \\ pred|`` — misses are judged against the ORIGINAL ground truth.

``P = TP/(TP+FP)``, ``R = TP/(TP+FN)``, ``F = 2PR/(P+R)``, with the convention of
:mod:`pipeline.metrics.pixel`: a zero denominator gives 0, except ``TP = FP = FN = 0`` (empty
prediction on a crack-free image) which gives P = R = F = 1. Because FN uses the original
ground truth, a prediction offset by one pixel from a thin crack is fully precise but is
charged every missed ground-truth pixel (R = 1/2 for a 1-px line shifted by 1 px).
"""
from __future__ import annotations

import cv2
import numpy as np


def threshold_grid(n_thresholds: int) -> np.ndarray:
    """``n_thresholds`` evenly spaced values strictly inside (0, 1); 99 gives 0.01 … 0.99."""
    if n_thresholds < 1:
        raise ValueError(f"n_thresholds must be >= 1, got {n_thresholds}")
    return np.linspace(0.0, 1.0, n_thresholds + 2)[1:-1]


def disk_kernel(radius: int) -> np.ndarray:
    """``(2r+1)²`` uint8 kernel of the offsets with ``x² + y² <= r²``.

    Built by hand because ``cv2.MORPH_ELLIPSE`` at 5x5 also takes the (±2, ±1) offsets, at
    distance √5 > 2, which would credit predictions farther than ``d`` pixels away.
    """
    y, x = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return (x * x + y * y <= radius * radius).astype(np.uint8)


def dilate(mask: np.ndarray, tolerance: int) -> np.ndarray:
    """Boolean ``mask`` grown to every pixel within Euclidean distance ``tolerance`` (0: as is)."""
    if tolerance == 0:
        return mask
    return cv2.dilate(mask.astype(np.uint8), disk_kernel(tolerance)).astype(bool)


def prf(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised precision, recall, F over thresholds with the empty/empty = 1 convention."""
    tp, fp, fn = (np.asarray(a, dtype=np.float64) for a in (tp, fp, fn))
    empty = (tp == 0) & (fp == 0) & (fn == 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        r = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        f = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
    p, r, f = (np.where(empty, 1.0, a) for a in (p, r, f))
    return p, r, f


def average_precision(precision: np.ndarray, recall: np.ndarray) -> float:
    """Step integral ``Σ (R_k − R_{k−1})·P_k`` over points sorted by increasing recall, ``R_0 = 0``.

    Points should be given in decreasing-threshold order; the stable sort keeps that order
    among equal recalls so only the first point of a tie (highest threshold) contributes.
    """
    order = np.argsort(recall, kind="stable")
    r = np.concatenate([[0.0], recall[order]])
    return float(np.sum(np.diff(r) * precision[order]))


class ToleranceMeter:
    """Accumulates per-threshold counts image by image; ``compute`` gives ODS, OIS and AP."""

    def __init__(self, tolerance: int = 2, n_thresholds: int = 99) -> None:
        if tolerance < 0:
            raise ValueError(f"tolerance must be >= 0, got {tolerance}")
        self.tolerance = int(tolerance)
        self.thresholds = threshold_grid(n_thresholds)
        n = len(self.thresholds)
        self._tp = np.zeros(n, dtype=np.int64)
        self._fp = np.zeros(n, dtype=np.int64)
        self._fn = np.zeros(n, dtype=np.int64)
        self._best_f: list[float] = []
        self._best_t: list[float] = []

    def __len__(self) -> int:
        return len(self._best_f)

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
        near = dilate(gt, self.tolerance)
        # float64 so the comparison with the grid matches a naive `prob >= t` exactly.
        bins = np.digitize(prob.astype(np.float64, copy=False), self.thresholds, right=False)
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
        k = int(np.argmax(f))
        self._best_f.append(float(f[k]))
        self._best_t.append(float(self.thresholds[k]))

    def per_image_best(self) -> list[tuple[float, float]]:
        """``(best F, its threshold)`` for each image, in update order."""
        return list(zip(self._best_f, self._best_t))

    def compute(self) -> dict:
        """ODS (best dataset-level F and its threshold), OIS (mean per-image best F), AP, PR curve.

        Ties in F pick the lowest threshold. A crack-free image whose best threshold leaves the
        prediction empty scores F = 1 for OIS.
        """
        if not self._best_f:
            raise ValueError("ToleranceMeter.compute() called before any update()")
        p, r, f = prf(self._tp, self._fp, self._fn)
        k = int(np.argmax(f))
        # Decreasing thresholds = increasing recall, the order the AP step sum walks.
        ap = average_precision(p[::-1], r[::-1])
        return {
            "ods": float(f[k]),
            "ods_threshold": float(self.thresholds[k]),
            "ois": float(np.mean(self._best_f)),
            "ap": ap,
            "pr_curve": {
                "threshold": self.thresholds.tolist(),
                "precision": p.tolist(),
                "recall": r.tolist(),
            },
        }
