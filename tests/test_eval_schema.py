"""pipeline/eval_schema.py is the one home of the evaluation's set and metric names: every consumer
reads it, and what an evaluation writes is what it declares."""
from __future__ import annotations

import json
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import torch
from torch import nn

from pipeline import eval_schema as schema
from pipeline.data import CORRUPTIONS, generate_dataset, prepare_dataset
from pipeline.evaluation import report, run_evaluation
from pipeline.metrics import TOLERANCE_RULES
from pipeline.params import EvalParams, PromoteParams, load_params
from pipeline.results import DVC_SCORES, headline_metrics
from registry import compare, gate, register

REPO = Path(__file__).resolve().parents[1]
SIZE = 64


def _choices(model: type, field: str) -> tuple:
    return typing.get_args(model.model_fields[field].annotation)


def test_every_consumer_reads_its_names_from_the_schema() -> None:
    assert list(CORRUPTIONS) == list(schema.CORRUPTION_NAMES)  # the schema names them, CORRUPTIONS makes them
    assert _choices(EvalParams, "tolerance_rule") == schema.TOLERANCE_RULE_NAMES == tuple(TOLERANCE_RULES)
    assert _choices(PromoteParams, "corruption_metric") == _choices(PromoteParams, "zero_shot_metric") \
        == schema.GATE_METRICS
    assert report.COLUMNS == schema.COLUMNS
    assert set(report.NOTES) == set(schema.CORRUPTION_NAMES)
    headlines = {(score.set, score.metric) for score in schema.HEADLINE_SCORES}
    assert set(register.HEADLINE_SCORES) == headlines and len(register.HEADLINE_SCORES) == len(headlines)
    shown = {tag for _, tag, _ in compare.SCORES} | {compare.ZERO_SHOT_MEAN[1], compare.ZERO_SHOT_STD[1]}
    assert shown == {score.tag for score in schema.HEADLINE_SCORES}
    assert set(DVC_SCORES) <= set(schema.HEADLINE_SCORES)
    # A headline score names a declared metric with a header: compare shows it as a column.
    assert {score.metric for score in schema.HEADLINE_SCORES} <= set(schema.HEADERS) <= set(schema.METRIC_KEYS)
    assert set(schema.BLUR_SWEEP_METRICS) <= set(schema.HEADERS)  # the report's blur table has a column for each


PUBLISHED = ["test.precision", "test.recall", "test.f1", "test.iou", "test.f1_image_mean", "test.iou_image_mean",
             "test.ods", "test.ap", "low_light_blur.f1", "blur_down_up.f1", "zero_shot.mean.iou"]


def test_published_names_stay() -> None:
    """Runs, version tags and DVC already hold these: renaming or dropping one breaks every comparison
    with older runs. A new headline score is added freely."""
    dvc = [score.path for score in DVC_SCORES]
    assert [path for path in dvc if path in PUBLISHED] == PUBLISHED  # results/metrics.json's order too
    tags = {score.tag for score in schema.HEADLINE_SCORES}
    assert {f"eval.{path}" for path in [*PUBLISHED, "zero_shot.std.iou"]} <= tags
    run_metrics = {score.run_metric for score in schema.HEADLINE_SCORES}
    assert {"test_f1", "test_f1_image_mean", "zero_shot_mean_iou", "zero_shot_std_iou"} <= run_metrics
    # A version's description leads with the pooled test F1 and IoU.
    assert register.HEADLINE_SCORES[:4] == (("test", "f1"), ("test", "iou"), ("test", "precision"), ("test", "recall"))


def test_primary_metric_must_end_in_a_schema_metric() -> None:
    with pytest.raises(Exception, match=r"promote\.primary_metric: .*must end in a metric of metrics\.json "
                                         r"\(precision, recall, .*\), got 'test\.f2'"):
        load_params("missing.yaml", ["promote.primary_metric=test.f2"])
    for path in ("test.f1_image_mean", "zero_shot.cfd.v2.iou", "blur_sweep.k9.f1", "low_light_blur.ois_std"):
        assert load_params("missing.yaml", [f"promote.primary_metric={path}"]).promote.primary_metric == path


def test_the_gate_and_registry_read_the_schema_without_torch() -> None:
    code = ("import sys, registry.gate, registry.compare, registry.register, pipeline.results; "
            "assert 'torch' not in sys.modules, 'torch loaded'")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


class _Brightness(nn.Module):
    """Scores dark pixels as crack: some right, some wrong, so no score is degenerate."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (0.5 - images.mean(1, keepdim=True)) * 30


def test_a_tiny_evaluation_writes_what_the_schema_declares(tmp_path: Path) -> None:
    prepared, masonry = tmp_path / "prepared", tmp_path / "masonry"
    prepare_dataset(generate_dataset(tmp_path / "raw", 8, SIZE, 0, "pavement"), prepared, SIZE, 0.25, 0.25, 0)
    prepare_dataset(generate_dataset(tmp_path / "raw-m", 2, SIZE, 1, "masonry"), masonry, SIZE, 0.25, 0.25, 0,
                    test_only=True)
    params = load_params("missing.yaml", [f"data.img_size={SIZE}", "eval.n_overlays=0", "eval.blur_kernels=[1,5]"])
    metrics = run_evaluation(_Brightness(), params, prepared, {"masonry": masonry}, tmp_path / "eval", progress=False)
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text()) == metrics

    assert list(metrics) == [schema.TEST, *schema.CORRUPTION_NAMES, schema.BLUR_SWEEP, schema.ZERO_SHOT]
    for name in (schema.TEST, *schema.CORRUPTION_NAMES):
        assert set(metrics[name]) == set(schema.METRIC_KEYS), name  # the default (square) rule scores them all
    assert list(metrics[schema.BLUR_SWEEP]) == [schema.blur_point(1), schema.blur_point(5)]
    assert all(list(point) == list(schema.BLUR_SWEEP_METRICS) for point in metrics[schema.BLUR_SWEEP].values())
    assert list(metrics[schema.ZERO_SHOT]) == ["masonry", *schema.SUMMARY_KEYS]

    for score in schema.HEADLINE_SCORES:
        assert gate.score_at(metrics, score.path) is not None, score.path
    headline = headline_metrics({"val": {"f1": 0.5}, "trainable_params": 1}, metrics)
    assert all(gate.score_at(headline, score.path) is not None for score in DVC_SCORES)
    assert set(register.version_tags(_Run(), metrics)) >= {score.tag for score in schema.HEADLINE_SCORES}
    table = compare.render_compare([compare.Entry("v1", "v1", None, register.version_tags(_Run(), metrics))])
    row = next(line for line in table.splitlines() if line.startswith("| v1 |")).split(" | ")
    assert "—" not in row[2:2 + len(compare.SCORES) + 1]  # every score column and the zero-shot one filled


class _Run:
    """The little of an MLflow run that register.version_tags reads."""

    class data:  # noqa: N801 - mirrors mlflow.entities.Run.data
        tags: dict[str, str] = {}

    class info:  # noqa: N801
        run_id = "r1"
