"""Model versions: resolve ``name/version``, ``@alias`` and ``models:/`` references; load weights safely.

Loading never unpickles: the weights and params artifacts of the pyfunc model are downloaded on
their own and read with safetensors and ``yaml.safe_load`` (:func:`load_trained_model`). The
pyfunc's code and environment files are not executed.
"""
from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

from pipeline.errors import CrackopsError
from registry.markers import REGISTERED_TAG  # noqa: F401 - re-exported: promote and the tests read it here

if TYPE_CHECKING:  # torch loads only where a model does
    from torch import nn

    from pipeline.params import Params

CHAMPION, PREVIOUS_CHAMPION, CANDIDATE = "champion", "previous-champion", "candidate"
MLMODEL = "MLmodel"
# The file names of pipeline.training.trained, which imports torch.
WEIGHTS_FILE, PARAMS_FILE = "model.safetensors", "params.yaml"
_MODELS_URI = re.compile(r"^models:/(?P<name>[^@/]+)(?:/(?P<version>\d+)|@(?P<alias>[^/]+))/?$")


class RegistryError(CrackopsError):
    """A model, version or alias named on the command line does not exist."""


def alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    """The version an alias points at, or None when the alias is not set."""
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def get_version(client: MlflowClient, name: str, version: str) -> ModelVersion:
    try:
        return client.get_model_version(name, str(version))
    except MlflowException as error:
        raise RegistryError(f"model {name!r} has no version {version} ({error.message})") from None


def resolve_version(client: MlflowClient, name: str, version: str | None = None,
                    alias: str | None = None) -> ModelVersion:
    """The version given by number, else by alias (default ``candidate``)."""
    if version is not None:
        return get_version(client, name, version)
    alias = alias or CANDIDATE
    found = alias_version(client, name, alias)
    if found is None:
        raise RegistryError(f"model {name!r} has no alias {alias!r} (registered with `crackops register`?)")
    return get_version(client, name, found)


def parse_models_uri(uri: str) -> tuple[str, str | None, str | None] | None:
    """``(name, version, alias)`` of ``models:/name/3`` or ``models:/name@alias``; None for other URIs."""
    match = _MODELS_URI.match(uri)
    return (match["name"], match["version"], match["alias"]) if match else None


def download_artifact(uri: str, path: str, dst: Path, tracking_uri: str | None) -> Path:
    # The registry lives with the tracking store here; pass both so no global MLflow state is used.
    try:
        # Resolving a models:/ URI happens here: an alias no version holds fails before any download.
        repo = get_artifact_repository(uri, tracking_uri=tracking_uri, registry_uri=tracking_uri)
        return Path(repo.download_artifacts(path, str(dst)))
    except MlflowException as error:
        raise RegistryError(f"cannot download {path} of {uri}: {error.message}") from None


def pyfunc_flavor(mlmodel: Path) -> dict:
    """The ``python_function`` section of an MLmodel file ({} when it has none)."""
    tree = yaml.safe_load(mlmodel.read_text()) or {}
    return (tree.get("flavors") or {}).get("python_function") or {}


def _pyfunc_artifact_paths(mlmodel: Path, uri: str) -> tuple[str, str]:
    artifacts = pyfunc_flavor(mlmodel).get("artifacts") or {}
    try:
        return artifacts["weights"]["path"], artifacts["params"]["path"]
    except (KeyError, TypeError):
        raise RegistryError(f"{uri} is not a crackops model: its MLmodel lists no weights/params artifacts") from None


def download_model_files(uri: str, directory: Path, tracking_uri: str | None = None) -> Path:
    """Download only ``model.safetensors`` and ``params.yaml`` of a logged crackops model into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="crackops-dl-") as tmp:
        mlmodel = download_artifact(uri, MLMODEL, Path(tmp), tracking_uri)
        weights_path, params_path = _pyfunc_artifact_paths(mlmodel, uri)
        shutil.move(str(download_artifact(uri, weights_path, Path(tmp), tracking_uri)), directory / WEIGHTS_FILE)
        shutil.move(str(download_artifact(uri, params_path, Path(tmp), tracking_uri)), directory / PARAMS_FILE)
    return directory


def load_model_uri(uri: str, workdir: Path, tracking_uri: str | None = None) -> tuple[nn.Module, Params]:
    """A trained model from a ``models:/``/``runs:/`` URI or a local folder (trained model or MLflow model)."""
    from pipeline.training.trained import load_trained_model

    local = Path(uri)
    if local.is_dir():
        if (local / WEIGHTS_FILE).is_file():
            return load_trained_model(local)
        if (local / MLMODEL).is_file():
            weights_path, params_path = _pyfunc_artifact_paths(local / MLMODEL, uri)
            workdir.mkdir(parents=True, exist_ok=True)
            shutil.copy(local / weights_path, workdir / WEIGHTS_FILE)
            shutil.copy(local / params_path, workdir / PARAMS_FILE)
            return load_trained_model(workdir)
        raise RegistryError(f"{uri} holds neither {WEIGHTS_FILE} nor an MLflow {MLMODEL}")
    if "://" not in uri and ":/" not in uri:
        raise RegistryError(f"{uri!r} is neither a folder nor a model URI (models:/name@champion, models:/name/3)")
    return load_trained_model(download_model_files(uri, workdir, tracking_uri))


def load_version_model(client: MlflowClient, name: str, version: str, workdir: Path) -> tuple[nn.Module, Params]:
    """Weights and params of a registered version, rebuilt into the model (no pickle involved)."""
    from pipeline.training.trained import load_trained_model

    get_version(client, name, version)  # a clear error for a missing version
    return load_trained_model(download_model_files(f"models:/{name}/{version}", workdir, client.tracking_uri))
