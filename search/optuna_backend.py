"""``crackops sweep --backend optuna``: a persistent, resumable Optuna study over a search space.

The study lives in an RDB storage (``sqlite:///sweeps.db`` by default; a PostgreSQL URL lets
workers on several machines run the same command against one study). Rerunning a killed sweep's
command resumes it: finished trials are kept, only the missing ones run, and the trial that was
running when the process died is marked FAILED and retried with the same params:

* at start-up, RUNNING trials of this host whose process is gone, and trials no worker claimed,
  are failed and requeued at once;
* trials of other machines are failed and requeued when their heartbeat is older than
  ``GRACE_PERIOD`` (Optuna checks before each new trial);
* trials stopped by Ctrl-C or by an error that stops the sweep are requeued on the next start.

``grid-fraction`` (SAC) draws ``space.grid_sample(seed)`` once per study and enqueues it; ``random``
and ``tpe`` sample. Trials count toward ``--n-trials`` when COMPLETE or PRUNED, so a trial that
failed for its own reason (NaN loss, out of memory, an invalid combination) is replaced by a new
one, except in a grid, which runs exactly its drawn points.
"""
from __future__ import annotations

import copy
import hashlib
import math
import os
import socket
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.exceptions import DuplicatedStudyError, UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from pipeline.atomic import write_text
from pipeline.data import load_manifest
from pipeline.training.callbacks import Callback
from search.config import DEFAULT_N_TRIALS, SweepConfig, SweepError
from search.mlflow_sweep import close_orphan_children, conclude, sweep_params, sweep_run
from search.objective import (
    TAG_BACKEND, TAG_NUMBER, TAG_STUDY, ReportingCallback, TrialFailure, describe, run_trial, winning_values,
)
from search.results import (
    BestTrial, SweepSummary, TrialRow, format_summary, format_table, trial_line,
)
from search.space import SearchSpace

BACKEND = "optuna"
# Heartbeats every 10 s; another machine's trial is presumed dead after 60 s of silence. Short
# enough that a preempted worker's trial comes back within a minute, long enough that a busy
# database or a GC pause does not kill a healthy trial. Same-host restarts do not wait for it.
HEARTBEAT_INTERVAL = 10
GRACE_PERIOD = 60
CLAIM_WAIT = 5.0  # seconds to let a live worker claim a trial it just took (see _dead_running)
MAX_RETRY = 2  # a trial that keeps killing its worker (e.g. the kernel's OOM killer) is dropped
TRIALS_FILE = "trials.csv"
STATE_NAMES = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed",
               TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}

# Trial user attrs (JSON): what a backend-independent report needs.
A_PARAMS = "params"  # the trial's choices with real values (LoRA targets as lists)
A_FAIL_REASON = "fail_reason"  # the trial's own failure: not retried
A_INTERRUPTED = "interrupted"  # stopped with the sweep (Ctrl-C, an error): retried on resume
A_EPOCHS = "epochs_run"
A_RUN_ID = "mlflow_run_id"
A_HOST, A_PID = "worker.host", "worker.pid"
# Study user attrs.
S_SPACE, S_SPACE_SHA = "sweep.space", "sweep.space_sha256"
S_PARENT = "mlflow.parent_run_id"
S_GRID_DONE, S_GRID_SEED, S_GRID_POINTS, S_GRID_SIZE = "grid.enqueued", "grid.seed", "grid.points", "grid.size"
# Optuna's own bookkeeping of retries (see RetryHeartbeatStaleTrialCallback).
RETRY_HISTORY, RETRY_OF, FIXED_PARAMS = "retry_history", "failed_trial", "fixed_params"

_RetryBase = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or optuna.storages.RetryFailedTrialCallback


class RetryStaleTrial(_RetryBase):  # type: ignore[misc, valid-type]
    """Optuna's retry of a stale trial, with a clean slate of user attrs for the new attempt and a
    hook (``on_retry``) that closes the dead trial's MLflow run."""

    def __init__(self, max_retry: int | None = MAX_RETRY) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "experimental" since Optuna 2.8
            super().__init__(max_retry=max_retry)
        self.on_retry: Any = None

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        clean = copy.deepcopy(trial)
        clean.user_attrs = {}
        super().__call__(study, clean)
        if self.on_retry is not None:
            self.on_retry(study, trial)


def make_storage(url: str, retry: RetryStaleTrial | None = None) -> optuna.storages.RDBStorage:
    """The study's database with heartbeats and stale-trial retries."""
    if url.startswith("sqlite:///") and ":memory:" not in url:
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    callback_arg = ("heartbeat_stale_trial_callback"
                    if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback") else "failed_trial_callback")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # heartbeat_interval is "experimental" since Optuna 2.9
            return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_INTERVAL, grace_period=GRACE_PERIOD,
                                              **{callback_arg: retry or RetryStaleTrial()})
    except Exception as error:  # noqa: BLE001 - bad URL, missing driver, unreachable server
        raise SweepError(f"cannot open sweep storage {masked_url(url)}: {type(error).__name__}: {error}") from None


def masked_url(url: str) -> str:
    """The storage URL with any password hidden (it goes into logs and MLflow params)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL sqlalchemy understands: show only the scheme
        return url.split(":", 1)[0] + ":..."


def make_sampler(name: str, seed: int, space: SearchSpace) -> optuna.samplers.BaseSampler:
    """``tpe``: Optuna's TPE, after ``space.tpe_startup_trials`` random trials (Optuna's 10 if unset);
    ``random`` and ``grid-fraction``: random sampling."""
    if name == "tpe":
        startup = {"n_startup_trials": space.tpe_startup_trials} if space.tpe_startup_trials else {}
        return optuna.samplers.TPESampler(seed=seed, **startup)
    # grid-fraction runs enqueued points; its sampler only fills a point no worker enqueued.
    return optuna.samplers.RandomSampler(seed=seed)


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    """``median``: below the median of earlier trials at the same epoch, after 3 trials and 2 epochs;
    ``asha``: successive halving with rungs after 1, 3, 9 epochs; ``none``: never."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2)
    if name == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise SweepError(f"unknown pruner {name!r}; choose none, median or asha")


def space_digest(space: SearchSpace) -> str:
    return hashlib.sha256(space.model_dump_json().encode()).hexdigest()


def open_study(config: SweepConfig, storage: optuna.storages.RDBStorage,
               pruner: optuna.pruners.BasePruner) -> tuple[optuna.Study, bool]:
    """Create the study, or load it to resume; returns ``(study, created_now)``.

    Creation is atomic in the database, so exactly one of several workers started together creates it.
    """
    space, name = config.space, config.study_name
    placeholder = optuna.samplers.RandomSampler(seed=config.seed)  # replaced once the trial count is known
    try:
        study = optuna.create_study(storage=storage, study_name=name, direction=space.direction,
                                    sampler=placeholder, pruner=pruner)
        created = True
        study.set_user_attr(S_SPACE, space.name)
        study.set_user_attr(S_SPACE_SHA, space_digest(space))
    except DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage, sampler=placeholder, pruner=pruner)
        created = False
    _check_resumable(study, config)
    study.sampler = make_sampler(config.sampler_name, _sampler_seed(config.seed, created, len(study.trials)), space)
    return study, created


def _check_resumable(study: optuna.Study, config: SweepConfig) -> None:
    space = config.space
    expected = optuna.study.StudyDirection.MAXIMIZE if space.direction == "maximize" else optuna.study.StudyDirection.MINIMIZE
    if study.direction != expected:
        raise SweepError(f"study {study.study_name!r} exists with direction {study.direction.name.lower()}, "
                         f"the space says {space.direction}; pick another --study name")
    recorded = study.user_attrs.get(S_SPACE)
    if recorded is not None and recorded != space.name:
        raise SweepError(f"study {study.study_name!r} in {masked_url(config.storage)} is a sweep over space "
                         f"{recorded!r}, not {space.name!r}; pick another --study name to start a new sweep")
    if study.user_attrs.get(S_SPACE_SHA) not in (None, space_digest(space)):
        print(f"warning: space {space.name!r} changed since study {study.study_name!r} began; "
              "finished trials keep their old values", flush=True)


def _sampler_seed(seed: int, created: bool, n_existing: int) -> int:
    """``seed`` for a fresh study (reproducible); a resumed or joining worker mixes in the trial count
    and its process so it does not replay the draws already made."""
    if created:
        return seed
    entropy = [seed, n_existing, os.getpid(), int(hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8], 16)]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def encode_point(space: SearchSpace, point: dict[str, Any]) -> dict[str, Any]:
    """A grid point in Optuna's terms: list choices travel as ``"q,v"`` (as in ``space.suggest``)."""
    return {key: ",".join(map(str, value)) if isinstance(value, list) else value for key, value in point.items()}


def decode_params(space: SearchSpace, params: dict[str, Any]) -> dict[str, Any]:
    """Optuna's stored params back to real values (the inverse of :func:`encode_point`)."""
    decoded = {}
    for key, value in params.items():
        spec = space.parameters.get(key)
        if spec is not None and spec.type == "categorical":
            encoded = [",".join(map(str, c)) if isinstance(c, list) else c for c in spec.choices]
            value = spec.choices[encoded.index(value)] if value in encoded else value
        elif spec is not None and spec.type == "stepped":
            value = float(f"{value:.12g}")
        decoded[key] = value
    return decoded


def enqueue_grid(study: optuna.Study, space: SearchSpace, seed: int) -> int:
    """Draw the study's share of the grid once and queue it; returns the number of drawn points.

    A resumed study keeps its first draw (``grid.enqueued``); ``skip_if_exists`` covers a worker that
    died halfway through enqueueing.
    """
    attrs = study.user_attrs
    if attrs.get(S_GRID_DONE):
        if attrs.get(S_GRID_SEED) != seed:
            print(f"note: study {study.study_name!r} drew its grid points with seed {attrs.get(S_GRID_SEED)}; "
                  f"--seed {seed} does not change them", flush=True)
        return int(attrs[S_GRID_POINTS])
    points = space.grid_sample(seed)
    for point in points:
        study.enqueue_trial(encode_point(space, point), skip_if_exists=True)
    study.set_user_attr(S_GRID_SEED, seed)
    study.set_user_attr(S_GRID_POINTS, len(points))
    study.set_user_attr(S_GRID_SIZE, len(space.grid()))
    study.set_user_attr(S_GRID_DONE, True)  # last: a crash before this re-enqueues (skipping existing)
    return len(points)


def _pid_gone(pid: Any) -> bool:
    if not isinstance(pid, int) or pid == os.getpid():
        # Our own pid on a trial at start-up: a container restart reused it; that process is gone.
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _retried_numbers(trials: list[FrozenTrial]) -> set[int]:
    return {number for trial in trials for number in trial.system_attrs.get(RETRY_HISTORY, [])}


def _dead_running(study: optuna.Study) -> list[FrozenTrial]:
    """RUNNING trials that cannot finish: this host's with their process gone, and unclaimed ones.

    A worker claims a trial (host, pid) within milliseconds of taking it; one killed in between
    leaves a trial that is neither claimed nor heartbeating, which Optuna's stale check never sees.
    """
    host = socket.gethostname()
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    dead = [t for t in running if t.user_attrs.get(A_HOST) == host and _pid_gone(t.user_attrs.get(A_PID))]
    unclaimed = {t.number for t in running if A_HOST not in t.user_attrs}
    if unclaimed:
        time.sleep(CLAIM_WAIT)  # a live worker that just took one claims it meanwhile
        dead += [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                 if t.number in unclaimed and A_HOST not in t.user_attrs]
    return dead


def recover_trials(study: optuna.Study, storage: optuna.storages.RDBStorage, retry: RetryStaleTrial) -> list[int]:
    """Fail and requeue trials that can no longer finish; returns their numbers.

    * RUNNING but dead (see :func:`_dead_running`): a kill just now need not wait for the heartbeat;
    * FAIL with ``interrupted`` and no retry yet (Ctrl-C or a sweep-stopping error last time).
    """
    recovered = []
    for trial in _dead_running(study):
        try:
            # Compare-and-set in the database (as Optuna's fail_stale_trials does): of two workers
            # recovering together, only one wins and requeues. Optuna keeps ids on FrozenTrial only.
            if not storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:
            continue
        retry(study, storage.get_trial(trial._trial_id))
        recovered.append(trial.number)
    trials = study.get_trials(deepcopy=False)
    retried = _retried_numbers(trials)
    # No retry limit here: being stopped with the sweep is no fault of the trial's.
    requeue = RetryStaleTrial(max_retry=None)
    for trial in trials:
        if trial.state == TrialState.FAIL and trial.user_attrs.get(A_INTERRUPTED) and trial.number not in retried:
            requeue(study, trial)
            recovered.append(trial.number)
    return sorted(recovered)


class _OptunaReporter:
    """Per-epoch score to Optuna; raises ``TrialPruned`` when the pruner says so."""

    def __init__(self, trial: optuna.Trial, metric: str) -> None:
        self.trial = trial
        self.metric = metric
        self.steps = 0

    def report(self, step: int, value: float, metrics: dict[str, float]) -> None:
        self.steps = step
        self.trial.report(value, step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {step} ({self.metric} {value:.4f})")


class _RecordRunId(Callback):
    """The trial's MLflow run id into its user attrs, so a report or a rescue can find the run."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial

    def on_train_start(self, total_epochs: int) -> None:
        import mlflow

        run = mlflow.active_run()
        if run is not None:
            self.trial.set_user_attr(A_RUN_ID, run.info.run_id)


class _Objective:
    """Optuna's objective: suggest, train through :func:`run_trial`, record how the trial ended."""

    def __init__(self, config: SweepConfig) -> None:
        self.config = config
        self.space = config.space
        self.base_tree = config.base_tree()
        self.grid = config.sampler_name == "grid-fraction"
        self.host, self.pid = socket.gethostname(), os.getpid()

    def _from_queue(self, study: optuna.Study, trial: optuna.Trial) -> bool:
        for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if frozen.number == trial.number:
                return FIXED_PARAMS in frozen.system_attrs or RETRY_OF in frozen.system_attrs
        return False

    def __call__(self, trial: optuna.Trial) -> float:
        trial.set_user_attr(A_HOST, self.host)
        trial.set_user_attr(A_PID, self.pid)
        if self.grid and not self._from_queue(trial.study, trial):
            # Another worker took the last grid point between our check and this trial's start.
            reason = "grid exhausted: another worker took the last drawn point"
            trial.set_user_attr(A_FAIL_REASON, reason)
            raise TrialFailure(reason)
        chosen = self.space.suggest(trial)
        trial.set_user_attr(A_PARAMS, chosen)
        reporter = _OptunaReporter(trial, self.space.pruning_metric)
        tags = {TAG_NUMBER: str(trial.number), TAG_STUDY: self.config.study_name, TAG_BACKEND: BACKEND}
        try:
            result = run_trial(self.base_tree, self.space, chosen,
                               [_RecordRunId(trial), ReportingCallback(reporter, self.space.pruning_metric)],
                               run_name=f"trial-{trial.number}", tags=tags, pruned_errors=(optuna.TrialPruned,))
        except TrialFailure as failure:
            trial.set_user_attr(A_FAIL_REASON, failure.reason)
            raise
        except optuna.TrialPruned:
            trial.set_user_attr(A_EPOCHS, reporter.steps)
            raise
        except BaseException as error:
            trial.set_user_attr(A_INTERRUPTED, describe(error))
            raise
        trial.set_user_attr(A_EPOCHS, result.epochs_run)
        return result.value


def count_states(study: optuna.Study) -> dict[str, int]:
    """Trials by state, in the words of MLflow's ``trial.state`` tags (complete, pruned, failed, ...)."""
    counts = Counter(trial.state for trial in study.get_trials(deepcopy=False))
    return {name: counts.get(state, 0) for state, name in STATE_NAMES.items()}


def trial_row(space: SearchSpace, trial: FrozenTrial, retried_as: dict[int, int] | None = None) -> TrialRow:
    attrs = trial.user_attrs
    params = attrs.get(A_PARAMS) or decode_params(space, trial.params)
    if not params and FIXED_PARAMS in trial.system_attrs:  # a queued grid point not yet started
        params = decode_params(space, trial.system_attrs[FIXED_PARAMS])
    epochs = attrs.get(A_EPOCHS, len(trial.intermediate_values) or None)
    notes = []
    if attrs.get(A_FAIL_REASON):
        notes.append(attrs[A_FAIL_REASON])
    elif trial.state == TrialState.FAIL:
        notes.append(f"interrupted: {attrs[A_INTERRUPTED]}" if attrs.get(A_INTERRUPTED) else "worker stopped")
    if retried_as and trial.number in retried_as:
        notes.append(f"retried as trial {retried_as[trial.number]}")
    if RETRY_OF in trial.system_attrs:
        notes.append(f"retry of trial {trial.system_attrs[RETRY_HISTORY][-1]}")
    value = trial.value if trial.state in (TrialState.COMPLETE, TrialState.PRUNED) else None
    seconds = trial.duration.total_seconds() if trial.duration else None
    return TrialRow(trial.number, trial.state.name, value, params, epochs, seconds, "; ".join(notes))


def all_rows(study: optuna.Study, space: SearchSpace) -> list[TrialRow]:
    trials = study.get_trials(deepcopy=False)
    retried_as = {}
    for trial in trials:
        history = trial.system_attrs.get(RETRY_HISTORY, [])
        if history:
            retried_as[history[-1]] = trial.number
    return [trial_row(space, trial, retried_as) for trial in trials]


def best_of(study: optuna.Study, space: SearchSpace) -> BestTrial | None:
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if t.value is not None and math.isfinite(t.value)]
    if not complete:
        return None
    best = study.best_trial
    chosen = best.user_attrs.get(A_PARAMS) or decode_params(space, best.params)
    return BestTrial(best.number, float(best.value), winning_values(space, chosen))


class _StopRule:
    """Ends ``optimize`` when the sweep has what it needs; prints one line per finished trial."""

    def __init__(self, config: SweepConfig, n_trials: int) -> None:
        self.config = config
        self.n_trials = n_trials
        self.grid = config.sampler_name == "grid-fraction"
        self.failures = 0

    def reason(self, study: optuna.Study) -> str | None:
        counts = count_states(study)
        if counts["complete"] + counts["pruned"] >= self.n_trials:
            return f"{self.n_trials} trials finished"
        if self.grid and counts["waiting"] == 0:
            return "every drawn grid point has run"
        if not self.grid and self.failures >= self.n_trials:
            return f"{self.failures} trials failed in this run; check the space and the fail reasons"
        return None

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        print(trial_line(trial_row(self.config.space, trial), self.config.space.metric), flush=True)
        if trial.state == TrialState.FAIL:
            self.failures += 1
        if self.reason(study):
            study.stop()


def _parent_params(config: SweepConfig, n_trials: int, grid_points: int | None) -> dict[str, Any]:
    return sweep_params(config, BACKEND, n_trials, grid_points, masked_url(config.storage))


def _write_trials_csv(study: optuna.Study, out_dir: Path) -> Path | None:
    frame = study.trials_dataframe(attrs=("number", "state", "value", "datetime_start", "duration", "params",
                                          "user_attrs"))
    if frame.empty:
        return None
    path = out_dir / TRIALS_FILE
    write_text(path, frame.to_csv(index=False))
    return path


def _finish(study: optuna.Study, config: SweepConfig, parent_id: str | None) -> SweepSummary:
    """Best files, plots, the parent run's summary; returns what to print."""
    space = config.space
    return conclude(config, all_rows(study, space), count_states(study), best_of(study, space), parent_id,
                    study, _write_trials_csv(study, config.out_dir))


def run_optuna_sweep(config: SweepConfig) -> SweepSummary:
    """Run (or resume) the sweep ``config`` describes; prints progress and returns the summary."""
    verbosity = optuna.logging.get_verbosity()
    # Our own lines replace Optuna's (study created, trial finished); failed trials would repeat
    # their traceback, which the trial's line and its MLflow run already explain.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        return _run(config)
    finally:
        optuna.logging.set_verbosity(verbosity)


def _run(config: SweepConfig) -> SweepSummary:
    space = config.space
    # Errors every trial would hit, before a study or run exists: no data, a grid of a continuous space.
    load_manifest(Path(config.base.data.prepared_dir))
    if config.sampler_name == "grid-fraction":
        space.grid()
    retry = RetryStaleTrial()
    storage = make_storage(config.storage, retry)
    study, created = open_study(config, storage, make_pruner(config.pruner_name))
    grid_points = enqueue_grid(study, space, config.seed) if config.sampler_name == "grid-fraction" else None
    n_trials = config.n_trials or grid_points or DEFAULT_N_TRIALS
    recovered = recover_trials(study, storage, retry)
    _announce(config, study, created, n_trials, grid_points, recovered)
    with sweep_run(config.base.mlflow, study.user_attrs.get(S_PARENT), f"sweep-{config.study_name}",
                   _parent_params(config, n_trials, grid_points),
                   {TAG_STUDY: config.study_name, TAG_BACKEND: BACKEND}) as parent_id:
        _optimize(study, config, n_trials, retry, parent_id)
        summary = _finish(study, config, parent_id)
    print(format_table(summary.rows, space.metric), flush=True)
    print(format_summary(summary, space.epochs, config.overrides), flush=True)
    return summary


def _announce(config: SweepConfig, study: optuna.Study, created: bool, n_trials: int,
              grid_points: int | None, recovered: list[int]) -> None:
    attrs = study.user_attrs
    grid_text = (f" ({grid_points} of {attrs.get(S_GRID_SIZE)} grid points, seed {attrs.get(S_GRID_SEED)})"
                 if grid_points is not None else "")
    space = config.space
    print(f"sweep {config.study_name!r} over space {space.name!r} ({BACKEND}): sampler {config.sampler_name}"
          f"{grid_text}, pruner {config.pruner_name}, {n_trials} trials of {space.epochs} epochs, "
          f"best by {space.metric}; storage {masked_url(config.storage)}", flush=True)
    if not created:
        counts = count_states(study)
        print(f"resuming: {counts['complete']} complete, {counts['pruned']} pruned, {counts['failed']} failed"
              + (f"; requeued interrupted trial(s) {', '.join(map(str, recovered))}" if recovered else ""),
              flush=True)


def _optimize(study: optuna.Study, config: SweepConfig, n_trials: int, retry: RetryStaleTrial,
              parent_id: str | None) -> None:
    """Run trials until the stop rule says enough, with the parent run active for nesting."""
    if parent_id is not None:
        if study.user_attrs.get(S_PARENT) != parent_id:
            study.set_user_attr(S_PARENT, parent_id)

        def close_runs(study: optuna.Study, trial: FrozenTrial | None = None) -> None:
            live = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
            close_orphan_children(parent_id, live, "interrupted: the worker stopped; the trial is retried")

        close_runs(study)  # trials recovered at start-up
        retry.on_retry = close_runs  # trials Optuna finds stale later (other machines)
    stop = _StopRule(config, n_trials)
    reason = stop.reason(study)
    if reason:
        print(f"nothing to run: {reason}", flush=True)
        return
    try:
        study.optimize(_Objective(config), n_trials=None, catch=(TrialFailure,), gc_after_trial=True,
                       callbacks=[stop, optuna.study.MaxTrialsCallback(
                           n_trials, states=(TrialState.COMPLETE, TrialState.PRUNED))])
    finally:
        retry.on_retry = None
