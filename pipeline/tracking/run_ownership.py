"""Training runs that outlive their process: continued when the training resumes, else ended KILLED.

A SIGKILLed ``crackops train`` cannot end its MLflow run, which would show RUNNING forever. Each
training run is tagged with its process (:func:`pipeline.liveness.process_token`) and its resume
folder remembers the run id, so the rerun continues the same run (one curve from epoch 1), and
any other run whose process provably died is ended KILLED when the next training starts.
"""
from __future__ import annotations

import json
from pathlib import Path

import mlflow
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException

from pipeline.atomic import write_json
from pipeline.liveness import owner_is_dead, process_token

PROCESS_TAG = "crackops.process"
END_REASON_TAG = "crackops.end_reason"
RESUMED_TAG = "crackops.resumed_from_epoch"
RESUMABLE_RUN_FILE = "mlflow_run.json"  # in the training's resume folder
_RUNNING = RunStatus.to_string(RunStatus.RUNNING)


def remember_run(work: Path, run_id: str, experiment_id: str) -> None:
    """Record in the resume folder which run this training logs to."""
    write_json(Path(work) / RESUMABLE_RUN_FILE, {"run_id": run_id, "experiment_id": experiment_id,
                                                 "tracking_uri": mlflow.get_tracking_uri()})


def resumable_run(work: Path | None, experiment_id: str) -> str | None:
    """The unfinished run an interrupted training in ``work`` logged to, if it can be continued."""
    if work is None or not (Path(work) / "last.pt").is_file():
        return None  # nothing to resume: the training starts from epoch 1 in a new run
    try:
        record = json.loads((Path(work) / RESUMABLE_RUN_FILE).read_text())
        if record.get("tracking_uri") != mlflow.get_tracking_uri() or record.get("experiment_id") != experiment_id:
            return None
        run = mlflow.MlflowClient().get_run(record["run_id"])
    except (OSError, ValueError, KeyError, TypeError, MlflowException):
        return None
    if run.info.lifecycle_stage != "active" or run.info.status == RunStatus.to_string(RunStatus.FINISHED):
        return None
    return run.info.run_id


def end_orphaned_runs(experiment_id: str, keep: str | None = None) -> list[str]:
    """End KILLED every top-level RUNNING training run of the experiment whose process has died.

    Runs of live processes, of other hosts, and sweep trials (their sweep closes them) are left.
    """
    client = mlflow.MlflowClient()
    try:
        runs = client.search_runs([experiment_id], filter_string=f"attributes.status = '{_RUNNING}'",
                                  max_results=1000)
    except MlflowException:
        return []
    ended = []
    for run in runs:
        token, tags = run.data.tags.get(PROCESS_TAG), run.data.tags
        if run.info.run_id == keep or not token or "mlflow.parentRunId" in tags or not owner_is_dead(token):
            continue
        client.set_tag(run.info.run_id, END_REASON_TAG,
                       "its process ended without closing the run (killed) and the training was not resumed")
        client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
        ended.append(run.info.run_id)
    if ended:
        print(f"MLflow: ended KILLED {len(ended)} run(s) left RUNNING by killed trainings: {', '.join(ended)}",
              flush=True)
    return ended


def owner_tags() -> dict[str, str]:
    """The tag that names the process holding a run open."""
    return {PROCESS_TAG: process_token()}
