"""Tracking and study stores shared by workers that start together, on real servers (loopback only).

Four long-lived worker processes (spawned once per module, so imports stay out of the loop) are
released at the same instant by a barrier for every repetition, each time on a fresh store: a
fresh SQLite file and a fresh, empty PostgreSQL database (``postgres`` fixture, conftest.py).
"""
from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import socket
import time
import traceback

import pytest

N_WORKERS = 4
REPETITIONS = 5  # whole sweeps released together on fresh stores 10 times: tests/test_sweep_workers.py
WAIT = 180  # seconds: only a guard against a hung worker, never reached when things work


# -- worker side -------------------------------------------------------------------------------
def _worker_main(index, tasks, results, barrier, inside, most, workdir):
    os.chdir(workdir)  # MLflow's default artifact root (./mlruns) for server stores lands here
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"  # no usage reports from test workers
    import mlflow  # noqa: F401 - the imports happen once, before any barrier
    import optuna  # noqa: F401

    import pipeline.dblock  # noqa: F401
    import pipeline.tracking.setup  # noqa: F401

    results.put((index, True, "ready"))
    while True:
        task, args = tasks.get()
        if task == "stop":
            # Skip MLflow's exit handlers (seconds per worker): nothing is left to flush.
            results.close()
            results.join_thread()
            os._exit(0)
        try:
            barrier.wait(WAIT)
            value = TASKS[task](*args, inside=inside, most=most)
            results.put((index, True, value))
        except BaseException as error:  # noqa: BLE001 - reported to the test, which fails on it
            first = (str(error).strip().splitlines() or [""])[0][:300]
            where = traceback.extract_tb(error.__traceback__)[-1]
            results.put((index, False, f"worker {index}: {type(error).__name__}: {first} "
                                       f"({os.path.basename(where.filename)}:{where.lineno})"))
        finally:
            if task == "mlflow":
                _forget_mlflow_stores()


def _forget_mlflow_stores() -> None:
    """Close this process's MLflow engines and store cache: the next store is opened afresh and
    the PostgreSQL test server does not collect idle pooled connections."""
    import mlflow
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from mlflow.tracking._tracking_service.utils import _tracking_store_registry

    while mlflow.active_run() is not None:
        mlflow.end_run()
    for engine in list(SqlAlchemyStore._engine_map.values()):
        engine.dispose()
    SqlAlchemyStore._engine_map.clear()
    _tracking_store_registry._get_store_with_resolved_uri.cache_clear()


def _task_mlflow(uri, experiment, **_):
    """What a sweep worker does first: configure tracking, then one run."""
    import mlflow

    from pipeline.params import MlflowParams
    from pipeline.tracking.setup import configure

    experiment_id = configure(MlflowParams(tracking_uri=uri, experiment=experiment))
    with mlflow.start_run() as run:
        mlflow.log_param("worker", os.getpid())
        mlflow.log_metric("m", 1.0)
    return experiment_id, run.info.run_id


def _task_optuna(url, locked, **_):
    """What a sweep worker does to open the study storage (with or without the schema lock)."""
    import optuna

    from pipeline.dblock import database_lock

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    if locked:
        with database_lock(url, "crackops-optuna-schema"):
            storage = optuna.storages.RDBStorage(url)
    else:
        storage = optuna.storages.RDBStorage(url)
    study = optuna.create_study(storage=storage, study_name=f"s{os.getpid()}")  # the storage works
    storage.engine.dispose()
    return study.study_name


def _task_lock(url, name, rounds, inside, most):
    """Take the lock ``rounds`` times, counting how many processes are inside it at once."""
    import time

    from pipeline.dblock import database_lock

    for _ in range(rounds):
        with database_lock(url, name):
            with inside.get_lock():
                inside.value += 1
                most.value = max(most.value, inside.value)
            time.sleep(0.005)  # widens the window in which a second holder would show up
            with inside.get_lock():
                inside.value -= 1
    return rounds


TASKS = {"mlflow": _task_mlflow, "optuna": _task_optuna, "lock": _task_lock}


def _hold_lock(url, name, held):
    """Take the lock, say so, and wait to be killed."""
    import time

    from pipeline.dblock import database_lock

    with database_lock(url, name):
        held.set()
        while True:
            time.sleep(60)


# -- test side ---------------------------------------------------------------------------------
class Workers:
    """``N_WORKERS`` spawned processes; :meth:`run` hands all of them one task, released together."""

    def __init__(self, workdir):
        self.context = multiprocessing.get_context("spawn")  # no fork of a threaded pytest process
        self.barrier = self.context.Barrier(N_WORKERS)
        self.inside = self.context.Value("i", 0)
        self.most = self.context.Value("i", 0)
        self.results = self.context.Queue()
        self.tasks = [self.context.Queue() for _ in range(N_WORKERS)]
        self.processes = [
            self.context.Process(target=_worker_main, daemon=True,
                                 args=(index, self.tasks[index], self.results, self.barrier, self.inside,
                                       self.most, str(workdir)))
            for index in range(N_WORKERS)]
        for process in self.processes:
            process.start()
        self._collect()

    def _collect(self):
        found = []
        deadline = time.monotonic() + WAIT
        while len(found) < N_WORKERS:
            try:
                found.append(self.results.get(timeout=1.0))
            except queue.Empty:
                dead = [process.exitcode for process in self.processes if not process.is_alive()]
                if dead or time.monotonic() > deadline:
                    pytest.fail(f"only {len(found)} of {N_WORKERS} workers answered ({found}); "
                                f"exit codes of dead workers: {dead}")
        return [value for _, _, value in sorted(found, key=lambda item: item[0])], \
            [value for _, ok, value in found if not ok]

    def run(self, task, *args):
        """Every worker's result (in worker order); fails the test on any worker's error."""
        for tasks in self.tasks:
            tasks.put((task, args))
        values, errors = self._collect()
        assert not errors, f"{len(errors)} of {N_WORKERS} workers failed:\n" + "\n".join(errors)
        return values

    def stop(self):
        for tasks in self.tasks:
            tasks.put(("stop", ()))
        for process in self.processes:
            process.join(30)
            if process.is_alive():
                process.kill()
                process.join()


@pytest.fixture(scope="module")
def workers(tmp_path_factory):
    pool = Workers(tmp_path_factory.mktemp("workers"))
    yield pool
    pool.stop()


def _check_mlflow_store(uri, experiment, results):
    """The store opens afresh in this process and lists every worker's finished run."""
    from mlflow import MlflowClient

    experiment_ids = {experiment_id for experiment_id, _ in results}
    assert len(experiment_ids) == 1, f"workers used different experiments: {results}"
    client = MlflowClient(uri)
    try:
        found = client.get_experiment_by_name(experiment)
        assert found is not None and found.experiment_id in experiment_ids
        runs = client.search_runs([found.experiment_id])
        assert sorted(run.info.run_id for run in runs) == sorted(run_id for _, run_id in results)
        assert {run.info.status for run in runs} == {"FINISHED"}
    finally:
        _forget_mlflow_stores()


def test_workers_create_one_sqlite_tracking_store_together(workers, tmp_path):
    for repetition in range(REPETITIONS):
        uri = f"sqlite:///{tmp_path}/{repetition}/mlflow.db"  # the default store, in a fresh folder
        results = workers.run("mlflow", uri, "race")
        _check_mlflow_store(uri, "race", results)


def test_workers_create_one_postgres_tracking_store_together(workers, postgres):
    for _ in range(REPETITIONS):
        uri = postgres.new_database("mlflow")
        results = workers.run("mlflow", uri, "race")
        _check_mlflow_store(uri, "race", results)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_workers_create_one_optuna_storage_together(workers, backend, request, tmp_path):
    for repetition in range(REPETITIONS):
        if backend == "sqlite":
            url = f"sqlite:///{tmp_path}/{repetition}/sweeps.db"
            (tmp_path / str(repetition)).mkdir()  # as the sweep does: SQLite creates no folders
        else:
            url = request.getfixturevalue("postgres").new_database("optuna")
        names = workers.run("optuna", url, True)
        import optuna

        storage = optuna.storages.RDBStorage(url)
        try:
            assert sorted(study.study_name for study in storage.get_all_studies()) == sorted(names)
        finally:
            storage.engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def lock_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/sweeps.db"
    return request.getfixturevalue("postgres").new_database("lock")


def test_database_lock_admits_one_process_at_a_time(workers, lock_url):
    workers.inside.value = workers.most.value = 0
    assert workers.run("lock", lock_url, "crackops-test-lock", 25) == [25] * N_WORKERS
    assert workers.most.value == 1, f"{workers.most.value} processes held the lock at once"
    assert workers.inside.value == 0


def test_database_lock_of_a_killed_holder_is_released(workers, lock_url):
    context = workers.context
    held = context.Event()
    holder = context.Process(target=_hold_lock, args=(lock_url, "crackops-test-kill", held), daemon=True)
    holder.start()
    try:
        assert held.wait(WAIT), "the holder never got the lock"
        # While the holder lives, the workers queue behind it...
        for tasks in workers.tasks:
            tasks.put(("lock", (lock_url, "crackops-test-kill", 1)))
        with pytest.raises(queue.Empty):
            workers.results.get(timeout=1.0)
        # ...and SIGKILL (no cleanup in the holder) lets them through.
        os.kill(holder.pid, signal.SIGKILL)
        holder.join(WAIT)
        values, errors = workers._collect()
        assert not errors and values == [1] * N_WORKERS
    finally:
        if holder.is_alive():
            holder.kill()
            holder.join()


# -- unreachable stores ------------------------------------------------------------------------
def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # closed again when the with ends: nothing listens there


@pytest.fixture
def silent_port():
    """A port that accepts TCP connections (the kernel's backlog) but never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]


def _configure_error(uri):
    import mlflow

    from pipeline.params import MlflowParams
    from pipeline.tracking.setup import TrackingError, configure

    before = mlflow.get_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI")
    with pytest.raises(TrackingError) as caught:
        configure(MlflowParams(tracking_uri=uri, experiment="unreachable"))
    assert (mlflow.get_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI")) == before  # left as it was
    return str(caught.value)


def test_unreachable_postgres_tracking_store_is_one_clear_line():
    port = _closed_port()
    message = _configure_error(f"postgresql+psycopg2://crackops:s3cret@127.0.0.1:{port}/mlflow")
    assert f"postgresql+psycopg2://crackops:***@127.0.0.1:{port}/mlflow" in message
    assert "s3cret" not in message and "\n" not in message


def test_silent_postgres_tracking_store_times_out(monkeypatch, silent_port):
    import pipeline.dblock

    monkeypatch.setattr(pipeline.dblock, "CONNECT_TIMEOUT", 1)
    message = _configure_error(f"postgresql+psycopg2://crackops:s3cret@127.0.0.1:{silent_port}/mlflow")
    assert f"postgresql+psycopg2://crackops:***@127.0.0.1:{silent_port}/mlflow" in message
    assert "timeout" in message.lower() and "\n" not in message


def test_unreachable_http_tracking_server_is_one_clear_line():
    port = _closed_port()
    message = _configure_error(f"http://127.0.0.1:{port}")
    assert f"http://127.0.0.1:{port}" in message and "\n" not in message
    assert "refused" in message.lower()
    # Credentials in the URL stay out of the message and out of the probe's host name.
    message = _configure_error(f"https://me:s3cret@127.0.0.1:{port}/prefix")
    assert f"https://me:***@127.0.0.1:{port}/prefix" in message and "refused" in message.lower()
    assert "s3cret" not in message


def test_silent_http_tracking_server_times_out(monkeypatch, silent_port):
    import pipeline.tracking.setup

    monkeypatch.setattr(pipeline.tracking.setup, "HTTP_PROBE_TIMEOUT", 1)
    message = _configure_error(f"http://127.0.0.1:{silent_port}")
    assert f"http://127.0.0.1:{silent_port}" in message and "\n" not in message
    assert "timed out" in message.lower()


def test_a_deleted_experiment_is_one_clear_line(tmp_path):
    from mlflow import MlflowClient

    from pipeline.params import MlflowParams
    from pipeline.tracking.setup import TrackingError, configure

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    params = MlflowParams(tracking_uri=uri, experiment="gone")
    experiment_id = configure(params)
    assert configure(params) == experiment_id  # found, not created twice
    MlflowClient(uri).delete_experiment(experiment_id)
    with pytest.raises(TrackingError, match=f"'gone' at {uri} is deleted: restore it"):
        configure(params)
