"""results/: the headline metrics and plot data DVC compares across experiments (fast checks;
tests/test_dvc_experiments.py runs real `dvc exp run`s)."""
from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from pipeline.results import (BLUR_SWEEP_PLOT, HEADLINE_METRICS, HISTORY_PLOT, PR_CURVE_PLOT, headline_metrics,
                              publish_evaluation, publish_training)

REPO = Path(__file__).resolve().parents[1]
SCORES = {"precision": 0.5, "recall": 0.25, "f1": 0.3333, "iou": 0.2, "precision_image_mean": 0.55,
          "recall_image_mean": 0.3, "f1_image_mean": 0.29, "iou_image_mean": 0.17, "ods": 0.4, "ois": 0.45,
          "ois_std": 0.1, "ap": 0.35}
EVALUATION = {
    "test": SCORES,
    "low_light_blur": {**SCORES, "f1": 0.21},
    "blur_down_up": {**SCORES, "f1": 0.11},
    "blur_sweep": {"k1": {"f1": 0.3333, "iou": 0.2}, "k9": {"f1": 0.1, "iou": 0.05}},
    "zero_shot": {"masonry": {**SCORES, "iou": 0.07}, "mean": {**SCORES, "iou": 0.07}, "std": {**SCORES, "iou": 0.0}},
}
TRAIN = {"best_epoch": 2, "epochs_run": 3, "val": {**SCORES, "f1": 0.6100012345}, "trainable_params": 1234,
         "total_params": 5678, "train_seconds": 9.5}


def test_headline_is_the_named_subset_with_the_full_trees_paths():
    assert headline_metrics(TRAIN, EVALUATION) == {
        "val": {"f1": 0.61},
        "test": {"precision": 0.5, "recall": 0.25, "f1": 0.3333, "iou": 0.2, "f1_image_mean": 0.29,
                 "iou_image_mean": 0.17, "ods": 0.4, "ap": 0.35},
        "low_light_blur": {"f1": 0.21},
        "blur_down_up": {"f1": 0.11},
        "zero_shot": {"mean": {"iou": 0.07}},
        "trainable_params": 1234,
    }
    # No zero-shot set scored (eval.zero_shot: []): no zero-shot key rather than a null DVC cannot diff.
    without = {**EVALUATION, "zero_shot": {}}
    assert "zero_shot" not in headline_metrics(TRAIN, without)


def test_publish_writes_results_from_the_stage_outputs(tmp_path, monkeypatch):
    train, evaluation = tmp_path / "outputs/train", tmp_path / "outputs/eval"
    train.mkdir(parents=True)
    evaluation.mkdir(parents=True)
    (train / "metrics.json").write_text(json.dumps(TRAIN))
    (train / "history.csv").write_text("epoch,train_loss,val_f1\n1,0.9,0.2\n")
    (evaluation / "metrics.json").write_text(json.dumps(EVALUATION))
    (evaluation / "pr_curve.csv").write_text("threshold,precision,recall\n0.5,0.5,0.25\n")
    (evaluation / "blur_sweep.csv").write_text("kernel,f1,iou\n1,0.3333,0.2\n")
    monkeypatch.chdir(tmp_path)  # results/ is relative to the repository root, where DVC runs stages
    publish_training(train / "history.csv")
    headline = publish_evaluation(train / "metrics.json", evaluation / "metrics.json", evaluation / "pr_curve.csv",
                                  evaluation / "blur_sweep.csv")
    assert json.loads(HEADLINE_METRICS.read_text()) == headline == headline_metrics(TRAIN, EVALUATION)
    assert HISTORY_PLOT.read_text() == (train / "history.csv").read_text()
    assert PR_CURVE_PLOT.read_text() == (evaluation / "pr_curve.csv").read_text()
    assert BLUR_SWEEP_PLOT.read_text() == (evaluation / "blur_sweep.csv").read_text()
    assert sorted(p.name for p in (tmp_path / "results").rglob("*")) == [
        "blur_sweep.csv", "history.csv", "metrics.json", "plots", "pr_curve.csv"]  # no temporary files left


def test_dvc_yaml_compares_results_and_draws_each_chart_once():
    pipeline = yaml.safe_load((REPO / "dvc.yaml").read_text())
    stages = pipeline["stages"]
    metrics = [path for stage in stages.values() for entry in stage.get("metrics", []) for path in entry]
    assert metrics == [str(HEADLINE_METRICS)]  # the one DVC metrics file: `dvc metrics show` stays short
    assert all("plots" not in stage for stage in stages.values())  # charts are defined once, at the top
    charts = {name: (spec["x"], spec["y"]) for entry in pipeline["plots"] for name, spec in entry.items()}
    assert charts == {
        "Loss and validation F1 by epoch": ("epoch", {str(HISTORY_PLOT): ["train_loss", "val_f1"]}),
        "IoU and F1 against blur kernel size": ("kernel", {str(BLUR_SWEEP_PLOT): ["iou", "f1"]}),
        "Precision-recall curve (test split)": ("recall", {str(PR_CURVE_PLOT): "precision"}),
    }

    def outs(stage: str) -> dict:
        return {next(iter(o)) if isinstance(o, dict) else o: (o[next(iter(o))] if isinstance(o, dict) else {})
                for o in stages[stage].get("outs", []) + stages[stage].get("metrics", [])}

    # Each results/ file is an uncached output of the stage that writes it, so git commits it.
    assert outs("train")[str(HISTORY_PLOT)] == {"cache": False}
    for path in (HEADLINE_METRICS, PR_CURVE_PLOT, BLUR_SWEEP_PLOT):
        assert outs("evaluate")[str(path)] == {"cache": False}
    assert "outputs/train/metrics.json" in stages["evaluate"]["deps"]  # val F1 and parameters of the headline


def test_results_are_committed_by_git_and_dvc_plots_are_not():
    def ignored(path: str) -> bool:
        return subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO).returncode == 0

    if subprocess.run(["git", "rev-parse"], cwd=REPO, capture_output=True).returncode:
        pytest.skip("not a git checkout")
    assert not any(ignored(str(p)) for p in (HEADLINE_METRICS, HISTORY_PLOT, PR_CURVE_PLOT, BLUR_SWEEP_PLOT))
    assert ignored("outputs/eval/metrics.json") and ignored("dvc_plots/index.html")
    assert ignored(".dvc/plots_template.html")


def test_offline_template_keeps_dvc_from_adding_cdn_scripts(tmp_path):
    """DVC's renderer fills scripts/offline_plots_template.py's page without its CDN <script> tags."""
    from dvc_render.html import render_html
    from dvc_render.vega import VegaRenderer

    spec = importlib.util.spec_from_file_location("offline_plots_template", REPO / "scripts/offline_plots_template.py")
    offline = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(offline)
    assert "cdn.jsdelivr.net" in VegaRenderer.SCRIPTS  # what DVC's default page loads

    page = offline.PAGE % '    <script type="text/javascript">/* vega inlined here */</script>'
    renderer = VegaRenderer([{"x": 1, "y": 2}], "chart", x="x", y="y")
    html = Path(render_html([renderer], tmp_path / "index.html", page)).read_text()
    assert "cdn.jsdelivr.net" not in html and "vega inlined here" in html and "vegaEmbed" in html


def test_train_stage_mirrors_only_the_pipelines_own_outputs(tiny_params, tmp_path, monkeypatch, capsys):
    """`crackops train` updates results/ for outputs/train (the DVC stage), not for another train.out_dir."""
    import argparse

    from crackops.cli import COMMANDS

    monkeypatch.chdir(tmp_path)  # the prepared data is at an absolute path
    args = argparse.Namespace(no_progress=True)
    COMMANDS["train"](tiny_params("train.epochs=1", "train.out_dir=bench/train"), args)
    assert (tmp_path / "bench/train/history.csv").is_file() and not (tmp_path / "results").exists()
    assert f"{HISTORY_PLOT} not updated: train.out_dir is bench/train" in capsys.readouterr().out

    COMMANDS["train"](tiny_params("train.epochs=1"), args)  # train.out_dir: outputs/train
    assert (tmp_path / HISTORY_PLOT).read_text() == (tmp_path / "outputs/train/history.csv").read_text()
    assert (tmp_path / HISTORY_PLOT).read_text().startswith("epoch,train_loss,")
