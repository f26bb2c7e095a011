"""DVC compares experiments: two `dvc exp run`s on tiny data, then `dvc exp show`, `dvc metrics diff`
and `dvc plots diff` against the committed baseline, as a user would after the README's commands."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pipeline.results import BLUR_SWEEP_PLOT, DVC_SCORES, HEADLINE_METRICS, HISTORY_PLOT, PR_CURVE_PLOT
from test_pipeline import BIN, TINY, make_project, merge, run

DVC = str(BIN / "dvc")
GIT = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
# Every headline metric, as dotted paths in results/metrics.json (the tiny data has every corruption
# set and the built-in zero-shot set); the evaluation's come from pipeline/eval_schema.py.
HEADLINE = ["val.f1", *(score.path for score in DVC_SCORES), "trainable_params"]
# The charts of dvc.yaml's top-level `plots`: (id, x field, y fields).
CHARTS = {
    "Loss and validation F1 by epoch": ("epoch", {"train_loss", "val_f1"}),
    "IoU and F1 against blur kernel size": ("kernel", {"iou", "f1"}),
    "Precision-recall curve (test split)": ("recall", {"precision"}),
}
EXPERIMENTS = {"low-lr": ["-S", "train.lr=1e-4"], "dice-heavy": ["-S", "loss.lambda=2.0"]}

pytestmark = [
    pytest.mark.slow,  # three pipeline runs: about 4 minutes on 2 CPU cores
    pytest.mark.skipif(shutil.which("git") is None or not (BIN / "dvc").exists(), reason="needs git and dvc"),
]


def flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def headline_of(row: dict) -> dict:
    """The flattened results/metrics.json of one `dvc exp show --json` row (fails on DVC's load errors)."""
    metrics = row["data"]["metrics"]
    assert str(HEADLINE_METRICS) in metrics, f"{row.get('name') or row['rev']}: {sorted(metrics)}"
    entry = metrics[str(HEADLINE_METRICS)]
    assert "error" not in entry, entry
    return flatten(entry["data"])


@pytest.fixture(scope="module")
def experiments(tmp_path_factory) -> Path:
    """A committed baseline (`dvc repro`, then git commit as in DVC's get-started) and two experiments."""
    project = make_project(tmp_path_factory.mktemp("exp"), merge(TINY, {"train": {"epochs": 1}}))
    run([DVC, "repro"], project)
    tracked = [HEADLINE_METRICS, HISTORY_PLOT, PR_CURVE_PLOT, BLUR_SWEEP_PLOT]
    run([*GIT, "add", "dvc.lock", *map(str, tracked)], project)  # fails if .gitignore hid results/
    run([*GIT, "commit", "-qm", "baseline"], project)
    for name, overrides in EXPERIMENTS.items():
        run([DVC, "exp", "run", "-n", name, *overrides], project)
    return project


def test_exp_show_has_every_headline_metric_for_baseline_and_experiments(experiments):
    rows = json.loads(run([DVC, "exp", "show", "--json"], experiments).stdout)
    baseline = next(row for row in rows if row["rev"] != "workspace")
    found = {"baseline": headline_of(baseline)}
    for group in baseline.get("experiments") or []:
        for exp in group["revs"]:
            found[exp["name"]] = headline_of(exp)
    assert set(found) == {"baseline", *EXPERIMENTS}
    for name, metrics in found.items():
        assert set(metrics) == set(HEADLINE), name
        assert all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in metrics.values())
        assert 0.0 <= metrics["test.f1"] <= 1.0 and metrics["trainable_params"] > 0
    # The full evaluation is not a DVC metric: `dvc metrics show` prints the headline only.
    shown = json.loads(run([DVC, "metrics", "show", "--json"], experiments).stdout)
    assert set(shown[""]["data"]) == {str(HEADLINE_METRICS)}


def test_metrics_diff_against_an_experiment(experiments):
    for name in EXPERIMENTS:
        diff = json.loads(run([DVC, "metrics", "diff", "--all", "--json", "HEAD", name], experiments).stdout)
        rows = diff[str(HEADLINE_METRICS)]
        assert set(rows) == set(HEADLINE)
        assert all(row["old"] is not None and row["new"] is not None for row in rows.values()), rows
    # Its plain form, as the README shows it, also works against the workspace.
    run([DVC, "metrics", "diff", "low-lr"], experiments)


def test_plots_diff_draws_each_chart_once_with_both_revisions(experiments):
    result = run([DVC, "plots", "diff", "--json", "HEAD", "low-lr"], experiments)
    plots = json.loads(result.stdout)
    assert not plots.get("errors"), plots["errors"]
    data = plots["data"]
    assert set(data) == set(CHARTS), sorted(data)
    for chart, (x, ys) in CHARTS.items():
        (spec,) = data[chart]  # drawn once
        assert set(spec["revisions"]) == {"HEAD", "low-lr"}, spec["revisions"]
        # Vega-Lite spec: the x field and the y columns (DVC folds several y columns into one field).
        text = json.dumps(spec["content"])
        assert f'"field": "{x}"' in text, (chart, text[:2000])
        for y in ys:
            assert f'"{y}"' in text, (chart, y)
    # The HTML page too (with DVC's default CDN page here; scripts/offline_plots_template.py inlines Vega).
    out = experiments / "dvc_plots_test"
    run([DVC, "plots", "diff", "HEAD", "low-lr", "-o", str(out)], experiments)
    assert (out / "index.html").is_file()


def test_each_experiment_has_an_mlflow_run_named_after_it(experiments):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{experiments / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("crackops").experiment_id])
    named = {run.data.tags.get("dvc.exp_name"): run for run in runs}
    assert set(EXPERIMENTS) <= set(named), sorted(map(str, named))
    for name in EXPERIMENTS:
        run = named[name]
        assert run.info.run_name == name and run.data.tags.get("dvc.exp_baseline_rev")
        assert run.data.tags.get("git.dirty") == "false"  # DVC's own edits of params.yaml and dvc.lock do not count
