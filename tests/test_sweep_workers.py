"""Many `crackops sweep` workers on one study (Optuna backend), as Slurm arrays and Kubernetes Jobs
start them: released at the same instant on fresh databases, killed mid-trial, in another PID
namespace. Trials sleep instead of training (tests/sweep_worker.py) inside real MLflow runs;
everything else is the real sweep code against real PostgreSQL and SQLite databases."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import mlflow
import optuna
import pytest
from optuna.trial import TrialState

from sweep_worker import WORKER, WorkerPool, worker_env
# 8 grid points of 1 epoch; every point must be trained exactly once.
GRID = """
epochs: 1
sampler: grid-fraction
grid_fraction: 1.0
parameters:
  loss.lambda: {type: categorical, choices: [0.3, 0.5, 0.7, 0.9]}
  train.lr: {type: categorical, choices: [1.0e-4, 1.0e-3]}
"""
POINTS = 8
# Releases per store: each is a fresh race of the workers; the full suite (make test-all) races more.
REPEATS = 10 if os.environ.get("CRACKOPS_SLOW_TESTS") else 4
N_WORKERS = 4


def _sweep_argv(space: Path, storage: str, prepared: Path, *extra: str) -> list[str]:
    overrides = [f"data.prepared_dir={prepared}", "data.img_size=64", *extra]
    return ["sweep", str(space), "--storage", storage,
            *(arg for item in overrides for arg in ("-S", item))]


def _check_study(storage: str, study_name: str, tracking_uri: str, points: int = POINTS) -> None:
    """Every point trained exactly once, no trial beyond the grid, one MLflow parent holding them all."""
    study = optuna.load_study(study_name=study_name, storage=storage)
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    trained = Counter(tuple(sorted(t.params.items())) for t in complete)
    assert len(trained) == points and set(trained.values()) == {1}, f"points trained twice or skipped: {trained}"
    assert len(trials) == points, f"{len(trials)} trials for {points} points: {[t.state.name for t in trials]}"
    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("crackops")
    parents = client.search_runs([experiment.experiment_id], filter_string="tags.`sweep.role` = 'parent'")
    assert len(parents) == 1, f"{len(parents)} parent runs"
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["n_complete"] == points  # the last worker's summary counts every trial
    children = client.search_runs([experiment.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(int(run.data.tags["trial.number"]) for run in children) == list(range(points))
    assert all(run.info.status == "FINISHED" for run in children), \
        [(run.data.tags["trial.number"], run.info.status, run.data.tags.get("sweep.fail_reason")) for run in children]


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[WorkerPool]:
    workers = WorkerPool(tmp_path, N_WORKERS)
    yield workers
    workers.close()


@pytest.mark.parametrize("tracking", ["sqlite-default", "postgresql"])
def test_workers_released_together_on_fresh_databases_train_each_point_once(
        tmp_path: Path, tiny_prepared: Path, postgres, pool: WorkerPool, tracking: str) -> None:
    (tmp_path / "grid.yaml").write_text(GRID)
    for repeat in range(REPEATS):
        cwd = tmp_path / f"repeat-{repeat}"  # no mlflow.db yet: `sqlite:///mlflow.db` is created here
        cwd.mkdir()
        storage = postgres.new_database("optuna")  # no Optuna schema yet
        extra = [] if tracking == "sqlite-default" else [f"mlflow.tracking_uri={postgres.new_database('mlflow')}"]
        codes = pool.run(cwd, _sweep_argv(tmp_path / "grid.yaml", storage, tiny_prepared, *extra))
        logs = {path.name: path.read_text()[-2000:] for path in cwd.glob("worker-*.log")}
        assert set(codes.values()) == {0}, f"repeat {repeat}: {codes}\n{logs}"
        tracking_uri = extra[0].split("=", 1)[1] if extra else f"sqlite:///{cwd}/mlflow.db"
        _check_study(storage, "grid", tracking_uri)


def test_workers_on_one_host_share_a_sqlite_study(tmp_path: Path, tiny_prepared: Path, pool: WorkerPool) -> None:
    (tmp_path / "grid.yaml").write_text(GRID)
    for repeat in range(2):
        cwd = tmp_path / f"repeat-{repeat}"
        cwd.mkdir()
        codes = pool.run(cwd, _sweep_argv(tmp_path / "grid.yaml", "sqlite:///sweeps.db", tiny_prepared))
        assert set(codes.values()) == {0}, codes
        _check_study(f"sqlite:///{cwd}/sweeps.db", "grid", f"sqlite:///{cwd}/mlflow.db")


def test_n_trials_counts_the_study_not_each_worker(tmp_path: Path, tiny_prepared: Path, postgres,
                                                    pool: WorkerPool) -> None:
    (tmp_path / "random.yaml").write_text("epochs: 1\nsampler: random\n"
                                          "parameters:\n  loss.lambda: {type: float, low: 0.3, high: 0.9}\n")
    storage = postgres.new_database("optuna")
    codes = pool.run(tmp_path, [*_sweep_argv(tmp_path / "random.yaml", storage, tiny_prepared), "--n-trials", "5"])
    assert set(codes.values()) == {0}
    study = optuna.load_study(study_name="random", storage=storage)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 5  # not 5 per worker, not 5 + workers - 1


def _popen_worker(argv: list[str], cwd: Path, trial_seconds: float, prefix: list[str] = ()) -> subprocess.Popen:
    return subprocess.Popen([*prefix, sys.executable, str(WORKER), "--trial-seconds", str(trial_seconds), "--once",
                             "--", *argv], cwd=cwd, env=worker_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def _running_trials(storage: str, name: str) -> list[Any]:
    try:
        return optuna.load_study(study_name=name, storage=storage).get_trials(states=(TrialState.RUNNING,))
    except KeyError:  # the study is not created yet
        return []


def test_a_worker_killed_mid_trial_is_retried_by_another(tmp_path: Path, tiny_prepared: Path, postgres) -> None:
    (tmp_path / "grid.yaml").write_text(GRID)
    storage = postgres.new_database("optuna")
    tracking = postgres.new_database("mlflow")
    argv = _sweep_argv(tmp_path / "grid.yaml", storage, tiny_prepared, f"mlflow.tracking_uri={tracking}",
                       "sweep.optuna.heartbeat_interval=1", "sweep.optuna.grace_period=3")
    victim = _popen_worker(argv, tmp_path, trial_seconds=30)  # it will be killed inside its first trial
    deadline = time.monotonic() + 120
    while not _running_trials(storage, "grid"):
        assert victim.poll() is None and time.monotonic() < deadline, victim.communicate()[0]
        time.sleep(0.05)
    killed = _running_trials(storage, "grid")[0]
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    survivor = _popen_worker(argv, tmp_path, trial_seconds=0.2)
    output = survivor.communicate(timeout=300)[0]
    assert survivor.returncode == 0, output
    _check_study_after_kill(storage, tracking, killed.number)


def _check_study_after_kill(storage: str, tracking: str, killed: int) -> None:
    study = optuna.load_study(study_name="grid", storage=storage)
    trials = study.trials
    assert trials[killed].state == TrialState.FAIL
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == killed]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len({tuple(sorted(t.params.items())) for t in complete}) == len(complete) == POINTS
    client = mlflow.MlflowClient(tracking)
    experiment = client.get_experiment_by_name("crackops")
    runs = client.search_runs([experiment.experiment_id])
    assert not [run.info.run_name for run in runs if run.info.status == "RUNNING"]
    dead_run = [run for run in runs if run.data.tags.get("trial.number") == str(killed)]
    assert [run.info.status for run in dead_run] in ([], ["FAILED"])  # killed before or after its run began
    assert len([run for run in runs if run.data.tags.get("sweep.role") == "parent"]) == 1


@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare (util-linux) is not installed")
def test_a_worker_in_another_pid_namespace_fails_no_healthy_trial(tmp_path: Path, tiny_prepared: Path,
                                                                   postgres) -> None:
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a PID namespace here: {probe.stderr.strip()}")
    (tmp_path / "grid.yaml").write_text(GRID)
    storage = postgres.new_database("optuna")
    tracking = postgres.new_database("mlflow")
    # Short beats and grace: a worker judging liveness by host + PID would fail the other's trial at once.
    argv = _sweep_argv(tmp_path / "grid.yaml", storage, tiny_prepared, f"mlflow.tracking_uri={tracking}",
                       "sweep.optuna.heartbeat_interval=1", "sweep.optuna.grace_period=3")
    workers = [_popen_worker(argv, tmp_path, trial_seconds=1.5),
               _popen_worker(argv, tmp_path, trial_seconds=1.5, prefix=["unshare", "--pid", "--fork", "--mount-proc"])]
    outputs = [worker.communicate(timeout=300)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs
    study = optuna.load_study(study_name="grid", storage=storage)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * POINTS, outputs
    workers_seen = {t.user_attrs["worker"] for t in study.trials}
    assert len(workers_seen) == 2, workers_seen  # both took trials; one of them sees itself as a low PID
