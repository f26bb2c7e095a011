"""The sweep backends ``crackops sweep --backend`` offers: name -> ``module:class`` of a
:class:`search.driver.SweepBackend`. Adding a backend is one file with that class and one line here."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the CLI reads BACKENDS for --help: no MLflow, Optuna or Ray imports here
    from search.config import SweepConfig
    from search.driver import SweepBackend
    from search.results import SweepSummary

BACKENDS = {
    "optuna": "search.optuna_backend:OptunaBackend",  # workers on one study in an RDB (SQLite, PostgreSQL)
    "ray": "search.ray_backend:RayBackend",  # Ray Tune on a local Ray or a cluster (--address)
}


def make_backend(name: str, config: "SweepConfig") -> "SweepBackend":
    """The backend ``name`` for ``config`` (imported only when chosen: Ray is heavy)."""
    from search.config import SweepError

    if name not in BACKENDS:
        raise SweepError(f"unknown sweep backend {name!r}; choose one of {', '.join(BACKENDS)}")
    module, cls = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)(config)


def run_sweep(backend: str, config: "SweepConfig") -> "SweepSummary":
    """Run ``config`` on ``backend``; every backend takes the same config and returns the same summary."""
    from search.driver import run_sweep as drive

    return drive(make_backend(backend, config))
