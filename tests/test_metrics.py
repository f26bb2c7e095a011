"""Pixel and tolerance metrics against hand-computed values and a naive reference loop."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.metrics import Counts, PixelAPMeter, SegmentationMeter, SquareRuleMeter, count, summarize
from pipeline.metrics.curves import threshold_grid
from pipeline.metrics.square_rule import square_dilate

# ---------------------------------------------------------------- pixel metrics

GT_4X4 = np.array(
    [
        [1, 1, 0, 0],
        [1, 1, 0, 0],
        [0, 0, 0, 0],
        [0, 0, 0, 0],
    ],
    dtype=np.float32,
)
# 0.5 sits exactly on the threshold and counts as predicted (prob >= threshold);
# 0.49 does not.
PROB_4X4 = np.array(
    [
        [0.9, 0.49, 0.0, 0.0],
        [0.5, 0.8, 0.7, 0.0],
        [0.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 0.6],
    ],
    dtype=np.float32,
)


def test_count_hand_made_4x4() -> None:
    # TP: (0,0) (1,0) (1,1) = 3; FP: (1,2) (3,3) = 2; FN: (0,1) = 1; TN = 16 − 6 = 10
    c = count(PROB_4X4, GT_4X4, threshold=0.5)
    assert c == Counts(tp=3, fp=2, fn=1, tn=10)
    # P = 3/5, R = 3/4, F1 = 2·3/(2·3 + 2 + 1) = 2/3, IoU = 3/(3 + 2 + 1) = 1/2
    assert summarize(c) == pytest.approx({"precision": 0.6, "recall": 0.75, "f1": 2 / 3, "iou": 0.5})
    # Torch input gives the same counts.
    assert count(torch.from_numpy(PROB_4X4), torch.from_numpy(GT_4X4), 0.5) == c


def test_empty_prediction_on_empty_truth_is_perfect() -> None:
    c = count(np.zeros((4, 4)), np.zeros((4, 4)), 0.5)
    assert c == Counts(0, 0, 0, 16)
    assert summarize(c) == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "iou": 1.0}


def test_zero_denominators_give_zero_otherwise() -> None:
    # False alarm on a crack-free image: TP = FN = 0 so recall's denominator is 0 -> 0.0.
    alarm = count(PROB_4X4, np.zeros((4, 4)), 0.5)
    assert (alarm.tp, alarm.fp, alarm.fn) == (0, 5, 0)
    assert summarize(alarm) == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "iou": 0.0}
    # Missed crack, nothing predicted: precision's denominator is 0 -> 0.0.
    missed = count(np.zeros((4, 4)), GT_4X4, 0.5)
    assert summarize(missed) == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "iou": 0.0}


def test_counts_add() -> None:
    assert Counts(1, 2, 3, 4) + Counts(10, 20, 30, 40) == Counts(11, 22, 33, 44)


def test_dataset_level_differs_from_mean_of_images() -> None:
    # Image A: 8-pixel crack found exactly -> F1 = 1.
    # Image B: 1-pixel crack missed       -> F1 = 0.   Mean of per-image F1 = 0.5.
    # Dataset: TP = 8, FP = 0, FN = 1     -> F1 = 16 / 17, IoU = 8/9, P = 1, R = 8/9.
    gt_a = torch.zeros(8, 8)
    gt_a[2, :] = 1
    gt_b = torch.zeros(8, 8)
    gt_b[5, 5] = 1
    targets = torch.stack([gt_a, gt_b])[:, None]
    probs = torch.stack([gt_a, torch.zeros(8, 8)])[:, None]
    meter = SegmentationMeter(with_tolerance=False)
    meter.update(probs, targets, names=["a.png", "b.png"])
    rows = meter.per_image()
    assert [r["name"] for r in rows] == ["a.png", "b.png"]
    assert [r["f1"] for r in rows] == [1.0, 0.0]
    assert (rows[1]["tp"], rows[1]["fn"]) == (0, 1)
    result = meter.compute()
    # pixel AP: 8 of 9 crack pixels ranked first without a false one, the last one among all 128 pixels.
    # Image means: A scores 1 on each, B (crack, nothing predicted) 0 on each -> 0.5.
    assert result == pytest.approx({"precision": 1.0, "recall": 8 / 9, "f1": 16 / 17, "iou": 8 / 9,
                                    "pixel_ap": 8 / 9 + (1 / 9) * (9 / 128),
                                    "precision_image_mean": 0.5, "recall_image_mean": 0.5,
                                    "f1_image_mean": 0.5, "iou_image_mean": 0.5})
    assert result["f1"] != pytest.approx(np.mean([r["f1"] for r in rows]))


def four_image_fixture() -> tuple[torch.Tensor, torch.Tensor]:
    """(probs, targets), shape (4, 1, 4, 4): CrackSAM's four per-image cases at threshold 0.5.

    A: 8-px crack predicted exactly     TP 8            -> P = R = F1 = IoU = 1
    B: no crack, nothing predicted       all empty       -> 1 on each (CrackSAM: both empty = 1)
    C: no crack, 2 px predicted          FP 2            -> 0 on each
    D: 4-px crack, 2 found + 2 false     TP 2 FP 2 FN 2  -> P = R = F1 = 1/2, IoU = 2/6 = 1/3
    """
    targets = torch.zeros(4, 1, 4, 4)
    probs = torch.zeros(4, 1, 4, 4)
    targets[0, 0, :2] = 1
    probs[0, 0, :2] = 0.9
    probs[2, 0, 3, :2] = 0.8
    targets[3, 0, 0] = 1
    probs[3, 0, 0, :2] = 0.7
    probs[3, 0, 1, :2] = 0.6
    return probs, targets


# Pooled: TP 10, FP 4, FN 2 -> P 10/14, R 10/12, F1 20/26, IoU 10/16.
FOUR_IMAGE_POOLED = {"precision": 5 / 7, "recall": 5 / 6, "f1": 10 / 13, "iou": 5 / 8}
# Means of the per-image scores (1, 1, 0, 1/2) and IoU (1, 1, 0, 1/3).
FOUR_IMAGE_MEANS = {"precision_image_mean": 0.625, "recall_image_mean": 0.625, "f1_image_mean": 0.625,
                    "iou_image_mean": 7 / 12}


def test_pooled_and_image_mean_scores_by_hand() -> None:
    probs, targets = four_image_fixture()
    meter = SegmentationMeter(with_tolerance=False)
    meter.update(probs, targets, names=["a", "b", "c", "d"])
    assert [r["f1"] for r in meter.per_image()] == pytest.approx([1.0, 1.0, 0.0, 0.5])
    result = meter.compute()
    assert {k: result[k] for k in FOUR_IMAGE_POOLED} == pytest.approx(FOUR_IMAGE_POOLED)
    assert {k: result[k] for k in FOUR_IMAGE_MEANS} == pytest.approx(FOUR_IMAGE_MEANS)
    assert result["f1"] - result["f1_image_mean"] == pytest.approx(10 / 13 - 0.625)


def test_meter_accumulates_batches_and_names() -> None:
    meter = SegmentationMeter(with_tolerance=False)
    prob = torch.from_numpy(PROB_4X4)[None, None]
    gt = torch.from_numpy(GT_4X4)[None, None]
    meter.update(prob, gt)
    meter.update(torch.cat([prob, prob]), torch.cat([gt, gt]))
    assert [r["name"] for r in meter.per_image()] == ["0", "1", "2"]
    assert meter.total == Counts(9, 6, 3, 30)
    with pytest.raises(ValueError, match="names"):
        meter.update(prob, gt, names=["x", "y"])
    with pytest.raises(ValueError):
        meter.update(prob, gt[:, :, :2])
    with pytest.raises(ValueError, match="with_tolerance"):
        meter.pr_curve()


# ---------------------------------------------------------------- tolerance metrics


def test_threshold_grid() -> None:
    grid = threshold_grid(99)
    assert len(grid) == 99
    assert grid[0] == pytest.approx(0.01) and grid[-1] == pytest.approx(0.99)
    assert np.allclose(np.diff(grid), 0.01)


def test_square_dilate_takes_the_whole_square() -> None:
    point = np.zeros((7, 7), dtype=bool)
    point[3, 3] = True
    grown = square_dilate(point, 2)
    assert grown[1, 1] and grown[2, 1] and grown[5, 5]  # corners (distance 2√2) included
    assert grown.sum() == 25 and not grown[0].any() and not grown[:, 6].any()
    assert np.array_equal(square_dilate(point, 0), point)


def shifted_line(size: int = 9) -> tuple[np.ndarray, np.ndarray]:
    """1-px vertical crack at column 4 and a confident prediction one column to the right."""
    gt = np.zeros((size, size), dtype=np.float32)
    gt[:, 4] = 1
    prob = np.zeros((size, size), dtype=np.float32)
    prob[:, 5] = 1.0
    return prob, gt


def test_shifted_line_with_tolerance() -> None:
    # d = 2: every predicted pixel lies within 1 px of the crack -> TP = 9, FP = 0, P = 1.
    # FN is judged on the original truth: no gt pixel is itself predicted -> FN = 9.
    # R = 9 / (9 + 9) = 1/2, F = 2·1·½ / (1 + ½) = 2/3 at every threshold.
    prob, gt = shifted_line()
    meter = SquareRuleMeter(tolerance=2)
    meter.update(prob, gt)
    out = meter.compute()
    assert set(out["pr_curve"]["precision"]) == {1.0}
    assert set(out["pr_curve"]["recall"]) == {0.5}
    assert out["ods"] == pytest.approx(2 / 3)
    assert out["ois"] == pytest.approx(2 / 3)
    # Recall is 1/2 from the first threshold on: AP = (½ − 0)·1 = ½.
    assert out["ap"] == pytest.approx(0.5)


def test_shifted_line_without_tolerance_scores_zero() -> None:
    # d = 0: TP = 0, FP = 9, FN = 9 -> P = R = F = 0.
    prob, gt = shifted_line()
    meter = SquareRuleMeter(tolerance=0)
    meter.update(prob, gt)
    out = meter.compute()
    assert out["ods"] == 0.0 and out["ois"] == 0.0 and out["ap"] == 0.0


def test_ois_and_ods_by_hand() -> None:
    # d = 0. Probabilities avoid the grid values so every threshold falls clearly on one side.
    # Image 1: crack pixels at 0.855, 0.855; one background pixel at 0.355.
    #   t <= 0.355: TP 2, FP 1, FN 0 -> F = 0.8;  0.355 < t <= 0.855: TP 2, FP 0 -> F = 1
    #   t > 0.855: TP 0, FN 2 -> F = 0.           best F = 1 at t = 0.36
    # Image 2: crack pixels at 0.255, 0.255; one background pixel at 0.655.
    #   t <= 0.255: TP 2, FP 1 -> F = 0.8;  above: TP 0 -> F = 0.   best F = 0.8 at t = 0.01
    # OIS = (1 + 0.8) / 2 = 0.9
    # Dataset sums (TP, FP, FN):  t <= 0.255: (4, 2, 0) F = 0.8
    #   0.255..0.355: (2, 2, 2) F = 0.5;  0.355..0.655: (2, 1, 2) F = 4/7
    #   0.655..0.855: (2, 0, 2) P = 1, R = ½, F = 2/3;  t > 0.855: (0, 0, 4) F = 0
    # ODS = 0.8 at t = 0.01.
    # AP, walking thresholds downwards: R goes 0 -> ½ (P = 1) -> ½ -> ½ -> 1 (P = 2/3)
    #   AP = ½·1 + ½·(2/3) = 5/6
    img1_prob = np.zeros((4, 4))
    img1_prob[0, 0] = img1_prob[0, 1] = 0.855
    img1_prob[3, 3] = 0.355
    img2_prob = np.zeros((4, 4))
    img2_prob[0, 0] = img2_prob[0, 1] = 0.255
    img2_prob[3, 3] = 0.655
    gt = np.zeros((4, 4))
    gt[0, 0] = gt[0, 1] = 1
    meter = SquareRuleMeter(tolerance=0, min_max=False)
    meter.update(img1_prob, gt)
    meter.update(img2_prob, gt)
    best = meter.per_image_best()
    assert best[0] == pytest.approx((1.0, 0.36))
    assert best[1] == pytest.approx((0.8, 0.01))
    out = meter.compute()
    assert out["ois"] == pytest.approx(0.9)
    assert out["ods"] == pytest.approx(0.8)
    assert out["ods_threshold"] == pytest.approx(0.01)
    assert out["ap"] == pytest.approx(5 / 6)


def test_crack_free_image_counts_as_perfect_in_ois() -> None:
    # Background at 0.3 only: for t > 0.3 the prediction is empty on an empty truth -> F = 1.
    prob = np.full((5, 5), 0.3)
    meter = SquareRuleMeter(tolerance=2, min_max=False)
    meter.update(prob, np.zeros((5, 5)))
    assert meter.per_image_best()[0] == pytest.approx((1.0, 0.31))
    assert meter.compute()["ois"] == 1.0


@pytest.mark.parametrize("tolerance", [0, 2])
def test_ap_of_perfect_prediction_is_one(tolerance: int) -> None:
    rng = np.random.default_rng(3)
    meter = SquareRuleMeter(tolerance=tolerance)
    for _ in range(3):
        gt = (rng.random((16, 16)) > 0.85).astype(np.float32)
        meter.update(gt.copy(), gt)  # hard {0, 1} prediction equal to the truth
        # soft prediction that ranks every crack pixel above every background pixel
        meter.update(np.where(gt > 0, 0.9, 0.1), gt)
    out = meter.compute()
    assert out["ap"] == pytest.approx(1.0)
    assert out["ods"] == pytest.approx(1.0)
    assert out["ois"] == pytest.approx(1.0)


def naive_counts(prob: np.ndarray, gt: np.ndarray, tolerance: int, thresholds: np.ndarray) -> np.ndarray:
    """Reference: one full-image pass per threshold. Rows are (TP, FP, FN)."""
    gt = gt > 0.5
    near = square_dilate(gt, tolerance)
    rows = []
    for t in thresholds:
        pred = prob >= t
        rows.append([(pred & near).sum(), (pred & ~near).sum(), (gt & ~pred).sum()])
    return np.array(rows, dtype=np.int64)


def naive_f(tp: float, fp: float, fn: float) -> float:
    if tp == fp == fn == 0:
        return 1.0
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return 2 * p * r / (p + r) if p + r else 0.0


@pytest.mark.parametrize("tolerance", [0, 1, 2, 3])
def test_vectorised_counts_match_naive_loop(tolerance: int) -> None:
    rng = np.random.default_rng(tolerance)
    meter = SquareRuleMeter(tolerance=tolerance, n_thresholds=99, min_max=False)
    grid = meter.thresholds
    totals = np.zeros((len(grid), 3), dtype=np.int64)
    best = []
    for i in range(4):
        gt = np.zeros((32, 40), dtype=np.float32)
        gt[rng.integers(0, 32), :] = 1  # a horizontal crack
        gt[:, rng.integers(0, 40)] = 1  # a vertical crack
        prob = rng.random((32, 40))
        # Values exactly on grid points (and 0, 1) exercise the >= boundary.
        prob[::3] = rng.choice(np.concatenate([grid, [0.0, 1.0]]), size=prob[::3].shape)
        if i % 2:
            prob = prob.astype(np.float32)  # the dtype a model produces
        if i == 3:
            gt[:] = 0  # one crack-free image
        naive = naive_counts(prob, gt, tolerance, grid)
        assert np.array_equal(np.stack(meter.image_counts(prob, gt), axis=1), naive)
        meter.update(prob, gt)
        totals += naive
        best.append(max(naive_f(*row) for row in naive))
    out = meter.compute()
    f_dataset = [naive_f(*row) for row in totals]
    assert out["ods"] == pytest.approx(max(f_dataset))
    assert all(out["ods"] >= f - 1e-12 for f in f_dataset)  # ODS >= F at any single threshold
    assert out["ois"] == pytest.approx(np.mean(best))
    # AP by the same step rule, written as a loop from the highest threshold down.
    ap, prev_r = 0.0, 0.0
    for tp, fp, fn in totals[::-1]:
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        ap += (r - prev_r) * p
        prev_r = r
    assert out["ap"] == pytest.approx(ap)
    curve = out["pr_curve"]
    assert len(curve["threshold"]) == len(curve["precision"]) == len(curve["recall"]) == 99


def test_segmentation_meter_with_tolerance_matches_tolerance_meter() -> None:
    gen = torch.Generator().manual_seed(7)
    probs = torch.rand(3, 1, 24, 24, generator=gen)
    targets = (torch.rand(3, 1, 24, 24, generator=gen) > 0.9).float()
    meter = SegmentationMeter(threshold=0.5, tolerance=1)
    meter.update(probs, targets, names=["a", "b", "c"])
    reference = SquareRuleMeter(tolerance=1)
    for i in range(3):
        reference.update(probs[i, 0].numpy(), targets[i, 0].numpy())
    expected = reference.compute()
    out = meter.compute()
    for key in ("ods", "ods_threshold", "ois", "ap"):
        assert out[key] == pytest.approx(expected[key])
    assert meter.pr_curve() == expected["pr_curve"]
    # Threshold metrics at 0.5 agree with a per-image count().
    total = sum((count(probs[i, 0], targets[i, 0], 0.5) for i in range(3)), Counts())
    assert out["f1"] == pytest.approx(total.f1)
    # ODS is the best threshold, so it is at least the F1-like tolerance F at 0.5.
    k = int(np.argmin(np.abs(np.array(expected["pr_curve"]["threshold"]) - 0.5)))
    p, r = expected["pr_curve"]["precision"][k], expected["pr_curve"]["recall"][k]
    assert out["ods"] >= (2 * p * r / (p + r) if p + r else 0.0)


def test_compute_before_update_is_an_error() -> None:
    with pytest.raises(ValueError):
        SquareRuleMeter().compute()
    with pytest.raises(ValueError):
        SegmentationMeter().compute()


# --- pixel AP (the per-epoch threshold-free score) ----------------------------------------------------

def test_pixel_ap_matches_sklearn_on_the_binned_scores() -> None:
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    generator = torch.Generator().manual_seed(0)
    targets = (torch.rand(4, 1, 32, 32, generator=generator) < 0.1).float()
    # Overlapping scores, all below 0.5 like an early epoch's: F1 at 0.5 would be 0 here.
    probs = torch.rand(4, 1, 32, 32, generator=generator) * 0.3 + 0.15 * targets
    meter = PixelAPMeter()
    meter.update(probs[:2], targets[:2])
    meter.update(probs[2:], targets[2:])
    binned = (probs * meter.bins).long().clamp(max=meter.bins - 1).flatten().numpy()
    expected = sklearn_metrics.average_precision_score(targets.flatten().numpy(), binned)
    assert 0.1 < expected < 0.9
    assert meter.compute() == pytest.approx(expected, abs=1e-12)


def test_pixel_ap_edge_cases() -> None:
    target = torch.zeros(1, 1, 4, 4)
    target[0, 0, 1] = 1
    separated = PixelAPMeter()
    separated.update(target * 0.3 + 0.1, target)  # every crack pixel above every background one
    assert separated.compute() == pytest.approx(1.0)
    no_cracks = PixelAPMeter()
    no_cracks.update(torch.rand(1, 1, 4, 4), torch.zeros(1, 1, 4, 4))
    assert no_cracks.compute() == 1.0
    with pytest.raises(ValueError, match="before any update"):
        PixelAPMeter().compute()
    with pytest.raises(ValueError, match="differ"):
        PixelAPMeter().update(torch.rand(1, 4, 4), torch.rand(1, 1, 4, 4))
