"""Search spaces: YAML files of dotted parameter names, their ranges and conditions.

A space file (``search/spaces/<name>.yaml``)::

    description: SAC config 3, BCE + lambda * Dice
    epochs: 4                      # train.epochs of every trial
    sampler: grid-fraction         # default sampler: grid-fraction | random | tpe
    grid_fraction: 0.05            # share of the grid drawn without replacement
    metric: val_f1                 # what a trial is scored and the best chosen by (its best epoch)
    prune_metric: val_pixel_ap     # what pruners compare each epoch; default: metric
    tpe_startup_trials: 5          # random trials before TPE models the results; default: Optuna's 10
    fixed: {loss.kind: bce_lambda_dice}
    parameters:
      loss.lambda: {type: stepped, low: 0.5, high: 0.95, step: 0.05}
      train.lr: {type: float, low: 1.0e-5, high: 1.0e-2, log: true}
      tuning.lora.rank: {type: categorical, choices: [4, 8, 16], when: {tuning.method: [lora, cracksam]}}

``when`` makes a parameter conditional on values sampled (or fixed) before it.

``presets`` name sets of values chosen together (a family with its own loss and optimiser); the
categorical parameter ``preset`` picks one per trial, and ``when`` may test the preset's name::

    presets:
      deeplabv3: {model.family: deeplabv3, loss.kind: focal, train.optimizer: sgd}
      sam-lora: {model.family: sam, tuning.method: lora}
    parameters:
      preset: {type: categorical, choices: [deeplabv3, sam-lora]}
      loss.focal_gamma: {type: categorical, choices: [1, 2, 4], when: {preset: [deeplabv3]}}

A trial's values are the fixed ones, then its preset's, then its other sampled ones.
"""
from __future__ import annotations

import hashlib
import math
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.errors import ParamsError
from pipeline.params import Params, set_values, validate

SPACES_DIR = Path(__file__).resolve().parent / "spaces"
SAMPLERS = ("grid-fraction", "random", "tpe")
PRESET_KEY = "preset"  # the searched name of a preset: not a params key, expanded by SearchSpace.resolve


class SpaceError(ParamsError):
    """A search-space file is invalid; the message names the file and the key."""


class ParamSpec(BaseModel):
    """One searched parameter: categorical choices, a (log-)uniform range, or a stepped grid."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["categorical", "float", "int", "stepped"]
    choices: list[Any] | None = None
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    when: dict[str, list[Any]] | None = None

    @model_validator(mode="after")
    def _complete(self) -> "ParamSpec":
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("categorical needs a non-empty 'choices' list")
            return self
        if self.low is None or self.high is None or self.low > self.high:
            raise ValueError(f"{self.type} needs 'low' <= 'high'")
        if self.type == "stepped" and (self.step is None or self.step <= 0):
            raise ValueError("stepped needs a positive 'step'")
        if self.log and (self.low <= 0 or self.type == "stepped"):
            raise ValueError("log scale needs low > 0 and no step")
        return self

    @property
    def finite(self) -> bool:
        return self.type in ("categorical", "stepped") or (self.type == "int" and not self.log)

    def values(self) -> list[Any]:
        """Every value of a finite parameter, in order (for grids)."""
        if self.type == "categorical":
            return list(self.choices)
        if self.type == "int":
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        # Decimal arithmetic: 5e-4 + k * 2e-4 must give 0.0009, not 0.0009000000000000001.
        low, step = Decimal(str(self.low)), Decimal(str(self.step))
        count = int((Decimal(str(self.high)) - low) / step) + 1
        return [float(low + k * step) for k in range(count)]


class SearchSpace(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = ""
    description: str = ""
    epochs: int = Field(4, ge=1)
    metric: str = "val_f1"
    # Compared by the pruners after every epoch, in the same direction as ``metric``. F1 at 0.5 is 0
    # for most configurations after one epoch, so a threshold-free score ranks them earlier.
    prune_metric: str | None = None
    direction: Literal["maximize", "minimize"] = "maximize"
    sampler: Literal["grid-fraction", "random", "tpe"] = "tpe"
    tpe_startup_trials: int | None = Field(None, ge=1)
    grid_fraction: float | None = Field(None, gt=0.0, le=1.0)
    fixed: dict[str, Any] = {}
    presets: dict[str, dict[str, Any]] = {}
    parameters: dict[str, ParamSpec]

    @model_validator(mode="after")
    def _presets_chosen_by_preset(self) -> "SearchSpace":
        spec = self.parameters.get(PRESET_KEY)
        if spec is None:
            if self.presets:
                raise ValueError(f"presets need a categorical parameter {PRESET_KEY!r} choosing among them")
            return self
        if spec.type != "categorical":
            raise ValueError(f"parameters.{PRESET_KEY} must be categorical over the names in 'presets'")
        unknown = [choice for choice in spec.choices if choice not in self.presets]
        if unknown:
            raise ValueError(f"parameters.{PRESET_KEY}: {unknown} are not defined under 'presets'")
        return self

    @model_validator(mode="after")
    def _conditions_refer_backwards(self) -> "SearchSpace":
        seen = set(self.fixed)
        for key, spec in self.parameters.items():
            for condition in (spec.when or {}):
                if condition not in seen:
                    raise ValueError(f"parameters.{key}.when: {condition!r} must be fixed or searched before {key!r}")
            seen.add(key)
            if key == PRESET_KEY:
                seen.update(key for values in self.presets.values() for key in values)
        return self

    @property
    def pruning_metric(self) -> str:
        """The per-epoch score pruners and schedulers compare: ``prune_metric``, else ``metric``."""
        return self.prune_metric or self.metric

    def resolve(self, chosen: dict[str, Any]) -> dict[str, Any]:
        """The dotted params keys a trial sets: fixed values, its preset's values, its other choices."""
        values = dict(self.fixed)
        if PRESET_KEY in chosen:
            values.update(self.presets[chosen[PRESET_KEY]])
        values.update({key: value for key, value in chosen.items() if key != PRESET_KEY})
        return values

    def active(self, key: str, chosen: dict[str, Any]) -> bool:
        when = self.parameters[key].when or {}
        values = {**self.resolve(chosen), **chosen}
        return all(values.get(name) in allowed for name, allowed in when.items())

    def suggest(self, trial: Any) -> dict[str, Any]:
        """Sample one configuration with an Optuna trial (define-by-run, so conditions work)."""
        chosen: dict[str, Any] = {}
        for key, spec in self.parameters.items():
            if not self.active(key, chosen):
                continue
            if spec.type == "categorical":
                encoded = [_encode(choice) for choice in spec.choices]
                value = trial.suggest_categorical(key, encoded)
                chosen[key] = spec.choices[encoded.index(value)]
            elif spec.type == "int":
                chosen[key] = trial.suggest_int(key, int(spec.low), int(spec.high), step=int(spec.step or 1), log=spec.log)
            elif spec.type == "stepped":
                chosen[key] = float(f"{trial.suggest_float(key, spec.low, spec.high, step=spec.step):.12g}")
            else:
                chosen[key] = trial.suggest_float(key, spec.low, spec.high, log=spec.log)
        return chosen

    def with_epochs(self, epochs: int) -> "SearchSpace":
        """This space with another trial length (``crackops sweep --epochs``)."""
        if epochs < 1:
            raise SpaceError(f"--epochs must be at least 1, got {epochs}")
        return self.model_copy(update={"epochs": epochs})

    def digest(self) -> str:
        """SHA-256 of the space's definition: a study records it to notice an edited space on resume."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()

    def encode(self, point: dict[str, Any]) -> dict[str, Any]:
        """A configuration as Optuna stores it (list choices as ``"q,v"``, as :meth:`suggest` suggests them)."""
        return {key: _encode(value) for key, value in point.items()}

    def decode(self, stored: dict[str, Any]) -> dict[str, Any]:
        """Optuna's stored values back to real ones (the inverse of :meth:`encode`)."""
        decoded = {}
        for key, value in stored.items():
            spec = self.parameters.get(key)
            if spec is not None and spec.type == "categorical":
                encoded = [_encode(choice) for choice in spec.choices]
                value = spec.choices[encoded.index(value)] if value in encoded else value
            elif spec is not None and spec.type == "stepped":
                value = float(f"{value:.12g}")
            decoded[key] = value
        return decoded

    def grid(self) -> list[dict[str, Any]]:
        """Every configuration of a finite space, conditional parameters only where active."""
        infinite = [key for key, spec in self.parameters.items() if not spec.finite]
        if infinite:
            raise SpaceError(f"space {self.name!r}: grid sampling needs finite parameters; {infinite} are continuous")
        configs: list[dict[str, Any]] = [{}]
        for key, spec in self.parameters.items():
            grown = []
            for config in configs:
                if self.active(key, config):
                    grown += [{**config, key: value} for value in spec.values()]
                else:
                    grown.append(config)
            configs = grown
        return configs

    def grid_sample(self, seed: int, fraction: float | None = None) -> list[dict[str, Any]]:
        """A seeded share of the grid drawn without replacement (SAC: 20%, 20%, 5%)."""
        fraction = fraction if fraction is not None else (self.grid_fraction or 1.0)
        grid = self.grid()
        count = max(1, math.floor(fraction * len(grid) + 0.5))
        picks = np.random.default_rng(seed).choice(len(grid), size=count, replace=False)
        return [grid[int(index)] for index in picks]

    def trial_params(self, base: dict[str, Any], chosen: dict[str, Any]) -> Params:
        """The full, validated params of one trial: base file, fixed values, sampled values, epochs."""
        tree = set_values(base, {**self.resolve(chosen), "train.epochs": self.epochs})
        return validate(tree, f"search space {self.name!r}")


def _encode(value: Any) -> Any:
    # Optuna's categorical values must be scalars: lists (LoRA targets) travel as "q,v".
    return ",".join(map(str, value)) if isinstance(value, list) else value


def space_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        return path
    return SPACES_DIR / f"{name_or_path}.yaml"


def load_space(name_or_path: str) -> SearchSpace:
    """Load a shipped space by name or a user's space file; errors name the file and key."""
    path = space_path(name_or_path)
    if not path.is_file():
        shipped = sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))
        raise SpaceError(f"search space {name_or_path!r} not found ({path}); shipped spaces: {', '.join(shipped)}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        space = SearchSpace.model_validate({"name": path.stem, **raw})
    except yaml.YAMLError as error:
        raise SpaceError(f"{path}: not valid YAML ({error})") from None
    except ValidationError as error:
        lines = [f"invalid search space {path}:"]
        for item in error.errors():
            lines.append(f"  {'.'.join(str(p) for p in item['loc']) or '(root)'}: {item['msg']}")
        raise SpaceError("\n".join(lines)) from None
    _check_keys(space, path)
    return space


def _check_keys(space: SearchSpace, path: Path) -> None:
    """Every fixed and searched key must be a real parameter with a value of the right type."""
    samples = {key: (spec.choices[0] if spec.type == "categorical" else
                     int(spec.low) if spec.type == "int" else spec.low)
               for key, spec in space.parameters.items()}
    for key, value in {**space.fixed, **samples}.items():
        try:
            space.trial_params({}, {key: value})
        except ParamsError as error:
            detail = str(error).split("\n", 1)[-1].strip()
            raise SpaceError(f"{path}: {key}: {detail}") from None
    for name in space.presets:  # a preset's values must hold together (e.g. a family and its tuning)
        try:
            space.trial_params({}, {PRESET_KEY: name})
        except ParamsError as error:
            detail = str(error).split("\n", 1)[-1].strip()
            raise SpaceError(f"{path}: presets.{name}: {detail}") from None
