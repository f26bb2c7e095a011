"""The sweep's MLflow parent run: opened (or reopened on resume), trial runs nested under it, summary.

Backend-independent: the parent holds the sweep's settings as params, and at the end the best
value (``best_val_f1``), the best params (``best.<key>`` tags, as they may change when a sweep is
extended), trial counts by state, the best-params files and the plots.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import mlflow
import optuna
from mlflow.exceptions import MlflowException

from pipeline.params import MlflowParams
from pipeline.tracking.setup import configure
from search.objective import FAILED, MAX_REASON, TAG_FAIL_REASON, TAG_NUMBER, TAG_STATE, param_value_text
from search.optuna_plots import save_plots
from search.results import BestTrial, SweepSummary, TrialRow, format_value, retrain_command, write_best

if TYPE_CHECKING:
    from search.config import SweepConfig

TAG_SWEEP = "sweep.role"


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


@contextmanager
def sweep_run(mlflow_params: MlflowParams, run_id: str | None, run_name: str,
              params: dict[str, Any], tags: dict[str, str]) -> Iterator[str | None]:
    """Make the sweep's parent run active (reopening ``run_id`` when it still exists); yields its id.

    Ends FINISHED, KILLED on Ctrl-C, FAILED on an error. Yields None with MLflow disabled.
    """
    if not mlflow_params.enabled:
        yield None
        return
    experiment_id = configure(mlflow_params)
    client = mlflow.MlflowClient()
    if _reusable(client, run_id, experiment_id):
        run = mlflow.start_run(run_id=run_id)
    else:
        run = mlflow.start_run(run_name=run_name, tags={TAG_SWEEP: "parent", **tags})
    run_id = run.info.run_id
    try:
        log_params_once(client, run_id, params)
        yield run_id
    except BaseException as error:
        mlflow.end_run("KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
        raise
    mlflow.end_run("FINISHED")


def close_orphan_children(parent_id: str | None, live_numbers: set[int], reason: str) -> list[str]:
    """End RUNNING trial runs whose trial is no longer running (its worker died): FAILED, tagged.

    ``live_numbers``: trial numbers still running somewhere. Returns the closed run ids.
    """
    if parent_id is None:
        return []
    client = mlflow.MlflowClient()
    experiment_id = client.get_run(parent_id).info.experiment_id
    children = client.search_runs([experiment_id], filter_string=(
        f"tags.mlflow.parentRunId = '{parent_id}' and attributes.status = 'RUNNING'"))
    closed = []
    for child in children:
        number = child.data.tags.get(TAG_NUMBER)
        if number is not None and number.isdigit() and int(number) in live_numbers:
            continue
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
                files: list[Path], plots: list[Path]) -> None:
    """Best value and params, counts by state, best-params files and plots onto the parent run."""
    if run_id is None:
        return
    client = mlflow.MlflowClient()
    step = sum(counts.values())
    metrics = {f"n_{state}": float(n) for state, n in counts.items()}
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


def conclude(config: "SweepConfig", rows: list[TrialRow], counts: dict[str, int], best: BestTrial | None,
             parent_id: str | None, plot_study: optuna.Study, trials_csv: Path | None) -> SweepSummary:
    """Both backends' last step: best-params files, Optuna's plots, the parent run's summary."""
    space = config.space
    summary = SweepSummary(config.study_name, space.metric, counts, rows, best, parent_id)
    files: list[Path] = []
    if best is not None:
        files = write_best(config.out_dir, best, space.metric)
        summary.command = retrain_command(best.values)
    summary.files = list(files)
    plots, skipped = save_plots(plot_study, config.out_dir, space.metric)
    for name, why in skipped.items():
        print(f"plot {name} skipped: {why}", flush=True)
    log_summary(parent_id, space.metric, best, counts, files + ([trials_csv] if trials_csv else []), plots)
    return summary
