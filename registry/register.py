"""Register an evaluated model in the MLflow Model Registry with its evidence; alias it ``candidate``."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient

from pipeline.atomic import write_json
from pipeline.errors import CrackopsError
from registry.lineage import architecture

CANDIDATE_ALIAS = "candidate"
# Scores copied onto the model version as tags: what a reviewer checks before promotion.
HEADLINE_SCORES = (
    ("test", "f1"), ("test", "iou"), ("test", "precision"), ("test", "recall"),
    ("test", "f1_image_mean"), ("test", "iou_image_mean"), ("test", "ods"), ("test", "ap"),
    ("low_light_blur", "f1"), ("blur_down_up", "f1"), ("zero_shot.mean", "iou"), ("zero_shot.std", "iou"),
)


@dataclass
class Registration:
    name: str
    version: str
    run_id: str
    model_uri: str
    alias: str


def read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise CrackopsError(f"{path} not found: {what}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CrackopsError(f"{path} is not valid JSON ({error}): {what}") from None


def lookup(metrics: dict[str, Any], dotted: str, key: str) -> float | None:
    node: Any = metrics
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node.get(key) if isinstance(node, dict) else None


def version_tags(run: mlflow.entities.Run, metrics: dict[str, Any]) -> dict[str, str]:
    """Evaluation scores, data hash and git commit, copied from the run and the evaluation."""
    tags = {f"eval.{section}.{key}": str(value) for section, key in HEADLINE_SCORES
            if (value := lookup(metrics, section, key)) is not None}
    for key in ("git.commit", "data.dvc_md5", "data.source_dvc_md5", "data.manifest_sha256"):
        if key in run.data.tags:
            tags[key] = run.data.tags[key]
    tags["run_id"] = run.info.run_id
    return tags


def describe(run: mlflow.entities.Run, metrics: dict[str, Any]) -> str:
    params = run.data.params
    rows = [f"| {section} {key} | {value:.4f} |" for section, key in HEADLINE_SCORES
            if isinstance(value := lookup(metrics, section, key), (int, float))]
    return "\n".join([
        f"Trained by run {run.info.run_id}: {architecture(run)}, "
        f"tuning {params.get('tuning.method')}, data {run.data.tags.get('data.manifest_sha256', 'unknown')[:12]}.",
        "", "| score | value |", "|---|---:|", *rows,
    ])


def register_candidate(run_file: Path, metrics_file: Path, model_name: str) -> Registration:
    """Register the model logged by the training run; tag it with its scores; alias ``candidate``."""
    run_info = read_json(run_file, "run `crackops train` with mlflow.enabled: true first")
    metrics = read_json(metrics_file, "run `crackops evaluate` first")
    if not run_info.get("run_id"):
        raise CrackopsError(f"{run_file}: the model was trained with mlflow.enabled: false, so there is no "
                            "logged model to register; train again with tracking on")
    mlflow.set_tracking_uri(run_info["tracking_uri"])
    client = MlflowClient()
    run = client.get_run(run_info["run_id"])
    version = mlflow.register_model(run_info["model_uri"], model_name, tags=version_tags(run, metrics))
    client.update_model_version(model_name, version.version, description=describe(run, metrics))
    client.set_registered_model_alias(model_name, CANDIDATE_ALIAS, version.version)
    return Registration(model_name, str(version.version), run.info.run_id, run_info["model_uri"], CANDIDATE_ALIAS)


def write_registration(registration: Registration, path: Path) -> None:
    write_json(path, asdict(registration))
