"""Optuna samplers by the name a space or ``--sampler`` gives; Optuna's own backend and Tune's
``OptunaSearch`` (the Ray backend) draw with the same ones."""
from __future__ import annotations

import optuna

from search.space import SearchSpace


def make_sampler(name: str, seed: int, space: SearchSpace) -> optuna.samplers.BaseSampler:
    """``tpe``: Optuna's TPE, after ``space.tpe_startup_trials`` random trials (Optuna's 10 if unset);
    ``random`` and ``grid-fraction``: random sampling."""
    if name == "tpe":
        startup = {"n_startup_trials": space.tpe_startup_trials} if space.tpe_startup_trials else {}
        return optuna.samplers.TPESampler(seed=seed, **startup)
    # grid-fraction runs queued points; its sampler only fills a point nobody queued.
    return optuna.samplers.RandomSampler(seed=seed)
