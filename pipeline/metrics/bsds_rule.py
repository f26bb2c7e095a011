"""Tolerance rule ``bsds``: ODS / OIS / AP as the BSDS boundary benchmark computes them (pyEdgeEval's port).

For each threshold ``t`` of the grid and each image:

1. the prediction ``p >= t`` (no normalisation) is thinned to 1-px lines (:mod:`pipeline.metrics.thinning`);
2. predicted pixels are matched ONE-TO-ONE to ground-truth pixels at Euclidean distance <= ``d``
   (``eval.tolerance``, in pixels), as many pairs as possible (a maximum bipartite matching,
   Hopcroft-Karp; BSDS solves a min-cost assignment whose outlier costs make it the same count,
   though its sparse, randomly drawn outlier edges now and then leave it one match short);
3. ``count_p`` = matched predicted pixels, ``sum_p`` = thinned predicted pixels, ``count_r`` =
   matched ground-truth pixels, ``sum_r`` = ground-truth pixels (the mask as is, not thinned).

``P = count_p / sum_p`` and ``R = count_r / sum_r`` with 0 for a zero denominator (a crack-free
image scores F = 0, unlike ``square``). BSDS's ``maxDist`` is a fraction of the image diagonal:
``d`` pixels is ``maxDist = d / sqrt(H² + W²)`` (pyEdgeEval's ``correspond_pixels(.., max_dist=)``).

* ODS: the best F of the set's summed counts, searched on 101 points between each pair of
  neighbouring thresholds (linear interpolation of P, R and t);
* OIS: F of the counts summed over images, each at its own best threshold (not a mean of Fs);
* AP: ``Σ_{r ∈ 0, 0.01, …, 0.99} max(P where R >= r) / 101``, pyEdgeEval's interpolated AP.

A 1-px line predicted 1 px off matches pixel for pixel: F = 1 (``square`` gives 2/3).
"""
from __future__ import annotations

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_bipartite_matching

from pipeline.metrics.curves import PerImageBest, threshold_grid
from pipeline.metrics.thinning import thin


def _ratio(count: np.ndarray, total: np.ndarray) -> np.ndarray:
    return count / (total + (total == 0))


def bsds_prf(count_r: np.ndarray, sum_r: np.ndarray, count_p: np.ndarray,
             sum_p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """BSDS precision, recall, F (zero denominators give 0)."""
    r = _ratio(np.asarray(count_r, dtype=np.float64), np.asarray(sum_r, dtype=np.float64))
    p = _ratio(np.asarray(count_p, dtype=np.float64), np.asarray(sum_p, dtype=np.float64))
    return p, r, 2.0 * p * r / (p + r + ((p + r) == 0))


def _offsets(tolerance: int) -> list[tuple[int, int]]:
    span = range(-tolerance, tolerance + 1)
    return [(dy, dx) for dy in span for dx in span if dy * dy + dx * dx <= tolerance * tolerance]


def match_count(pred: np.ndarray, gt: np.ndarray, tolerance: int) -> int:
    """Pairs in a maximum one-to-one matching of ``pred`` to ``gt`` pixels within ``tolerance`` px."""
    n_pred, n_gt = int(np.count_nonzero(pred)), int(np.count_nonzero(gt))
    if n_pred == 0 or n_gt == 0:
        return 0
    height, width = gt.shape
    gt_id = np.full(gt.shape, -1, dtype=np.int64)
    gt_id[gt] = np.arange(n_gt)
    py, px = np.nonzero(pred)
    rows, cols = [], []
    for dy, dx in _offsets(tolerance):
        y, x = py + dy, px + dx
        inside = (y >= 0) & (y < height) & (x >= 0) & (x < width)
        target = np.full(n_pred, -1, dtype=np.int64)
        target[inside] = gt_id[y[inside], x[inside]]
        hit = target >= 0
        rows.append(np.flatnonzero(hit))
        cols.append(target[hit])
    row, col = np.concatenate(rows), np.concatenate(cols)
    if row.size == 0:
        return 0
    graph = csr_matrix((np.ones(row.size, dtype=np.int8), (row, col)), shape=(n_pred, n_gt))
    return int(np.count_nonzero(maximum_bipartite_matching(graph, perm_type="column") >= 0))


def interpolated_best(thresholds: np.ndarray, precision: np.ndarray, recall: np.ndarray) -> tuple[float, float]:
    """``(best F, its threshold)`` over 101 interpolated points between neighbouring thresholds."""
    steps = np.linspace(0.0, 1.0, 101)
    t = np.concatenate([thresholds[:1], (thresholds[1:, None] * steps + thresholds[:-1, None] * (1 - steps)).ravel()])
    p = np.concatenate([precision[:1], (precision[1:, None] * steps + precision[:-1, None] * (1 - steps)).ravel()])
    r = np.concatenate([recall[:1], (recall[1:, None] * steps + recall[:-1, None] * (1 - steps)).ravel()])
    f = 2.0 * p * r / (p + r + ((p + r) == 0))
    k = int(np.argmax(f))  # the first maximum, as the benchmark keeps only strictly better points
    return float(f[k]), float(t[k])


def interpolated_ap(precision: np.ndarray, recall: np.ndarray) -> float:
    """pyEdgeEval's AP: best precision at recall >= 0, 0.01, …, 0.99, summed and divided by 101."""
    return float(sum(np.max(precision[recall >= level], initial=0.0) for level in np.arange(0, 1, 0.01)) / 101)


class BSDSRuleMeter:
    """Accumulates per-threshold BSDS counts image by image; ``compute`` gives ODS, OIS and AP."""

    name = "bsds"

    def __init__(self, tolerance: int = 2, n_thresholds: int = 99) -> None:
        if tolerance < 0:
            raise ValueError(f"eval.tolerance must be >= 0, got {tolerance}")
        self.tolerance = int(tolerance)
        self.thresholds = threshold_grid(n_thresholds)
        self._sums = np.zeros((4, len(self.thresholds)), dtype=np.int64)  # count_r, sum_r, count_p, sum_p
        self._best = np.zeros(4, dtype=np.int64)
        self._per_image = PerImageBest(self.thresholds)

    def __len__(self) -> int:
        return len(self._per_image)

    @staticmethod
    def describe(tolerance: int, n_thresholds: int) -> str:
        """One report paragraph saying how ODS/OIS/AP were computed."""
        return (f"**ODS, OIS, AP**, tolerance rule `bsds` (the BSDS benchmark as pyEdgeEval ports it): each "
                f"probability map thresholded at {n_thresholds} values in (0, 1) and thinned to 1-px lines; "
                f"predicted pixels are matched one-to-one to ground-truth pixels within {tolerance} pixels. ODS "
                "is the best dataset-level F (interpolated between thresholds), OIS the F of the counts summed at "
                "each image's best threshold, AP BSDS's interpolated average precision.")

    def _crop(self, prob: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The box holding every truth pixel and every pixel predicted at the lowest threshold, plus a
        margin of ``d + 1``: thinning and matching see only zeros beyond it, so counts are unchanged."""
        rows, cols = np.nonzero(gt | (prob >= self.thresholds[0]))
        if rows.size == 0:
            return prob[:0, :0], gt[:0, :0]
        margin = self.tolerance + 1
        top, left = max(0, rows.min() - margin), max(0, cols.min() - margin)
        return prob[top : rows.max() + margin + 1, left : cols.max() + margin + 1], \
            gt[top : rows.max() + margin + 1, left : cols.max() + margin + 1]

    def image_counts(self, prob: np.ndarray, target: np.ndarray) -> np.ndarray:
        """``(4, n_thresholds)``: count_r, sum_r, count_p, sum_p of one image at every threshold."""
        prob = np.asarray(prob, dtype=np.float64)
        target = np.asarray(target)
        if prob.ndim != 2 or prob.shape != target.shape:
            raise ValueError(f"expected matching HxW arrays, got prob {prob.shape}, target {target.shape}")
        gt = target > 0.5
        n_gt = int(np.count_nonzero(gt))
        prob, gt = self._crop(prob, gt)
        out = np.zeros((4, len(self.thresholds)), dtype=np.int64)
        cache: dict[int, tuple[int, int]] = {}
        for k, t in enumerate(self.thresholds):
            pred = prob >= t
            # Predictions are nested, so an equal pixel count means an equal mask: reuse its counts.
            key = int(np.count_nonzero(pred))
            if key not in cache:
                thinned = thin(pred)
                cache[key] = (match_count(thinned, gt, self.tolerance), int(np.count_nonzero(thinned)))
            matched, n_pred = cache[key]
            out[:, k] = (matched, n_gt, matched, n_pred)
        return out

    def update(self, prob: np.ndarray, target: np.ndarray) -> None:
        """Add ONE image: ``prob`` HxW probabilities, ``target`` HxW {0, 1}."""
        counts = self.image_counts(prob, target)
        self._sums += counts
        _, _, f = bsds_prf(*counts)
        self._best += counts[:, self._per_image.add(f)]

    def per_image_best(self) -> list[tuple[float, float]]:
        """``(best F, its threshold)`` for each image, in update order."""
        return self._per_image.pairs()

    def compute(self) -> dict:
        """``ods, ods_threshold, ois, ap`` and ``pr_curve``."""
        self._per_image.require_images()
        p, r, _ = bsds_prf(*self._sums)
        ods, ods_threshold = interpolated_best(self.thresholds, p, r)
        _, _, ois = bsds_prf(*self._best)
        return {
            "ods": ods,
            "ods_threshold": ods_threshold,
            "ois": float(ois),
            "ap": interpolated_ap(p, r),
            "pr_curve": {"threshold": self.thresholds.tolist(), "precision": p.tolist(), "recall": r.tolist()},
        }
