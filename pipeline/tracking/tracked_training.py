"""Training as an MLflow run: params, lineage, dataset, per-epoch metrics, the model and overlays.

``crackops train`` and sweep trials (``nested=True``) call :func:`train_with_tracking`; the
evaluate stage adds its scores to the same run with :func:`log_evaluation`.
"""
from __future__ import annotations

import json
import math
import numbers
import os
import re
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

import mlflow
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.utils.time import get_current_time_millis

from pipeline.atomic import write_json
from pipeline.data import CrackDataset, load_manifest
from pipeline.inference.probabilities import predict_probabilities
from pipeline.models.factory import model_label
from pipeline.params import Params
from pipeline.tracking.lineage import dvc_output_hash, git_commit, git_dirty, manifest_digest, source_dvc_hash
from pipeline.tracking.mlflow_callback import MlflowCallback
from pipeline.tracking.pyfunc import log_pyfunc_model
from pipeline.tracking.run_ownership import END_REASON_TAG, end_orphaned_runs, owner_tags, remember_run, resumable_run
from pipeline.tracking.setup import configure
from pipeline.training.callbacks import Callback
from pipeline.training.run import (HISTORY_FILE, METRICS_FILE, SUBSET_FILE, Selection, TrainOutcome, history_csv,
                                   train_from_params, work_dir)
from pipeline.visualize import overlay_panel

RUN_FILE = "mlflow_run.json"
MODEL_NAME = "model"
OVERLAY_DIR = "overlays"
EVALUATION_DIR = "evaluation"
MAX_DATASET_DIGEST = 36  # MLflow's column width; the full digest is the data.manifest_sha256 tag
_METRIC_NAME_UNSAFE = re.compile(r"[^0-9A-Za-z_\-. /]")


DVC_EXP_NAME_TAG, DVC_EXP_BASELINE_TAG = "dvc.exp_name", "dvc.exp_baseline_rev"


def dvc_experiment() -> dict[str, str]:
    """The DVC experiment running this stage (``dvc exp run`` sets ``DVC_EXP_NAME``), as run tags."""
    tags = {}
    if os.environ.get("DVC_EXP_NAME"):
        tags[DVC_EXP_NAME_TAG] = os.environ["DVC_EXP_NAME"]
    if os.environ.get("DVC_EXP_BASELINE_REV"):
        tags[DVC_EXP_BASELINE_TAG] = os.environ["DVC_EXP_BASELINE_REV"]
    return tags


def lineage_tags(params: Params) -> dict[str, str]:
    """Code, data and model identity of a run, as MLflow tags (the registry copies some of them)."""
    tags = {
        "model.family": params.model.family,
        "model.variant": params.model.variant,
        "model.architecture": model_label(params),
        "tuning.method": params.tuning.method,
        "data.source": params.data.source,
        "data.manifest_sha256": manifest_digest(params.data.prepared_dir),
    }
    commit = git_commit()
    if commit:
        tags["git.commit"] = commit
        tags["git.dirty"] = str(git_dirty()).lower()
        tags["mlflow.source.git.commit"] = commit  # shown by the MLflow UI
    dvc_md5 = dvc_output_hash(params.data.prepared_dir)
    if dvc_md5:
        tags["data.dvc_md5"] = dvc_md5
    source_md5 = source_dvc_hash(params.data.source)
    if source_md5:
        tags["data.source_dvc_md5"] = source_md5  # the DVC version of the dataset itself
    return tags


def param_values(params: Params) -> dict[str, Any]:
    """``params.flat()`` with lists as JSON strings (``["q", "v"]``), as MLflow stores text."""
    return {key: (json.dumps(value) if isinstance(value, list) else value)
            for key, value in params.flat().items()}


def _dataset_name(source: str) -> str:
    return source if source == "synthetic" else Path(source).resolve().name


def mlflow_dataset(params: Params, digest: str) -> MetaDataset:
    """The prepared data as an MLflow dataset: its folder, source name and manifest digest."""
    prepared = Path(params.data.prepared_dir).resolve()
    with warnings.catch_warnings():
        # MLflow registers two equivalent local sources ("" and "file") and warns about the tie.
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(str(prepared))
    return MetaDataset(source, name=_dataset_name(params.data.source), digest=digest[:MAX_DATASET_DIGEST])


def _log_inputs(params: Params, digest: str) -> None:
    mlflow.log_params(param_values(params))
    counts = load_manifest(Path(params.data.prepared_dir)).get("counts", {})
    dataset = mlflow_dataset(params, digest)
    tags = {f"count.{split}": str(n) for split, n in counts.items()}
    source_md5 = source_dvc_hash(params.data.source)
    if source_md5:
        tags["dvc_md5"] = source_md5  # the DVC version of the dataset the prepared data came from
    try:
        mlflow.log_input(dataset, context="training", tags=tags)
    except MlflowException as error:
        # Two runs creating the experiment's dataset at the same moment (parallel trials, several
        # workers) collide on the store's UNIQUE constraint; the loser finds it on a second try.
        if "unique" not in str(error).lower():
            raise
        mlflow.log_input(dataset, context="training", tags=tags)


def summary_metrics(outcome: TrainOutcome) -> dict[str, float]:
    """Best validation scores (``best_val_f1``, ...), timing and parameter counts of a finished fit."""
    fit = outcome.fit
    speeds = [e.images_per_second for e in fit.history if math.isfinite(e.images_per_second)]
    metrics = {f"best_val_{name}": float(value) for name, value in fit.best_val.items()}
    metrics.update({
        "best_epoch": fit.best_epoch + 1,
        "epochs_run": len(fit.history),
        "train_seconds": outcome.seconds,
        "images_per_second": sum(speeds) / len(speeds) if speeds else math.nan,
        "trainable_params": outcome.parameters.trainable,
        "total_params": outcome.parameters.total,
        "trainable_percent": outcome.parameters.trainable_percent,
    })
    return metrics


def log_overlays(params: Params, outcome: TrainOutcome) -> int:
    """``eval.n_overlays`` validation panels (image | truth | prediction) under ``overlays/``."""
    n = params.eval.n_overlays
    if n <= 0:
        return 0
    val = CrackDataset(Path(params.data.prepared_dir) / "val")
    stems, images, truths = val.stems[:n], val.images[:n], val.masks[:n]
    probs = predict_probabilities(outcome.model, images, params.data.img_size, params.eval.batch_size)
    for stem, image, truth, prob in zip(stems, images, truths, probs):
        panel = overlay_panel(image, truth, (prob >= params.eval.threshold).astype("uint8"))
        mlflow.log_image(panel, artifact_file=f"{OVERLAY_DIR}/{stem}.png")
    return len(stems)


def _log_outputs(params: Params, outcome: TrainOutcome, out_dir: Path | None) -> str | None:
    """Model, summary metrics, history and overlays; returns the logged model's URI."""
    model_uri = model_id = None
    if out_dir is not None:
        info = log_pyfunc_model(out_dir, MODEL_NAME)
        model_uri, model_id = info.model_uri, info.model_id
    # At the last epoch's step: `images_per_second` is also a per-epoch metric, and MLflow shows
    # the value with the highest step (then the latest), so the run's headline is the mean.
    # Linked to the logged model too, so MLflow 3's model pages show its scores.
    mlflow.log_metrics(summary_metrics(outcome), step=len(outcome.fit.history), model_id=model_id)
    if out_dir is not None:
        mlflow.log_artifact(str(out_dir / HISTORY_FILE))
        mlflow.log_artifact(str(out_dir / METRICS_FILE))
    else:
        mlflow.log_text(history_csv(outcome.fit), HISTORY_FILE)
        mlflow.log_dict(summary_metrics(outcome), METRICS_FILE)
    log_overlays(params, outcome)
    return model_uri


def _end_run(run_id: str, status: str, reason: str | None = None) -> None:
    """End the active run with ``status`` (and the reason as a tag), never hiding the caller's error."""
    if reason:
        try:
            mlflow.set_tag(END_REASON_TAG, reason[:500])
        except Exception:  # noqa: BLE001 - the original error is what the caller must see
            pass
    try:
        mlflow.end_run(status)
    except Exception as store_error:  # noqa: BLE001 - e.g. the store's disk is the one that is full
        print(f"warning: could not end MLflow run {run_id} {status} ({store_error}); "
              "the next training on this host ends it", file=sys.stderr, flush=True)


def train_with_tracking(
    params: Params,
    out_dir: Path | None,
    nested: bool = False,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
    work: Path | None = None,
    selection: Selection = Selection(),
    tracker: MlflowCallback | None = None,
) -> tuple[TrainOutcome, str | None]:
    """The one training entry point: :func:`train_from_params` recorded as one MLflow run; returns
    ``(outcome, run_id)``. ``crackops train``, every sweep trial and the benchmarks call it.

    With ``mlflow.enabled: false`` nothing is logged and the run id is None. ``tracker`` is the
    callback that logs the epochs; it exposes the run id to other callbacks once training starts.
    A training that raises ends its run FAILED (KILLED when interrupted) and the error propagates;
    one a callback pruned (:class:`~pipeline.training.callbacks.TrainerControl`) ends KILLED.
    With ``out_dir``, ``out_dir/mlflow_run.json`` names the run and model for later stages.
    ``work`` and ``selection`` are passed on (the resume folder, the best-epoch metric).
    """
    if not params.mlflow.enabled:
        return train_from_params(params, callbacks, out_dir, progress, work=work, selection=selection), None
    experiment_id = configure(params.mlflow)
    lineage = lineage_tags(params)  # fails on missing data before a run exists
    experiment = dvc_experiment()
    if experiment and not nested:
        run_name = run_name or experiment[DVC_EXP_NAME_TAG]
    # The resume folder (out_dir.partial) remembers its run: a rerun after a kill continues it.
    resumable = work_dir(Path(out_dir), params) if out_dir is not None and work is None else None
    continued = resumable_run(resumable, experiment_id) if not nested else None
    run_tags = {**lineage, **experiment, **(tags or {}), **owner_tags()}
    if continued:
        run = mlflow.start_run(run_id=continued, tags=run_tags, log_system_metrics=True)
        print(f"continuing MLflow run {continued} of the interrupted training", flush=True)
    else:
        run = mlflow.start_run(run_name=run_name, nested=nested, tags=run_tags, log_system_metrics=True)
    run_id = run.info.run_id
    if not nested:
        end_orphaned_runs(experiment_id, keep=run_id)
    if resumable is not None:
        remember_run(resumable, run_id, experiment_id)
    tracker = tracker or MlflowCallback()
    tracker.run_id = run_id
    try:
        _log_inputs(params, lineage["data.manifest_sha256"])
        outcome = train_from_params(params, [tracker, *callbacks], out_dir, progress, keep_resume_state=True,
                                    work=work, selection=selection)
        if outcome.subset is not None:
            mlflow.log_dict(outcome.subset, SUBSET_FILE)
            mlflow.log_param("data.train_images", outcome.subset["count"])
        control = outcome.fit.control
        if control.pruned:
            _end_run(run_id, "KILLED", f"pruned: {control.reason}")
            return outcome, run_id
        model_uri = _log_outputs(params, outcome, out_dir)
        if out_dir is not None:
            write_json(Path(out_dir) / RUN_FILE, {
                "run_id": run_id, "experiment_id": experiment_id,
                "tracking_uri": mlflow.get_tracking_uri(), "model_uri": model_uri,
            })
    except BaseException as error:
        # Stopped on purpose (Ctrl-C, SIGTERM, a scheduler's stop): KILLED; anything else: FAILED.
        status = "KILLED" if isinstance(error, (KeyboardInterrupt, SystemExit)) else "FAILED"
        try:
            tracker.flush()
        except Exception:  # noqa: BLE001 - the original error is what the caller must see
            pass
        _end_run(run_id, status, f"{type(error).__name__}: {error}")
        raise
    mlflow.end_run("FINISHED")
    if resumable is not None:
        shutil.rmtree(resumable, ignore_errors=True)  # only now: a kill while logging kept the trained epochs
    return outcome, run_id


def flatten_metrics(tree: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """``{"test": {"f1": 0.8}}`` -> ``{"test_f1": 0.8}``; non-numeric leaves are dropped."""
    flat: dict[str, float] = {}
    for key, value in tree.items():
        name = _METRIC_NAME_UNSAFE.sub("_", f"{prefix}{key}")
        if isinstance(value, dict):
            flat.update(flatten_metrics(value, f"{name}_"))
        elif isinstance(value, numbers.Real) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


def log_evaluation(run_id: str, metrics: dict[str, Any], out_dir: Path, tracking_uri: str | None = None) -> None:
    """Add evaluation scores (flattened, ``test_f1``, ...) and the files in ``out_dir`` to a run.

    Writes through the client, so it neither changes the run's status nor needs it active.
    ``tracking_uri`` defaults to MLflow's current one (pass ``mlflow_run.json``'s).
    """
    client = mlflow.MlflowClient(tracking_uri)
    flat = flatten_metrics(metrics)
    if flat:
        timestamp = get_current_time_millis()
        client.log_batch(run_id, metrics=[Metric(key, value, timestamp, 0)
                                          for key, value in flat.items()])
    out_dir = Path(out_dir)
    if out_dir.is_dir() and any(path.is_file() for path in out_dir.rglob("*")):
        client.log_artifacts(run_id, str(out_dir), EVALUATION_DIR)
