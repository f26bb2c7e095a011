"""Where runs go: the tracking URI and the experiment, resolved from ``mlflow.*`` params."""
from __future__ import annotations

import os
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from sqlalchemy.engine import make_url

from pipeline.errors import CrackopsError
from pipeline.params import MlflowParams

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
LOCAL_ARTIFACT_DIR = "mlartifacts"


class TrackingError(CrackopsError):
    """The MLflow experiment cannot be used as configured."""


def resolve_tracking_uri(mlflow_params: MlflowParams) -> str:
    """``mlflow.tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else the embedded ``sqlite:///mlflow.db``."""
    return mlflow_params.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def _sqlite_folder(tracking_uri: str) -> Path | None:
    """The folder of a local sqlite database file; None for other stores and in-memory sqlite."""
    if not tracking_uri.startswith("sqlite:"):
        return None
    database = make_url(tracking_uri).database
    return Path(database).parent if database and database != ":memory:" else None


def _artifact_location(tracking_uri: str) -> str | None:
    """``mlartifacts/`` beside a local sqlite database (the cwd for ``sqlite:///mlflow.db``).

    A local sqlite store has no server to hold artifacts, and MLflow's default (``./mlruns``
    wherever the process runs) would scatter them; beside the database they stay with the runs
    that reference them, also for throwaway stores in temporary folders. Servers choose their own.
    """
    if not tracking_uri.startswith("sqlite:"):
        return None
    folder = _sqlite_folder(tracking_uri) or Path(".")
    return (Path.cwd() / folder / LOCAL_ARTIFACT_DIR).resolve().as_uri()


def configure(mlflow_params: MlflowParams) -> str:
    """Point MLflow at the tracking store, create the experiment if missing, make it active.

    A new experiment in a local sqlite store keeps its artifacts in ``mlartifacts/`` beside the
    database (for the default ``sqlite:///mlflow.db``: under the current directory).

    Returns the experiment id.
    """
    uri = resolve_tracking_uri(mlflow_params)
    folder = _sqlite_folder(uri)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)  # sqlite creates the file, not its folder
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    name = mlflow_params.experiment
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            experiment_id = client.create_experiment(name, artifact_location=_artifact_location(uri))
        except MlflowException as error:
            # Parallel sweep trials race to create the experiment: the loser uses the winner's.
            if error.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                raise
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
            experiment_id = experiment.experiment_id
    elif experiment.lifecycle_stage == "deleted":
        raise TrackingError(f"MLflow experiment {name!r} at {uri} is deleted: restore it "
                            f"(`mlflow experiments restore --experiment-id {experiment.experiment_id}`) "
                            "or set mlflow.experiment to another name")
    else:
        experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id
