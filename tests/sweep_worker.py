"""A `crackops sweep` worker for the multi-worker tests and the coordination benchmark.

The real sweep code (``crackops.cli.main``) with one substitution: a trial does not train, it
sleeps ``--trial-seconds`` and scores its params, inside a real MLflow run nested under the sweep's
parent (so MLflow's stores see the same traffic as real trials). Everything is imported before the
start gate, so workers released together really start their sweeps at the same instant.

    python tests/sweep_worker.py --jobs DIR --worker NAME [--trial-seconds S]

runs job after job: for job ``i`` it waits for ``DIR/i.json`` (``{"cwd": ..., "argv": [...]}``),
says ``DIR/i.NAME.ready``, waits for ``DIR/i.go``, runs the sweep in ``cwd`` and writes its exit
code to ``DIR/i.NAME.rc``; ``DIR/stop`` ends it. With ``--once -- ARGV`` it runs one sweep now.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

WORKER = Path(__file__).resolve()
REPO = WORKER.parents[1]
TRIAL_TIMES = "trial-times-{worker}.jsonl"  # in the job's folder: each trial's objective start and end (wall, CPU)

if __name__ == "__main__":  # run as a script: the checkout's packages, not an installed copy
    sys.path.insert(0, str(REPO))

import mlflow  # noqa: E402

from crackops import cli  # noqa: E402
from pipeline import dblock  # noqa: E402
from pipeline.training.callbacks import FitResult  # noqa: E402
from search import optuna_backend  # noqa: E402
from search.trial import TAG_STATE, TrialResult  # noqa: E402
from search.states import COMPLETE  # noqa: E402


def stub_score(chosen: dict[str, Any]) -> float:
    """A deterministic score of the params, so the best trial is known."""
    return float(sum(hash(str(value)) % 997 for value in chosen.values()) / 997.0)


def stub_run_trial(seconds: float, worker: str):
    def run_trial(base_tree, space, chosen, callbacks=(), run_name=None, tags=None, pruned_errors=(), tracker=None,
                  work=None):
        started, cpu_started = time.time(), time.process_time()
        params = space.trial_params(base_tree, chosen)
        run_id = None
        if params.mlflow.enabled:
            with mlflow.start_run(run_name=run_name, nested=True, tags={**(tags or {}), TAG_STATE: COMPLETE}) as run:
                mlflow.log_params({key: str(value) for key, value in chosen.items()})
                if tracker is not None:  # what tracked training does once its run starts
                    tracker.run_id = run.info.run_id
                for callback in callbacks:  # the trial's run id into the study, as real trials record it
                    callback.on_train_start(space.epochs)
                time.sleep(seconds)
                mlflow.log_metric(space.metric, stub_score(chosen), step=1)
                run_id = run.info.run_id
        else:
            time.sleep(seconds)
        with open(TRIAL_TIMES.format(worker=worker), "a") as times:
            times.write(json.dumps({"start": started, "end": time.time(), "cpu_start": cpu_started,
                                    "cpu_end": time.process_time(), "point": chosen}) + "\n")
        return TrialResult(stub_score(chosen), FitResult(), params, run_id)

    return run_trial


def _forget_stores() -> None:
    """What a fresh worker process would not have: MLflow's store per URI string (a job in another
    folder must not reuse the last job's ``sqlite:///mlflow.db``) and the last job's connections."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from mlflow.tracking._tracking_service.utils import _tracking_store_registry

    _tracking_store_registry._get_store_with_resolved_uri.cache_clear()
    for engine in SqlAlchemyStore._engine_map.values():
        engine.dispose()
    SqlAlchemyStore._engine_map.clear()
    dblock.dispose_engines()  # nor the last job's lock connections (a database per job: they add up)


def _wait_for(path: Path, stop: Path, poll: float) -> bool:
    while not path.exists():
        if stop.exists():
            return False
        time.sleep(poll)
    return True


def worker_env() -> dict[str, str]:
    """This environment, with the checkout first on the path and no tracking URI of the caller's."""
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


class WorkerPool:
    """Long-lived worker processes (start-up paid once) that run one sweep per job, released together."""

    def __init__(self, root: Path, n: int, trial_seconds: float = 0.1) -> None:
        self.jobs = root / "jobs"
        self.jobs.mkdir(parents=True)
        self.names = [f"w{i}" for i in range(n)]
        self.procs = [subprocess.Popen([sys.executable, str(WORKER), "--jobs", str(self.jobs), "--worker", name,
                                        "--trial-seconds", str(trial_seconds)], env=worker_env(), cwd=root,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                      for name in self.names]
        self.job = 0

    def run(self, cwd: Path, argv: list[str], timeout: float = 300) -> dict[str, int]:
        """Run ``argv`` in every worker at once; returns each worker's exit code."""
        job = self.job
        self.job += 1
        spec = self.jobs / f".{job}.json"  # renamed into place: a worker never reads half a file
        spec.write_text(json.dumps({"cwd": str(cwd), "argv": argv}))
        spec.rename(self.jobs / f"{job}.json")
        self._wait(lambda: all((self.jobs / f"{job}.{name}.ready").exists() for name in self.names), timeout)
        (self.jobs / f"{job}.go").touch()  # the gate: every worker polls it each millisecond
        self._wait(lambda: all((self.jobs / f"{job}.{name}.rc").exists() for name in self.names), timeout)
        return {name: int((self.jobs / f"{job}.{name}.rc").read_text()) for name in self.names}

    def _wait(self, done: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            dead = [proc for proc in self.procs if proc.poll() is not None]
            if dead:
                raise AssertionError(f"a worker exited: {dead[0].stderr.read()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError("workers did not finish in time")
            time.sleep(0.01)

    def close(self) -> None:
        (self.jobs / "stop").touch()
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=Path)
    parser.add_argument("--worker", default=str(os.getpid()))
    parser.add_argument("--trial-seconds", type=float, default=0.2)
    parser.add_argument("--once", action="store_true", help="run the sweep ARGV now and exit with its code")
    parser.add_argument("argv", nargs="*")
    args = parser.parse_args()
    optuna_backend.run_trial = stub_run_trial(args.trial_seconds, args.worker)
    if args.once:
        return cli.main(args.argv)
    stop = args.jobs / "stop"
    job = 0
    # The next job is looked for every 50 ms (an idle worker must not take CPU from busy ones); the
    # start gate every millisecond, so workers released together start within a millisecond.
    while _wait_for(args.jobs / f"{job}.json", stop, 0.05):
        spec = json.loads((args.jobs / f"{job}.json").read_text())
        (args.jobs / f"{job}.{args.worker}.ready").touch()
        if not _wait_for(args.jobs / f"{job}.go", stop, 0.001):
            break
        os.chdir(spec["cwd"])
        _forget_stores()
        output = io.StringIO()
        started, cpu = time.time(), time.process_time()
        with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
            code = cli.main(spec["argv"])
        span = {"start": started, "end": time.time(), "cpu_s": time.process_time() - cpu}
        (Path(spec["cwd"]) / f"worker-{args.worker}.json").write_text(json.dumps(span))
        (Path(spec["cwd"]) / f"worker-{args.worker}.log").write_text(output.getvalue())
        written = args.jobs / f".{job}.{args.worker}.rc"
        written.write_text(str(code))
        written.rename(args.jobs / f"{job}.{args.worker}.rc")  # whole, or not there
        job += 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
