"""Where an export comes from and where it goes: the source version's facts, the version's edge build.

``crackops export`` of a registered version (``models:/name@alias``, ``models:/name/3``) logs each
exported graph as an MLflow model into that version's run, under ``edge/onnx-<precision>``, and
tags the version ``crackops.export.<precision>`` with its ``runs:/`` URI: the champion's edge build
is found from the registry (:func:`find_export`), and ``mlflow models serve -m`` runs it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pipeline.params import Params
from registry.versions import (MLMODEL, RegistryError, download_artifact, get_version, load_model_uri, parse_models_uri,
                               pyfunc_flavor, resolve_version)

EXPORT_TAG = "crackops.export.{precision}"
EDGE_ARTIFACTS = "edge/onnx-{precision}"


def _version_of(client: MlflowClient, uri: str) -> Any | None:
    """The registered version a ``models:/`` URI names; None for any other URI."""
    parsed = parse_models_uri(uri)
    if parsed is None:
        return None
    name, version, alias = parsed
    return get_version(client, name, version) if version else resolve_version(client, name, alias=alias)


def export_source(client: MlflowClient, uri: str) -> dict[str, Any]:
    """What ``export.json`` records of the exported model: URI, version, run and its test scores."""
    source: dict[str, Any] = {"model_uri": uri, "registered_model": None, "version": None, "run_id": None,
                              "metrics": {}}
    version = _version_of(client, uri)
    if version is not None:
        source.update(registered_model=version.name, version=str(version.version), run_id=version.run_id,
                      metrics={key: float(value) for key, value in sorted(version.tags.items())
                               if key.startswith("eval.")})
        return source
    from pipeline.tracking.tracked_training import RUN_FILE  # beside a trained folder; export has torch loaded

    run_id = None
    if uri.startswith("runs:/"):
        run_id = uri[len("runs:/"):].split("/", 1)[0]
    elif (Path(uri) / RUN_FILE).is_file():
        run_id = json.loads((Path(uri) / RUN_FILE).read_text()).get("run_id")
    if run_id:
        source["run_id"] = run_id
        try:
            run = client.get_run(run_id)
        except MlflowException as error:
            if not Path(uri).is_dir():
                raise
            # A trained folder exports without its tracking store (another machine, a deleted store).
            print(f"note: the scores of run {run_id} are not in export.json: {error.message}", flush=True)
            return source
        source["metrics"] = {key: value for key, value in sorted(run.data.metrics.items()) if key.startswith("test_")}
    return source


def attach_export(client: MlflowClient, uri: str, export_dir: Path, precisions: list[str]) -> dict[str, str]:
    """Log the export of a registered version into its run and tag the version; {} for other URIs."""
    from pipeline.tracking.onnx_pyfunc import log_onnx_model

    version = _version_of(client, uri)
    if version is None:
        return {}
    logged = {}
    for precision in precisions:
        logged[precision] = log_onnx_model(export_dir, precision, client, version.run_id,
                                           EDGE_ARTIFACTS.format(precision=precision))
        client.set_model_version_tag(version.name, str(version.version), EXPORT_TAG.format(precision=precision),
                                     logged[precision])
    return logged


def find_export(client: MlflowClient, uri: str, precision: str) -> str:
    """The ``runs:/`` URI of a registered version's exported ``precision`` model."""
    version = _version_of(client, uri)
    if version is None:
        raise RegistryError(f"{uri}: only a registered version (models:/name@alias, models:/name/3) has an "
                            "attached export; pass the export folder or its runs:/ URI instead")
    found = version.tags.get(EXPORT_TAG.format(precision=precision))
    if not found:
        raise RegistryError(f"{version.name} version {version.version} has no {precision} ONNX export: run "
                            f"`crackops export --model-uri {uri} --format onnx"
                            + (" --int8" if precision == "int8" else "") + "` first")
    return found


def onnx_precision(mlmodel: Path) -> str | None:
    """The precision of a logged export's MLmodel (fp32, int8); None for any other model."""
    pyfunc = pyfunc_flavor(mlmodel)
    if "onnx" not in (pyfunc.get("artifacts") or {}):
        return None
    return (pyfunc.get("model_config") or {}).get("precision", "fp32")


def _not_exported(uri: str) -> RegistryError:
    return RegistryError(f"{uri} is a PyTorch model, not an ONNX export: run "
                         f"`crackops export --model-uri {uri} --format onnx` and predict with its output folder")


def load_predictor(uri: str, workdir: Path, tracking_uri: str | None,
                   precision: str | None = None) -> tuple[Any, Params]:
    """The model ``crackops predict`` runs, and its params.

    ``precision`` None: whatever ``uri`` is (a PyTorch model, or an export folder or logged export,
    run at its own precision). ``fp32`` / ``int8``: the ONNX graph; for a registered version, the
    export attached to it by ``crackops export``.
    """
    from pipeline.export.bundle import is_export_dir, load_export

    local = Path(uri)
    if local.is_dir():
        if is_export_dir(local):
            return load_export(local, precision or "fp32")
        logged = onnx_precision(local / MLMODEL) if (local / MLMODEL).is_file() else None
        if logged:
            return load_export(local / "artifacts", precision or logged)
        if precision:
            raise _not_exported(uri)
        return load_model_uri(uri, workdir, tracking_uri)
    if precision and parse_models_uri(uri):
        uri = find_export(MlflowClient(tracking_uri, registry_uri=tracking_uri), uri, precision)
    if uri.startswith("runs:/"):
        (workdir / "mlmodel").mkdir(parents=True, exist_ok=True)
        logged = onnx_precision(download_artifact(uri, MLMODEL, workdir / "mlmodel", tracking_uri))
        if logged:
            return load_export(download_artifact(uri, "artifacts", workdir, tracking_uri), precision or logged)
    if precision:
        raise _not_exported(uri)
    return load_model_uri(uri, workdir, tracking_uri)
