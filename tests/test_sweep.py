"""Sweeps (Optuna backend): grid-fraction draws, trials through the real loop, pruning, failures,
MLflow parent/child runs, the winner's files, and resuming a sweep killed with SIGKILL."""
from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import mlflow
import optuna
import pytest
from optuna.trial import TrialState

from crackops import cli
from pipeline.params import Params, apply_overrides, load_params, read_params_file, validate
from pipeline.training.callbacks import FitResult
from search import optuna_backend
from search.backends import run_sweep
from search.config import SweepConfig
from search.trial import TrialResult, failure_reason
from search.optuna_backend import enqueue_grid, make_storage
from search.samplers import make_sampler
from search.results import BEST_OVERRIDES_FILE, BEST_PARAMS_FILE, format_value
from search.space import load_space

DEFAULTS = str(Path(__file__).with_name("defaults.yaml"))  # an empty params file: the built-in defaults

# A 4-point grid of 1-epoch trials: one trains, one blows up (NaN loss), two are invalid
# combinations (lambda > 1 for lambda_bce_dice), so a real sweep costs about one training.
FAILING_SPACE = """
epochs: 1
sampler: grid-fraction
grid_fraction: 1.0
fixed: {loss.kind: lambda_bce_dice}
parameters:
  train.lr: {type: categorical, choices: [5.0e-4, 1.0e+30]}
  loss.lambda: {type: categorical, choices: [0.4, 1.5]}
"""


def _tiny_overrides(prepared: Path, *extra: str) -> list[str]:
    return ["data.img_size=64", f"data.prepared_dir={prepared}", "train.batch_size=4", "eval.n_overlays=0", *extra]


def run_optuna_sweep(config: SweepConfig):
    return run_sweep("optuna", config)


def _study(storage: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage)


def _point(params: dict[str, Any]) -> tuple:
    return tuple(sorted((key, tuple(v) if isinstance(v, list) else v) for key, v in params.items()))


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Run in a scratch folder: sweeps/, mlartifacts/ and the databases land there."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield tmp_path
    mlflow.set_tracking_uri(None)


# --- grid-fraction -------------------------------------------------------------------------------

@pytest.mark.parametrize("name, drawn, size", [("sac-config1", 29, 147), ("sac-config2", 4, 21), ("sac-config3", 8, 150)])
def test_grid_fraction_draws_the_stated_share(tmp_path: Path, name: str, drawn: int, size: int) -> None:
    space = load_space(name)
    assert len(space.grid()) == size
    study = optuna.create_study(storage=make_storage(f"sqlite:///{tmp_path}/s.db"), study_name=name)
    assert enqueue_grid(study, space, seed=0) == drawn
    assert enqueue_grid(study, space, seed=0) == drawn  # a resume does not enqueue twice
    waiting = study.get_trials(states=(TrialState.WAITING,))
    points = [space.decode(t.system_attrs["fixed_params"]) for t in waiting]
    assert len(points) == drawn and len({_point(p) for p in points}) == drawn
    assert {_point(p) for p in points} == {_point(p) for p in space.grid_sample(0)}
    # Each queued point is suggested as is (in range of its distribution, not resampled).
    study.optimize(lambda trial: float(len(space.suggest(trial))), n_trials=drawn)
    assert {_point(space.decode(t.params)) for t in study.trials} == {_point(p) for p in points}


def _stub_run_trial(base_tree, space, chosen, callbacks=(), run_name=None, tags=None, pruned_errors=(),
                    tracker=None, work=None):
    """Training replaced by a score of the params: tests the sweep machinery in milliseconds."""
    params = space.trial_params(base_tree, chosen)
    value = 1.0 - abs(chosen["loss.lambda"] - 0.7) - abs(chosen["train.lr"] - 9e-4) * 100 - chosen["train.batch_size"] / 100
    return TrialResult(value, FitResult(), params, None)


def test_sac_config3_sweep_runs_exactly_its_drawn_points(in_tmp: Path, tiny_params, monkeypatch, capsys) -> None:
    monkeypatch.setattr(optuna_backend, "run_trial", _stub_run_trial)
    space = load_space("sac-config3")
    storage = f"sqlite:///{in_tmp}/sweeps.db"
    capped = run_optuna_sweep(SweepConfig(space, tiny_params(), n_trials=5, storage=storage))
    assert capped.counts["complete"] == 5 and capped.counts["waiting"] == 3
    assert "3 queued trial(s) not run: the study has its 5 finished trials (--n-trials); rerun" in capsys.readouterr().out
    assert _study(storage, "sac-config3").metric_names == ["val_f1"]  # optuna-dashboard's name for the objective
    summary = run_optuna_sweep(SweepConfig(space, tiny_params(), storage=storage))  # resume: the rest only
    study = _study(storage, "sac-config3")
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert summary.counts["complete"] == 8 and len(study.trials) == 8
    assert {_point(t.user_attrs["params"]) for t in complete} == {_point(p) for p in space.grid_sample(0)}
    best_point = max(space.grid_sample(0), key=lambda p: _stub_run_trial({}, space, p).value)
    assert summary.best.values == {**space.fixed, **best_point}
    plots = {p.name for p in (in_tmp / "sweeps/sac-config3/plots").iterdir()}
    assert plots == {"optimization_history.png", "param_importances.png", "parallel_coordinate.png"}
    with pytest.raises(Exception, match="is a sweep over space 'sac-config3'"):
        run_optuna_sweep(SweepConfig(load_space("sac-config2"), tiny_params(), storage=storage, study="sac-config3"))


# --- a real sweep: failures, MLflow, best params ---------------------------------------------------

@pytest.fixture(scope="module")
def real_sweep(tiny_prepared: Path, tmp_path_factory) -> Iterator[tuple[Path, Any, Params]]:
    root = tmp_path_factory.mktemp("sweep")
    (root / "failing.yaml").write_text(FAILING_SPACE)
    base = load_params("missing.yaml", _tiny_overrides(tiny_prepared, f"mlflow.tracking_uri=sqlite:///{root}/mlflow.db"))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        config = SweepConfig(load_space(str(root / "failing.yaml")), base, storage=f"sqlite:///{root}/sweeps.db")
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            summary = run_optuna_sweep(config)
        yield root, summary, base, printed.getvalue()
    mlflow.set_tracking_uri(None)


def test_each_epoch_of_a_trial_is_a_line_as_it_ends(real_sweep) -> None:
    *_, printed = real_sweep
    lines = printed.splitlines()
    epoch_line = next(index for index, line in enumerate(lines) if re.match(r"trial-\d+ epoch 1/1: val_f1 \d\.\d{4}", line))
    trial_end = next(index for index, line in enumerate(lines) if re.match(r"trial \d+ complete", line))
    assert epoch_line < trial_end  # printed during the trial, before its closing line


def test_failing_trials_are_recorded_and_the_sweep_goes_on(real_sweep) -> None:
    root, summary, _, _ = real_sweep
    assert summary.counts["complete"] == 1 and summary.counts["failed"] == 3
    study = _study(f"sqlite:///{root}/sweeps.db", "failing")
    reasons = {(t.user_attrs["params"]["train.lr"], t.user_attrs["params"]["loss.lambda"]): t.user_attrs.get("fail_reason")
               for t in study.trials}
    assert reasons[5e-4, 0.4] is None
    assert reasons[1e30, 0.4].startswith("non-finite loss")
    assert reasons[5e-4, 1.5].startswith("invalid parameters") and "lambda" in reasons[5e-4, 1.5]
    assert summary.best.values == {"loss.kind": "lambda_bce_dice", "train.lr": 5e-4, "loss.lambda": 0.4}


def test_mlflow_parent_run_with_nested_trial_runs(real_sweep) -> None:
    root, summary, _, _ = real_sweep
    client = mlflow.MlflowClient(f"sqlite:///{root}/mlflow.db")
    parent = client.get_run(summary.parent_run_id)
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 4
    by_state = {}
    for child in children:
        tags = child.data.tags
        assert tags["sweep.study"] == "failing" and tags["trial.number"].isdigit()
        by_state.setdefault(tags["trial.state"], []).append(child)
    assert {state: len(runs) for state, runs in by_state.items()} == {"complete": 1, "failed": 3}
    assert all(run.info.status == "FAILED" and run.data.tags["trial.fail_reason"] for run in by_state["failed"])
    finished = by_state["complete"][0]
    assert finished.data.params["train.lr"] == "0.0005" and finished.data.params["loss.lambda"] == "0.4"
    assert "val/f1" in finished.data.metrics
    assert parent.info.status == "FINISHED"
    assert parent.data.params["sweep.space"] == "failing" and parent.data.params["sweep.sampler"] == "grid-fraction"
    assert parent.data.params["sweep.pruner"] == "none"
    assert parent.data.tags["best.train.lr"] == "0.0005" and parent.data.tags["best.loss.lambda"] == "0.4"
    assert parent.data.metrics["best_val_f1"] == pytest.approx(summary.best.value)
    assert parent.data.metrics["n_complete"] == 1 and parent.data.metrics["n_failed"] == 3
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {BEST_PARAMS_FILE, BEST_OVERRIDES_FILE, "plots"} <= artifacts
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    # One complete trial: importances cannot be computed and are left out, the rest are drawn.
    assert plots == {"plots/optimization_history.png", "plots/parallel_coordinate.png"}


def test_best_params_files_load_back(real_sweep, capsys) -> None:
    root, summary, _, _ = real_sweep
    folder = root / "sweeps/failing"
    tree = read_params_file(folder / BEST_PARAMS_FILE)
    assert tree == {"loss": {"kind": "lambda_bce_dice", "lambda": 0.4}, "train": {"lr": 0.0005}}
    assert validate(tree).train.lr == 5e-4
    lines = (folder / BEST_OVERRIDES_FILE).read_text().splitlines()
    assert all(line.startswith("-S ") for line in lines)
    assert apply_overrides({}, [line[3:] for line in lines]) == tree
    assert summary.command == "dvc exp run -S loss.kind=lambda_bce_dice -S train.lr=0.0005 -S loss.lambda=0.4"


def test_a_finished_sweep_reruns_nothing(real_sweep) -> None:
    root, summary, base, _ = real_sweep
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        config = SweepConfig(load_space(str(root / "failing.yaml")), base, storage=f"sqlite:///{root}/sweeps.db")
        again = run_optuna_sweep(config)
    assert again.counts == summary.counts and again.parent_run_id == summary.parent_run_id


# --- pruning ---------------------------------------------------------------------------------------

def test_pruned_trial_stops_early_and_is_not_a_failed_run(in_tmp: Path, tiny_params, monkeypatch) -> None:
    (in_tmp / "two_epochs.yaml").write_text(
        "epochs: 2\nsampler: random\nparameters:\n  loss.lambda: {type: float, low: 0.3, high: 0.9}\n")
    # F1 is at most 1: this real Optuna pruner stops every trial at its first report.
    monkeypatch.setattr(optuna_backend, "make_pruner", lambda name: optuna.pruners.ThresholdPruner(lower=1.01))
    base = tiny_params("mlflow.enabled=true", f"mlflow.tracking_uri=sqlite:///{in_tmp}/mlflow.db")
    summary = run_optuna_sweep(SweepConfig(load_space(str(in_tmp / "two_epochs.yaml")), base, n_trials=1,
                                           pruner="median", storage=f"sqlite:///{in_tmp}/sweeps.db"))
    assert summary.counts["pruned"] == 1 and summary.counts["complete"] == 0 and summary.best is None
    trial = _study(f"sqlite:///{in_tmp}/sweeps.db", "two_epochs").trials[0]
    assert trial.state == TrialState.PRUNED and trial.user_attrs["epochs_run"] == 1
    client = mlflow.MlflowClient(f"sqlite:///{in_tmp}/mlflow.db")
    child = client.get_run(trial.user_attrs["mlflow_run_id"])
    assert child.data.tags["trial.state"] == "pruned" and child.info.status == "KILLED"
    assert [m.step for m in client.get_metric_history(child.info.run_id, "val/f1")] == [1]


def test_pruners_see_the_pruning_metric_and_trials_are_scored_by_the_metric(in_tmp: Path, tiny_params) -> None:
    (in_tmp / "ap.yaml").write_text("epochs: 2\nsampler: random\nprune_metric: val_pixel_ap\n"
                                    "parameters:\n  loss.lambda: {type: float, low: 0.3, high: 0.9}\n")
    base = tiny_params("mlflow.enabled=true", f"mlflow.tracking_uri=sqlite:///{in_tmp}/mlflow.db")
    summary = run_optuna_sweep(SweepConfig(load_space(str(in_tmp / "ap.yaml")), base, n_trials=1, pruner="asha",
                                           storage=f"sqlite:///{in_tmp}/sweeps.db"))
    trial = _study(f"sqlite:///{in_tmp}/sweeps.db", "ap").trials[0]
    client = mlflow.MlflowClient(f"sqlite:///{in_tmp}/mlflow.db")
    run_id = trial.user_attrs["mlflow_run_id"]
    history = {name: [m.value for m in sorted(client.get_metric_history(run_id, name), key=lambda m: m.step)]
               for name in ("val/pixel_ap", "val/f1")}  # MLflow's keys of val_pixel_ap, val_f1
    assert trial.intermediate_values == {1: pytest.approx(history["val/pixel_ap"][0]),
                                         2: pytest.approx(history["val/pixel_ap"][1])}
    assert trial.value == pytest.approx(max(history["val/f1"]))
    parent = client.get_run(summary.parent_run_id)
    assert parent.data.params["sweep.metric"] == "val_f1" and parent.data.params["sweep.prune_metric"] == "val_pixel_ap"


def test_tpe_start_up_trials_come_from_the_space() -> None:
    space = load_space("sac-config3")
    assert space.pruning_metric == "val_pixel_ap" and space.tpe_startup_trials == 4
    assert make_sampler("tpe", 0, space)._n_startup_trials == 4
    assert make_sampler("tpe", 0, load_space("default"))._n_startup_trials == 10  # Optuna's
    plain = space.model_copy(update={"prune_metric": None})
    assert plain.pruning_metric == plain.metric == "val_f1"


# --- resume after SIGKILL --------------------------------------------------------------------------

def _states(db: Path) -> list[str]:
    try:
        with sqlite3.connect(db, timeout=5) as connection:
            return [row[0] for row in connection.execute("select state from trials")]
    except sqlite3.OperationalError:  # not created yet, or locked for a moment
        return []


def test_a_killed_sweep_resumes_without_losing_or_repeating_trials(tmp_path: Path, tiny_prepared: Path) -> None:
    (tmp_path / "resume.yaml").write_text(
        "epochs: 1\nsampler: grid-fraction\ngrid_fraction: 1.0\n"
        "parameters:\n  loss.lambda: {type: categorical, choices: [0.3, 0.6, 0.9]}\n")
    db = tmp_path / "sweeps.db"
    command = [sys.executable, "-m", "crackops", "sweep", "resume.yaml",
               "--storage", f"sqlite:///{db}", *(arg for item in _tiny_overrides(
                   tiny_prepared, f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
                   # The killed trial's beat goes stale 2 s after the kill; the restart takes longer.
                   "sweep.optuna.heartbeat_interval=1", "sweep.optuna.grace_period=2") for arg in ("-S", item))]
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    first = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and first.poll() is None:
        states = _states(db)
        if "COMPLETE" in states and "RUNNING" in states:
            first.send_signal(signal.SIGKILL)
            break
        time.sleep(0.1)
    output = first.communicate(timeout=60)[0]
    assert first.returncode == -signal.SIGKILL, f"the sweep was not killed mid-way:\n{output}"
    killed = [number for number, state in enumerate(_states(db)) if state == "RUNNING"]
    assert len(killed) == 1

    second = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"requeued interrupted trial(s) {killed[0]}" in second.stdout, second.stdout
    study = _study(f"sqlite:///{db}", "resume")
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 3
    assert sorted(t.user_attrs["params"]["loss.lambda"] for t in complete) == [0.3, 0.6, 0.9]
    assert study.trials[killed[0]].state == TrialState.FAIL
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed[0]]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    killed_trial = study.trials[killed[0]]  # killed before or after it suggested its point
    assert retries[0].params == (killed_trial.params or killed_trial.system_attrs["fixed_params"])

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    parents = client.search_runs([client.get_experiment_by_name("crackops").experiment_id],
                                 filter_string="tags.`sweep.role` = 'parent'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"  # the same parent, reopened
    children = client.search_runs([parents[0].info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parents[0].info.run_id}'")
    states = {int(run.data.tags["trial.number"]): (run.info.status, run.data.tags["trial.state"]) for run in children}
    if killed[0] in states:  # no run yet when it was killed before training started
        assert states[killed[0]] == ("FAILED", "failed")
    assert sum(state == ("FINISHED", "complete") for state in states.values()) == 3
    assert all(status != "RUNNING" for status, _ in states.values())


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_only_trials_without_a_recent_heartbeat_are_requeued(tmp_path: Path) -> None:
    """Liveness is the heartbeat alone: a trial is dead when its beat is older than the grace period,
    or when it never beat and started longer ago than that; host names and PIDs play no part."""
    import datetime

    import sqlalchemy

    retry = optuna_backend.RetryStaleTrial()
    storage = make_storage(f"sqlite:///{tmp_path}/s.db", retry, heartbeat_interval=1, grace_period=30)
    study = optuna.create_study(storage=storage, study_name="s")
    numbers, ids = {}, {}
    for name in ("stale", "silent", "alive", "just_taken"):
        trial = study.ask()
        trial.suggest_float("x", 0.0, 1.0)
        numbers[name], ids[name] = trial.number, trial._trial_id
    storage.record_heartbeat(ids["stale"])
    storage.record_heartbeat(ids["alive"])
    an_hour_ago = datetime.datetime.now() - datetime.timedelta(hours=1)
    with storage.engine.begin() as connection:
        connection.execute(sqlalchemy.text("update trial_heartbeats set heartbeat = :t where trial_id = :id"),
                           {"t": an_hour_ago, "id": ids["stale"]})
        connection.execute(sqlalchemy.text("update trials set datetime_start = :t where trial_id = :id"),
                           {"t": an_hour_ago, "id": ids["silent"]})
    assert optuna_backend.recover_trials(study, storage, retry, grace_period=30) == sorted(
        [numbers["stale"], numbers["silent"]])
    trials = study.trials
    assert trials[numbers["alive"]].state == TrialState.RUNNING
    assert trials[numbers["just_taken"]].state == TrialState.RUNNING  # no beat yet, but taken just now
    retries = {t.system_attrs["failed_trial"]: t for t in trials if t.state == TrialState.WAITING}
    assert set(retries) == {numbers["stale"], numbers["silent"]}
    assert all(retries[n].params == trials[n].params and not retries[n].user_attrs for n in retries)
    assert optuna_backend.recover_trials(study, storage, retry, grace_period=30) == []  # nothing twice


class _WorkerDied(BaseException):
    """The worker process gone between taking a trial and its first heartbeat (SIGKILL, preemption)."""


@pytest.mark.parametrize("cap, given_up", [(1, True), (2, False)])
def test_a_point_whose_worker_dies_past_the_cap_is_given_up_loudly(in_tmp: Path, tiny_prepared: Path, monkeypatch,
                                                                   capsys, cap: int, given_up: bool) -> None:
    """The point loss.lambda=0.3 loses its worker twice: within a cap of 2 it is run a third time and
    completes; past a cap of 1 it is given up, named, the exit status is 2 and its MLflow run says so,
    and a rerun with a larger cap runs it."""
    import datetime

    import sqlalchemy

    from search.trial import TAG_FAIL_REASON, TAG_NUMBER, TAG_STATE

    (in_tmp / "three.yaml").write_text(
        "epochs: 1\nsampler: grid-fraction\ngrid_fraction: 1.0\n"
        "parameters:\n  loss.lambda: {type: categorical, choices: [0.3, 0.6, 0.9]}\n")
    space = load_space(str(in_tmp / "three.yaml"))
    storage, tracking = f"sqlite:///{in_tmp}/sweeps.db", f"sqlite:///{in_tmp}/mlflow.db"
    kills = 2
    died: list[int] = []

    def stub(base_tree, space, chosen, callbacks=(), run_name=None, tags=None, pruned_errors=(), tracker=None,
             work=None):
        return TrialResult(chosen["loss.lambda"], FitResult(), space.trial_params(base_tree, chosen), None)

    real_run_one = optuna_backend.run_one

    def dying_worker(study, trial, objective):
        point = space.decode(study._storage.get_trial(trial._trial_id).system_attrs["fixed_params"])
        if point["loss.lambda"] == 0.3 and len(died) < kills:
            died.append(trial.number)
            parent = mlflow.active_run().info  # the trial's run started, as run_trial's would
            mlflow.MlflowClient().create_run(parent.experiment_id, tags={
                "mlflow.parentRunId": parent.run_id, TAG_NUMBER: str(trial.number), TAG_STATE: "running"})
            with optuna_backend._rdb(study).engine.begin() as connection:  # taken long before, never beat
                connection.execute(sqlalchemy.text("update trials set datetime_start = :t where trial_id = :id"),
                                   {"t": datetime.datetime.now() - datetime.timedelta(hours=1), "id": trial._trial_id})
            raise _WorkerDied
        return real_run_one(study, trial, objective)

    monkeypatch.setattr(optuna_backend, "run_trial", stub)
    monkeypatch.setattr(optuna_backend, "run_one", dying_worker)

    def sweep(max_retries: int) -> int:
        return cli.main(["sweep", "three.yaml", "--params", DEFAULTS, "--storage", storage, *(
            arg for item in _tiny_overrides(tiny_prepared, f"mlflow.tracking_uri={tracking}",
                                            f"sweep.optuna.max_interrupted_retries={max_retries}")
            for arg in ("-S", item))])

    for _ in range(kills):
        with pytest.raises(_WorkerDied):
            sweep(cap)
    capsys.readouterr()
    status = sweep(cap)
    out, err = capsys.readouterr()
    study = _study(storage, "three")
    complete = sorted(t.user_attrs["params"]["loss.lambda"] for t in study.get_trials(states=(TrialState.COMPLETE,)))
    client = mlflow.MlflowClient(tracking)
    runs = {int(run.data.tags[TAG_NUMBER]): run for run in client.search_runs(
        [client.get_experiment_by_name("crackops").experiment_id]) if TAG_NUMBER in run.data.tags}
    first, last = died
    assert (runs[first].info.status, runs[first].data.tags[TAG_FAIL_REASON]) == (
        "FAILED", "interrupted: the worker stopped; the trial is retried")
    reason = ("given up after 2 interruptions (its worker died each time; sweep.optuna.max_interrupted_retries=1); "
              "rerun with a larger cap to run it again")
    if not given_up:
        assert status == 0 and complete == [0.3, 0.6, 0.9] and err == ""
        assert f"requeued interrupted trial(s) {last}" in out
        assert study.trials[-1].system_attrs["failed_trial"] == first and study.trials[-1].state == TrialState.COMPLETE
        return
    assert status == 2 and complete == [0.6, 0.9]
    assert f"trial {last}: {reason}" in out and "requeued interrupted trial(s)" not in out
    assert f"trial {last} (loss.lambda=0.3) not run again: {reason}" in out  # the closing summary
    assert re.search(rf"^{last}\s+failed\s+-\s+-\s+0.3\s+given up after 2 interruptions", out, re.MULTILINE)
    assert f"nothing to run: every drawn grid point has run or was given up (trial(s) {last})" in out
    assert err == f"crackops sweep: error: trial {last} (loss.lambda=0.3) {reason}\n"
    assert (runs[last].info.status, runs[last].data.tags[TAG_FAIL_REASON]) == (
        "FAILED", f"interrupted: the worker stopped; {reason}")
    (parent,) = [run for run in client.search_runs([client.get_experiment_by_name("crackops").experiment_id])
                 if run.data.tags.get("sweep.role") == "parent"]
    assert parent.data.tags["sweep.given_up"] == str(last) and parent.data.metrics["n_given_up"] == 1
    assert sweep(2) == 0  # the cap raised: the point runs again
    parent = client.get_run(parent.info.run_id)
    assert "sweep.given_up" not in parent.data.tags and parent.data.metrics["n_given_up"] == 0
    assert f"requeued interrupted trial(s) {last}" in capsys.readouterr().out
    assert _study(storage, "three").trials[-1].state == TrialState.COMPLETE


# --- command line and small pieces -----------------------------------------------------------------

def test_invalid_space_file_names_the_key(in_tmp: Path, tiny_prepared: Path, capsys) -> None:
    (in_tmp / "bad.yaml").write_text("epochs: 1\nparameters:\n  train.lrr: {type: float, low: 1.0e-4, high: 1.0e-3}\n")
    argv = ["sweep", "bad.yaml", "--params", DEFAULTS, "-S", f"data.prepared_dir={tiny_prepared}"]
    assert cli.main(argv) == 2
    error = capsys.readouterr().err
    assert "train.lrr" in error and "bad.yaml" in error
    (in_tmp / "bad2.yaml").write_text("epochs: 1\nparameters:\n  train.lr: {type: float, low: 1.0e-3}\n")
    assert cli.main(["sweep", "bad2.yaml", "--params", DEFAULTS]) == 2
    assert "parameters.train.lr" in capsys.readouterr().err


def test_an_unreachable_storage_is_one_line_naming_it(in_tmp: Path, tiny_prepared: Path, capsys) -> None:
    from registry.local_server import free_port

    port = free_port()  # nobody listens on it
    url = f"postgresql://me:s3cret@127.0.0.1:{port}/optuna"
    assert cli.main(["sweep", "sac-config3", "--params", DEFAULTS, "--storage", url,
                     "-S", f"data.prepared_dir={tiny_prepared}"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "s3cret" not in error
    assert error.startswith(f"crackops sweep: error: sweep storage: cannot reach database "
                            f"postgresql://me:***@127.0.0.1:{port}/optuna")


def test_override_values_round_trip() -> None:
    values = {"train.lr": 1e-05, "tuning.lora.targets": ["q", "v"], "loss.lambda": 0.65, "train.batch_size": 4,
              "train.grad_clip": None}
    texts = [f"{key}={format_value(value)}" for key, value in values.items()]
    tree = apply_overrides({}, texts)
    assert tree["train"]["lr"] == 1e-05 and tree["tuning"]["lora"]["targets"] == ["q", "v"]
    assert tree["train"]["grad_clip"] is None and tree["loss"]["lambda"] == 0.65


def test_failure_reasons() -> None:
    from pipeline.errors import DatasetError, ParamsError
    from pipeline.training.loop import NonFiniteLossError

    assert failure_reason(NonFiniteLossError("loss is nan")).startswith("non-finite loss")
    assert failure_reason(ParamsError("invalid parameters in x:\n  loss: bad")) == "invalid parameters: loss: bad"
    assert failure_reason(RuntimeError("CUDA out of memory. Tried to allocate")).startswith("out of memory")
    assert failure_reason(DatasetError("no data")) is None  # stops the sweep: every trial would fail


def test_a_metric_training_does_not_report_names_the_space_keys() -> None:
    from search.trial import epoch_metric

    with pytest.raises(Exception, match=r"'val_pixel_AP' \(the space's metric or prune_metric\).*val_pixel_ap"):
        epoch_metric({"val_f1": 0.5, "val_pixel_ap": 0.4}, "val_pixel_AP")


def test_device_flag_sets_each_workers_device(monkeypatch, tiny_prepared: Path, capsys) -> None:
    import torch

    from pipeline.errors import ParamsError
    from pipeline.training.precision import DeviceError, pick_device

    seen = {}
    monkeypatch.setattr("search.backends.run_sweep", lambda backend, config: seen.update(
        device=config.base.train.device, epochs=config.space.epochs))
    assert cli.main(["sweep", "sac-config3", "--params", DEFAULTS, "--device", "cuda:1",
                     "-S", f"data.prepared_dir={tiny_prepared}"]) == 0
    assert seen["device"] == "cuda:1"
    assert cli.main(["sweep", "sac-config3", "--params", DEFAULTS, "--epochs", "1",
                     "-S", f"data.prepared_dir={tiny_prepared}"]) == 0
    assert seen["epochs"] == 1  # the space's 4 epochs per trial, shortened from the command line
    assert cli.main(["sweep", "sac-config3", "--params", DEFAULTS, "-S", "train.epochs=2",
                     "-S", f"data.prepared_dir={tiny_prepared}"]) == 0
    assert seen["epochs"] == 4 and "-S train.epochs does not change that; use --epochs" in capsys.readouterr().out
    assert pick_device("cpu") == torch.device("cpu")
    if torch.cuda.device_count() < 2:
        with pytest.raises(DeviceError, match=r"train.device is cuda:1 but this process sees \d CUDA device"):
            pick_device("cuda:1")
    with pytest.raises(ParamsError, match="train.device"):
        load_params("missing.yaml", ["train.device=gpu"])
