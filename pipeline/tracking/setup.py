"""Where runs go: the tracking URI and the experiment, resolved from ``mlflow.*`` params."""
from __future__ import annotations

import http.client
import logging
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

from pipeline.dblock import DatabaseLockError, database_lock, masked_url, sqlite_file
from pipeline.errors import CrackopsError
from pipeline.params import MlflowParams

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
LOCAL_ARTIFACT_DIR = "mlartifacts"
# database_lock name serialising the tracking store's creation (schema migration) and the experiment's.
STORE_LOCK = "crackops-mlflow-store"
# Seconds an http(s) tracking server has to answer /health before configure gives up (MLflow's own
# client would retry for minutes).
HTTP_PROBE_TIMEOUT = 10


class TrackingError(CrackopsError):
    """The MLflow experiment cannot be used as configured."""


def resolve_tracking_uri(mlflow_params: MlflowParams) -> str:
    """``mlflow.tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else the embedded ``sqlite:///mlflow.db``."""
    return mlflow_params.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def _sqlite_folder(tracking_uri: str) -> Path | None:
    """The folder of a local sqlite database file; None for other stores and in-memory sqlite."""
    database = sqlite_file(tracking_uri)
    return database.parent if database is not None else None


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


EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # the UI's choice of first page (MLflow 3)
MODEL_TRAINING_KIND = "custom_model_development"


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
    if uri.startswith(("http://", "https://")):
        _probe_http(uri)
    name = mlflow_params.experiment
    # Workers started together would each create (migrate) a new database store at once and break
    # it, then race to create the experiment: one at a time, under a lock held in the database.
    try:
        with database_lock(uri, STORE_LOCK):
            # MlflowClient builds the store now (cached per URI for the process; later
            # mlflow.start_run calls reuse it): a new database gets MLflow's tables here.
            client = mlflow.MlflowClient(uri)
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                experiment_id = _create_experiment(client, name, uri)
            else:
                experiment_id = experiment.experiment_id
                if EXPERIMENT_KIND_TAG not in experiment.tags:  # made before crackops set it
                    client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
    except DatabaseLockError as error:
        raise TrackingError(f"MLflow tracking store: {error}") from None
    if experiment is not None and experiment.lifecycle_stage == "deleted":
        raise TrackingError(f"MLflow experiment {name!r} at {masked_url(uri)} is deleted: restore it "
                            f"(`mlflow experiments restore --experiment-id {experiment.experiment_id}`) "
                            "or set mlflow.experiment to another name")
    # Only now: a store that cannot be used leaves the process's tracking URI (and the
    # MLFLOW_TRACKING_URI that set_tracking_uri exports to subprocesses) as it was.
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment_id=experiment_id)
    # Runs sample CPU, memory (and GPU) as system metrics; their start and stop are no news per run.
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    return experiment_id


def _create_experiment(client: mlflow.MlflowClient, name: str, uri: str) -> str:
    try:
        # MLflow 3 opens an experiment of unknown kind on its GenAI pages (traces); ours trains models.
        return client.create_experiment(name, artifact_location=_artifact_location(uri),
                                        tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND})
    except MlflowException as error:
        # An http server has no lock of ours: a worker that loses the race uses the winner's.
        if error.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def _probe_http(uri: str) -> None:
    """Fail within seconds, naming the URL, when the tracking server at ``uri`` does not answer."""
    parts = urllib.parse.urlsplit(uri)
    netloc = parts.netloc.rsplit("@", 1)[-1]  # urllib takes no user:password@; /health needs none
    health = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + "/health", "", ""))
    try:
        with urllib.request.urlopen(health, timeout=HTTP_PROBE_TIMEOUT):
            return
    except urllib.error.HTTPError:
        return  # it answers (a login, a proxy path without /health): MLflow's calls say the rest
    except (OSError, ValueError, http.client.HTTPException) as error:
        reason = getattr(error, "reason", error)
        if isinstance(reason, ssl.SSLError):
            return  # reachable; MLflow's own TLS settings (MLFLOW_TRACKING_INSECURE_TLS...) decide
        lines = str(reason).strip().splitlines()
        detail = f"{type(reason).__name__}: {lines[0]}" if lines else type(reason).__name__
        raise TrackingError(f"MLflow tracking server {masked_url(uri)} does not answer "
                            f"(GET /health within {HTTP_PROBE_TIMEOUT} s): {detail}") from None
