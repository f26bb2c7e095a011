"""The whole evaluation: score every set, write metrics, DVC plot data, plots, overlays and a report.

Everything lands in ``out_dir``, which is built in a temporary folder and renamed into place, so
a failed or interrupted run leaves the previous evaluation untouched.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import re
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from torch import nn

from pipeline.atomic import atomic_dir
from pipeline.errors import DatasetError
from pipeline.eval_schema import (BLUR_SWEEP, BLUR_SWEEP_METRICS, TEST, ZERO_SHOT, ZERO_SHOT_MEAN, ZERO_SHOT_STD,
                                  blur_kernel, blur_point)
from pipeline.evaluation.report import render_report, report_html
from pipeline.evaluation.scoring import SetScore, score_set
from pipeline.evaluation.sets import EvalSet, build_eval_sets
from pipeline.models.factory import model_label
from pipeline.params import Params
from pipeline.training.precision import autocast_dtype, pick_device

DECIMALS = 5
METRICS_FILE = "metrics.json"
PR_CURVE_CSV = "pr_curve.csv"
BLUR_SWEEP_CSV = "blur_sweep.csv"
PR_CURVE_PNG = "pr_curve.png"
BLUR_SWEEP_PNG = "blur_sweep.png"
REPORT_FILE = "report.md"
REPORT_HTML = "report.html"  # the same with its images inside: what MLflow's artifact view shows
OVERLAY_DIR = "overlays"


def _rounded(metrics: dict[str, float]) -> dict[str, float]:
    return {key: round(float(value), DECIMALS) for key, value in metrics.items()}


def zero_shot_summary(scores: list[SetScore]) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and population std (ddof=0) of every metric across the zero-shot sets."""
    keys = list(scores[0].metrics)
    table = np.array([[s.metrics[k] for k in keys] for s in scores], dtype=np.float64)
    return dict(zip(keys, table.mean(axis=0).tolist())), dict(zip(keys, table.std(axis=0, ddof=0).tolist()))


def build_metrics(scores: list[SetScore], kernels: dict[str, int]) -> dict[str, Any]:
    """The metrics.json tree (numbers only at the leaves); ``kernels`` maps blur set names to kernels."""
    by_kind = {kind: [s for s in scores if s.kind == kind] for kind in ("test", "corruption", "blur", "zero_shot")}
    tree: dict[str, Any] = {TEST: _rounded(by_kind["test"][0].metrics)}
    tree.update({s.name: _rounded(s.metrics) for s in by_kind["corruption"]})
    # A blur-sweep point keeps a few scores (BLUR_SWEEP_METRICS); blur_sweep.csv plots the pooled F1 and IoU.
    tree[BLUR_SWEEP] = {blur_point(kernels[s.name]): _rounded({k: s.metrics[k] for k in BLUR_SWEEP_METRICS})
                        for s in by_kind["blur"]}
    zero_shot: dict[str, Any] = {s.name: _rounded(s.metrics) for s in by_kind["zero_shot"]}
    if by_kind["zero_shot"]:
        mean, std = zero_shot_summary(by_kind["zero_shot"])
        zero_shot.update({ZERO_SHOT_MEAN: _rounded(mean), ZERO_SHOT_STD: _rounded(std)})
    tree[ZERO_SHOT] = zero_shot
    return tree


def _csv(header: list[str], rows: list[list[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def _plot_pr_curves(scores: list[SetScore], tolerance: int, rule: str, path: Path) -> None:
    from matplotlib.figure import Figure  # no pyplot: no global state, renders with Agg

    fig = Figure(figsize=(6, 5), dpi=110, layout="constrained")
    ax = fig.subplots()
    for score in scores:
        if not score.pr_curve:
            continue
        m = score.metrics
        threshold, precision, recall = (np.asarray(score.pr_curve[k]) for k in ("threshold", "precision", "recall"))
        # P = R = 0 points (nothing right predicted at high thresholds) would draw a line to the origin.
        keep = (precision > 0) | (recall > 0)
        style = {"test": ("-", 2.4), "corruption": ("--", 1.4), "zero_shot": (":", 1.8)}[score.kind]
        line, = ax.plot(recall[keep], precision[keep], linestyle=style[0], linewidth=style[1],
                        label=f"{score.name} (AP {m['ap']:.3f}, ODS {m['ods']:.3f})")
        if score.kind == "test":
            k = int(np.argmin(np.abs(threshold - m["ods_threshold"])))
            ax.plot(recall[k], precision[k], "o", color=line.get_color(), markersize=7,
                    label=f"test ODS point (t = {m['ods_threshold']:.2f})")
    ax.set(xlim=(0, 1.02), ylim=(0, 1.02), xlabel="Recall", ylabel="Precision",
           title=f"Precision-recall, {tolerance}-pixel tolerance ({rule})")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.savefig(path)


def _plot_blur_sweep(rows: list[list[float]], path: Path) -> None:
    from matplotlib.figure import Figure

    kernels = [row[0] for row in rows]
    fig = Figure(figsize=(6, 4), dpi=110, layout="constrained")
    ax = fig.subplots()
    ax.plot(kernels, [row[1] for row in rows], "o-", label="F1")
    ax.plot(kernels, [row[2] for row in rows], "s--", label="IoU")
    if not rows:
        ax.text(0.5, 0.5, "no blur kernels (eval.blur_kernels is empty)", ha="center", transform=ax.transAxes)
    ax.set(xticks=kernels, ylim=(0, 1.02), xlabel="Gaussian blur kernel size (1 = none)", ylabel="Score",
           title="IoU and F1 against blur kernel size")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path)


def overlay_filename(set_name: str, stem: str) -> str:
    """``<set>_<stem>.png`` with anything but letters, digits, ``.``, ``_`` and ``-`` replaced."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{set_name}_{stem}") + ".png"


def _write_png(path: Path, rgb: np.ndarray) -> None:
    ok, buffer = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"could not encode {path}")
    path.write_bytes(buffer.tobytes())


def _check_image_size(sets: list[EvalSet], img_size: int) -> None:
    # The model only takes img_size inputs; say which folder to re-prepare instead of failing mid-run.
    for eval_set in sets:
        if eval_set.kind in ("test", "zero_shot"):
            size = tuple(eval_set.dataset[0][0].shape[-2:])
            if size != (img_size, img_size):
                raise DatasetError(f"set {eval_set.name!r} holds {size[0]}x{size[1]} images but the model takes "
                                   f"{img_size}x{img_size}: run `crackops prepare` with data.img_size={img_size}")


def run_evaluation(
    model: nn.Module, params: Params, prepared_dir: Path, zero_shot: dict[str, Path], out_dir: Path,
    *, progress: bool = True,
) -> dict[str, Any]:
    """Score every set (moving ``model`` to the picked device), write ``out_dir``; return metrics.json's tree."""
    ev = params.eval
    sets = build_eval_sets(Path(prepared_dir), zero_shot, ev.blur_kernels)
    _check_image_size(sets, params.data.img_size)
    device = pick_device()
    model.to(device)
    common = {"amp_dtype": autocast_dtype(params.train.precision, device), "num_workers": params.data.num_workers,
              "progress": progress}

    scores: list[SetScore] = []
    started = time.monotonic()
    for index, eval_set in enumerate(sets, 1):
        if eval_set.kind == "blur" and eval_set.kernel == 1:
            # Kernel 1 is the clean test split: same images, same model, same scores.
            scores.append(dataclasses.replace(scores[0], name=eval_set.name, kind="blur", overlays=[]))
            continue
        n_overlays = ev.n_overlays if eval_set.kind in ("test", "zero_shot") else 0
        scores.append(score_set(model, eval_set, ev, device, n_overlays, **common))
        # A line per set, TTY or not: scoring every set takes minutes on a CPU.
        score = scores[-1]
        print(f"set {index}/{len(sets)} {score.name}: {score.n_images} images, F1 {score.metrics.get('f1', math.nan):.4f}, "
              f"IoU {score.metrics.get('iou', math.nan):.4f} (image means {score.metrics.get('f1_image_mean', math.nan):.4f}, "
              f"{score.metrics.get('iou_image_mean', math.nan):.4f}) [{time.monotonic() - started:.0f}s]", flush=True)

    kernels = {s.name: s.kernel for s in sets if s.kind == "blur"}
    metrics = build_metrics(scores, kernels)
    test = scores[0]
    sweep_rows = [[int(blur_kernel(key)), v["f1"], v["iou"]] for key, v in metrics[BLUR_SWEEP].items()]

    with atomic_dir(out_dir) as tmp:
        (tmp / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
        curve = test.pr_curve
        (tmp / PR_CURVE_CSV).write_text(_csv(
            ["threshold", "precision", "recall"],
            [[round(t, 4), round(p, 6), round(r, 6)]
             for t, p, r in zip(curve["threshold"], curve["precision"], curve["recall"])],
        ))
        (tmp / BLUR_SWEEP_CSV).write_text(_csv(["kernel", "f1", "iou"], sweep_rows))
        _plot_pr_curves([s for s in scores if s.kind != "blur"], ev.tolerance, ev.tolerance_rule, tmp / PR_CURVE_PNG)
        # Written even for an empty sweep: dvc.yaml declares the file as an output.
        _plot_blur_sweep(sweep_rows, tmp / BLUR_SWEEP_PNG)
        plots = {"Precision-recall curves (tolerance-based)": PR_CURVE_PNG}
        if sweep_rows:
            plots["IoU and F1 against blur kernel size"] = BLUR_SWEEP_PNG

        (tmp / OVERLAY_DIR).mkdir()
        overlays: dict[str, list[str]] = {}
        for score in scores:
            for stem, panel in score.overlays:
                name = overlay_filename(score.name, stem)
                _write_png(tmp / OVERLAY_DIR / name, panel)
                overlays.setdefault(score.name, []).append(f"{OVERLAY_DIR}/{name}")

        report = render_report(
            metrics, threshold=ev.threshold, tolerance=ev.tolerance, n_thresholds=ev.n_thresholds,
            tolerance_rule=ev.tolerance_rule,
            n_images={s.name: s.n_images for s in scores}, overlays=overlays, plots=plots,
            subtitle=(f"Model: {model_label(params)}, tuning `{params.tuning.method}`, "
                      f"{params.data.img_size}x{params.data.img_size} inputs."),
        )
        (tmp / REPORT_FILE).write_text(report)
        (tmp / REPORT_HTML).write_text(report_html(report, tmp))
    return metrics
