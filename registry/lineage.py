"""Lineage of a model version: version -> training run -> params, git commit, data hash -> sweep parent run."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

PARENT_TAG = "mlflow.parentRunId"
# Run tags worth showing next to the code and data identity (the rest are MLflow bookkeeping).
RUN_TAGS = ("model.architecture", "model.family", "model.variant", "tuning.method", "data.source", "git.dirty", "trial.state")
# The params shown by default; --all-params shows every logged one.
HEADLINE_PARAMS = ("data.source", "data.img_size", "model.family", "model.variant", "model.checkpoint",
                   "tuning.method", "train.epochs", "train.batch_size", "train.lr", "train.schedule", "train.seed",
                   "loss.kind", "loss.lambda")


# Per-metric scores and the gate settings: in the version's tags and description, too long for here.
SCORE_TAGS = ("promotion.candidate.", "promotion.champion.", "promotion.gate")


def architecture(run: Run) -> str:
    """``sam/vit_b``, ``sam_lite/tiny_vit_5m``, ``deeplabv3/resnet101``: the run's tag (family/variant
    for runs logged before the tag existed)."""
    params = run.data.params
    return run.data.tags.get("model.architecture") or f"{params.get('model.family', '?')}/{params.get('model.variant', '?')}"


def _when(millis: int | None) -> str | None:
    if not millis:
        return None
    return datetime.fromtimestamp(millis / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _run_summary(client: MlflowClient, run_id: str) -> dict[str, Any]:
    run = client.get_run(run_id)
    experiment = client.get_experiment(run.info.experiment_id)
    return {
        "run_id": run_id, "name": run.info.run_name, "status": run.info.status,
        "experiment": experiment.name if experiment else run.info.experiment_id,
        "experiment_id": run.info.experiment_id, "started": _when(run.info.start_time),
        "run": run,
    }


def version_lineage(client: MlflowClient, version: ModelVersion) -> dict[str, Any]:
    """Everything a version traces back to, as plain data (``--json``) for :func:`render_lineage`."""
    tags = dict(version.tags)
    run_id = version.run_id or tags.get("run_id")
    lineage: dict[str, Any] = {
        "model": {"name": version.name, "version": str(version.version), "aliases": list(version.aliases),
                  "source": version.source, "created": _when(version.creation_timestamp),
                  "status": version.status},
        "evaluation": {key.removeprefix("eval."): value for key, value in tags.items() if key.startswith("eval.")},
        "promotion": {key.removeprefix("promotion."): value for key, value in tags.items()
                      if key.startswith("promotion.") and not key.startswith(SCORE_TAGS)},
        "run": None, "params": {}, "code": {}, "data": {}, "sweep": None,
    }
    if not run_id:
        return lineage
    try:
        summary = _run_summary(client, run_id)
    except MlflowException as error:
        lineage["run"] = {"run_id": run_id, "error": error.message}
        return lineage
    run = summary.pop("run")
    run_tags = run.data.tags
    lineage["run"] = summary
    lineage["params"] = dict(sorted(run.data.params.items()))
    lineage["code"] = {"git_commit": run_tags.get("git.commit") or tags.get("git.commit"),
                       "git_dirty": run_tags.get("git.dirty")}
    lineage["data"] = {
        "manifest_sha256": run_tags.get("data.manifest_sha256") or tags.get("data.manifest_sha256"),
        "dvc_md5": run_tags.get("data.dvc_md5") or tags.get("data.dvc_md5"),
        "datasets": [{"name": item.dataset.name, "digest": item.dataset.digest, "source": item.dataset.source}
                     for item in run.inputs.dataset_inputs] if run.inputs else [],
    }
    lineage["run"]["tags"] = {key: run_tags[key] for key in RUN_TAGS if key in run_tags}
    parent_id = run_tags.get(PARENT_TAG)
    if parent_id:
        try:
            parent = _run_summary(client, parent_id)
            parent_run = parent.pop("run")
            parent["tags"] = {key: value for key, value in parent_run.data.tags.items()
                              if not key.startswith("mlflow.")}
        except MlflowException as error:
            parent = {"run_id": parent_id, "error": error.message}
        lineage["sweep"] = parent
    return lineage


def _lines(mapping: dict[str, Any], indent: str = "    ") -> list[str]:
    return [f"{indent}{key} = {value}" for key, value in mapping.items() if value not in (None, "", [], {})]


def render_lineage(lineage: dict[str, Any], all_params: bool = False) -> str:
    """The chain as indented text: version, promotion, run, params, code, data, sweep."""
    model = lineage["model"]
    aliases = ", ".join(f"@{alias}" for alias in model["aliases"]) or "no aliases"
    out = [f"model version  {model['name']} v{model['version']} ({aliases}), {model['status']}, "
           f"created {model['created']}", f"    source = {model['source']}"]
    if lineage["evaluation"]:
        out += ["evaluation (at registration)", *_lines(lineage["evaluation"])]
    if lineage["promotion"]:
        out += ["promotion", *_lines(lineage["promotion"])]
    run = lineage["run"]
    if run is None:
        out.append("training run   unknown (the version names no run)")
        return "\n".join(out)
    if "error" in run:
        out.append(f"training run   {run['run_id']}: not readable ({run['error']})")
        return "\n".join(out)
    out.append(f"training run   {run['run_id']} ({run['name']}), {run['status']}, experiment {run['experiment']} "
               f"[{run['experiment_id']}], started {run['started']}")
    out += _lines(run.get("tags", {}))
    code = lineage["code"]
    out.append(f"code           git {code['git_commit'] or 'unknown'}"
               + (f" (dirty: {code['git_dirty']})" if code.get("git_dirty") else ""))
    data = lineage["data"]
    out.append(f"data           manifest sha256 {data['manifest_sha256'] or 'unknown'}, "
               f"dvc md5 {data['dvc_md5'] or 'unknown'}")
    for item in data["datasets"]:
        out.append(f"    dataset {item['name']} (digest {item['digest']}) from {item['source']}")
    sweep = lineage["sweep"]
    if sweep is None:
        out.append("sweep          none (not a nested trial run)")
    elif "error" in sweep:
        out.append(f"sweep          parent run {sweep['run_id']}: not readable ({sweep['error']})")
    else:
        out.append(f"sweep          parent run {sweep['run_id']} ({sweep['name']}), {sweep['status']}, "
                   f"started {sweep['started']}")
        out += _lines(sweep.get("tags", {}))
    params = lineage["params"]
    if params:
        shown = params if all_params else {key: params[key] for key in HEADLINE_PARAMS if key in params}
        more = "" if all_params else " (--all-params for every one)"
        out += [f"params         {len(params)} logged{more}", *_lines(shown)]
    return "\n".join(out)
