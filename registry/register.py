"""Register an evaluated model in the MLflow Model Registry with its evidence; alias it ``candidate``.

Idempotent per training run: a rerun reuses the version an earlier register of the same run created
(killed or not) and completes it, so each run has one version. The tag ``crackops.registered`` is
set last, after the evidence tags, the description and the alias; ``crackops promote`` refuses a
version without it.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion

from pipeline.atomic import write_json
from pipeline.errors import CrackopsError
from pipeline.eval_schema import HEADLINE_SCORES as SCHEMA_HEADLINES, LEADING_SCORES
from registry.lineage import architecture
from registry.markers import PROMOTION_HEADING, REGISTERED_TAG

CANDIDATE_ALIAS = "candidate"
# Scores copied onto the model version as tags (pipeline/eval_schema.py): what a reviewer checks
# before promotion; (set, metric) pairs, the pooled test F1 and IoU first as the description lists them.
HEADLINE_SCORES = tuple((score.set, score.metric)
                        for score in sorted(SCHEMA_HEADLINES, key=lambda score: score.path not in LEADING_SCORES))


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


def version_description(run: mlflow.entities.Run, metrics: dict[str, Any]) -> str:
    params = run.data.params
    rows = [f"| {section} {key} | {value:.4f} |" for section, key in HEADLINE_SCORES
            if isinstance(value := lookup(metrics, section, key), (int, float))]
    return "\n".join([
        f"Trained by run {run.info.run_id}: {architecture(run)}, "
        f"tuning {params.get('tuning.method')}, data {run.data.tags.get('data.manifest_sha256', 'unknown')[:12]}.",
        "", "| score | value |", "|---|---:|", *rows,
    ])


def existing_version(client: MlflowClient, name: str, run_id: str) -> ModelVersion | None:
    """The newest version of ``name`` made from ``run_id``: a rerun reuses it instead of adding another."""
    if "'" in name:
        raise CrackopsError(f"mlflow.registered_model {name!r} holds a quote ('), which the version search "
                            "filter cannot take: choose a name without one")
    found = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    return max(found, key=lambda version: int(version.version), default=None)


def settle_duplicates(client: MlflowClient, name: str, run_id: str, created: ModelVersion) -> ModelVersion:
    """The run's one version after we created ``created``: the lowest-numbered version of the run.

    Two registers of one run started together both find no version and both create one; each
    then keeps the lowest and deletes its own if that is not it, so exactly one version remains
    whichever order their steps interleave in (MLflow has no create-if-absent).
    """
    versions = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    keep = min(versions, key=lambda version: int(version.version), default=created)
    if int(keep.version) < int(created.version):
        client.delete_model_version(name, str(created.version))
        print(f"{name} version {created.version} deleted: a concurrent register of run {run_id} made "
              f"version {keep.version} first", flush=True)
    return keep if int(keep.version) < int(created.version) else created


def merged_description(current: str | None, description: str) -> str:
    """``description`` followed by the promotion paragraphs ``crackops promote`` appended to ``current``."""
    _, heading, history = (current or "").partition(PROMOTION_HEADING)
    return description + ("\n\n" + heading + history if heading else "")


def complete_registration(client: MlflowClient, name: str, version: ModelVersion, tags: dict[str, str],
                          description: str) -> None:
    """Evidence tags, description and ``candidate``, then the marker last, so a kill leaves no marker.

    A marked version whose evidence is about to change (re-evaluated run) is unmarked first.
    """
    number, current = str(version.version), dict(version.tags)
    stale = [key for key in current if key.startswith("eval.") and key not in tags]
    wanted = merged_description(version.description, description)
    changed = bool(stale) or version.description != wanted or any(current.get(k) != v for k, v in tags.items())
    if changed and REGISTERED_TAG in current:
        client.delete_model_version_tag(name, number, REGISTERED_TAG)
    for key in stale:
        client.delete_model_version_tag(name, number, key)
    for key, value in tags.items():
        if current.get(key) != value:
            client.set_model_version_tag(name, number, key, value)
    if version.description != wanted:
        client.update_model_version(name, number, description=wanted)
    client.set_registered_model_alias(name, CANDIDATE_ALIAS, number)
    client.set_model_version_tag(name, number, REGISTERED_TAG, "true")


def register_candidate(run_file: Path, metrics_file: Path, model_name: str) -> Registration:
    """Register the training run's model (or reuse its version); tag it with its scores; alias ``candidate``."""
    run_info = read_json(run_file, "run `crackops train` with mlflow.enabled: true first")
    metrics = read_json(metrics_file, "run `crackops evaluate` first")
    if not run_info.get("run_id"):
        raise CrackopsError(f"{run_file}: the model was trained with mlflow.enabled: false, so there is no "
                            "logged model to register; train again with tracking on")
    mlflow.set_tracking_uri(run_info["tracking_uri"])
    client = MlflowClient()
    run = client.get_run(run_info["run_id"])
    tags = version_tags(run, metrics)
    version = existing_version(client, model_name, run.info.run_id)
    if version is None:
        version = settle_duplicates(client, model_name, run.info.run_id,
                                    mlflow.register_model(run_info["model_uri"], model_name, tags=tags))
    complete_registration(client, model_name, version, tags, version_description(run, metrics))
    return Registration(model_name, str(version.version), run.info.run_id, run_info["model_uri"], CANDIDATE_ALIAS)


def write_registration(registration: Registration, path: Path) -> None:
    write_json(path, asdict(registration))
