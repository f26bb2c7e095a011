"""Model registry against a real `mlflow server` over HTTP: register, promote, rollback, lineage, compare,
predict and serve; concurrent and killed promotions; loading without unpickling.

Two tiny models of known, different quality are built through the real training path: their mask
decoder is set to a constant logit (all crack / no crack), so their scores follow from the data
alone, and lr 1e-12 keeps one epoch of training from changing that.
"""
from __future__ import annotations

import base64
import json
import math
import os
import pickle
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import cv2
import mlflow
import numpy as np
import pytest
import torch
import yaml
from mlflow import MlflowClient

from pipeline.errors import CrackopsError
from pipeline.params import PromoteParams, load_params
from registry.gate import decide, score_at, render_table
from registry.lease import LEASE_TAG, Lease, LeaseError, LeaseSettings, read_lease
from registry.local_server import free_port, running_mlflow_server, stop_process_group, wait_until_up
from registry.promote import SuiteEvaluator, promote, render_promotion
from registry.versions import CHAMPION, PREVIOUS_CHAMPION, REGISTERED_TAG, alias_version, load_version_model

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
NAME = "crack-segmenter"
ALL_CRACK, NO_CRACK = 8.0, -8.0
# Shorter than the defaults, yet loose enough for a loaded machine: a read-then-write slower than
# max_gap_s only retries (it never breaks exclusion), and once the machine was loaded enough for
# 0.25 s to fail every attempt for 60 s. Only the bounds that make a test wait are short.
FAST_LEASE = {"ttl_s": 60.0, "settle_s": 2.0, "max_gap_s": 1.5, "wait_s": 300.0, "poll_s": 0.05, "min_remaining_s": 5.0}


# --- the gate: a pure function ------------------------------------------------------------

def _metrics(f1: float, corruption: float = 0.5, masonry: float = 0.4, extra: dict | None = None) -> dict:
    zero_shot = {"masonry": {"iou": masonry}, **(extra or {})}
    ious = [v["iou"] for v in zero_shot.values()]
    zero_shot.update({"mean": {"iou": sum(ious) / len(ious)}, "std": {"iou": 0.0}})
    return {"test": {"f1": f1, "iou": f1 / 2}, "low_light_blur": {"f1": corruption}, "blur_down_up": {"f1": corruption},
            "blur_sweep": {"k1": {"f1": f1, "iou": 0.1}}, "zero_shot": zero_shot}


def test_gate_first_model_needs_the_floor() -> None:
    assert decide(_metrics(0.3), None, PromoteParams(floor=0.2)).passed
    refused = decide(_metrics(0.1), None, PromoteParams(floor=0.2))
    assert not refused.passed and "floor 0.2000" in refused.reason
    assert [row.ok for row in refused.rows][0] is False and all(row.ok is None for row in refused.rows[1:])


def test_gate_primary_metric_and_margin() -> None:
    gate = PromoteParams(margin=0.01)
    assert decide(_metrics(0.62), _metrics(0.60), gate).passed
    refused = decide(_metrics(0.605), _metrics(0.60), gate)
    assert not refused.passed and "test.f1 0.6050 < champion 0.6000 + margin 0.0100" in refused.reason
    assert decide(_metrics(0.60), _metrics(0.60), PromoteParams()).passed  # margin 0: a tie passes
    iou_gate = PromoteParams(primary_metric="test.iou")
    assert decide(_metrics(0.7), _metrics(0.6), iou_gate).rows[0].metric == "test.iou"


def test_gate_on_cracksam_image_mean_f1() -> None:
    # Pooled F1 rises but the per-image mean (CrackSAM's number) falls: the setting decides.
    candidate, champion = _metrics(0.70), _metrics(0.60)
    candidate["test"]["f1_image_mean"], champion["test"]["f1_image_mean"] = 0.50, 0.55
    assert decide(candidate, champion, PromoteParams()).passed
    gate = load_params("missing.yaml", ["promote.primary_metric=test.f1_image_mean"]).promote
    refused = decide(candidate, champion, gate)
    assert not refused.passed and "test.f1_image_mean 0.5000 < champion 0.5500 + margin 0.0000" in refused.reason
    rows = decide(candidate, champion, PromoteParams(corruption_metric="iou_image_mean")).rows
    assert [row.metric for row in rows[1:3]] == ["blur_down_up.iou_image_mean", "low_light_blur.iou_image_mean"]


def test_gate_tolerance_on_corruption_and_zero_shot_sets() -> None:
    champion = _metrics(0.6, corruption=0.5, masonry=0.4)
    assert decide(_metrics(0.7, corruption=0.485, masonry=0.385), champion, PromoteParams()).passed
    blurred = decide(_metrics(0.7, corruption=0.45), champion, PromoteParams())
    assert not blurred.passed and "low_light_blur.f1 fell by 0.0500" in blurred.reason
    shifted = decide(_metrics(0.7, masonry=0.3), champion, PromoteParams())
    assert not shifted.passed and "zero_shot.masonry.iou fell" in shifted.reason
    assert "zero_shot.mean.iou" in shifted.reason
    assert decide(_metrics(0.7, masonry=0.3), champion, PromoteParams(tolerance=0.2)).passed
    # The metric each kind compares on is configurable.
    rows = decide(_metrics(0.7), champion, PromoteParams(zero_shot_metric="f1", corruption_metric="iou")).rows
    assert {row.metric for row in rows} >= {"low_light_blur.iou", "zero_shot.masonry.f1", "zero_shot.mean.f1"}


def test_gate_rows_table_and_missing_scores() -> None:
    champion = _metrics(0.6)
    decision = decide(_metrics(0.65, extra={"new-set": {"iou": 0.1}}), champion, PromoteParams())
    by_metric = {row.metric: row for row in decision.rows}
    assert by_metric["test.f1"].delta == pytest.approx(0.05) and by_metric["test.f1"].ok
    assert by_metric["zero_shot.new-set.iou"].ok is None  # a set the champion never saw: nothing to fall from
    table = render_table(decision)
    assert table.splitlines()[0] == "| metric | champion | candidate | delta | check |"
    assert "| test.f1 | 0.6000 | 0.6500 | +0.0500 | pass (>= champion + 0.0000) |" in table
    assert not decide({"test": {"f1": math.nan}}, champion, PromoteParams()).passed
    no_corruption = {k: v for k, v in _metrics(0.7).items() if k != "blur_down_up"}
    missing = decide(no_corruption, champion, PromoteParams())
    assert not missing.passed and "no usable blur_down_up.f1" in missing.reason


def test_score_at_handles_dotted_set_names() -> None:
    tree = {"zero_shot": {"cfd.v2": {"iou": 0.3}, "mean": {"iou": 0.2}}, "test": {"f1": 1}}
    assert score_at(tree, "zero_shot.cfd.v2.iou") == 0.3
    assert score_at(tree, "zero_shot.mean.iou") == 0.2 and score_at(tree, "test.f1") == 1.0
    assert score_at(tree, "test.iou") is None and score_at(tree, "zero_shot") is None


def test_light_modules_mirror_the_heavy_ones() -> None:
    """versions copies a few names so promotion workers need not import torch; they must agree.
    (The metrics.json layout the gate reads is not copied: both read pipeline/eval_schema.py.)"""
    from pipeline.training import trained
    from registry import versions

    assert (versions.WEIGHTS_FILE, versions.PARAMS_FILE) == (trained.WEIGHTS_FILE, trained.PARAMS_FILE)


def test_promote_params_validation() -> None:
    with pytest.raises(Exception, match="must name a set and a metric"):
        load_params("missing.yaml", ["promote.primary_metric=f1"])
    assert load_params("missing.yaml", ["promote.margin=0.01"]).promote.margin == 0.01


# --- registration on a local SQLite store: one version per run, interrupted registers ----------

@pytest.fixture
def local_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """The cwd: a SQLite store, a run with a (metadata-only) logged model, its run file, metrics and params.yaml."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("register")  # not the experiment id an earlier test left active
    runs = {}
    for label in ("a", "b"):
        with mlflow.start_run(run_name=label, tags={"git.commit": "abc123"}) as run:
            model = mlflow.create_external_model(name="model")
        (tmp_path / f"train-{label}").mkdir()
        (tmp_path / f"train-{label}/mlflow_run.json").write_text(json.dumps(
            {"run_id": run.info.run_id, "tracking_uri": uri, "model_uri": model.model_uri}))
        (tmp_path / f"eval-{label}").mkdir()
        (tmp_path / f"eval-{label}/metrics.json").write_text(json.dumps({"test": {"f1": 0.5, "iou": 0.25}}))
        runs[label] = run.info.run_id
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(
        {"train": {"out_dir": "train-a"}, "eval": {"out_dir": "eval-a"},
         "mlflow": {"tracking_uri": uri, "registered_model": NAME}}))
    yield {"uri": uri, "runs": runs, "root": tmp_path}
    mlflow.set_tracking_uri(None)


def _versions(client: MlflowClient) -> dict[str, str]:
    """version -> run id, of every version of NAME."""
    return {str(mv.version): mv.run_id for mv in client.search_model_versions(f"name='{NAME}'")}


def test_register_twice_keeps_one_version_per_run(local_registry: dict[str, Any],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    client, (a, b) = MlflowClient(local_registry["uri"]), local_registry["runs"].values()
    assert _crackops("register") == 0
    assert _crackops("register") == 0
    line = f"registered {NAME} version 1 (run {a}) with alias 'candidate'"
    assert capsys.readouterr().out.splitlines() == [line, line]
    assert _crackops("register", "-S", "train.out_dir=train-b", "-S", "eval.out_dir=eval-b") == 0
    assert _crackops("register") == 0  # back to run a: its version again, and candidate with it
    assert _versions(client) == {"1": a, "2": b}
    assert alias_version(client, NAME, "candidate") == "1"
    assert json.loads(Path("outputs/register/registered.json").read_text())["version"] == "1"
    version = client.get_model_version(NAME, "1")
    assert version.tags == {"eval.test.f1": "0.5", "eval.test.iou": "0.25", "git.commit": "abc123", "run_id": a,
                            REGISTERED_TAG: "true"}
    assert version.description.startswith(f"Trained by run {a}: ")


def test_two_registers_of_one_run_started_together_leave_one_version(
        local_registry: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The interleaving where both looked for the run's version before either had created one."""
    from registry import register

    client, a = MlflowClient(local_registry["uri"]), local_registry["runs"]["a"]
    assert _crackops("register") == 0  # the first of the two: version 1
    monkeypatch.setattr(register, "existing_version", lambda *args: None)  # the second looked too early
    assert _crackops("register") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1:] == [f"{NAME} version 2 deleted: a concurrent register of run {a} made version 1 first",
                       f"registered {NAME} version 1 (run {a}) with alias 'candidate'"]
    assert _versions(client) == {"1": a}
    assert alias_version(client, NAME, "candidate") == "1"
    assert client.get_model_version(NAME, "1").tags[REGISTERED_TAG] == "true"


def test_a_model_name_with_a_quote_is_refused(tmp_path: Path) -> None:
    from registry.register import existing_version

    with pytest.raises(CrackopsError) as refused:
        existing_version(MlflowClient(f"sqlite:///{tmp_path}/mlflow.db"), "it's", "0" * 32)
    assert str(refused.value) == ("mlflow.registered_model \"it's\" holds a quote ('), which the version search "
                                  "filter cannot take: choose a name without one")


@pytest.mark.parametrize("killed_at", ["register_model", "update_model_version", "set_registered_model_alias",
                                       "set_model_version_tag"])
def test_an_interrupted_register_is_refused_by_promote_and_completed_by_a_rerun(
        local_registry: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        killed_at: str) -> None:
    """Killed right after mlflow.register_model, or at each later step (the marker tag is the last one)."""
    from registry import register

    client, run_id = MlflowClient(local_registry["uri"]), local_registry["runs"]["a"]

    def killed(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    if killed_at == "register_model":
        monkeypatch.setattr(register, "complete_registration", killed)
    else:
        monkeypatch.setattr(MlflowClient, killed_at, killed)
    assert _crackops("register") == 130
    monkeypatch.undo()
    monkeypatch.chdir(local_registry["root"])
    orphan = client.get_model_version(NAME, "1")
    assert orphan.tags["eval.test.f1"] == "0.5" and REGISTERED_TAG not in orphan.tags
    assert alias_version(client, NAME, "candidate") == ("1" if killed_at == "set_model_version_tag" else None)

    message = (f"model '{NAME}' version 1 was never fully registered (its `crackops register` was interrupted): "
               f"rerun `crackops register` for run {run_id}")
    capsys.readouterr()
    assert _crackops("promote", "--version", "1") == 2
    assert capsys.readouterr().err == f"crackops promote: error: {message}\n"
    with pytest.raises(CrackopsError) as refused:
        promote(client, NAME, "1", PromoteParams(), FakeEvaluator({"1": 0.9}))
    assert str(refused.value) == message

    assert _crackops("register") == 0
    assert _versions(client) == {"1": run_id}
    done = client.get_model_version(NAME, "1")
    assert done.tags[REGISTERED_TAG] == "true" and done.description.startswith(f"Trained by run {run_id}: ")
    assert alias_version(client, NAME, "candidate") == "1"
    result = promote(client, NAME, "1", PromoteParams(floor=0.5), FakeEvaluator({"1": 0.9}))
    assert result.applied and alias_version(client, NAME, CHAMPION) == "1"


def test_reregistering_a_reevaluated_run_updates_its_evidence_and_keeps_its_promotion_history(
        local_registry: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    client, run_id = MlflowClient(local_registry["uri"]), local_registry["runs"]["a"]
    assert _crackops("register") == 0
    promote(client, NAME, "1", PromoteParams(floor=0.5), FakeEvaluator({"1": 0.9}))
    promoted = client.get_model_version(NAME, "1").description
    head, history = promoted.split("#### Promotion")
    Path("eval-a/metrics.json").write_text(json.dumps({"test": {"f1": 0.75}}))

    def killed(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:  # killed halfway through the update: the version is unmarked first
        patch.setattr(MlflowClient, "update_model_version", killed)
        assert _crackops("register") == 130
    halfway = client.get_model_version(NAME, "1")
    assert halfway.tags["eval.test.f1"] == "0.75" and REGISTERED_TAG not in halfway.tags
    assert _crackops("register") == 0
    version = client.get_model_version(NAME, "1")
    assert _versions(client) == {"1": run_id}
    assert version.tags["eval.test.f1"] == "0.75" and "eval.test.iou" not in version.tags
    assert version.tags[REGISTERED_TAG] == "true" and version.tags["promotion.decision"] == "passed"
    assert "| test f1 | 0.7500 |" in version.description and "| test f1 | 0.5000 |" in head
    assert version.description.endswith("#### Promotion" + history)


# --- a real tracking server ---------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow server` with a SQLite backend and proxied artifacts, on a free local port."""
    with running_mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as url:
        yield url


def constant_logit_builder(logit: float):
    """``build_model`` whose mask decoder outputs ``logit`` everywhere (sigmoid > 0.5: all crack)."""
    from pipeline.tuning.build import build_model

    def build(params, *args: Any, **kwargs: Any):
        model = build_model(params, *args, **kwargs)
        decoder = model.sam.mask_decoder
        upscale, head = decoder.output_upscaling[3], decoder.output_hypernetworks_mlps[0].layers[-1]
        with torch.no_grad():
            upscale.weight.zero_()
            upscale.bias.fill_(1.0)  # every upscaled feature is GELU(1)
            head.weight.zero_()
            head.bias.fill_(logit / (head.bias.numel() * 0.5 * (1 + math.erf(1 / math.sqrt(2)))))
        return model

    return build


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, tiny_prepared: Path, server: str) -> Iterator[Path]:
    """The cwd: params.yaml pointing at the server, the tiny data and a prepared masonry zero-shot set."""
    from pipeline.data import generate_dataset, prepare_dataset

    root = tmp_path_factory.mktemp("registry")
    generate_dataset(root / "raw-masonry", 3, 64, 1, "masonry")
    prepare_dataset(root / "raw-masonry", root / "data/zero_shot/synthetic-masonry", 64, 0.25, 0.25, 0, test_only=True)
    params = {
        "data": {"img_size": 64, "prepared_dir": str(tiny_prepared)},
        "train": {"epochs": 1, "batch_size": 4, "lr": 1e-12},
        "eval": {"blur_kernels": [1], "n_thresholds": 19, "n_overlays": 0, "zero_shot": ["synthetic-masonry"]},
        "mlflow": {"tracking_uri": server, "experiment": "registry-test", "registered_model": NAME},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield root
    mlflow.set_tracking_uri(None)


def _train_evaluate_register(root: Path, label: str, logit: float, sweep: bool = False) -> tuple[str, str | None]:
    """Tracked training (nested under a sweep parent run if asked), evaluation, registration; (run id, parent id)."""
    import pipeline.training.run
    from pipeline.data.sources import zero_shot_sets
    from pipeline.evaluation import run_evaluation
    from pipeline.training.trained import load_trained_model
    from pipeline.tracking.setup import configure
    from pipeline.tracking.tracked_training import RUN_FILE, log_evaluation, train_with_tracking
    from registry.register import register_candidate

    out_dir, eval_dir = root / f"train-{label}", root / f"eval-{label}"
    params = load_params("params.yaml", [f"train.out_dir={out_dir}"])
    parent_id = None
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pipeline.training.run, "build_model", constant_logit_builder(logit))
        if sweep:
            configure(params.mlflow)
            with mlflow.start_run(run_name="sweep-parent", tags={"sweep.study": "registry-test"}) as parent:
                parent_id = parent.info.run_id
                _, run_id = train_with_tracking(params, out_dir, nested=True, progress=False, run_name=f"trial-{label}")
        else:
            _, run_id = train_with_tracking(params, out_dir, progress=False, run_name=label)
    model, trained = load_trained_model(out_dir)
    metrics = run_evaluation(model, trained.model_copy(update={"eval": params.eval}), Path(params.data.prepared_dir),
                             zero_shot_sets(params), eval_dir, progress=False)
    log_evaluation(run_id, metrics, eval_dir, tracking_uri=params.mlflow.tracking_uri)
    register_candidate(out_dir / RUN_FILE, eval_dir / "metrics.json", NAME)
    return run_id, parent_id


@pytest.fixture(scope="module")
def models(workspace: Path, server: str) -> dict[str, Any]:
    """Versions 1 (all crack, from a sweep trial), 2 (no crack) and 3 (a copy of version 1, aliased candidate).

    `crackops register` now reuses a run's version, so version 3 is made as older registers made it:
    a second, fully registered version of the same run.
    """
    good_run, sweep_run = _train_evaluate_register(workspace, "all-crack", ALL_CRACK, sweep=True)
    bad_run, _ = _train_evaluate_register(workspace, "no-crack", NO_CRACK)
    client = MlflowClient(server)
    source = client.get_model_version(NAME, "1")
    copy = client.create_model_version(NAME, source.source, run_id=source.run_id, tags=dict(source.tags),
                                       description=source.description, model_id=source.source.removeprefix("models:/"))
    client.set_registered_model_alias(NAME, "candidate", copy.version)
    assert str(copy.version) == "3" and source.tags[REGISTERED_TAG] == "true"
    return {"good_run": good_run, "bad_run": bad_run, "sweep_run": sweep_run,
            "runs": {"1": good_run, "2": bad_run, "3": good_run}}


def _crackops(*argv: str) -> int:
    from crackops.cli import main

    return main(list(argv))


def _aliases(client: MlflowClient, name: str = NAME) -> tuple[str | None, str | None]:
    return alias_version(client, name, CHAMPION), alias_version(client, name, PREVIOUS_CHAMPION)


def _tags(client: MlflowClient, version: str, name: str = NAME) -> dict[str, str]:
    return dict(client.get_model_version(name, version).tags)


def _ensure_champion(client: MlflowClient) -> None:
    if alias_version(client, NAME, CHAMPION) is None:
        client.set_registered_model_alias(NAME, CHAMPION, "1")


def test_registered_versions_carry_their_evidence(server: str, models: dict[str, Any]) -> None:
    client = MlflowClient(server)
    assert alias_version(client, NAME, "candidate") == "3"
    for version, run_id in models["runs"].items():
        mv = client.get_model_version(NAME, version)
        assert mv.run_id == run_id and mv.tags["run_id"] == run_id
        assert {"eval.test.f1", "data.manifest_sha256"} <= set(mv.tags)
    assert float(_tags(client, "1")["eval.test.f1"]) > 0.0 == float(_tags(client, "2")["eval.test.f1"])


def test_promote_refuse_pass_and_rollback_over_http(server: str, models: dict[str, Any],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    client = MlflowClient(server)
    assert _aliases(client) == (None, None)

    # First model: no champion, so only the floor applies.
    assert _crackops("promote", "--version", "1", "--no-progress") == 0
    assert _aliases(client) == ("1", None)
    assert _tags(client, "1")["promotion.decision"] == "passed"
    assert "| metric | champion | candidate | delta | check |" in capsys.readouterr().out

    # The no-crack model is worse everywhere: refused, recorded, aliases untouched.
    assert _crackops("promote", "--version", "2", "--no-progress", "--output", "refused.json") == 1
    out = capsys.readouterr().out
    assert "REFUSED" in out and "aliases unchanged" in out
    assert _aliases(client) == ("1", None)
    tags, good = _tags(client, "2"), _tags(client, "1")
    assert tags["promotion.decision"] == "refused" and "test.f1" in tags["promotion.reason"]
    assert tags["promotion.champion.version"] == "1"
    assert float(tags["promotion.candidate.test.f1"]) == 0.0
    assert float(tags["promotion.champion.test.f1"]) == pytest.approx(float(good["eval.test.f1"]), abs=1e-4)
    assert tags["promotion.data"] == good["data.manifest_sha256"]  # scored on the data it was trained on
    assert {"promotion.time", "promotion.gate", "promotion.champion.zero_shot.mean.iou"} <= set(tags)
    description = client.get_model_version(NAME, "2").description
    assert "Trained by run" in description and "#### Promotion" in description and ": refused" in description
    assert json.loads(Path("refused.json").read_text())["passed"] is False

    # Dry run of the candidate (version 3): evaluates and decides, records nothing. Through the API with
    # one evaluator, whose per-version cache spares the real promotion below two evaluations.
    params = load_params("params.yaml")
    evaluator = SuiteEvaluator(client, NAME, params, progress=False)
    dry = promote(client, NAME, "3", params.promote, evaluator, dry_run=True)
    assert dry.dry_run and dry.decision.passed and not dry.applied
    assert "dry run: nothing recorded" in render_promotion(dry)
    assert "promotion.decision" not in _tags(client, "3") and _aliases(client) == ("1", None)

    # Version 3 ties the champion (same weights): margin 0 lets it through; the old one becomes previous.
    done = promote(client, NAME, "3", params.promote, evaluator)
    assert done.applied and _aliases(client) == ("3", "1")
    assert set(evaluator._scores) == {"1", "3"}
    assert _tags(client, "3")["promotion.decision"] == "passed"
    assert read_lease(client, NAME) is None

    # Rollback: champion <- previous-champion, the demoted version says why and when.
    assert _crackops("promote", "--rollback", "--reason", "false alarms on site B") == 0
    assert _aliases(client) == ("1", None)
    demoted = _tags(client, "3")
    assert demoted["promotion.rolled_back.reason"] == "false alarms on site B"
    assert demoted["promotion.rolled_back.replaced_by"] == "1" and "promotion.rolled_back" in demoted
    assert _tags(client, "1")["promotion.restored.replacing"] == "3"
    assert _crackops("promote", "--rollback") == 2
    assert "no alias 'previous-champion'" in capsys.readouterr().err


def test_lineage_reaches_run_params_commit_data_and_sweep(server: str, models: dict[str, Any],
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.tracking.lineage import git_commit
    from registry.lineage import version_lineage

    client = MlflowClient(server)
    lineage = version_lineage(client, client.get_model_version(NAME, "3"))
    run = client.get_run(models["good_run"])
    assert lineage["run"]["run_id"] == models["good_run"] and lineage["run"]["name"] == "trial-all-crack"
    assert lineage["params"]["train.lr"] == run.data.params["train.lr"]
    assert lineage["code"]["git_commit"] == git_commit()
    assert lineage["data"]["manifest_sha256"] == run.data.tags["data.manifest_sha256"]
    assert lineage["sweep"]["run_id"] == models["sweep_run"] and lineage["sweep"]["name"] == "sweep-parent"
    assert lineage["sweep"]["tags"]["sweep.study"] == "registry-test"
    assert version_lineage(client, client.get_model_version(NAME, "2"))["sweep"] is None

    assert _crackops("lineage", "--version", "3") == 0
    out = capsys.readouterr().out
    assert f"training run   {models['good_run']}" in out and f"parent run {models['sweep_run']}" in out
    assert "train.lr = 1e-12" in out
    assert _crackops("lineage", "--version", "3", "--json") == 0
    assert json.loads(capsys.readouterr().out)["sweep"]["run_id"] == models["sweep_run"]


def test_compare_prints_and_writes_markdown(server: str, models: dict[str, Any], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    client = MlflowClient(server)
    _ensure_champion(client)
    out_file = tmp_path / "compare.md"
    assert _crackops("compare", models["bad_run"], f"{NAME}/3", f"models:/{NAME}@champion",
                     "--output", str(out_file)) == 0
    printed = capsys.readouterr().out
    written = out_file.read_text()
    assert printed in written and written.startswith("# Model comparison")
    rows = [line for line in written.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[0].startswith("| Model | Method | P | R | F1 | IoU | F1 img-mean | IoU img-mean | ODS | AP |")
    assert any(row.startswith("| no-crack | sam/vit_tiny full | 0.0000") for row in rows)
    assert any(row.startswith(f"| {NAME} v3 ") for row in rows) and any("@champion" in row for row in rows)
    assert "6,643,440" in written and " ± " in written
    assert _crackops("compare", "no-such-run") == 2


def test_versions_load_without_unpickling(server: str, models: dict[str, Any], tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import cloudpickle

    def forbidden(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a model load tried to unpickle")

    for module, attr in ((pickle, "load"), (pickle, "loads"), (torch, "load"), (cloudpickle, "load"),
                         (cloudpickle, "loads")):
        monkeypatch.setattr(module, attr, forbidden)
    model, params = load_version_model(MlflowClient(server), NAME, "1", tmp_path / "v1")
    assert sorted(path.name for path in (tmp_path / "v1").iterdir()) == ["model.safetensors", "params.yaml"]
    with torch.no_grad():
        assert (model(torch.zeros(1, 3, 64, 64)) > 0).all()  # the all-crack model, as trained
    assert params.data.img_size == 64


def test_predict_cli_on_crackforest_with_the_champion(server: str, models: dict[str, Any], cfd_root: Path,
                                                      tmp_path: Path) -> None:
    _ensure_champion(MlflowClient(server))
    images = sorted((cfd_root / "images").iterdir())[:3]
    pattern = str(cfd_root / "images" / f"{images[2].stem}.*")  # a glob as well as files
    out = tmp_path / "predictions"
    assert _crackops("predict", "--model-uri", f"models:/{NAME}@champion", str(images[0]), str(images[1]),
                     pattern, "--output", str(out), "--tile", "256", "--overlap", "64", "--no-progress") == 0
    for image in images:
        height, width = cv2.imread(str(image)).shape[:2]
        mask = cv2.imread(str(out / f"{image.stem}_mask.png"), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (height, width) and mask.dtype == np.uint8
        assert set(np.unique(mask)) == {255}  # the all-crack champion, through 256 px tiles (6 per image)
        assert cv2.imread(str(out / f"{image.stem}_overlay.png")).shape == (height, 2 * width + 4, 3)
    summary = json.loads((out / "predictions.json").read_text())
    assert [item["crack_fraction"] for item in summary["predictions"]] == [1.0, 1.0, 1.0]
    assert summary["failed"] == [] and summary["not_reached"] == []


def test_serving_the_champion(server: str, models: dict[str, Any], tmp_path: Path) -> None:
    """`mlflow models serve -m models:/crack-segmenter@champion --env-manager local`, one request."""
    _ensure_champion(MlflowClient(server))
    port, log = free_port(), tmp_path / "serve.log"
    # --env-manager local runs `uvicorn` from PATH: the venv's bin, as with an activated venv.
    env = {**os.environ, "MLFLOW_TRACKING_URI": server, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{NAME}@champion", "--env-manager", "local",
             "--host", "127.0.0.1", "--port", str(port)],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/ping", proc, log, timeout=120)
        image = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
        ok, png = cv2.imencode(".png", image)
        payload = {"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(png.tobytes()).decode()]]}}
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            body = json.loads(response.read())
        # A bad image: the 400 answer itself says why, not only the server's log.
        bad = {"dataframe_split": {"columns": ["image"], "data": [["not base64!"]]}}
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(bad).encode(),
                                         headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=60)
        assert refused.value.code == 400
        error = json.loads(refused.value.read())
    finally:
        stop_process_group(proc, grace=5)
    assert error["error_code"] == "INVALID_PARAMETER_VALUE"
    assert "column 'image' must hold base64-encoded image files" in error["message"]
    (prediction,) = body["predictions"]
    mask = cv2.imdecode(np.frombuffer(base64.b64decode(prediction["mask"]), np.uint8), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (50, 70) and set(np.unique(mask)) == {255}
    assert prediction["crack_fraction"] == 1.0


# --- concurrency and kill safety ----------------------------------------------------------

WORKER = """
import json, os, signal, sys, time
from mlflow import MlflowClient
from pipeline.params import PromoteParams
from registry.lease import LeaseSettings
from registry.promote import promote

uri, name, candidate, kill_at, scores, settings = sys.argv[1:7]
scores = json.loads(scores)

class Fake:
    data = {"promotion.data": "fake-data"}
    def __call__(self, version):
        time.sleep(0.5)  # an evaluation long enough for two workers to overlap
        return {"test": {"f1": scores[version]}}

def hook(stage):
    if stage == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)

result = promote(MlflowClient(uri), name, candidate, PromoteParams(), Fake(), hook=hook,
                 settings=LeaseSettings(**json.loads(settings)))
print(json.dumps({"applied": result.applied}))
"""


class FakeEvaluator:
    data = {"promotion.data": "fake-data"}

    def __init__(self, scores: dict[str, float]) -> None:
        self.scores = scores

    def __call__(self, version: str) -> dict[str, Any]:
        return {"test": {"f1": self.scores[version]}}


def _fresh_model(client: MlflowClient, versions: int, champion: str | None) -> str:
    """A registered model whose versions reuse version 1's logged model (the fake evaluator never loads it)."""
    source = client.get_model_version(NAME, "1")
    name = f"race-{uuid.uuid4().hex[:8]}"
    client.create_registered_model(name)
    for _ in range(versions):
        client.create_model_version(name, source.source, run_id=source.run_id, tags={REGISTERED_TAG: "true"},
                                    model_id=source.source.removeprefix("models:/"))
    if champion:
        client.set_registered_model_alias(name, CHAMPION, champion)
    return name


def _worker(tmp_path: Path, uri: str, name: str, candidate: str, kill_at: str, scores: dict[str, float],
            settings: dict[str, float]) -> subprocess.Popen:
    script = tmp_path / "promote_worker.py"
    script.write_text(WORKER)
    return subprocess.Popen([sys.executable, str(script), uri, name, candidate, kill_at, json.dumps(scores),
                             json.dumps(settings)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_concurrent_promotions_end_in_a_valid_state(server: str, models: dict[str, Any], tmp_path: Path) -> None:
    client = MlflowClient(server)
    name = _fresh_model(client, 3, champion="1")
    scores = {"1": 0.5, "2": 0.6, "3": 0.7}
    workers = [_worker(tmp_path, server, name, version, "", scores, FAST_LEASE) for version in ("2", "3")]
    for worker in workers:
        out, err = worker.communicate(timeout=180)
        assert worker.returncode == 0, err[-3000:]
    champion, previous = _aliases(client, name)
    # Whatever the interleaving, the best version ends champion, compared against the one it replaced.
    assert champion == "3"
    assert _tags(client, "3", name)["promotion.champion.version"] == previous
    second = _tags(client, "2", name)
    if previous == "2":
        assert second["promotion.decision"] == "passed" and second["promotion.champion.version"] == "1"
    else:
        assert previous == "1"
        assert second["promotion.decision"] == "refused" and second["promotion.champion.version"] == "3"
    assert read_lease(client, name) is None


@pytest.mark.parametrize("stage", ["evaluated", "recorded", "previous_moved"])
def test_killed_promotion_leaves_valid_aliases(server: str, models: dict[str, Any], tmp_path: Path,
                                               stage: str) -> None:
    client = MlflowClient(server)
    name = _fresh_model(client, 2, champion="1")
    scores = {"1": 0.5, "2": 0.7}
    short = {**FAST_LEASE, "ttl_s": 15.0, "min_remaining_s": 1.0}  # the rerun outwaits the dead holder's lease
    worker = _worker(tmp_path, server, name, "2", stage, scores, short)
    _, err = worker.communicate(timeout=180)
    assert worker.returncode == -signal.SIGKILL, err[-3000:]

    # Killed before the champion moved: it stays; previous-champion at most joins it.
    assert _aliases(client, name) == ("1", "1" if stage == "previous_moved" else None)
    recorded = _tags(client, "2", name).get("promotion.decision")
    assert recorded == (None if stage == "evaluated" else "passed")
    if stage != "evaluated":
        assert read_lease(client, name) is not None  # the dead process's lease, left to expire

    # Running it again finishes the job once the dead holder's lease has expired.
    result = promote(client, name, "2", PromoteParams(), FakeEvaluator(scores), settings=LeaseSettings(**FAST_LEASE))
    assert result.applied and _aliases(client, name) == ("2", "1")


@pytest.fixture(params=["http", "sqlite"])
def store_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "http":
        return request.getfixturevalue("server")
    return f"sqlite:///{tmp_path}/lease.db"


def test_lease_is_mutually_exclusive(store_uri: str) -> None:
    client = MlflowClient(store_uri)
    name = f"lease-{uuid.uuid4().hex[:8]}"
    client.create_registered_model(name)
    settings = LeaseSettings(**FAST_LEASE)

    def hold(_: int) -> tuple[float, float]:
        with Lease(MlflowClient(store_uri), name, "test", settings) as lease:
            start = time.monotonic()
            lease.check()
            time.sleep(0.3)
            lease.check()
            return start, time.monotonic()

    with ThreadPoolExecutor(3) as pool:
        intervals = sorted(pool.map(hold, range(3)))
    assert all(first[1] <= second[0] for first, second in zip(intervals, intervals[1:])), intervals
    assert read_lease(client, name) is None


def test_lease_waits_out_a_dead_holder_but_not_a_live_one(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    client = MlflowClient(server)
    name = f"lease-{uuid.uuid4().hex[:8]}"
    client.create_registered_model(name)
    live = {"owner": "someone", "host": "elsewhere", "pid": 1, "purpose": "promote version 9",
            "expires": time.time() + 300}
    client.set_registered_model_tag(name, LEASE_TAG, json.dumps(live))
    with pytest.raises(LeaseError, match="held by elsewhere pid 1"):
        Lease(client, name, "test", LeaseSettings(**{**FAST_LEASE, "wait_s": 1.0})).acquire()
    assert re.search(r"waiting for the promotion lease of 'lease-\w+': held by elsewhere pid 1 \(promote version 9\), "
                     r"expires in \d+ s; giving up in \d+ s", capsys.readouterr().err)
    expiry = time.time() + 1.0
    client.set_registered_model_tag(name, LEASE_TAG, json.dumps({**live, "expires": expiry}))
    settings = LeaseSettings(**FAST_LEASE)
    with Lease(client, name, "test", settings) as lease:
        # Our lease was written (expires = write time + ttl) only once the other one had expired.
        assert lease.expires - settings.ttl_s >= expiry
        assert read_lease(client, name)["owner"] == lease.owner
    assert read_lease(client, name) is None
