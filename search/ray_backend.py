"""``crackops sweep --backend ray``: the sweep on Ray Tune, on a local Ray or a cluster (``--address``).

Same config in and same results out as the Optuna backend: an MLflow parent run with a nested run
per trial (same dotted params, per-epoch metrics, ``trial.state`` tags), the best-params files, the
plots and the printed summary. Tune adds parallel trials across a cluster:

* search: Tune's ``OptunaSearch`` over :meth:`SearchSpace.suggest` (define-by-run, so conditional
  parameters work); ``grid-fraction`` evaluates ``space.grid_sample(seed)`` and nothing else;
* early stopping: ``--pruner asha`` is Tune's ASHA (rungs after 1, 3, 9 epochs, as Optuna's
  successive halving), ``median`` its median stopping rule (from epoch 3, after 3 trials), ``none`` FIFO;
* trials: each a Ray actor with ``sweep.ray.cpus_per_trial`` CPUs (also its torch threads) running
  :func:`search.trial.run_trial`, i.e. the one training loop;
* checkpoints: after every epoch but the last, the loop's resume state (``last.pt``, ``best.pt``)
  goes to Tune as the trial's checkpoint. A restored trial copies it back into its resume folder
  (``work`` of :func:`search.trial.run_trial`) and the loop goes on from the next epoch;
* resume: rerunning the command finds the experiment folder (``sweep.ray.storage_path/<study>``)
  and restores it: finished trials are kept, interrupted and errored ones continue from their last
  checkpoint, pending ones start.

The trial's score is the best epoch's value (as in the Optuna backend): its last Tune result holds
the best epoch's metrics, so Tune's searcher sees the same number.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import mlflow
import optuna
import ray
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from pipeline.params import Params
from pipeline.tracking.mlflow_callback import MlflowCallback
from pipeline.tracking.setup import resolve_tracking_uri
from pipeline.training.callbacks import Callback
from search.config import DEFAULT_N_TRIALS, SweepConfig, SweepError
from search.driver import RunOutcome, StudyPlan, SweepBackend
from search.mlflow_sweep import close_orphan_children
from search.trial import (
    MAX_REASON, TAG_BACKEND, TAG_FAIL_REASON, TAG_NUMBER, TAG_STATE, TAG_STUDY,
    ReportingCallback, TrialFailure, epoch_metric, run_trial,
)
from search.ray_cluster import (
    TAG_NODE, Shipment, StorageURI, check_cluster_tracking, localize, node_id, prepare_shipment, probe_address,
    runtime_env, storage_folder, verify_node, write_json_to,
)
from search.results import TrialRow, trial_line
from search.samplers import make_sampler
from search.space import SearchSpace
from search.states import COMPLETE, FAILED, PRUNED, RUNNING, WAITING

BACKEND = "ray"
STATE_FILE = "crackops_sweep.json"  # beside Tune's experiment state: the parent run and the space
# Checkpoint files: the loop's resume state (pipeline.training.run) and the epochs already logged.
STATE_FILES = ("last.pt", "best.pt", "params.sha256")
CHECKPOINT_HISTORY_FILE = "history.json"
# Keys of a trial's Tune results besides its epoch metrics (the state keys are the MLflow tag names).
R_EPOCH, R_RUN_ID, R_EPOCHS_RUN = "epoch", "mlflow_run_id", "epochs_run"
TAG_RESUMED = "trial.resumed_from_epoch"
_ERROR_LINE = re.compile(r"^[\w.]*(Error|Exception|Interrupt|Exit)\b.*:")
INTERRUPTED = "interrupted: the sweep stopped; rerun the command to continue this trial from its last epoch"
INTERRUPTED_ROW = "interrupted after epoch {epochs}; continues on resume"


@dataclass(frozen=True)
class TrialContext:
    """What every trial needs from the driver; shipped once through Ray's object store."""

    base_tree: dict[str, Any]  # absolute paths: Tune runs trials in other folders, maybe other machines
    space: SearchSpace
    study: str
    parent_run_id: str | None
    # Inputs by content hash, the code's digest, versions and lineage (search.ray_cluster); None:
    # trials use base_tree's paths as they are and skip the node checks.
    shipment: Shipment | None = None


# --- search and scheduling ---------------------------------------------------------------------


class DefineByRun:
    """The space as OptunaSearch's define-by-run function; a class, as Tune pickles its searcher.

    Returns the real values (LoRA targets as lists) and the Optuna trial number, which names the
    trial everywhere (``trial-<n>`` runs, printed lines), as in the Optuna backend.
    """

    def __init__(self, space: SearchSpace) -> None:
        self.space = space

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        return {**self.space.suggest(trial), TAG_NUMBER: trial.number}


def make_searcher(config: SweepConfig, points: list[dict[str, Any]] | None) -> OptunaSearch:
    space = config.space
    return OptunaSearch(space=DefineByRun(space), metric=space.metric, mode=_mode(space),
                        sampler=make_sampler(config.sampler_name, config.seed, space),
                        points_to_evaluate=[space.encode(point) for point in points or []] or None)


def make_scheduler(config: SweepConfig) -> TrialScheduler:
    """Tune's counterparts of the Optuna backend's pruners, in epochs (the ``epoch`` result key),
    comparing the space's pruning metric as the Optuna backend's pruners do."""
    space, name = config.space, config.pruner_name
    if name == "asha":
        return ASHAScheduler(time_attr=R_EPOCH, metric=space.pruning_metric, mode=_mode(space), max_t=space.epochs,
                             grace_period=1, reduction_factor=3)
    if name == "median":
        return MedianStoppingRule(time_attr=R_EPOCH, metric=space.pruning_metric, mode=_mode(space), grace_period=3,
                                  min_samples_required=3)
    return FIFOScheduler()


def _mode(space: SearchSpace) -> str:
    return "max" if space.direction == "maximize" else "min"


# --- the trial (runs in a Ray actor) -------------------------------------------------------------


class TuneTrialReporter(Callback):
    """Each epoch's metrics to Tune with the loop's resume state as the checkpoint.

    The last epoch is not reported here: Tune may stop a trial at any report (``tune.report`` then
    raises ``SystemExit``), so the trial's final result is sent only once its MLflow run is closed.
    A restored trial's new MLflow run gets the epochs of its checkpoint first (the loop's
    ``on_resume``), so every run holds the whole history.
    """

    def __init__(self, work: Path, epochs: int, history: list[dict[str, float]], tracker: MlflowCallback) -> None:
        self.work = work
        self.epochs = epochs
        self.history = history
        self.tracker = tracker  # exposes the trial's MLflow run id once training starts

    @property
    def run_id(self) -> str | None:
        return self.tracker.run_id

    def on_train_start(self, total_epochs: int) -> None:
        if not (self.work / "last.pt").is_file():
            self.history = []  # no state, or dropped for changed params: the loop starts over
        elif self.history and self.run_id is not None:
            # The checkpoint's epochs reach the new run through MlflowCallback.on_resume.
            mlflow.set_tag(TAG_RESUMED, str(len(self.history)))

    def report(self, step: int, value: float, metrics: dict[str, float]) -> None:
        """Tune's scheduler stops a trial by raising ``SystemExit`` from ``tune.report`` (Ray's way),
        so this never answers with a reason to stop."""
        self.history.append(metrics)
        if step >= self.epochs:
            return None
        # The epoch's metrics must be stored before Tune can stop this process.
        mlflow.flush_async_logging()
        with tempfile.TemporaryDirectory(prefix="crackops-ckpt-") as folder:
            for name in STATE_FILES:
                if (self.work / name).is_file():
                    # The loop replaces these files by rename: a link is a consistent snapshot.
                    _link_or_copy(self.work / name, Path(folder) / name)
            (Path(folder) / CHECKPOINT_HISTORY_FILE).write_text(json.dumps(self.history))
            tune.report(self._result(metrics, step), checkpoint=tune.Checkpoint.from_directory(folder))

    def _result(self, metrics: dict[str, float], epoch: int, **extra: Any) -> dict[str, Any]:
        return {**metrics, R_EPOCH: epoch, R_RUN_ID: self.run_id or "", **extra}

    def final(self, space: SearchSpace, state: str, run_id: str | None, reason: str = "") -> None:
        """The trial's last result (its score) with a checkpoint of the history only: Tune keeps one
        checkpoint per trial, so the weights of a finished trial do not stay on disk."""
        epochs, metric, direction = len(self.history), space.metric, space.direction
        if state == COMPLETE and self.history:
            pick = max if direction == "maximize" else min
            best = pick(self.history, key=lambda item: _finite_or(epoch_metric(item, metric), direction))
            result = self._result(best, epochs, **{TAG_STATE: state, R_EPOCHS_RUN: epochs})
        else:
            # Tune checks that every result holds the searcher's and the scheduler's metric.
            no_score = {metric: math.nan, space.pruning_metric: math.nan}
            result = self._result(no_score, epochs, **{TAG_STATE: state, R_EPOCHS_RUN: epochs,
                                                        TAG_FAIL_REASON: reason[:MAX_REASON]})
        result[R_RUN_ID] = run_id or self.run_id or ""
        with tempfile.TemporaryDirectory(prefix="crackops-ckpt-") as folder:
            (Path(folder) / CHECKPOINT_HISTORY_FILE).write_text(json.dumps(self.history))
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(folder))


def _finite_or(value: float, direction: str) -> float:
    return value if math.isfinite(value) else (-math.inf if direction == "maximize" else math.inf)


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def trial_work_dir(trial_id: str) -> Path:
    """The loop's resume folder of a trial, on the machine running it (not synced anywhere)."""
    return Path(tempfile.gettempdir()) / f"crackops-tune-{trial_id}"


def _restore(work: Path) -> list[dict[str, float]]:
    """Copy the trial's Tune checkpoint (if any) into ``work``; returns the epochs it holds."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return []
    with checkpoint.as_directory() as folder:
        for name in STATE_FILES:
            if (Path(folder) / name).is_file():
                shutil.copy2(Path(folder) / name, work / name)
        history_file = Path(folder) / CHECKPOINT_HISTORY_FILE
        history = json.loads(history_file.read_text()) if history_file.is_file() else []
    return history if (work / "last.pt").is_file() else []


def crackops_trial(config: dict[str, Any], context: TrialContext) -> None:
    """Tune's trainable: one trial through :func:`run_trial`, resumable from its Tune checkpoint."""
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # a line per checkpoint is noise here
    space, shipment = context.space, context.shipment
    if shipment is not None:
        verify_node(shipment)  # other code or versions on this node: an error naming both
    number = int(config[TAG_NUMBER])
    chosen = {key: value for key, value in config.items() if key in space.parameters}
    # The driver's lineage: this node's working directory is not the project.
    lineage = shipment.lineage if shipment is not None else {}
    tags = {**lineage, TAG_NUMBER: str(number), TAG_STUDY: context.study, TAG_BACKEND: BACKEND,
            TAG_NODE: node_id()}
    if context.parent_run_id:
        # The parent run is active in the driver, not here: nest by the tag MLflow itself uses.
        tags["mlflow.parentRunId"] = context.parent_run_id
    work = trial_work_dir(tune.get_context().get_trial_id())
    shutil.rmtree(work, ignore_errors=True)  # a previous attempt's state: the checkpoint is what counts
    work.mkdir(parents=True)
    try:
        # Shipped inputs: this node's cached copies (downloaded once per node and version).
        base_tree = localize(context.base_tree, shipment) if shipment is not None else context.base_tree
        tracker = MlflowCallback()
        reporter = TuneTrialReporter(work, space.epochs, _restore(work), tracker)
        with _working_dir(work if shipment is not None else None):
            try:
                callbacks = [reporter, ReportingCallback(reporter, space.pruning_metric)]
                result = run_trial(base_tree, space, chosen, callbacks, run_name=f"trial-{number}",
                                   tags=tags, pruned_errors=(SystemExit,), tracker=tracker, work=work)
            except TrialFailure as failure:
                # The trial's own failure ends it, not the sweep; Tune sees a finished trial with no score.
                reporter.final(space, FAILED, failure.run_id, failure.reason)
                return
        reporter.final(space, COMPLETE, result.run_id)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@contextmanager
def _working_dir(folder: Path | None) -> Iterator[None]:
    """Run inside ``folder`` (the trial's scratch folder), back where it was afterwards."""
    if folder is None:
        yield
        return
    previous = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


# --- paths, Ray and the experiment folder ---------------------------------------------------------


def absolute_uri(uri: str) -> str:
    """A tracking URI that means the same from any working directory."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////") and ":memory:" not in uri:
        return "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    if uri.startswith("file:"):
        return Path(uri[len("file:"):].removeprefix("//")).resolve().as_uri()
    if "://" not in uri and not uri.startswith(("databricks", "sqlite:")):
        return Path(uri).resolve().as_uri()  # a plain folder of file-store runs
    return uri


def trial_base_tree(config: SweepConfig) -> dict[str, Any]:
    """The base params for trials: relative paths made absolute, torch threads = CPUs per trial."""
    tree = config.base_tree()
    params = config.base
    tree["data"]["prepared_dir"] = str(Path(params.data.prepared_dir).resolve())
    if params.model.checkpoint:
        tree["model"]["checkpoint"] = str(Path(params.model.checkpoint).resolve())
    if params.model.student_checkpoint:
        tree["model"]["student_checkpoint"] = str(Path(params.model.student_checkpoint).resolve())
    tree["mlflow"]["tracking_uri"] = absolute_uri(resolve_tracking_uri(params.mlflow))
    tree["train"]["num_threads"] = max(1, round(params.sweep.ray.cpus_per_trial))
    return tree


def experiment_dir(config: SweepConfig) -> Path | StorageURI:
    """Tune's experiment folder: under a folder (on a cluster, one every node mounts) or a URI
    pyarrow opens (``s3://``, ``gs://``, ``file://``, ...); see :class:`search.ray_cluster.StorageURI`."""
    return storage_folder(config.base.sweep.ray.storage_path, config.study_name)


def local_cpus(config: SweepConfig) -> int:
    """CPUs for a local Ray: what the concurrent trials reserve, at most this machine's."""
    ray_params = config.base.sweep.ray
    machine = os.cpu_count() or 1
    if ray_params.cpus_per_trial > machine:
        raise SweepError(f"sweep.ray.cpus_per_trial is {ray_params.cpus_per_trial:g} but this machine has "
                         f"{machine} CPUs; lower it or pass --address of a Ray cluster")
    return max(1, min(machine, math.ceil(ray_params.cpus_per_trial * ray_params.max_concurrent_trials)))


@contextmanager
def ray_session(config: SweepConfig) -> Iterator[str]:
    """Connect to ``--address`` or start a local Ray (shut down at the end); yields a description."""
    # The project's code travels to every worker (py_modules), so no node needs the driver's folder.
    common: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True, "logging_level": logging.WARNING,
                              "runtime_env": runtime_env()}
    if ray.is_initialized():
        yield "an already running Ray"
        return
    token_set_here = False
    if config.address:
        check_cluster_tracking(config)  # also checked before the sweep's parent run; cheap
        probe_address(config.address)  # ray.init retries an unreachable address for minutes
        token_set_here = _use_this_hosts_ray_token()
        try:
            ray.init(address=config.address, **common)
        except ConnectionError as error:
            if token_set_here:
                _forget_ray_token()
            raise SweepError(f"cannot connect to the Ray cluster at {config.address}: {error} (with token "
                             "authentication, set RAY_AUTH_MODE=token and the cluster's token)") from None
        where = f"Ray cluster at {config.address}"
    else:
        cpus = local_cpus(config)
        try:
            # "local": a Ray of our own, even when another one runs on this machine.
            ray.init(address="local", num_cpus=cpus, **common)
        except Exception as error:  # noqa: BLE001 - no /dev/shm, ports in use, ...: say what failed
            raise SweepError(f"cannot start a local Ray: {type(error).__name__}: {error}") from None
        where = f"local Ray with {cpus} CPU{'s' if cpus != 1 else ''}"
    try:
        yield where
    finally:
        ray.shutdown()
        if token_set_here:
            _forget_ray_token()


def _use_this_hosts_ray_token() -> bool:
    """Authenticate as ``ray start`` does: with ``~/.ray/auth_token`` when it exists and
    ``RAY_AUTH_MODE`` is unset. ``ray.init(address=...)`` alone never does, so a driver beside a
    head that enabled token auth would be refused. Returns whether it set ``RAY_AUTH_MODE``."""
    if os.environ.get("RAY_AUTH_MODE") is not None:
        return False  # the user's choice
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # a Ray without token authentication
        return False
    return bool(maybe_enable_token_auth_if_token_available(warn_if_disabled=False))


def _forget_ray_token() -> None:
    """Undo :func:`_use_this_hosts_ray_token` once the cluster session ends: Ray sets the mode for
    the whole process (its environment and its cached config), and a later local Ray in the same
    process (a notebook, the test suite) must start as it would have without it."""
    os.environ.pop("RAY_AUTH_MODE", None)
    try:
        from ray._raylet import Config
    except ImportError:
        return
    Config.initialize("")


def read_state(folder: Path) -> dict[str, Any]:
    path = folder / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _check_resumable(state: dict[str, Any], config: SweepConfig, folder: Path) -> None:
    space = config.space
    if state.get("space") not in (None, space.name):
        raise SweepError(f"Ray experiment {folder} is a sweep over space {state['space']!r}, not {space.name!r}; "
                         "pick another --study name to start a new sweep")
    if state.get("space_sha256") not in (None, space.digest()):
        print(f"warning: space {space.name!r} changed since study {config.study_name!r} began; "
              "finished trials keep their old values", flush=True)


# --- what the driver sees -------------------------------------------------------------------------


def trial_row(space: SearchSpace, trial: Trial) -> TrialRow:
    """A Tune trial as a sweep row (``search.states``)."""
    result = trial.last_result or {}
    config = trial.config or {}
    params = {key: value for key, value in config.items() if key in space.parameters}
    number = int(config.get(TAG_NUMBER, -1))
    epochs = result.get(R_EPOCHS_RUN, result.get(R_EPOCH))
    seconds = result.get("time_total_s")
    value: float | None = None
    note = ""
    if trial.status == Trial.TERMINATED:
        state, value, note = _ended_state(result, space.metric)
    elif trial.status == Trial.ERROR:
        state, note = FAILED, f"interrupted: {_error_line(trial)}; retried on resume"
    elif trial.status == Trial.PENDING and not result:
        state = WAITING
    else:
        state, note = RUNNING, INTERRUPTED_ROW.format(epochs=epochs or 0)
    return TrialRow(number, state, value, params, int(epochs) if epochs else None,
                    float(seconds) if seconds is not None else None, note)


def _ended_state(result: dict[str, Any], metric: str) -> tuple[str, float | None, str]:
    """``(state, value, note)`` of a trial that ended, from its last result."""
    if result.get(TAG_STATE) == COMPLETE:
        return COMPLETE, _finite(result.get(metric)), ""
    if result.get(TAG_STATE) == FAILED:
        return FAILED, None, str(result.get(TAG_FAIL_REASON, ""))
    if R_EPOCH not in result:
        return FAILED, None, "stopped before its first epoch"
    return PRUNED, _finite(result.get(metric)), ""  # stopped by the scheduler after an epoch


def _error_line(trial: Trial) -> str:
    """The error's own line from the trial's ``error.txt`` (a traceback), else a generic reason."""
    lines: list[str] = []
    for where in (lambda: trial.error_file, lambda: str(Path(trial.path) / "error.txt")):
        try:  # the driver's copy while Ray runs, the experiment folder's afterwards
            lines = [line.strip() for line in Path(where() or "").read_text().splitlines() if line.strip()]
        except Exception:  # noqa: BLE001 - not there (yet), or Ray is gone
            continue
        if lines:
            break
    named = [line for line in lines if _ERROR_LINE.match(line)]
    return ((named or lines or ["the trial's worker stopped"])[-1])[:200]


def _close_run(run_id: str | None, state: str, status: str, reason: str | None = None) -> None:
    """End a trial's MLflow run its process could not end (stopped or killed by Tune)."""
    if not run_id:
        return
    client = mlflow.MlflowClient()
    try:
        if client.get_run(run_id).info.status != "RUNNING":
            return
        client.set_tag(run_id, TAG_STATE, state)
        if reason:
            client.set_tag(run_id, TAG_FAIL_REASON, reason[:MAX_REASON])
        client.set_terminated(run_id, status)
    except mlflow.exceptions.MlflowException:
        pass  # the run is gone: nothing to close


class SweepProgress(tune.Callback):
    """In the driver: one line per ended trial (the driver's format), and the MLflow run of a trial
    Tune stopped (pruned) or lost (error) closed with its state. Tune pickles it with the
    experiment, so it keeps no state of its own."""

    def __init__(self, space: SearchSpace, mlflow_on: bool) -> None:
        self.space = space
        self.mlflow_on = mlflow_on

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        result = trial.last_result or {}
        row = trial_row(self.space, trial)
        row.state, row.value, row.note = _ended_state(result, self.space.metric)
        if row.state == PRUNED and self.mlflow_on:
            _close_run(result.get(R_RUN_ID), PRUNED, "KILLED")
        print(trial_line(row, self.space.metric), flush=True)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        row = trial_row(self.space, trial)
        row.state, row.value, row.note = FAILED, None, f"interrupted: {_error_line(trial)}; retried on resume"
        if self.mlflow_on:
            _close_run((trial.last_result or {}).get(R_RUN_ID), FAILED, "FAILED", row.note)
        print(trial_line(row, self.space.metric), flush=True)


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


# --- the sweep ------------------------------------------------------------------------------------


def _tuner(config: SweepConfig, folder: Path, trainable: Any, points: list[dict[str, Any]] | None,
           n_trials: int, progress: SweepProgress) -> tuple[tune.Tuner, bool]:
    """A new Tuner, or the one restored from ``folder``; returns ``(tuner, restored)``."""
    if tune.Tuner.can_restore(str(folder)):
        # Search state, scheduler, run config (with the progress callback) come back from the folder.
        return tune.Tuner.restore(str(folder), trainable, resume_errored=True), True
    ray_params = config.base.sweep.ray
    tune_config = tune.TuneConfig(search_alg=make_searcher(config, points), scheduler=make_scheduler(config),
                                  num_samples=n_trials, max_concurrent_trials=ray_params.max_concurrent_trials)
    run_config = tune.RunConfig(
        name=config.study_name, storage_path=str(folder.parent), verbose=0, callbacks=[progress],
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        # An error that is not the trial's own (a lost node, a killed worker) restarts that trial
        # from its last checkpoint, up to sweep.ray.max_failures times; then it errors that trial
        # only (fail_fast would end the others as finished, and nothing could resume them). The
        # sweep exits with an error at the end; rerunning it retries errored trials.
        failure_config=tune.FailureConfig(max_failures=ray_params.max_failures, fail_fast=False),
    )
    return tune.Tuner(trainable, tune_config=tune_config, run_config=run_config), False


class RayBackend(SweepBackend):
    """Trials as Ray Tune trials, on a local Ray or a cluster; one driver process runs the study."""

    name = "ray"

    def __init__(self, config: SweepConfig) -> None:
        super().__init__(config)
        self.folder = experiment_dir(config)
        self.state = read_state(self.folder)
        self.points: list[dict[str, Any]] | None = None
        self.n_trials = 0
        self._rows: list[TrialRow] = []

    def open(self) -> StudyPlan:
        config, space, ray_params = self.config, self.config.space, self.config.base.sweep.ray
        check_cluster_tracking(config)  # --address needs an MLflow server: refused before any run exists
        _check_resumable(self.state, config, self.folder)
        self.points = space.grid_sample(config.seed) if config.sampler_name == "grid-fraction" else None
        points = self.points
        n_trials = min(config.n_trials or len(points), len(points)) if points else config.n_trials or DEFAULT_N_TRIALS
        if self.state.get("n_trials") not in (None, n_trials):
            print(f"note: study {config.study_name!r} was started with {self.state['n_trials']} trials; a Ray sweep "
                  "keeps its trial count on resume (pick another --study for more)", flush=True)
            n_trials = int(self.state["n_trials"])
        self.n_trials = n_trials
        return StudyPlan(n_trials, str(self.folder), len(points) if points else None,
                         len(space.grid()) if points else None, config.seed if points else None, params={
                             "sweep.ray.cpus_per_trial": ray_params.cpus_per_trial,
                             "sweep.ray.gpus_per_trial": ray_params.gpus_per_trial,
                             "sweep.ray.max_concurrent_trials": ray_params.max_concurrent_trials})

    def recorded_parent(self) -> str | None:
        return self.state.get("parent_run_id")

    def record_parent(self, run_id: str) -> None:
        self.state["parent_run_id"] = run_id  # written with the experiment's state in run()

    def rows(self) -> list[TrialRow]:
        return sorted(self._rows, key=lambda row: row.number)

    def run(self, parent_id: str | None, report: Any) -> RunOutcome:
        config, space, ray_params = self.config, self.config.space, self.config.base.sweep.ray
        # Trials of a killed sweep left their runs RUNNING: none runs now, so all are closed.
        close_orphan_children(parent_id, INTERRUPTED)
        self.folder.mkdir(parents=True, exist_ok=True)
        write_json_to(self.folder / STATE_FILE, {"space": space.name, "space_sha256": space.digest(),
                                                 "n_trials": self.n_trials, "seed": config.seed,
                                                 "parent_run_id": parent_id})
        if parent_id is not None:
            register_dataset(config.base)
        progress = SweepProgress(space, config.base.mlflow.enabled)
        context = TrialContext(trial_base_tree(config), space, config.study_name, parent_id,
                               prepare_shipment(config))
        with _quiet_searcher(), ray_session(config) as where:
            trainable = tune.with_resources(tune.with_parameters(crackops_trial, context=context),
                                            {"cpu": ray_params.cpus_per_trial, "gpu": ray_params.gpus_per_trial})
            tuner, restored = _tuner(config, self.folder, trainable, self.points, self.n_trials, progress)
            print(f"{'resuming on' if restored else 'running on'} {where}: {ray_params.cpus_per_trial:g} CPU, "
                  f"{ray_params.gpus_per_trial:g} GPU per trial, at most {ray_params.max_concurrent_trials} at once",
                  flush=True)
            tuner.fit()
            trials = tune.ExperimentAnalysis(str(self.folder)).trials
            self._rows = [trial_row(space, trial) for trial in trials]
        if not config.address:
            # A trial Tune stopped (pruned) or killed may not have removed its folder itself.
            for trial in trials:
                shutil.rmtree(trial_work_dir(trial.trial_id), ignore_errors=True)
        if parent_id is not None:
            _close_interrupted(trials, self._rows)
            close_orphan_children(parent_id, INTERRUPTED)  # trials that died before their first epoch
        # Tune caught Ctrl-C and saved the experiment: the driver ends the parent KILLED, the CLI exits 130.
        interrupted = any(row.state in (RUNNING, WAITING) for row in self._rows)
        errors = [row for row in self._rows if row.state == FAILED and row.note.startswith("interrupted")]
        return RunOutcome(interrupted, errors)


@contextmanager
def _quiet_searcher() -> Iterator[None]:
    """A failed trial's NaN score makes Optuna and Tune's searcher warn; the trial's line says it."""
    verbosity = optuna.logging.get_verbosity()
    searcher_log = logging.getLogger(OptunaSearch.__module__)
    level = searcher_log.level
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    searcher_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(verbosity)
        searcher_log.setLevel(level)


def register_dataset(params: Params) -> None:
    """The training data as the parent run's input, logged before any trial starts.

    MLflow creates a dataset once per experiment; the driver creates it first so the trials, which
    start together, find it instead of racing to create it.
    """
    from pipeline.tracking.lineage import manifest_digest
    from pipeline.tracking.tracked_training import mlflow_dataset  # the trials' own dataset entry

    mlflow.log_input(mlflow_dataset(params, manifest_digest(params.data.prepared_dir)), context="sweep")


def _close_interrupted(trials: list[Trial], rows: list[TrialRow]) -> None:
    """Runs of trials the sweep stopped mid-way: their process saw a stop like a pruning one."""
    client = mlflow.MlflowClient()
    for trial, row in zip(trials, rows):
        run_id = (trial.last_result or {}).get(R_RUN_ID)
        if row.state != RUNNING or not run_id:
            continue
        _close_run(run_id, FAILED, "KILLED", INTERRUPTED)
        client.set_tag(run_id, TAG_STATE, FAILED)  # also when the trial's process ended it as pruned
        client.set_tag(run_id, TAG_FAIL_REASON, INTERRUPTED)
