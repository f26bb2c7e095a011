"""The one vocabulary of trial states: in trial rows, printed lines, ``trials.csv``, the MLflow
``trial.state`` tag of every trial run and the parent run's ``n_<state>`` counts, whatever the backend.
"""
from __future__ import annotations

COMPLETE = "complete"  # trained to its last epoch (or its early-stopping rule); has a score
PRUNED = "pruned"  # stopped early by the pruner or scheduler; its score so far counts
FAILED = "failed"  # its own failure (NaN loss, out of memory, invalid params) or its worker died
RUNNING = "running"  # being trained now, or its worker died and nobody noticed yet
WAITING = "waiting"  # queued: a grid point or a retry not started yet

STATES = (COMPLETE, PRUNED, FAILED, RUNNING, WAITING)
FINISHED_STATES = (COMPLETE, PRUNED)  # count toward --n-trials


def count_states(states: list[str]) -> dict[str, int]:
    """Trials by state, every state present (zero where none)."""
    return {state: sum(1 for item in states if item == state) for state in STATES}
