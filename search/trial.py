"""One sweep trial, backend-independent: params, training through the normal loop, reporting, failures.

Optuna (``search.optuna_backend``) and Ray Tune call :func:`run_trial`; each backend brings a
:class:`Reporter` that forwards every epoch's score to its scheduler and answers with a reason to
stop, which sets the loop's ``TrainerControl`` (Ray's own ``tune.report`` may instead end the
trial by raising ``SystemExit``). Training always goes through ``train_with_tracking`` ->
``train_from_params``: there is one training loop for everything.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Sequence

from pipeline.errors import CrackopsError, ParamsError
from pipeline.params import MlflowParams, Params
from pipeline.training.callbacks import Callback, EpochResult, FitResult, TrainerControl
from pipeline.training.loop import NonFiniteLossError
from search.space import SearchSpace
from search.states import COMPLETE, FAILED, PRUNED, RUNNING

if TYPE_CHECKING:
    from pipeline.tracking.mlflow_callback import MlflowCallback

# MLflow tags on every trial's child run; names shared by all backends.
TAG_STATE = "trial.state"
TAG_NUMBER = "trial.number"
TAG_STUDY = "sweep.study"
TAG_BACKEND = "sweep.backend"
TAG_FAIL_REASON = "trial.fail_reason"
MAX_REASON = 500


class TrialFailure(CrackopsError):
    """A trial failed for a reason of its own (NaN loss, out of memory, invalid combination).

    The sweep records it and goes on; ``reason`` is one line, ``run_id`` its MLflow child run.
    """

    def __init__(self, reason: str, run_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.run_id = run_id


def _out_of_memory_errors() -> tuple[type[BaseException], ...]:
    import torch

    errors: list[type[BaseException]] = [MemoryError]
    for owner in (torch, getattr(torch, "cuda", None)):
        error = getattr(owner, "OutOfMemoryError", None)
        if isinstance(error, type):
            errors.append(error)
    return tuple(errors)


def failure_reason(error: BaseException) -> str | None:
    """The one-line reason when ``error`` is the trial's own fault, else None (the sweep stops).

    Anything else (missing data, a bug, Ctrl-C) would fail every trial the same way, so it stops the
    sweep and the interrupted trial is retried on resume.
    """
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):
        lines = lines[1:]  # "invalid parameters in search space 'x':" adds nothing to the reason
    first = " ".join(lines) or type(error).__name__
    if isinstance(error, NonFiniteLossError):
        return f"non-finite loss: {first}"[:MAX_REASON]
    if isinstance(error, ParamsError):
        return f"invalid parameters: {first}"[:MAX_REASON]
    if isinstance(error, _out_of_memory_errors()) or (
            isinstance(error, RuntimeError) and "out of memory" in str(error).lower()):
        _release_accelerator_memory()
        return f"out of memory: {first}"[:MAX_REASON]
    return None


def _release_accelerator_memory() -> None:
    # The next trial must not inherit the cache of the one that ran out.
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def error_line(error: BaseException) -> str:
    """``Type: message`` on one line, or just the type when there is no message (Ctrl-C)."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}"[:MAX_REASON] if text else type(error).__name__


class Reporter(Protocol):
    """A backend's scheduler hook: told each epoch's score; returns why to stop the trial (pruned), else None."""

    def report(self, step: int, value: float, metrics: dict[str, float]) -> str | None: ...


class ReportingCallback(Callback):
    """Forward ``metric`` after every epoch to a :class:`Reporter`; ``step`` = epochs run (1-based),
    the same step as the trial's MLflow metric history. A reason to stop prunes the trial."""

    def __init__(self, reporter: Reporter, metric: str) -> None:
        self.reporter = reporter
        self.metric = metric

    def on_epoch_end(self, result: EpochResult, control: TrainerControl) -> None:
        metrics = result.metrics()
        reason = self.reporter.report(result.epoch + 1, epoch_metric(metrics, self.metric), metrics)
        if reason:
            control.stop(reason, pruned=True)


class EpochLines(Callback):
    """One line per epoch as it ends (``trial-3 epoch 2/4: val_f1 0.4121 ...``): a sweep's log shows
    its trials progressing, not minutes of silence until each trial ends."""

    def __init__(self, name: str, metric: str) -> None:
        self.name = name
        self.metric = metric
        self.total = 0

    def on_train_start(self, total_epochs: int) -> None:
        self.total = total_epochs

    def on_epoch_end(self, result: EpochResult, control: TrainerControl) -> None:
        metrics = result.metrics()
        shown = {key: metrics[key] for key in dict.fromkeys([self.metric, "val_f1", "train_loss"]) if key in metrics}
        values = " ".join(f"{key} {value:.4f}" for key, value in shown.items())
        print(f"{self.name} epoch {result.epoch + 1}/{self.total}: {values} [{result.seconds:.0f}s]", flush=True)


@dataclass
class TrialResult:
    """A finished trial: its score, the fit, the exact params it trained with and its MLflow run."""

    value: float
    fit: FitResult
    params: Params
    run_id: str | None

    @property
    def pruned(self) -> bool:
        """Stopped by the backend's pruner (its reason in ``fit.control.reason``)."""
        return self.fit.control.pruned

    @property
    def epochs_run(self) -> int:
        return len(self.fit.history)


def epoch_metric(metrics: dict[str, float], metric: str) -> float:
    if metric not in metrics:
        raise CrackopsError(f"sweep metric {metric!r} (the space's metric or prune_metric) is not reported by "
                            f"training; choose one of {', '.join(sorted(metrics))}")
    return float(metrics[metric])


def best_value(fit: FitResult, metric: str, direction: str = "maximize") -> float:
    """The trial's score: the best per-epoch value of ``metric`` (``val_f1``: the best epoch's F1)."""
    values = [epoch_metric(item.metrics(), metric) for item in fit.history]
    finite = [value for value in values if math.isfinite(value)]
    if not finite:
        return math.nan
    return max(finite) if direction == "maximize" else min(finite)


def trial_params(base_tree: dict[str, Any], space: SearchSpace, chosen: dict[str, Any]) -> Params:
    """Base params + the space's fixed values + this trial's choices + ``train.epochs`` of the space."""
    return space.trial_params(base_tree, chosen)


def winning_values(space: SearchSpace, chosen: dict[str, Any]) -> dict[str, Any]:
    """The dotted keys a sweep decides: the space's fixed values and a trial's choices (presets expanded)."""
    return space.resolve(chosen)


def param_value_text(value: Any) -> Any:
    """MLflow stores text: lists as JSON (``["q", "v"]``), like the training runs' params."""
    return json.dumps(value) if isinstance(value, list) else value


def run_trial(
    base_tree: dict[str, Any],
    space: SearchSpace,
    chosen: dict[str, Any],
    callbacks: Sequence[Callback] = (),
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
    pruned_errors: tuple[type[BaseException], ...] = (),
    tracker: "MlflowCallback | None" = None,
    work: Path | None = None,
) -> TrialResult:
    """Train one configuration as a nested MLflow run under the active (sweep) run.

    A trial its reporter pruned returns with ``pruned`` set and its run tagged pruned (tracked
    training ends it KILLED). Raises :class:`TrialFailure` for the trial's own failures (with the
    child run tagged failed), re-raises ``pruned_errors`` (a backend's own stop exception) after
    tagging the run pruned, and re-raises anything else after tagging the run failed. ``tracker``
    (the MLflow callback) lets the caller's callbacks read the run id; ``work`` is the resume folder;
    the best epoch is chosen by the space's metric.
    """
    from pipeline.tracking.mlflow_callback import MlflowCallback
    from pipeline.tracking.tracked_training import train_with_tracking
    from pipeline.training.run import Selection

    tags = {**(tags or {}), TAG_STATE: RUNNING}
    try:
        params = trial_params(base_tree, space, chosen)
    except ParamsError as error:
        reason = failure_reason(error) or str(error)
        run_id = record_failed_run(_mlflow_params(base_tree), winning_values(space, chosen), reason, run_name, tags)
        raise TrialFailure(reason, run_id) from error
    tracker = tracker or MlflowCallback()
    try:
        lines = EpochLines(run_name or "trial", space.metric)
        outcome, run_id = train_with_tracking(params, None, nested=True, callbacks=[lines, *callbacks],
                                              progress=False, run_name=run_name, tags=tags, work=work,
                                              selection=Selection.for_sweep_metric(space.metric, space.direction),
                                              tracker=tracker)
    except pruned_errors:
        tag_run(tracker.run_id, PRUNED)
        raise
    except BaseException as error:
        reason = failure_reason(error) if isinstance(error, Exception) else None
        tag_run(tracker.run_id, FAILED, reason or f"interrupted: {error_line(error)}")
        if reason is None:
            raise
        raise TrialFailure(reason, tracker.run_id) from error
    tag_run(run_id, PRUNED if outcome.fit.control.pruned else COMPLETE)
    return TrialResult(best_value(outcome.fit, space.metric, space.direction), outcome.fit, params, run_id)


def _mlflow_params(base_tree: dict[str, Any]) -> MlflowParams:
    return MlflowParams.model_validate(base_tree.get("mlflow") or {})


def tag_run(run_id: str | None, state: str, reason: str | None = None) -> None:
    """Set ``trial.state`` (and the failure reason) on a trial's run; its status is left alone."""
    if run_id is None:
        return
    import mlflow

    client = mlflow.MlflowClient()
    client.set_tag(run_id, TAG_STATE, state)
    if reason:
        client.set_tag(run_id, TAG_FAIL_REASON, reason[:MAX_REASON])


def record_failed_run(mlflow_params: MlflowParams, values: dict[str, Any], reason: str,
                      run_name: str | None, tags: dict[str, str]) -> str | None:
    """A FAILED child run for a trial that failed before training could start (invalid params)."""
    if not mlflow_params.enabled:
        return None
    import mlflow

    from pipeline.tracking.setup import configure

    configure(mlflow_params)
    run = mlflow.start_run(run_name=run_name, nested=True,
                           tags={**tags, TAG_STATE: FAILED, TAG_FAIL_REASON: reason[:MAX_REASON]})
    try:
        mlflow.log_params({key: param_value_text(value) for key, value in values.items()})
    finally:
        mlflow.end_run("FAILED")
    return run.info.run_id
