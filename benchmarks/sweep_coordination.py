"""What it costs workers to share one Optuna study on PostgreSQL: duplicates, lost trials, overhead.

The real ``crackops sweep`` code in W worker processes released at the same instant
(``tests/sweep_worker.py``) on one fresh study, a grid of W x T points (``train.seed`` as the only
parameter), with a stub trial that sleeps ``--trial-seconds`` instead of training and MLflow off, so
what is measured is the coordination: the study's lock, counting, taking a trial, the heartbeat,
telling the result. For each W it reports

* duplicates: points completed more than once (must be 0); lost: points never completed (must be 0);
* overhead per trial: the gap between one trial's objective ending and the next one's starting in
  the same worker (median, 90th percentile, max), i.e. everything the sweep does between trials;
* wall time minus objective time per trial: each worker's whole sweep (opening the study, writing
  the summary) less the time its objectives ran, divided by its trials;
* CPU: the worker's own CPU time between trials (median; the sweep code and its database driver,
  not PostgreSQL's side), and the cores busy during the round (the whole machine: workers,
  PostgreSQL, everything, from ``/proc/stat``). Where the cores busy reach the machine's count,
  workers queue for CPU and the overhead measures the machine, not the coordination.

    python benchmarks/sweep_coordination.py [--workers 1 4 16] [--trials-per-worker 25]
        [--trial-seconds 0.2] [--storage postgresql+psycopg2://...]  # default: a throwaway local server

Without ``--storage`` it starts a PostgreSQL server of its own on 127.0.0.1 (initdb + pg_ctl, as
the tests do) and removes it afterwards; with it, each W gets a fresh study name in that database.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from sweep_worker import WorkerPool  # noqa: E402  (tests/: the worker the tests release together)


def grid_space(points: int) -> str:
    return ("epochs: 1\nsampler: grid-fraction\ngrid_fraction: 1.0\nparameters:\n"
            f"  train.seed: {{type: categorical, choices: [{', '.join(map(str, range(points)))}]}}\n")


def busy_cpu_seconds() -> float:
    """CPU seconds this machine has spent not idle since boot (all cores, from /proc/stat)."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def measure(workers: int, trials_per_worker: int, trial_seconds: float, storage: str, root: Path,
            prepared: Path) -> dict:
    """One round: ``workers`` processes on one fresh study of ``workers * trials_per_worker`` points."""
    import optuna

    points = workers * trials_per_worker
    folder = root / f"w{workers}"
    folder.mkdir()
    (folder / "grid.yaml").write_text(grid_space(points))
    study = f"coordination-w{workers}-{int(time.time())}"
    argv = ["sweep", str(folder / "grid.yaml"), "--storage", storage, "--study", study,
            "-S", f"data.prepared_dir={prepared}", "-S", "mlflow.enabled=false"]
    pool = WorkerPool(folder, workers, trial_seconds)
    try:
        started, busy = time.time(), busy_cpu_seconds()
        codes = pool.run(folder, argv, timeout=3600)
        wall, busy = time.time() - started, busy_cpu_seconds() - busy
    finally:
        pool.close()
    if set(codes.values()) != {0}:
        raise SystemExit(f"a worker failed: {codes}; logs in {folder}")
    trials = optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)
    completed = Counter(t.params["train.seed"] for t in trials if t.state == optuna.trial.TrialState.COMPLETE)
    gaps, gap_cpu, per_trial = [], [], []
    for name in pool.names:
        times = [json.loads(line) for line in (folder / f"trial-times-{name}.jsonl").read_text().splitlines()] \
            if (folder / f"trial-times-{name}.jsonl").exists() else []
        gaps += [after["start"] - before["end"] for before, after in zip(times, times[1:])]
        gap_cpu += [after["cpu_start"] - before["cpu_end"] for before, after in zip(times, times[1:])]
        span = json.loads((folder / f"worker-{name}.json").read_text())
        if times:
            objective = sum(item["end"] - item["start"] for item in times)
            per_trial.append((span["end"] - span["start"] - objective) / len(times))
    return {
        "workers": workers, "points": points, "trials": len(trials), "wall_s": round(wall, 1),
        "duplicates": sum(n - 1 for n in completed.values() if n > 1),
        "lost": points - len(completed),
        "overhead_ms": {"median": 1000 * statistics.median(gaps), "p90": 1000 * percentile(gaps, 0.9),
                        "max": 1000 * max(gaps)} if gaps else None,
        "wall_minus_objective_per_trial_ms": 1000 * statistics.median(per_trial) if per_trial else None,
        "worker_cpu_between_trials_ms": 1000 * statistics.median(gap_cpu) if gap_cpu else None,
        "cores_busy": round(busy / wall, 2), "cores": os.cpu_count(),
        "trials_per_worker": sorted(Counter(t.user_attrs.get("worker") for t in trials).values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--trials-per-worker", type=int, default=25)
    parser.add_argument("--trial-seconds", type=float, default=0.2)
    parser.add_argument("--storage", default=None, help="a PostgreSQL URL (default: a throwaway local server)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    from pipeline.data import generate_dataset, prepare_dataset

    with ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="crackops-coordination-")))
        # The sweep checks the prepared data before it starts; the stub trial never reads it.
        generate_dataset(root / "raw", n_images=4, size=32, seed=0)
        prepare_dataset(root / "raw", root / "prepared", img_size=32, val_fraction=0.25, test_fraction=0.25, seed=0)
        storage = args.storage
        if storage is None:
            from pg_server import PostgresServer

            server = stack.enter_context(PostgresServer())
            print(f"PostgreSQL {server.bin_dir.parent.name} on 127.0.0.1:{server.port} (throwaway)", flush=True)
        results = []
        for workers in args.workers:
            url = storage or server.new_database(f"coordination_w{workers}")
            result = measure(workers, args.trials_per_worker, args.trial_seconds, url, root, root / "prepared")
            results.append(result)
            overhead = result["overhead_ms"] or {}
            print(f"{workers:>3} workers x {args.trials_per_worker} trials ({result['points']} points): "
                  f"{result['trials']} trials, duplicates {result['duplicates']}, lost {result['lost']}; overhead "
                  f"per trial median {overhead.get('median', float('nan')):.1f} ms, p90 {overhead.get('p90', float('nan')):.1f} "
                  f"ms, max {overhead.get('max', float('nan')):.1f} ms; wall minus objective per trial "
                  f"{result['wall_minus_objective_per_trial_ms']:.1f} ms; worker CPU between trials "
                  f"{result['worker_cpu_between_trials_ms']:.1f} ms; {result['cores_busy']} of {result['cores']} cores "
                  f"busy; wall {result['wall_s']} s; "
                  f"trials per worker {result['trials_per_worker']}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
