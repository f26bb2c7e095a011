"""Pick the sweep backend: Optuna here; Ray Tune once ``search/ray_backend.py`` provides ``run_ray_sweep``."""
from __future__ import annotations

import importlib.util

from search.config import SweepConfig, SweepError
from search.results import SweepSummary

BACKENDS = ("optuna", "ray")


def run_sweep(backend: str, config: SweepConfig) -> SweepSummary:
    """Run ``config`` on ``backend``; both take the same config and return the same summary."""
    if backend == "optuna":
        from search.optuna_backend import run_optuna_sweep

        return run_optuna_sweep(config)
    if backend == "ray":
        # The hook for the Ray Tune backend: ``run_ray_sweep(config: SweepConfig) -> SweepSummary``.
        if importlib.util.find_spec("search.ray_backend") is None:
            raise SweepError("Ray backend not available yet: use --backend optuna "
                             "(search/ray_backend.py with run_ray_sweep() will enable --backend ray)")
        from search.ray_backend import run_ray_sweep  # type: ignore[import-not-found]

        return run_ray_sweep(config)
    raise SweepError(f"unknown sweep backend {backend!r}; choose {' or '.join(BACKENDS)}")
