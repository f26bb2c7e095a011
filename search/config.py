"""What a sweep was asked to do, backend-independent: ``crackops sweep`` options resolved to values."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import CrackopsError
from pipeline.params import Params
from search.space import SearchSpace

DEFAULT_STORAGE = "sqlite:///sweeps.db"
DEFAULT_OUT_ROOT = Path("sweeps")
PRUNERS = ("none", "median", "asha")
# A search without a grid has no natural end: this many finished trials unless --n-trials says otherwise.
DEFAULT_N_TRIALS = 20


class SweepError(CrackopsError):
    """A sweep cannot start or resume as asked; the message says what to change."""


@dataclass
class SweepConfig:
    """One ``crackops sweep`` invocation. ``None`` options fall back to the space's own defaults."""

    space: SearchSpace
    base: Params  # params.yaml + -S overrides; every trial starts from this tree
    n_trials: int | None = None
    sampler: str | None = None
    pruner: str | None = None
    study: str | None = None
    storage: str = DEFAULT_STORAGE
    seed: int = 0
    address: str | None = None  # Ray cluster; unused by the Optuna backend
    overrides: list[str] = field(default_factory=list)  # the sweep's -S, echoed next to the retrain command
    out_root: Path = DEFAULT_OUT_ROOT

    def __post_init__(self) -> None:
        if self.n_trials is not None and self.n_trials < 1:
            raise SweepError(f"--n-trials must be at least 1, got {self.n_trials}")
        if self.pruner is not None and self.pruner not in PRUNERS:
            raise SweepError(f"--pruner must be one of {', '.join(PRUNERS)}, got {self.pruner!r}")

    @property
    def sampler_name(self) -> str:
        return self.sampler or self.space.sampler

    @property
    def pruner_name(self) -> str:
        """Median for adaptive samplers; none for grid-fraction, where every drawn point runs in full
        (the SAC protocol compares grid points on equal budgets; the fraction is the saving)."""
        if self.pruner:
            return self.pruner
        return "none" if self.sampler_name == "grid-fraction" else "median"

    @property
    def study_name(self) -> str:
        return self.study or self.space.name

    @property
    def out_dir(self) -> Path:
        return self.out_root / self.study_name

    def base_tree(self) -> dict[str, Any]:
        """The nested params every trial starts from (``params.yaml`` layout)."""
        return self.base.to_dict()
