"""The sweep driver on its own: a backend that is a few lines (as a new one would start) gets the
whole sweep around it, and the driver hands the parent run on while other workers still train."""
from __future__ import annotations

import csv
import io
import contextlib
from pathlib import Path
from typing import Callable

import mlflow
import pytest

from pipeline.params import load_params
from search import backends
from search.config import SweepConfig
from search.driver import RunOutcome, StudyPlan, SweepBackend, study_over
from search.results import BEST_PARAMS_FILE, TRIALS_FILE, TrialRow
from search.space import load_space
from search.states import COMPLETE, FAILED, PRUNED, RUNNING, WAITING

SPACE = "epochs: 1\nsampler: random\nparameters:\n  loss.lambda: {type: categorical, choices: [0.3, 0.6, 0.9]}\n"


class ListBackend(SweepBackend):
    """Three fixed trials, scored by their lambda; ``still_running`` adds one trial of another worker."""

    name = "list"
    still_running = False

    def __init__(self, config: SweepConfig) -> None:
        super().__init__(config)
        self.parent: str | None = None
        self.done: list[TrialRow] = []

    def open(self) -> StudyPlan:
        return StudyPlan(n_trials=4 if self.still_running else 3, where="memory")

    def recorded_parent(self) -> str | None:
        return self.parent

    def record_parent(self, run_id: str) -> None:
        self.parent = run_id

    def run(self, parent_id: str | None, report: Callable[[TrialRow], None]) -> RunOutcome:
        for number, (value, state) in enumerate([(0.3, COMPLETE), (0.9, COMPLETE), (None, FAILED)]):
            row = TrialRow(number, state, value, {"loss.lambda": [0.3, 0.6, 0.9][number]}, 1, 0.1,
                           "non-finite loss" if state == FAILED else "")
            self.done.append(row)
            report(row)
        return RunOutcome()

    def rows(self) -> list[TrialRow]:
        other = [TrialRow(3, RUNNING, None, {"loss.lambda": 0.6})] if self.still_running else []
        return self.done + other


@pytest.fixture
def list_backend(tmp_path: Path, tiny_prepared: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setitem(backends.BACKENDS, "list", f"{__name__}:ListBackend")
    (tmp_path / "space.yaml").write_text(SPACE)
    base = load_params("missing.yaml", [f"data.prepared_dir={tiny_prepared}",
                                        f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db"])
    yield SweepConfig(load_space(str(tmp_path / "space.yaml")), base)
    mlflow.set_tracking_uri(None)


def _run(config: SweepConfig) -> tuple[object, str]:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        summary = backends.run_sweep("list", config)
    return summary, printed.getvalue()


def test_a_registered_backend_gets_the_whole_sweep_from_the_driver(list_backend: SweepConfig, tmp_path: Path) -> None:
    summary, printed = _run(list_backend)
    assert summary.counts == {COMPLETE: 2, PRUNED: 0, FAILED: 1, RUNNING: 0, WAITING: 0}
    assert summary.best.number == 1 and summary.best.values == {"loss.lambda": 0.6}
    assert "trial 2 failed val_f1 -" in printed and "(non-finite loss)" in printed
    folder = tmp_path / "sweeps/space"
    rows = list(csv.DictReader((folder / TRIALS_FILE).open()))
    assert [row["state"] for row in rows] == [COMPLETE, COMPLETE, FAILED]
    assert (folder / BEST_PARAMS_FILE).is_file() and (folder / "plots/optimization_history.png").is_file()
    parent = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(summary.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.params["sweep.backend"] == "list"
    assert parent.data.metrics["n_complete"] == 2 and parent.data.metrics["best_val_f1"] == 0.9


def test_a_worker_leaving_before_the_others_hands_the_parent_run_on(list_backend: SweepConfig, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ListBackend, "still_running", True)
    summary, printed = _run(list_backend)
    parent = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(summary.parent_run_id)
    assert parent.info.status == "RUNNING"  # the worker of trial 3 ends it
    assert "the last one to finish draws the plots and ends the sweep run" in printed
    assert not (tmp_path / "sweeps/space/plots").exists()
    assert mlflow.active_run() is None  # nor does this process end it on exit


def test_unknown_backend_is_a_clear_error(list_backend: SweepConfig) -> None:
    with pytest.raises(Exception, match="unknown sweep backend 'nope'; choose one of optuna, ray"):
        backends.run_sweep("nope", list_backend)


@pytest.mark.parametrize("states, n_trials, over", [
    ([COMPLETE, COMPLETE], 2, True),
    ([COMPLETE, RUNNING], 2, False),  # another worker still trains
    ([COMPLETE, WAITING], 2, False),  # a queued grid point is left
    ([COMPLETE, WAITING], 1, True),  # --n-trials reached: the rest of the grid waits for a rerun
    ([COMPLETE, FAILED], 3, True),  # nothing left to run
])
def test_study_over(states: list[str], n_trials: int, over: bool) -> None:
    rows = [TrialRow(number, state, None, {}) for number, state in enumerate(states)]
    assert study_over(rows, n_trials) is over


def test_plots_are_drawn_once_per_state_of_the_study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers finishing a study together each conclude it under the study's lock: the first draws
    the plots, the others find them drawn for the same trials (seconds each, not minutes for 16)."""
    from search import optuna_plots

    (tmp_path / "space.yaml").write_text(SPACE)
    space = load_space(str(tmp_path / "space.yaml"))
    rows = [TrialRow(number, COMPLETE, value, {"loss.lambda": lam})
            for number, (value, lam) in enumerate([(0.3, 0.3), (0.9, 0.6)])]
    written, skipped = optuna_plots.save_plots(space, rows, tmp_path)
    assert {path.name for path in written} == {"optimization_history.png", "param_importances.png",
                                               "parallel_coordinate.png"}
    calls: list[str] = []
    real = optuna_plots._plotters

    def counting() -> dict[str, Callable]:
        calls.append("drawn")
        return real()

    monkeypatch.setattr(optuna_plots, "_plotters", counting)
    assert optuna_plots.save_plots(space, rows, tmp_path) == (written, skipped)
    assert calls == []  # the same trials: kept
    rows.append(TrialRow(2, COMPLETE, 0.5, {"loss.lambda": 0.9}))
    assert optuna_plots.save_plots(space, rows, tmp_path)[0] == written
    assert calls == ["drawn"]  # a trial more: drawn again
    (tmp_path / "plots/param_importances.png").unlink()
    optuna_plots.save_plots(space, rows, tmp_path)
    assert calls == ["drawn", "drawn"] and (tmp_path / "plots/param_importances.png").is_file()


def test_a_sweep_whose_trials_all_tie_names_no_best(list_backend: SweepConfig, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def tied(self: ListBackend, parent_id: str | None, report: Callable[[TrialRow], None]) -> RunOutcome:
        for number, lam in enumerate([0.3, 0.6, 0.9]):
            self.done.append(TrialRow(number, COMPLETE, 0.0, {"loss.lambda": lam}, 1, 0.1))
            report(self.done[-1])
        return RunOutcome()

    monkeypatch.setattr(ListBackend, "run", tied)
    summary, printed = _run(list_backend)
    assert summary.best is None and summary.tied == 3
    assert "all 3 complete trials scored val_f1 0.0000: no best to name or retrain" in printed
    assert "plot param_importances skipped: every complete trial scored 0.0000: nothing to rank" in printed
    assert not (tmp_path / "sweeps/space" / BEST_PARAMS_FILE).exists()
