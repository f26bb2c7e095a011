"""``crackops sweep --backend optuna``: a persistent Optuna study that any number of workers run.

The study lives in an RDB storage (``sqlite:///sweeps.db`` by default; PostgreSQL for workers on
several machines or in containers). Every worker runs the same command; together they run the
study once:

* **one lock per study** (:func:`pipeline.dblock.database_lock`: an advisory lock on PostgreSQL,
  a file lock beside a SQLite file) serialises the few steps where workers race: creating the
  storage's schema, queueing the grid, creating the study's one MLflow parent run, creating a new
  trial. So no grid point is queued twice, none is skipped, and ``--n-trials N`` counts the
  study's finished trials: a worker creates a trial only while finished + running < N.
* on PostgreSQL and MySQL a **queued trial** (a grid point, a retry) is taken without the lock,
  by Optuna's compare-and-set from WAITING to RUNNING in the database (a row lock): of workers
  racing for it exactly one gets it, and a queued grid cannot exceed ``--n-trials`` whoever takes
  it (see ``take_queued``). SQLite has no row locks: there the file lock covers taking too.
* **liveness by Optuna's RDB heartbeat**: a running trial beats every
  ``sweep.optuna.heartbeat_interval`` seconds; one silent for ``grace_period`` seconds (its worker
  was killed, its host lost) is failed by whichever worker notices first and queued again by
  Optuna's retry callback, with its MLflow run ended FAILED. No host names or PIDs, so workers
  in containers or other PID namespaces never fail each other's healthy trials. A trial whose
  worker dies more than ``sweep.optuna.max_interrupted_retries`` times (it may be what kills it,
  e.g. through the kernel's OOM killer) is given up: named in the summary, its run tagged so,
  the sweep's exit status non-zero; a rerun with a larger cap runs it again.
* a worker with nothing to take while other trials still run **waits** for them (one may die and
  come back as a retry) instead of leaving: nothing is lost when a worker dies.
* rerunning the command resumes: finished trials are kept, trials stopped by Ctrl-C or by an error
  that stopped the sweep are queued again with the same params.

``grid-fraction`` (SAC) draws ``space.grid_sample(seed)`` once per study and queues it; ``random``
and ``tpe`` sample. A trial that failed for its own reason (NaN loss, out of memory, an invalid
combination) does not count toward ``--n-trials``, so a new one replaces it, except in a grid,
which runs exactly its drawn points.
"""
from __future__ import annotations

import copy
import datetime
import gc
import hashlib
import json
import os
import socket
import time
import warnings
from contextlib import AbstractContextManager, contextmanager
from typing import Callable, Iterator

import numpy as np
import optuna
from optuna.exceptions import DuplicatedStudyError, UpdateFinishedTrialError
from optuna.storages._heartbeat import get_heartbeat_thread  # the same beat Study.optimize runs
from optuna.trial import FrozenTrial, TrialState

from pipeline.dblock import DatabaseLockError, connect_args, database_lock, masked_url, sqlite_file
from pipeline.params import OptunaWorkerParams
from pipeline.tracking.mlflow_callback import MlflowCallback
from pipeline.training.callbacks import Callback
from search.config import DEFAULT_N_TRIALS, SweepConfig, SweepError
from search.driver import RunOutcome, StudyPlan, SweepBackend
from search.mlflow_sweep import close_orphan_children
from search.results import TrialRow
from search.samplers import make_sampler
from search.space import SearchSpace
from search.states import COMPLETE, FAILED, PRUNED, RUNNING, STATES, WAITING
from search.trial import (
    TAG_BACKEND, TAG_NUMBER, TAG_STUDY, ReportingCallback, TrialFailure, error_line, run_trial,
)

STATE_NAMES = {TrialState.COMPLETE: COMPLETE, TrialState.PRUNED: PRUNED, TrialState.FAIL: FAILED,
               TrialState.RUNNING: RUNNING, TrialState.WAITING: WAITING}
SCHEMA_LOCK = "crackops-optuna-schema"

# Trial user attrs (JSON): what a backend-independent report needs.
A_PARAMS = "params"  # the trial's choices with real values (LoRA targets as lists)
A_FAIL_REASON = "fail_reason"  # the trial's own failure: not retried
A_INTERRUPTED = "interrupted"  # stopped with the sweep (Ctrl-C, an error): retried on resume
A_EPOCHS = "epochs_run"
A_RUN_ID = "mlflow_run_id"
A_WORKER = "worker"  # host and pid, for people reading the study; never used to judge liveness
# Study user attrs.
S_SPACE, S_SPACE_SHA = "sweep.space", "sweep.space_sha256"
S_PARENT = "mlflow.parent_run_id"
S_GRID_DONE, S_GRID_SEED, S_GRID_POINTS, S_GRID_SIZE = "grid.enqueued", "grid.seed", "grid.points", "grid.size"
S_GIVEN_UP = "trials.given_up"  # {trial number: deaths of its worker} for trials not run again
# Optuna's own bookkeeping of retries (see RetryHeartbeatStaleTrialCallback).
RETRY_HISTORY, RETRY_OF, FIXED_PARAMS = "retry_history", "failed_trial", "fixed_params"
# Trial system attr: how often the workers of this grid point's attempts died (Ctrl-C's count nothing).
DEATHS = "crackops.worker_deaths"
MAX_INTERRUPTED_RETRIES = OptunaWorkerParams.model_fields["max_interrupted_retries"].default


def given_up_reason(deaths: int, cap: int | None) -> str:
    """The note and MLflow fail reason of a trial not run again: says it was given up, and how to run it."""
    return (f"given up after {deaths} interruption{'s' if deaths != 1 else ''} (its worker died each time; "
            f"sweep.optuna.max_interrupted_retries={cap}); rerun with a larger cap to run it again")


class RetryStaleTrial(optuna.storages.RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a stale trial, with a clean slate of user attrs for the new attempt and a
    hook (``on_retry``) that closes the dead trial's MLflow run.

    The cap counts the deaths of a point's workers (``DEATHS``), not Optuna's retry history, which
    also holds the requeues after Ctrl-C: a sweep stopped by hand costs its trials nothing. A trial
    over the cap is recorded in the study (``S_GIVEN_UP``) rather than dropped without a word.
    """

    def __init__(self, max_retry: int | None = MAX_INTERRUPTED_RETRIES) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "experimental"
            super().__init__(max_retry=None)  # the cap is ours: see the class docstring
        self.max_retry = max_retry
        self.on_retry: Callable[[optuna.Study, FrozenTrial], None] | None = None
        self.retried: list[int] = []  # numbers of the dead trials this process queued again
        self.given_up: list[int] = []  # numbers of the dead trials this process gave up

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        deaths = trial.system_attrs.get(DEATHS, 0) + 1
        if self.max_retry is not None and deaths > self.max_retry:
            given_up = dict(study.user_attrs.get(S_GIVEN_UP, {}))  # under the study's lock (recover_trials)
            given_up[str(trial.number)] = deaths
            study.set_user_attr(S_GIVEN_UP, given_up)
            self.given_up.append(trial.number)
            print(f"trial {trial.number}: {given_up_reason(deaths, self.max_retry)}", flush=True)
        else:
            self.requeue(study, trial, deaths)
            self.retried.append(trial.number)
        if self.on_retry is not None:
            self.on_retry(study, trial)

    def requeue(self, study: optuna.Study, trial: FrozenTrial, deaths: int) -> None:
        """Queue ``trial``'s point again as a new trial that carries ``deaths``."""
        clean = copy.deepcopy(trial)
        clean.user_attrs = {}
        clean.system_attrs[DEATHS] = deaths
        super().__call__(study, clean)


def make_storage(url: str, retry: RetryStaleTrial | None = None, heartbeat_interval: int = 10,
                 grace_period: int = 60) -> optuna.storages.RDBStorage:
    """The study's database with heartbeats and stale-trial retries; its schema is created by one
    worker at a time (several starting together on a fresh database would collide)."""
    database = sqlite_file(url)
    if database is not None:
        database.parent.mkdir(parents=True, exist_ok=True)
    try:
        with database_lock(url, SCHEMA_LOCK), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # heartbeat_interval is "experimental"
            return optuna.storages.RDBStorage(
                url, engine_kwargs={"connect_args": connect_args(url)} if connect_args(url) else None,
                heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                heartbeat_stale_trial_callback=retry or RetryStaleTrial())
    except DatabaseLockError as error:  # the server is down or the driver missing: it names the URL
        raise SweepError(f"sweep storage: {error}") from None
    except Exception as error:  # noqa: BLE001 - a bad URL, a database that refuses the schema
        lines = str(error).strip().splitlines()
        raise SweepError(f"cannot open sweep storage {masked_url(url)}: {type(error).__name__}: "
                         f"{lines[0] if lines else ''}") from None


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


def open_study(config: SweepConfig, storage: optuna.storages.RDBStorage,
               pruner: optuna.pruners.BasePruner) -> tuple[optuna.Study, bool]:
    """Create the study, or load it to resume or join; returns ``(study, created_now)``."""
    space, name = config.space, config.study_name
    placeholder = optuna.samplers.RandomSampler(seed=config.seed)  # replaced once the trial count is known
    try:
        study = optuna.create_study(storage=storage, study_name=name, direction=space.direction,
                                    sampler=placeholder, pruner=pruner)
        created = True
        study.set_user_attr(S_SPACE, space.name)
        study.set_user_attr(S_SPACE_SHA, space.digest())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "experimental"
            study.set_metric_names([space.metric])  # optuna-dashboard names the objective val_f1, not "Objective 0"
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
    if study.user_attrs.get(S_SPACE_SHA) not in (None, space.digest()):
        print(f"warning: space {space.name!r} changed since study {study.study_name!r} began; "
              "finished trials keep their old values", flush=True)


def _sampler_seed(seed: int, created: bool, n_existing: int) -> int:
    """``seed`` for a fresh study (reproducible); a resumed or joining worker mixes in the trial count
    and its process so it does not replay the draws already made."""
    if created:
        return seed
    entropy = [seed, n_existing, os.getpid(), int(hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8], 16)]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def enqueue_grid(study: optuna.Study, space: SearchSpace, seed: int) -> int:
    """Draw the study's share of the grid once and queue it; returns the number of drawn points.

    Call it under the study's lock: the check and the queueing must be one step for workers
    starting together. A resumed study keeps its first draw (``grid.enqueued``); points already
    in the study are skipped, for a worker that died halfway through queueing.
    """
    attrs = study.user_attrs
    if attrs.get(S_GRID_DONE):
        if attrs.get(S_GRID_SEED) != seed:
            print(f"note: study {study.study_name!r} drew its grid points with seed {attrs.get(S_GRID_SEED)}; "
                  f"--seed {seed} does not change them", flush=True)
        return int(attrs[S_GRID_POINTS])
    points = space.grid_sample(seed)
    # Read once: enqueue_trial(skip_if_exists=True) reads the whole study per point (minutes for a large grid).
    existing = {_point_key(trial.system_attrs.get(FIXED_PARAMS, trial.params)) for trial in study.get_trials(deepcopy=False)}
    for point in points:
        params = space.encode(point)
        if _point_key(params) not in existing:
            study.enqueue_trial(params)
    study.set_user_attr(S_GRID_SEED, seed)
    study.set_user_attr(S_GRID_POINTS, len(points))
    study.set_user_attr(S_GRID_SIZE, len(space.grid()))
    study.set_user_attr(S_GRID_DONE, True)  # last: a crash before this re-enqueues (skipping existing)
    return len(points)


def _point_key(params: dict) -> str:
    return json.dumps(params, sort_keys=True, default=str)


def _retried_numbers(trials: list[FrozenTrial]) -> set[int]:
    return {number for trial in trials for number in trial.system_attrs.get(RETRY_HISTORY, [])}


def _silent_trials(study: optuna.Study, storage: optuna.storages.RDBStorage, grace_period: int) -> list[FrozenTrial]:
    """RUNNING trials that never beat, started over ``grace_period`` ago: their worker died between
    taking the trial and its first heartbeat, which Optuna's stale check (heartbeats only) misses."""
    from optuna.storages._rdb import models

    running = trials_in(study, TrialState.RUNNING)
    if not running:
        return []
    with storage.engine.connect() as connection:
        beating = {row[0] for row in connection.execute(
            models.TrialHeartbeatModel.__table__.select().with_only_columns(
                models.TrialHeartbeatModel.__table__.c.trial_id))}
    cutoff = datetime.datetime.now() - datetime.timedelta(seconds=grace_period)
    return [trial for trial in running if trial._trial_id not in beating
            and trial.datetime_start is not None and trial.datetime_start < cutoff]


def recover_trials(study: optuna.Study, storage: optuna.storages.RDBStorage, retry: RetryStaleTrial,
                   grace_period: int) -> list[int]:
    """Fail and queue again the trials that can no longer finish; returns their numbers. Call it
    under the study's lock (two workers must not queue one trial twice).

    * RUNNING with a stale heartbeat (Optuna's own check, its retry callback) or none at all;
    * FAIL with ``interrupted`` and no retry yet (Ctrl-C or a sweep-stopping error);
    * given up earlier, when the cap (``retry.max_retry``) has been raised since.
    """
    already = len(retry.retried)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "experimental"
        optuna.storages.fail_stale_trials(study)  # calls the storage's callback, i.e. ``retry``
    recovered = retry.retried[already:]
    for trial in _silent_trials(study, storage, grace_period):
        try:
            # Compare-and-set in the database, as Optuna's fail_stale_trials does.
            if not storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:
            continue
        retry(study, storage.get_trial(trial._trial_id))
        if trial.number not in retry.given_up:
            recovered.append(trial.number)
    interrupted = [trial for trial in trials_in(study, TrialState.FAIL) if trial.user_attrs.get(A_INTERRUPTED)]
    if interrupted:
        retried = _retried_numbers(study.get_trials(deepcopy=False))
        # No retry limit here: being stopped with the sweep is no fault of the trial's, nor a death.
        for trial in interrupted:
            if trial.number not in retried:
                retry.requeue(study, trial, trial.system_attrs.get(DEATHS, 0))
                recovered.append(trial.number)
    given_up = study.user_attrs.get(S_GIVEN_UP, {})
    again = {number: deaths for number, deaths in given_up.items()
             if retry.max_retry is None or deaths <= retry.max_retry}
    if again:
        for number, deaths in again.items():
            retry.requeue(study, storage.get_trial(storage.get_trial_id_from_study_id_trial_number(
                study._study_id, int(number))), deaths)
            recovered.append(int(number))
        study.set_user_attr(S_GIVEN_UP, {n: d for n, d in given_up.items() if n not in again})
    return sorted(recovered)


class _OptunaReporter:
    """Per-epoch score to Optuna; answers with a reason to stop when the pruner says so."""

    def __init__(self, trial: optuna.Trial, metric: str) -> None:
        self.trial = trial
        self.metric = metric
        self.steps = 0

    def report(self, step: int, value: float, metrics: dict[str, float]) -> str | None:
        self.steps = step
        self.trial.report(value, step)
        if self.trial.should_prune():
            return f"pruned after epoch {step} ({self.metric} {value:.4f})"
        return None


class _RecordRunId(Callback):
    """The trial's MLflow run id (from the tracking callback) into its user attrs, so a report or a
    rescue can find the run."""

    def __init__(self, trial: optuna.Trial, tracker: MlflowCallback) -> None:
        self.trial = trial
        self.tracker = tracker

    def on_train_start(self, total_epochs: int) -> None:
        if self.tracker.run_id is not None:
            self.trial.set_user_attr(A_RUN_ID, self.tracker.run_id)


class _Objective:
    """Suggest, train through :func:`run_trial`, record how the trial ended (raises like an Optuna objective)."""

    def __init__(self, config: SweepConfig) -> None:
        self.config = config
        self.space = config.space
        self.base_tree = config.base_tree()
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, trial: optuna.Trial) -> float:
        trial.set_user_attr(A_WORKER, self.worker)
        chosen = self.space.suggest(trial)
        trial.set_user_attr(A_PARAMS, chosen)
        reporter = _OptunaReporter(trial, self.space.pruning_metric)
        tags = {TAG_NUMBER: str(trial.number), TAG_STUDY: self.config.study_name, TAG_BACKEND: OptunaBackend.name}
        tracker = MlflowCallback()
        try:
            result = run_trial(self.base_tree, self.space, chosen,
                               [_RecordRunId(trial, tracker), ReportingCallback(reporter, self.space.pruning_metric)],
                               run_name=f"trial-{trial.number}", tags=tags, tracker=tracker)
        except TrialFailure as failure:
            trial.set_user_attr(A_FAIL_REASON, failure.reason)
            raise
        except BaseException as error:
            trial.set_user_attr(A_INTERRUPTED, error_line(error))
            raise
        trial.set_user_attr(A_EPOCHS, result.epochs_run)
        if result.pruned:
            raise optuna.TrialPruned(result.fit.control.reason)  # how an Optuna objective says "pruned"
        return result.value


def run_one(study: optuna.Study, trial: optuna.Trial, objective: Callable[[optuna.Trial], float]) -> FrozenTrial:
    """Run a trial already taken (``study.ask``) to its end, beating while it runs, as
    ``Study.optimize`` does; returns it as stored. Errors not the trial's own are re-raised."""
    value, state = None, None
    try:
        with get_heartbeat_thread(trial._trial_id, study._storage):
            try:
                value = objective(trial)
            except optuna.TrialPruned:
                state = TrialState.PRUNED
            except TrialFailure:
                state = TrialState.FAIL
    except BaseException:
        study.tell(trial, state=TrialState.FAIL)
        raise
    frozen = study.tell(trial, value if state is None else None, state=state)  # as stored now
    gc.collect()  # the trial's model (also held by a pruned trial's traceback) must not stay beside the next one's
    return frozen


def trial_row(space: SearchSpace, trial: FrozenTrial, retried_as: dict[int, int] | None = None,
              given_up: str = "") -> TrialRow:
    attrs = trial.user_attrs
    params = attrs.get(A_PARAMS) or space.decode(trial.params)
    if not params and FIXED_PARAMS in trial.system_attrs:  # a queued grid point not yet started
        params = space.decode(trial.system_attrs[FIXED_PARAMS])
    epochs = attrs.get(A_EPOCHS, len(trial.intermediate_values) or None)
    notes = []
    if attrs.get(A_FAIL_REASON):
        notes.append(attrs[A_FAIL_REASON])
    elif given_up:  # first: the table shows a note's start
        notes.append(given_up)
    elif trial.state == TrialState.FAIL:
        notes.append(f"interrupted: {attrs[A_INTERRUPTED]}" if attrs.get(A_INTERRUPTED)
                     else "its worker stopped beating (killed or lost)")
    if retried_as and trial.number in retried_as:
        notes.append(f"retried as trial {retried_as[trial.number]}")
    if RETRY_OF in trial.system_attrs:
        notes.append(f"retry of trial {trial.system_attrs[RETRY_HISTORY][-1]}")
    value = trial.value if trial.state in (TrialState.COMPLETE, TrialState.PRUNED) else None
    seconds = trial.duration.total_seconds() if trial.duration else None
    return TrialRow(trial.number, STATE_NAMES[trial.state], value, params, epochs, seconds, "; ".join(notes),
                    given_up)


def all_rows(study: optuna.Study, space: SearchSpace, cap: int | None) -> list[TrialRow]:
    """Every trial as a row; ``cap`` (the worker deaths a trial is allowed) explains the given-up ones."""
    trials = study.get_trials(deepcopy=False)
    retried_as = {}
    for trial in trials:
        history = trial.system_attrs.get(RETRY_HISTORY, [])
        if history:
            retried_as[history[-1]] = trial.number
    given_up = {int(number): given_up_reason(deaths, cap)
                for number, deaths in study.user_attrs.get(S_GIVEN_UP, {}).items()}
    return [trial_row(space, trial, retried_as, given_up.get(trial.number, "")) for trial in trials]


def trials_in(study: optuna.Study, *states: TrialState) -> list[FrozenTrial]:
    """The study's trials in ``states``, filtered in the database. (``study.get_trials`` goes through
    Optuna's cache, which re-reads every unfinished trial: with a queued grid of hundreds, every call.)"""
    return _rdb(study).get_all_trials(study._study_id, deepcopy=False, states=states)


def take_queued(study: optuna.Study, candidates: int = 16) -> optuna.Trial | None:
    """The oldest queued trial, taken by compare-and-set in the database (on PostgreSQL and MySQL
    no lock is needed: of workers racing for one trial, exactly one gets it); None when nothing is queued.

    What ``Study.ask`` does first, without its read of every unfinished trial (O(queued) per ask,
    under the study's lock: what made 16 workers wait on each other).
    """
    import sqlalchemy
    from optuna.storages._rdb import models

    table = models.TrialModel.__table__
    storage = _rdb(study)
    while True:
        query = (sqlalchemy.select(table.c.trial_id)
                 .where(table.c.study_id == study._study_id, table.c.state == TrialState.WAITING)
                 .order_by(table.c.trial_id).limit(candidates))
        with storage.engine.connect() as connection:
            queued = [row[0] for row in connection.execute(query)]
        if not queued:
            return None
        for trial_id in queued:
            try:
                if storage.set_trial_state_values(trial_id, state=TrialState.RUNNING):
                    return new_trial(study, trial_id)
            except UpdateFinishedTrialError:
                pass  # finished meanwhile (a retry's original, failed by a stale check)
        # every candidate was taken by other workers between the query and the compare-and-set


def new_trial(study: optuna.Study, trial_id: int | None = None) -> optuna.Trial:
    """The ``optuna.Trial`` for ``trial_id`` (taken from the queue), or for a new trial, as ``Study.ask`` makes it."""
    study._thread_local.cached_all_trials = None  # as ask does: the sampler sees the study as it is now
    if trial_id is None:
        trial_id = study._storage.create_new_trial(study._study_id)
    return optuna.Trial(study, trial_id)


def study_counts(study: optuna.Study) -> dict[str, int]:
    """Trials by state, counted in the database (one query, however many trials the study has)."""
    import sqlalchemy
    from optuna.storages._rdb import models

    table = models.TrialModel.__table__
    query = (sqlalchemy.select(table.c.state, sqlalchemy.func.count()).where(table.c.study_id == study._study_id)
             .group_by(table.c.state))
    counts = dict.fromkeys(STATES, 0)
    with _rdb(study).engine.connect() as connection:
        for state, n in connection.execute(query):  # the enum, or its name where the driver gives text
            counts[STATE_NAMES[TrialState[getattr(state, "name", state)]]] = n
    return counts


def _rdb(study: optuna.Study) -> optuna.storages.RDBStorage:
    storage = study._storage
    return getattr(storage, "_backend", storage)  # under Optuna's cache wrapper, if any


@contextmanager
def quiet_optuna() -> Iterator[None]:
    """Our own lines replace Optuna's (study created, trial finished); a failed trial would repeat
    its traceback, which the trial's line and its MLflow run already explain."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(verbosity)


class OptunaBackend(SweepBackend):
    """Trials in this process, one at a time, coordinated with every other worker through the study's database."""

    name = "optuna"

    def __init__(self, config: SweepConfig) -> None:
        super().__init__(config)
        self.settings = config.base.sweep.optuna
        self.retry = RetryStaleTrial(self.settings.max_interrupted_retries)
        self.grid = config.sampler_name == "grid-fraction"
        self.storage: optuna.storages.RDBStorage | None = None
        self.study: optuna.Study | None = None
        self.n_trials = 0
        self.grid_points = 0

    def coordination(self) -> AbstractContextManager[None]:
        return database_lock(self.config.storage, f"crackops-study:{self.config.study_name}")

    def open(self) -> StudyPlan:
        config = self.config
        self.storage = make_storage(config.storage, self.retry, self.settings.heartbeat_interval,
                                    self.settings.grace_period)
        with self.coordination(), quiet_optuna():
            self.study, created = open_study(config, self.storage, make_pruner(config.pruner_name))
            grid_points = enqueue_grid(self.study, config.space, config.seed) if self.grid else None
            recovered = recover_trials(self.study, self.storage, self.retry, self.settings.grace_period)
        self.n_trials = config.n_trials or grid_points or DEFAULT_N_TRIALS
        self.grid_points = grid_points or 0
        attrs = self.study.user_attrs
        return StudyPlan(self.n_trials, masked_url(config.storage), grid_points, attrs.get(S_GRID_SIZE),
                         attrs.get(S_GRID_SEED), None if created else study_counts(self.study), recovered)

    def close(self) -> None:
        if self.storage is not None:
            self.storage.engine.dispose()  # a process that sweeps again (a notebook, the test workers) keeps no connections

    def recorded_parent(self) -> str | None:
        return self.study.user_attrs.get(S_PARENT)

    def record_parent(self, run_id: str) -> None:
        if self.study.user_attrs.get(S_PARENT) != run_id:
            self.study.set_user_attr(S_PARENT, run_id)

    def rows(self) -> list[TrialRow]:
        return all_rows(self.study, self.config.space, self.retry.max_retry)

    def _takes_queued_without_lock(self) -> bool:
        """Whether a queued trial can be taken without the study's lock.

        * The database's compare-and-set is atomic: PostgreSQL and MySQL lock the row
          (``SELECT ... FOR UPDATE``); SQLite ignores that, so two processes could both take one
          trial, and on SQLite (one host, a few workers) the file lock serialises taking as well.
        * Taking any queued trial keeps the study within ``n_trials`` whatever others do: a grid's
          queue holds its drawn points and their retries, so never more than ``n_trials`` finish.
        """
        return sqlite_file(self.config.storage) is None and self.grid and self.n_trials >= self.grid_points

    def _next(self, failures: int) -> tuple[optuna.Trial | None, str | None]:
        """Under the study's lock: a trial to run, or None and why to stop (None: wait for the running ones)."""
        counts = study_counts(self.study)
        finished = counts[COMPLETE] + counts[PRUNED]
        if finished >= self.n_trials:
            return None, f"{self.n_trials} trials finished"
        if not self.grid and failures >= self.n_trials:
            return None, f"{failures} trials failed in this run; check the space and the fail reasons"
        if finished + counts[RUNNING] < self.n_trials and (counts[WAITING] or not self.grid):
            trial = take_queued(self.study)  # the oldest queued trial first (a retry), else a new sample
            if trial is not None or not self.grid:
                return trial or new_trial(self.study), None
        if counts[RUNNING]:
            return None, None
        given_up = sorted(map(int, self.study.user_attrs.get(S_GIVEN_UP, {})))
        return None, "every drawn grid point has run" + (
            f" or was given up (trial(s) {', '.join(map(str, given_up))})" if given_up else "")

    def run(self, parent_id: str | None, report: Callable[[TrialRow], None]) -> RunOutcome:
        study, storage, space = self.study, self.storage, self.config.space
        if parent_id is not None:
            def close_runs(study: optuna.Study, trial: FrozenTrial | None = None) -> None:
                # Given-up trials first, each with its own reason: the rest are retried.
                for number, deaths in study.user_attrs.get(S_GIVEN_UP, {}).items():
                    close_orphan_children(parent_id, f"interrupted: the worker stopped; "
                                          f"{given_up_reason(deaths, self.retry.max_retry)}", lambda: {int(number)})
                close_orphan_children(parent_id, "interrupted: the worker stopped; the trial is retried",
                                      lambda: {t.number for t in trials_in(study, TrialState.FAIL)})

            close_runs(study)  # trials recovered at start-up
            self.retry.on_retry = close_runs  # trials found dead later
        objective, failures, waiting, ran = _Objective(self.config), 0, False, 0
        # A worker waiting for others' trials looks again each second (a cheap query): it takes a
        # dead trial's retry, or leaves, within about a second. Dead trials are looked for once a
        # heartbeat interval: a trial is only found dead after grace_period anyway.
        poll, recovered_at = 1.0, time.monotonic()
        # What is alive now (modules, the study) lives as long as the worker: frozen out of the
        # collections, each trial's gc.collect() scans only what trials made (ms, not a quarter second).
        gc.freeze()
        try:
            with quiet_optuna():
                while True:
                    if time.monotonic() - recovered_at >= self.settings.heartbeat_interval:
                        with self.coordination():
                            recover_trials(study, storage, self.retry, self.settings.grace_period)
                        recovered_at = time.monotonic()
                    trial, stop = (take_queued(study) if self._takes_queued_without_lock() else None), None
                    if trial is None:
                        with self.coordination():
                            trial, stop = self._next(failures)
                    if trial is None and stop is not None:
                        print(f"{'worker done' if ran else 'nothing to run'}: {stop}", flush=True)
                        return RunOutcome()
                    if trial is None:
                        if not waiting:
                            waiting = True
                            running = study_counts(study)[RUNNING]
                            print(f"waiting for {running} trial(s) running on other workers (one that dies is "
                                  f"run again here)", flush=True)
                        time.sleep(poll)
                        continue
                    waiting = False
                    frozen = run_one(study, trial, objective)
                    ran += 1
                    if frozen.state == TrialState.FAIL:
                        failures += 1
                    report(trial_row(space, frozen))
        finally:
            self.retry.on_retry = None
            gc.unfreeze()  # what this sweep leaves behind can be collected when it ends
