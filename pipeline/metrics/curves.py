"""Threshold grid, precision/recall/F and the AP step integral shared by the tolerance rules."""
from __future__ import annotations

import numpy as np


def threshold_grid(n_thresholds: int) -> np.ndarray:
    """``n_thresholds`` evenly spaced values strictly inside (0, 1); 99 gives 0.01 … 0.99."""
    if n_thresholds < 1:
        raise ValueError(f"n_thresholds must be >= 1, got {n_thresholds}")
    return np.linspace(0.0, 1.0, n_thresholds + 2)[1:-1]


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


class PerImageBest:
    """Each image's best F over a threshold grid and the threshold reaching it: what OIS averages
    (or, for BSDS, sums the counts of), shared by every tolerance rule."""

    def __init__(self, thresholds: np.ndarray) -> None:
        self.thresholds = thresholds
        self.f: list[float] = []
        self.threshold: list[float] = []

    def __len__(self) -> int:
        return len(self.f)

    def add(self, f: np.ndarray) -> int:
        """Record one image's F per threshold; returns the index of its best (lowest on ties)."""
        k = int(np.argmax(f))
        self.f.append(float(f[k]))
        self.threshold.append(float(self.thresholds[k]))
        return k

    def pairs(self) -> list[tuple[float, float]]:
        """``(best F, its threshold)`` for each image, in the order they were added."""
        return list(zip(self.f, self.threshold))

    def require_images(self) -> None:
        if not self.f:
            raise ValueError("tolerance meter compute() called before any update()")
