"""The parameter schema: ``params.yaml`` plus ``-S key=value`` overrides, validated by pydantic.

Parameter names are part of the interface: ``dvc.yaml``, sweep spaces, MLflow runs and the README
all use the dotted names defined here (``train.lr``, ``tuning.lora.rank``, ...).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import ParamsError

DEFAULT_PARAMS_FILE = Path("params.yaml")


class _Section(BaseModel):
    # Unknown keys are errors, not silently ignored typos.
    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_assignment=True)


class SyntheticParams(_Section):
    n_images: int = Field(160, ge=3)
    size: int = Field(256, ge=32)
    crack_free_fraction: float = Field(0.1, ge=0.0, le=1.0)
    zero_shot_images: int = Field(40, ge=0)
    seed: int = 0


class AugmentParams(_Section):
    flip: bool = True
    rotate: bool = True
    color_blur: bool = False


class DataParams(_Section):
    source: str = "synthetic"
    img_size: int = Field(256, ge=32)
    val_fraction: float = Field(0.15, gt=0.0, lt=1.0)
    test_fraction: float = Field(0.15, gt=0.0, lt=1.0)
    seed: int = 0
    prepared_dir: str = "data/prepared"
    synthetic: SyntheticParams = SyntheticParams()
    augment: AugmentParams = AugmentParams()
    num_workers: int = Field(0, ge=0)

    @field_validator("img_size")
    @classmethod
    def _multiple_of_patch(cls, value: int) -> int:
        if value % 16:
            raise ValueError(f"must be a multiple of 16 (SAM's patch size), got {value}")
        return value


class ModelParams(_Section):
    family: Literal["sam"] = "sam"
    variant: Literal["vit_tiny", "vit_b", "vit_l", "vit_h"] = "vit_tiny"
    checkpoint: str | None = None


LoraTarget = Literal["qkv", "q", "k", "v", "proj", "lin1", "lin2"]


class LoraParams(_Section):
    rank: int = Field(8, ge=1)
    alpha: float | None = None
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    targets: list[LoraTarget] = ["q", "v"]
    last_blocks: int = Field(0, ge=0)

    @field_validator("targets")
    @classmethod
    def _targets_consistent(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("needs at least one target")
        if "qkv" in value and {"q", "k", "v"} & set(value):
            raise ValueError("'qkv' already covers q, k and v; list either 'qkv' or its slices")
        return value


class AdapterParams(_Section):
    dim: int = Field(32, ge=1)
    scale: float = Field(0.2, gt=0.0)


class CrackSamParams(_Section):
    parts: list[Literal["lora", "adapter"]] = ["adapter"]

    @field_validator("parts")
    @classmethod
    def _not_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("needs 'lora', 'adapter' or both")
        return value


class TuningParams(_Section):
    method: Literal["layernorm", "decoder", "lora", "adapter", "cracksam", "full"] = "full"
    lora: LoraParams = LoraParams()
    adapter: AdapterParams = AdapterParams()
    cracksam: CrackSamParams = CrackSamParams()


class TrainParams(_Section):
    epochs: int = Field(6, ge=1)
    batch_size: int = Field(4, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(5e-5, ge=0.0)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    schedule: Literal["cosine", "poly", "multistep", "plateau", "constant"] = "cosine"
    warmup_iters: int = Field(0, ge=0)
    poly_power: float = Field(6.0, gt=0.0)
    milestones: list[int] = [30, 60]
    gamma: float = Field(0.1, gt=0.0, le=1.0)
    plateau_patience: int = Field(3, ge=0)
    early_stopping_patience: int | None = Field(None, ge=1)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    grad_clip: float | None = Field(None, gt=0.0)
    num_threads: int | None = Field(None, ge=1)
    seed: int = 0
    out_dir: str = "outputs/train"


class LossParams(_Section):
    kind: Literal["lambda_bce_dice", "bce_lambda_dice", "dice", "focal"] = "bce_lambda_dice"
    lambda_: float = Field(0.65, alias="lambda", ge=0.0)
    dice: Literal["squared", "smooth"] = "squared"
    focal_alpha: float = Field(3.0, gt=0.0)
    focal_gamma: float = Field(2.0, ge=0.0)

    @model_validator(mode="after")
    def _lambda_range(self) -> "LossParams":
        if self.kind == "lambda_bce_dice" and self.lambda_ > 1.0:
            raise ValueError(f"lambda must be in [0, 1] for lambda_bce_dice, got {self.lambda_}")
        return self


class EvalParams(_Section):
    threshold: float = Field(0.5, gt=0.0, lt=1.0)
    tolerance: int = Field(2, ge=0)
    n_thresholds: int = Field(99, ge=2)


class Params(_Section):
    data: DataParams = DataParams()
    model: ModelParams = ModelParams()
    tuning: TuningParams = TuningParams()
    train: TrainParams = TrainParams()
    loss: LossParams = LossParams()
    eval: EvalParams = EvalParams()

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict with the public (aliased) key names, as in ``params.yaml``."""
        return self.model_dump(by_alias=True, mode="json")

    def flat(self) -> dict[str, Any]:
        """Dotted-key view (``{"train.lr": 0.001, ...}``), as logged to MLflow."""
        return flatten(self.to_dict())


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts into dotted keys; lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``key.sub=value`` and parse the value as YAML, like ``dvc exp run -S``."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ParamsError(f"override {text!r} is not of the form key=value (e.g. train.lr=0.001)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as error:
        raise ParamsError(f"override {key}: value {raw!r} is not valid YAML ({error})") from None
    return key, value


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``tree`` with each ``key=value`` override set at its dotted path."""
    tree = copy.deepcopy(tree)
    defaults = Params().to_dict()
    for text in overrides:
        key, value = parse_override(text)
        node, default = tree, defaults
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            default = default.get(part, {}) if isinstance(default, dict) else {}
            # A key missing from the file may still be a value in the schema (train.lr.x=1).
            if not isinstance(child, dict) or not isinstance(default, dict):
                parent = ".".join(parts[: depth + 1])
                raise ParamsError(f"override {key}: {parent} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return tree


def _format_validation_error(error: ValidationError, source: str) -> str:
    lines = [f"invalid parameters in {source}:"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(root)"
        if item["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown parameter")
        else:
            got = item.get("input")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"  {key}: {item['msg']}{shown}")
    return "\n".join(lines)


def validate(tree: dict[str, Any], source: str = "params") -> Params:
    """Validate a nested dict; the error message names every bad key."""
    try:
        return Params.model_validate(tree)
    except ValidationError as error:
        raise ParamsError(_format_validation_error(error, source)) from None


def read_params_file(path: str | Path = DEFAULT_PARAMS_FILE) -> dict[str, Any]:
    """Read a YAML params file into a dict; a missing file means all defaults."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ParamsError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(tree, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level")
    return tree


def load_params(path: str | Path = DEFAULT_PARAMS_FILE, overrides: list[str] | None = None) -> Params:
    """Read ``path``, apply ``-S`` overrides and validate."""
    tree = apply_overrides(read_params_file(path), overrides or [])
    source = f"{path}" + (" with overrides " + " ".join(overrides) if overrides else "")
    return validate(tree, source)
