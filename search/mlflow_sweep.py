"""The sweep's MLflow parent run: opened (or reopened on resume), trial runs nested under it, summary.

Backend-independent: the parent holds the sweep's settings as params, and at the end the best
value (``best_val_f1``), the best params (``best.<key>`` tags, as they may change when a sweep is
extended), trial counts by state, the best-params files and the plots.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import mlflow
from mlflow.exceptions import MlflowException

from pipeline.params import MlflowParams
from pipeline.tracking.setup import configure
from search.trial import MAX_REASON, TAG_FAIL_REASON, TAG_NUMBER, TAG_STATE, param_value_text
from search.states import FAILED
from search.results import BestTrial, format_value

if TYPE_CHECKING:
    from search.config import SweepConfig

TAG_SWEEP = "sweep.role"
TAG_GIVEN_UP = "sweep.given_up"  # on the parent: numbers of the trials not run again


def sweep_params(config: "SweepConfig", backend: str, n_trials: int, grid_points: int | None,
                 storage: str) -> dict[str, Any]:
    """The parent run's params shared by every backend: how the sweep searched and what it compared."""
    space = config.space
    params: dict[str, Any] = {
        "sweep.backend": backend, "sweep.space": space.name, "sweep.study": config.study_name,
        "sweep.sampler": config.sampler_name, "sweep.pruner": config.pruner_name, "sweep.seed": config.seed,
        "sweep.n_trials": n_trials, "sweep.metric": space.metric, "sweep.direction": space.direction,
        "sweep.prune_metric": space.pruning_metric, "sweep.epochs": space.epochs, "sweep.storage": storage,
    }
    if config.sampler_name == "tpe":
        params["sweep.tpe_startup_trials"] = space.tpe_startup_trials or "optuna default (10)"
    if grid_points is not None:
        params["sweep.grid_points"] = grid_points
        params["sweep.grid_fraction"] = space.grid_fraction or 1.0
    params.update({f"fixed.{key}": value for key, value in space.fixed.items()})
    return params


def _reusable(client: mlflow.MlflowClient, run_id: str | None, experiment_id: str) -> bool:
    if not run_id:
        return False
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return False  # another tracking store, or deleted for good
    return run.info.lifecycle_stage == "active" and run.info.experiment_id == experiment_id


def log_params_once(client: mlflow.MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    """Log params not logged yet; a resumed sweep that changed one (MLflow params are immutable)
    records the new value as a ``<key>.resumed`` tag instead."""
    logged = client.get_run(run_id).data.params
    for key, value in params.items():
        text = str(param_value_text(value))
        if key not in logged:
            client.log_param(run_id, key, text)
        elif logged[key] != text:
            client.set_tag(run_id, f"{key}.resumed", text)


def open_parent(mlflow_params: MlflowParams, run_id: str | None, run_name: str,
                params: dict[str, Any], tags: dict[str, str]) -> str | None:
    """Make the sweep's parent run active: ``run_id`` reopened while it still exists, else a new run.

    Returns its id; None with MLflow disabled. Trials started in this process nest under it.
    """
    if not mlflow_params.enabled:
        return None
    experiment_id = configure(mlflow_params)
    client = mlflow.MlflowClient()
    if _reusable(client, run_id, experiment_id):
        run = mlflow.start_run(run_id=run_id)
    else:
        run = mlflow.start_run(run_name=run_name, tags={TAG_SWEEP: "parent", **tags})
    log_params_once(client, run.info.run_id, params)
    return run.info.run_id


def close_parent(run_id: str | None, status: str) -> None:
    """End this process's hold on the parent run with ``status``; RUNNING leaves it open for other
    workers of the study (MLflow would otherwise end it FINISHED when this process exits)."""
    if run_id is None:
        return
    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        mlflow.end_run(status)
    else:
        mlflow.MlflowClient().set_terminated(run_id, status)


def close_orphan_children(parent_id: str | None, reason: str, failed_numbers: Callable[[], set[int]] | None = None
                          ) -> list[str]:
    """End RUNNING trial runs whose trial failed without them (its worker died): FAILED, tagged.

    ``failed_numbers`` gives the numbers of the study's failed trials; it is called after MLflow is
    read, so a trial another worker takes meanwhile, whose run starts meanwhile, or that completes
    meanwhile is never among them. None: every RUNNING trial run is an orphan (one process runs
    the whole study). Returns the closed run ids.
    """
    if parent_id is None:
        return []
    client = mlflow.MlflowClient()
    experiment_id = client.get_run(parent_id).info.experiment_id
    children = client.search_runs([experiment_id], filter_string=(
        f"tags.mlflow.parentRunId = '{parent_id}' and attributes.status = 'RUNNING'"))
    if not children:
        return []
    failed = failed_numbers() if failed_numbers is not None else None
    closed = []
    for child in children:
        number = child.data.tags.get(TAG_NUMBER)
        if failed is not None and not (number is not None and number.isdigit() and int(number) in failed):
            continue
        if client.get_run(child.info.run_id).info.status != "RUNNING":
            continue  # its worker ended it since (a trial that failed for its own reason)
        client.set_tag(child.info.run_id, TAG_STATE, FAILED)
        client.set_tag(child.info.run_id, TAG_FAIL_REASON, reason[:MAX_REASON])
        client.set_terminated(child.info.run_id, "FAILED")
        closed.append(child.info.run_id)
    return closed


def child_runs(parent_id: str) -> list[Any]:
    """The parent's trial runs (for checks and reports)."""
    client = mlflow.MlflowClient()
    experiment_id = client.get_run(parent_id).info.experiment_id
    return client.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'",
                              max_results=10_000)


def log_summary(run_id: str | None, metric: str, best: BestTrial | None, counts: dict[str, int],
                files: list[Path], plots: list[Path], given_up: list[int] = ()) -> None:
    """Best value and params, counts by state, given-up trials, best-params files and plots onto the parent run."""
    if run_id is None:
        return
    client = mlflow.MlflowClient()
    step = sum(counts.values())
    metrics = {f"n_{state}": float(n) for state, n in counts.items()}
    # Points the study will not run again though they never finished: the sweep is short by these.
    metrics["n_given_up"] = float(len(given_up))
    if given_up:
        client.set_tag(run_id, TAG_GIVEN_UP, ", ".join(map(str, given_up)))
    elif TAG_GIVEN_UP in client.get_run(run_id).data.tags:
        client.delete_tag(run_id, TAG_GIVEN_UP)  # a resumed sweep ran them after all
    if best is not None:
        metrics[f"best_{metric}"] = best.value
        metrics["best_trial"] = float(best.number)
        for key in client.get_run(run_id).data.tags:
            # A resumed sweep's new winner may lack a conditional key of the old one.
            if key.startswith("best.") and key[len("best."):] not in best.values:
                client.delete_tag(run_id, key)
        for key, value in best.values.items():
            client.set_tag(run_id, f"best.{key}", format_value(value))
    for name, value in metrics.items():
        client.log_metric(run_id, name, value, step=step)
    for path in files:
        client.log_artifact(run_id, str(path))
    for path in plots:
        client.log_artifact(run_id, str(path), "plots")
