"""What a sweep hands back, backend-independent: progress lines, the trial table, the winner's files.

``sweeps/<study>/best_params.yaml`` (params.yaml layout) and ``best_overrides.txt`` (one
``-S key=value`` per line) hold only the keys the sweep decided (the space's fixed and searched
values), so ``dvc exp run`` retrains the winner on the full schedule of ``params.yaml``.
"""
from __future__ import annotations

import csv
import io
import json
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from pipeline.atomic import write_text
from pipeline.params import format_value, overrides, set_values

BEST_PARAMS_FILE = "best_params.yaml"
BEST_OVERRIDES_FILE = "best_overrides.txt"
TRIALS_FILE = "trials.csv"


@dataclass
class TrialRow:
    """One trial as every backend reports it; ``state`` is one of ``search.states.STATES``."""

    number: int
    state: str
    value: float | None
    params: dict[str, Any]
    epochs: int | None = None
    seconds: float | None = None
    note: str = ""
    given_up: str = ""  # why the trial's point is not run again though it never finished, else ""


@dataclass
class BestTrial:
    number: int
    value: float
    values: dict[str, Any]  # fixed + searched dotted keys


@dataclass
class SweepSummary:
    """A sweep's outcome, whatever the backend (``search.driver.run_sweep``)."""

    study: str
    metric: str
    counts: dict[str, int]
    rows: list[TrialRow]
    best: BestTrial | None = None
    parent_run_id: str | None = None
    files: list[Path] = field(default_factory=list)
    command: str | None = None
    tied: int = 0  # complete trials that all scored ``tied_value`` (no best is named), else 0
    tied_value: float | None = None


def retrain_command(values: dict[str, Any]) -> str:
    return " ".join(["dvc exp run", *(f"-S {item}" for item in overrides(values))])


def write_best(out_dir: Path, best: BestTrial, metric: str) -> list[Path]:
    """Write ``best_params.yaml`` and ``best_overrides.txt`` atomically; returns their paths."""
    params_file, overrides_file = out_dir / BEST_PARAMS_FILE, out_dir / BEST_OVERRIDES_FILE
    header = (f"# best trial {best.number}: {metric} {best.value:.4f}. Only the keys the sweep decided;\n"
              "# train.epochs comes from params.yaml (the full schedule), not from the sweep.\n")
    write_text(params_file, header + yaml.safe_dump(set_values({}, best.values), sort_keys=False))
    write_text(overrides_file, "".join(f"-S {item}\n" for item in overrides(best.values)))
    return [params_file, overrides_file]


def write_trials_csv(rows: list[TrialRow], out_dir: Path) -> Path | None:
    """``trials.csv``: a row per trial, a ``params_<key>`` column per parameter (lists as JSON)."""
    if not rows:
        return None
    keys: list[str] = []
    for row in rows:
        keys += [key for key in row.params if key not in keys]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["number", "state", "value", "epochs", "seconds", *(f"params_{key}" for key in keys), "note"])
    for row in sorted(rows, key=lambda item: item.number):
        values = [json.dumps(row.params[key]) if isinstance(row.params.get(key), list) else row.params.get(key, "")
                  for key in keys]
        writer.writerow([row.number, row.state, row.value, row.epochs, row.seconds, *values, row.note])
    path = out_dir / TRIALS_FILE
    write_text(path, buffer.getvalue())
    return path


def params_text(params: dict[str, Any]) -> str:
    return " ".join(f"{key}={format_value(value)}" for key, value in params.items())


def _value_text(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.4f}"


def trial_line(row: TrialRow, metric: str) -> str:
    """One line per finished trial, printed as it ends."""
    extra = []
    if row.epochs is not None:
        extra.append(f"{row.epochs} epoch{'s' if row.epochs != 1 else ''}")
    if row.seconds is not None:
        extra.append(f"{row.seconds:.0f}s")
    tail = f" [{', '.join(extra)}]" if extra else ""
    note = f"  ({row.note})" if row.note else ""
    return f"trial {row.number} {row.state} {metric} {_value_text(row.value)}  {params_text(row.params)}{tail}{note}"


def format_table(rows: list[TrialRow], metric: str) -> str:
    """All trials, one column per parameter (blank where a conditional one was inactive)."""
    keys: list[str] = []
    for row in rows:
        keys += [key for key in row.params if key not in keys]
    header = ["trial", "state", metric, "epochs", *keys, "note"]
    body = [[str(row.number), row.state, _value_text(row.value), "-" if row.epochs is None else str(row.epochs),
             *(format_value(row.params[key]) if key in row.params else "" for key in keys), row.note[:60]]
            for row in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in [header, *body]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def format_summary(summary: SweepSummary, epochs: int, sweep_overrides: Sequence[str] = ()) -> str:
    """The closing block: counts, the best trial, its files and the command that retrains it."""
    counts = ", ".join(f"{n} {state}" for state, n in summary.counts.items() if n)
    lines = [f"study {summary.study!r}: {counts or 'no trials'}"]
    lines += [f"trial {row.number} ({params_text(row.params)}) not run again: {row.given_up}"
              for row in summary.rows if row.given_up]
    if summary.parent_run_id:
        lines.append(f"MLflow sweep run {summary.parent_run_id}")
    if summary.best is None:
        if summary.tied:
            lines.append(f"all {summary.tied} complete trials scored {summary.metric} {summary.tied_value:.4f}: no best to name "
                         "or retrain (train them longer with --epochs, or check the data)")
        else:
            lines.append("no trial completed yet: nothing to retrain")
        return "\n".join(lines)
    best = summary.best
    lines.append(f"best {summary.metric} {best.value:.4f} (trial {best.number})")
    lines.append(f"best params: {params_text(best.values)}")
    lines += [f"written: {path}" for path in summary.files]
    lines.append("retrain the winner on the full schedule, evaluate and register it:")
    lines.append(f"  {summary.command}")
    lines.append(f"note: the sweep's train.epochs ({epochs}) is not carried over; the full schedule "
                 "comes from params.yaml")
    # Where the runs were logged is no part of the model: only other -S matter for the retrain.
    sweep_overrides = [item for item in sweep_overrides if not item.startswith("mlflow.")]
    if sweep_overrides:
        lines.append(f"note: the sweep also ran with {' '.join('-S ' + shlex.quote(o) for o in sweep_overrides)};"
                     " add those that should hold for the retrain")
    return "\n".join(lines)
