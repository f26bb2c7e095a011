"""The sweep driver: everything a sweep does around the backend that runs its trials.

``crackops sweep`` -> :func:`run_sweep`: check the data, open the study through the backend and
announce it, open (or join) the study's one MLflow parent run, let the backend run trials (a line
per trial as it ends), then, from the backend's trial rows alone: the trial counts, the best
trial, ``trials.csv``, the best-params files, the plots, the parent run's summary and the printed
table. A backend implements :class:`SweepBackend` and is one line in ``search/backends.py``;
nothing here knows its classes.

Several workers may run the same study at once (Optuna on PostgreSQL). The backend's
``coordination()`` lock then makes the study's parent run exactly one, and makes the decision
"the sweep is over" exactly once: the last worker to finish ends the parent run FINISHED; one
that finishes while others still train leaves it RUNNING for them.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

from pipeline.data import load_manifest
from search.config import SweepConfig, SweepError
from search.mlflow_sweep import close_parent, log_summary, open_parent, sweep_params
from search.trial import TAG_BACKEND, TAG_STUDY, winning_values
from search.optuna_plots import save_plots
from search.results import (
    BestTrial, SweepSummary, TrialRow, format_summary, format_table, params_text, retrain_command, trial_line,
    write_best, write_trials_csv,
)
from search.states import COMPLETE, FINISHED_STATES, RUNNING, WAITING, count_states


@dataclass
class StudyPlan:
    """What ``open`` found or made: how many trials, the grid, where the study lives."""

    n_trials: int
    where: str  # the study's storage as printed and logged (password hidden)
    grid_points: int | None = None  # drawn grid points (grid-fraction), else None
    grid_size: int | None = None
    grid_seed: int | None = None
    resumed: dict[str, int] | None = None  # trial counts of a study that existed, else None
    recovered: list[int] = field(default_factory=list)  # interrupted trials queued again
    params: dict[str, Any] = field(default_factory=dict)  # the backend's own parent-run params


@dataclass
class RunOutcome:
    """How ``run`` ended when it returned (it raises for Ctrl-C in its own process)."""

    interrupted: bool = False  # the backend caught Ctrl-C and kept the study resumable
    errors: list[TrialRow] = field(default_factory=list)  # trials stopped by an error not their own


class SweepBackend(ABC):
    """A way to run a study's trials. The driver calls, in order: ``open``, ``recorded_parent`` and
    ``record_parent`` (inside ``coordination``), ``run``, ``rows``."""

    name: ClassVar[str]

    def __init__(self, config: SweepConfig) -> None:
        self.config = config

    @abstractmethod
    def open(self) -> StudyPlan:
        """Create the study or connect to it (refusing one made over another space)."""

    def coordination(self) -> AbstractContextManager[None]:
        """A lock every worker of this study respects; none where one process runs the study."""
        return nullcontext()

    def close(self) -> None:
        """Let go of what ``open`` holds (database connections), however the sweep ended."""

    @abstractmethod
    def recorded_parent(self) -> str | None:
        """The MLflow parent run id the study recorded, if any."""

    @abstractmethod
    def record_parent(self, run_id: str) -> None:
        """Record the study's parent run id, so every later worker and resume joins it."""

    @abstractmethod
    def run(self, parent_id: str | None, report: Callable[[TrialRow], None]) -> RunOutcome:
        """Run trials until the study has what it needs; ``report`` each trial this worker ends."""

    @abstractmethod
    def rows(self) -> list[TrialRow]:
        """Every trial of the study (all workers'), in the vocabulary of ``search.states``."""


def study_over(rows: list[TrialRow], n_trials: int) -> bool:
    """Nothing runs, and the budget is reached or nothing is left to run."""
    states = [row.state for row in rows]
    if RUNNING in states:
        return False
    return sum(state in FINISHED_STATES for state in states) >= n_trials or WAITING not in states


def scored_rows(rows: list[TrialRow]) -> list[TrialRow]:
    """The complete trials with a finite score."""
    return [row for row in rows if row.state == COMPLETE and row.value is not None and math.isfinite(row.value)]


def all_tied(rows: list[TrialRow]) -> bool:
    """Two or more scored trials, all with the same score: nothing tells them apart."""
    scored = scored_rows(rows)
    return len(scored) > 1 and len({row.value for row in scored}) == 1


def best_trial(config: SweepConfig, rows: list[TrialRow]) -> BestTrial | None:
    """The complete trial with the best finite score (earliest where the best is shared), as the keys
    it decided; None when no trial scored, or when every scored trial has the same score."""
    space = config.space
    scored = scored_rows(rows)
    if not scored or all_tied(rows):
        return None
    sign = 1.0 if space.direction == "maximize" else -1.0
    best = max(sorted(scored, key=lambda row: row.number), key=lambda row: sign * row.value)
    return BestTrial(best.number, float(best.value), winning_values(space, best.params))


def check_inputs(config: SweepConfig) -> None:
    """Errors every trial would hit, before a study or a run exists: no data, a grid of a continuous space."""
    load_manifest(Path(config.base.data.prepared_dir))
    if config.sampler_name == "grid-fraction":
        config.space.grid()


def announce(config: SweepConfig, backend: str, plan: StudyPlan) -> None:
    space = config.space
    grid_text = (f" ({plan.grid_points} of {plan.grid_size} grid points, seed {plan.grid_seed})"
                 if plan.grid_points is not None else "")
    print(f"sweep {config.study_name!r} over space {space.name!r} ({backend}): sampler {config.sampler_name}"
          f"{grid_text}, pruner {config.pruner_name}, {plan.n_trials} trials of {space.epochs} epochs, "
          f"best by {space.metric}; storage {plan.where}", flush=True)
    if plan.resumed is not None:
        counts = plan.resumed
        print(f"joining the study: {counts['complete']} complete, {counts['pruned']} pruned, {counts['failed']} failed, "
              f"{counts['running']} running" + (f"; requeued interrupted trial(s) {', '.join(map(str, plan.recovered))}"
                                                if plan.recovered else ""), flush=True)


def conclude(config: SweepConfig, rows: list[TrialRow], parent_id: str | None, plots: bool = True) -> SweepSummary:
    """From the rows alone: counts, best trial, ``trials.csv``, best-params files, plots (when
    ``plots``: the study is over), the parent's summary."""
    space = config.space
    rows = sorted(rows, key=lambda row: row.number)
    counts = count_states([row.state for row in rows])
    best = best_trial(config, rows)
    summary = SweepSummary(config.study_name, space.metric, counts, rows, best, parent_id)
    if all_tied(rows):
        scored = scored_rows(rows)
        summary.tied, summary.tied_value = len(scored), float(scored[0].value)
    if best is not None:
        summary.files = write_best(config.out_dir, best, space.metric)
        summary.command = retrain_command(best.values)
    trials_csv = write_trials_csv(rows, config.out_dir)
    drawn: list[Path] = []
    if plots:
        drawn, skipped = save_plots(space, rows, config.out_dir)
        for name, why in skipped.items():
            print(f"plot {name} skipped: {why}", flush=True)
    log_summary(parent_id, space.metric, best, counts, summary.files + ([trials_csv] if trials_csv else []), drawn,
                given_up=[row.number for row in rows if row.given_up])
    return summary


def run_sweep(backend: SweepBackend) -> SweepSummary:
    """Run (or resume, or join) the sweep ``backend.config`` describes; prints progress, returns the summary."""
    try:
        return _drive(backend)
    finally:
        backend.close()


def _drive(backend: SweepBackend) -> SweepSummary:
    config = backend.config
    check_inputs(config)
    plan = backend.open()
    announce(config, backend.name, plan)
    params = {**sweep_params(config, backend.name, plan.n_trials, plan.grid_points, plan.where), **plan.params}
    with backend.coordination():
        parent_id = open_parent(config.base.mlflow, backend.recorded_parent(), f"sweep-{config.study_name}",
                                params, {TAG_STUDY: config.study_name, TAG_BACKEND: backend.name})
        if parent_id is not None:
            backend.record_parent(parent_id)
    holding = parent_id  # this process's hold on the parent run, until it hands it on
    try:
        outcome = backend.run(parent_id, lambda row: print(trial_line(row, config.space.metric), flush=True))
        # Under the lock: workers finishing together would write the parent's summary at once
        # (MLflow's tag inserts collide), and exactly the last one must see every trial ended.
        with backend.coordination():
            rows = backend.rows()
            over = study_over(rows, plan.n_trials) and not outcome.interrupted
            if not over:
                # Trials still run elsewhere: their worker, the last to finish, ends the run for all.
                close_parent(parent_id, "KILLED" if outcome.interrupted else "RUNNING")
                holding = None
            summary = conclude(config, rows, parent_id, plots=over)
    except BaseException as error:
        close_parent(holding, "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
        raise
    if over:
        close_parent(parent_id, "FINISHED")
    print(format_table(summary.rows, config.space.metric), flush=True)
    print(format_summary(summary, config.space.epochs, config.overrides), flush=True)
    if outcome.interrupted:
        print("the sweep was interrupted: rerun the same command to resume it", flush=True)
        raise KeyboardInterrupt
    if not over:
        print("other workers are still running trials of this study: the last one to finish draws the plots "
              "and ends the sweep run", flush=True)
    elif summary.counts[WAITING]:
        print(f"{summary.counts[WAITING]} queued trial(s) not run: the study has its {plan.n_trials} finished trials "
              "(--n-trials); rerun the same command with a larger --n-trials, or without it, to run them", flush=True)
    problems = []
    if outcome.errors:
        numbers = ", ".join(str(row.number) for row in outcome.errors)
        problems.append(f"trial(s) {numbers} errored ({outcome.errors[0].note}); fix the cause and rerun the same "
                        "command: errored trials continue from their last checkpoint")
    # A point the study will not run again though it never finished: the sweep is short of what it drew.
    problems += [f"trial {row.number} ({params_text(row.params)}) {row.given_up}"
                 for row in summary.rows if row.given_up]
    if problems:
        raise SweepError("\n".join(problems))
    return summary
