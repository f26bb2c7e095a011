"""What MLflow tracking costs a training: epoch time with tracking off and on.

Trains the params in ``params.yaml`` (plus ``-S`` overrides) for ``--epochs`` epochs, once without
and once with tracking into a throwaway sqlite store, ``--repeats`` times, alternating which mode
goes first so that warm-up and drift hit both alike. Reports the loop's own epoch time
(``EpochResult.seconds``; mean, and median against load spikes from other processes), the wall
time per epoch including every callback, the time ``MlflowCallback.on_epoch_end`` itself blocks
the loop, and the whole call (tracking adds model logging and overlays once per run).

    python benchmarks/tracking_overhead.py [--epochs 3] [--repeats 2] [-S key=value ...]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.data.sources import ensure_training_data
from pipeline.params import DEFAULT_PARAMS_FILE, Params, apply_overrides, read_params_file, validate
from pipeline.tracking.mlflow_callback import MlflowCallback
from pipeline.tracking.tracked_training import train_with_tracking
from pipeline.training.callbacks import Callback, EpochResult, TrainerControl


class WallClock(Callback):
    """Wall and process-CPU seconds between consecutive epoch ends: the loop plus every callback.

    CPU time counts every thread of this process (MLflow's logging thread included) and is far
    less disturbed than wall time by other processes on a shared machine.
    """

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.cpu_seconds: list[float] = []
        self._last = self._last_cpu = 0.0

    def on_train_start(self, total_epochs: int) -> None:
        self._last, self._last_cpu = time.perf_counter(), time.process_time()

    def on_epoch_end(self, result: EpochResult, control: TrainerControl) -> None:
        now, cpu = time.perf_counter(), time.process_time()
        self.seconds.append(now - self._last)
        self.cpu_seconds.append(cpu - self._last_cpu)
        self._last, self._last_cpu = now, cpu


@dataclass
class Samples:
    loop: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)


def time_logging_calls(into: list[float]) -> None:
    """Record how long each MlflowCallback.on_epoch_end call blocks the loop."""
    original = MlflowCallback.on_epoch_end

    def timed(self: MlflowCallback, result: EpochResult, control: TrainerControl) -> None:
        started = time.perf_counter()
        original(self, result, control)
        into.append(time.perf_counter() - started)

    MlflowCallback.on_epoch_end = timed  # type: ignore[method-assign]


def run_once(params: Params, out_dir: Path, into: Samples) -> None:
    clock = WallClock()
    started = time.perf_counter()
    outcome, _ = train_with_tracking(params, out_dir, callbacks=[clock], progress=False)
    into.total.append(time.perf_counter() - started)
    into.loop += [e.seconds for e in outcome.fit.history]
    into.wall += clock.seconds
    into.cpu += clock.cpu_seconds


def relative(on: float, off: float) -> str:
    return f"{100.0 * (on - off) / off:+.2f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS_FILE)
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    # Read once: every run trains exactly the same params even if the file changes meanwhile.
    tree = read_params_file(args.params)
    base = validate(apply_overrides(tree, args.overrides), str(args.params))
    ensure_training_data(base)
    prepared = Path(base.data.prepared_dir).resolve()
    samples = {"off": Samples(), "on": Samples()}
    logging_calls: list[float] = []
    time_logging_calls(logging_calls)
    # The throwaway store keeps its artifacts beside its database (mlartifacts/ in the temp folder).
    with tempfile.TemporaryDirectory(prefix="tracking-overhead-") as tmp:
        for repeat in range(args.repeats):
            for mode in ("off", "on") if repeat % 2 == 0 else ("on", "off"):
                params = validate(apply_overrides(tree, [
                    *args.overrides, f"train.epochs={args.epochs}", f"data.prepared_dir={prepared}",
                    f"mlflow.enabled={mode == 'on'}", f"mlflow.tracking_uri=sqlite:///{tmp}/mlflow.db",
                    "mlflow.experiment=tracking-overhead", "train.early_stopping_patience=null",
                ]))
                run_once(params, Path(tmp) / f"{mode}-{repeat}", samples[mode])
                done = samples[mode]
                print(f"repeat {repeat + 1} tracking {mode}: epochs "
                      f"{[round(s, 2) for s in done.loop[-args.epochs:]]} s "
                      f"(CPU {[round(s, 2) for s in done.cpu[-args.epochs:]]} s), "
                      f"whole call {done.total[-1]:.1f} s", flush=True)

    mean = {mode: {key: statistics.mean(getattr(s, key)) for key in ("loop", "wall", "cpu", "total")}
            for mode, s in samples.items()}
    off, on = mean["off"], mean["on"]
    print(f"\n{base.model.family}/{base.model.variant} tuning={base.tuning.method}, "
          f"{base.data.img_size}x{base.data.img_size}, batch {base.train.batch_size}, {args.epochs} epochs x "
          f"{args.repeats} repeats per mode (alternating order), {os.cpu_count()} CPUs\n")
    print("| | tracking off | tracking on | difference |")
    print("|---|---:|---:|---:|")
    print(f"| mean epoch s (loop, EpochResult.seconds) | {off['loop']:.2f} | {on['loop']:.2f} | "
          f"{relative(on['loop'], off['loop'])} |")
    med = {mode: statistics.median(s.loop) for mode, s in samples.items()}
    print(f"| median epoch s (loop; robust to load spikes) | {med['off']:.2f} | {med['on']:.2f} | "
          f"{relative(med['on'], med['off'])} |")
    print(f"| mean epoch s (wall, incl. callbacks) | {off['wall']:.2f} | {on['wall']:.2f} | "
          f"{relative(on['wall'], off['wall'])} |")
    print(f"| mean epoch CPU s (process, all threads) | {off['cpu']:.2f} | {on['cpu']:.2f} | "
          f"{relative(on['cpu'], off['cpu'])} |")
    print(f"| whole call s (incl. model logging, overlays) | {off['total']:.1f} | {on['total']:.1f} | "
          f"{on['total'] - off['total']:+.1f} s |")
    if logging_calls:
        print(f"\nMlflowCallback.on_epoch_end blocks the loop {1000 * statistics.mean(logging_calls):.1f} ms "
              f"on average (max {1000 * max(logging_calls):.1f} ms) = "
              f"{100 * statistics.mean(logging_calls) / on['loop']:.3f}% of a mean epoch")


if __name__ == "__main__":
    main()
