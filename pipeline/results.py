"""What DVC compares across experiments: small files in the git-tracked ``results/`` folder.

As in DVC's get-started project, the metrics and plot data that ``dvc exp show``, ``dvc metrics
diff`` and ``dvc plots diff`` read are ``cache: false`` outputs that git commits, so every
experiment commit (and every commit of ``dvc.lock``) carries them. ``outputs/`` stays gitignored
and holds each stage's full outputs: the whole evaluation tree (``outputs/eval/metrics.json``,
about 70 numbers, read by ``register`` and ``promote``), the model, the report.

* ``results/metrics.json``: the headline metrics, the one DVC metrics file (``dvc metrics show``);
* ``results/plots/*.csv``: the data of the three charts defined in ``dvc.yaml``'s ``plots``.

Paths are relative to the repository root, where DVC runs each stage; ``dvc.yaml`` names the same.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Mapping

from pipeline.atomic import atomic_path, write_json
from pipeline.eval_schema import HEADLINE_SCORES, TEST
from pipeline.params import EvalParams, TrainParams

RESULTS_DIR = Path("results")
HEADLINE_METRICS = RESULTS_DIR / "metrics.json"
PLOTS_DIR = RESULTS_DIR / "plots"
HISTORY_PLOT = PLOTS_DIR / "history.csv"        # epoch, train_loss, val_f1, ... (train stage)
PR_CURVE_PLOT = PLOTS_DIR / "pr_curve.csv"      # threshold, precision, recall on the test split (evaluate)
BLUR_SWEEP_PLOT = PLOTS_DIR / "blur_sweep.csv"  # kernel, f1, iou (evaluate)

# results/ mirrors the pipeline's own outputs (the paths dvc.yaml declares: the params' defaults) and
# nothing else: `crackops train -S train.out_dir=elsewhere` leaves it alone.
PIPELINE_TRAIN_DIR = Path(TrainParams.model_fields["out_dir"].default)
PIPELINE_EVAL_DIR = Path(EvalParams.model_fields["out_dir"].default)

# The evaluation's headline scores that DVC compares (pipeline/eval_schema.py), in results/metrics.json's
# order (`dvc metrics show` sorts its own): the test split's pooled P/R/F1/IoU, per-image mean F1 and IoU,
# ODS and AP, each corruption set's F1 and the zero-shot mean IoU.
DVC_SCORES = tuple(score for score in HEADLINE_SCORES if score.dvc)
DECIMALS = 5  # as the evaluation rounds its scores (pipeline.evaluation.suite)


def headline_metrics(train: Mapping[str, Any], evaluation: Mapping[str, Any]) -> dict[str, Any]:
    """The headline subset of the train stage's and the evaluation's metrics trees.

    Keys keep the full trees' paths (``test.f1``, ``low_light_blur.f1``, ``zero_shot.mean.iou``, as
    ``promote.primary_metric`` names them) plus ``val.f1`` and ``trainable_params`` from training.
    ``zero_shot`` is left out when no zero-shot set was scored (``eval.zero_shot: []``).
    """
    out: dict[str, Any] = {"val": {"f1": round(float(train["val"]["f1"]), DECIMALS)}}  # training keeps full precision
    for score in DVC_SCORES:
        *parents, name = score.set.split(".")
        node: Any = evaluation
        for part in parents:
            node = node.get(part, {})
        # The test split is always scored (a missing score is an error); other sets may be absent.
        if score.set != TEST and name not in node:
            continue
        target = out
        for part in (*parents, name):
            target = target.setdefault(part, {})
        target[score.metric] = node[name][score.metric]
    out["trainable_params"] = train["trainable_params"]
    return out


def _copy(source: Path, target: Path) -> None:
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def publish_training(history: Path) -> None:
    """The train stage's plot data: its ``history.csv`` to :data:`HISTORY_PLOT`."""
    _copy(history, HISTORY_PLOT)


def publish_evaluation(train_metrics: Path, eval_metrics: Path, pr_curve: Path, blur_sweep: Path) -> dict[str, Any]:
    """The evaluate stage's headline metrics and plot data into ``results/``; returns the headline."""
    headline = headline_metrics(json.loads(Path(train_metrics).read_text()), json.loads(Path(eval_metrics).read_text()))
    _copy(pr_curve, PR_CURVE_PLOT)
    _copy(blur_sweep, BLUR_SWEEP_PLOT)
    write_json(HEADLINE_METRICS, headline)
    return headline
