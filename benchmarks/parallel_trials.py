"""Two sweep trials at once against one at a time, on this machine's CPUs, with the Ray backend.

Runs the same ``crackops sweep SPACE --backend ray --sampler random --n-trials N`` twice, each in a
throwaway Optuna/MLflow/Ray store: once with one trial at a time on every CPU
(``sweep.ray.cpus_per_trial=<CPUs>``, ``max_concurrent_trials=1``, so torch uses all of them) and once
with two trials at once on one CPU (and one torch thread) each. A seeded random sampler hands both runs
the same configurations. Reports the wall time of each whole command and their ratio.

    python benchmarks/parallel_trials.py [--space sac-config3] [--n-trials 4] [-S key=value ...]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = {
    "one at a time": lambda cpus: [f"sweep.ray.cpus_per_trial={cpus}", "sweep.ray.max_concurrent_trials=1"],
    "two at once": lambda cpus: ["sweep.ray.cpus_per_trial=1", "sweep.ray.max_concurrent_trials=2"],
}


def run_sweep(space: str, n_trials: int, overrides: list[str], tmp: Path, name: str, log: Path) -> float:
    command = [sys.executable, "-m", "crackops", "sweep", space, "--backend", "ray", "--sampler", "random",
               "--pruner", "none", "--n-trials", str(n_trials), "--seed", "0", "--study", name,
               "--storage", f"sqlite:///{tmp}/sweeps.db"]
    for item in [*overrides, f"mlflow.tracking_uri=sqlite:///{tmp}/mlflow.db", f"sweep.ray.storage_path={tmp}/ray"]:
        command += ["-S", item]
    started = time.perf_counter()
    with log.open("w") as sink:
        done = subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"sweep {name!r} failed (exit {done.returncode}); see {log}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="sac-config3")
    parser.add_argument("--n-trials", type=int, default=4)
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--logs", type=Path, default=Path("outputs/bench/parallel-trials"))
    args = parser.parse_args()
    cpus = os.cpu_count() or 1
    args.logs.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="parallel-trials-") as tmp:
        for index, (mode, settings) in enumerate(MODES.items()):
            name = f"parallel-bench-{index}"
            log = args.logs / f"{name}.log"
            print(f"{mode}: {args.n_trials} trials of {args.space} ... (log {log})", flush=True)
            seconds[mode] = run_sweep(args.space, args.n_trials, [*args.overrides, *settings(cpus)],
                                      Path(tmp), name, log)
            print(f"{mode}: {seconds[mode]:.1f} s", flush=True)
    sequential, parallel = seconds["one at a time"], seconds["two at once"]
    print(f"\n{args.n_trials} trials of {args.space} on {cpus} CPUs (Ray backend, whole command wall time)\n")
    print("| mode | wall s |\n|---|---:|")
    print(f"| one at a time, {cpus} threads | {sequential:.1f} |")
    print(f"| two at once, 1 thread each | {parallel:.1f} |")
    print(f"\nspeed-up of two at once: {sequential / parallel:.2f}x (one-at-a-time time / two-at-once time)")


if __name__ == "__main__":
    main()
