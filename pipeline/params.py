"""The parameter schema: ``params.yaml`` plus ``-S key=value`` overrides, validated by pydantic.

Parameter names are part of the interface: ``dvc.yaml``, sweep spaces, MLflow runs and the README
all use the dotted names defined here (``train.lr``, ``tuning.lora.rank``, ...).
"""
from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import ParamsError
from pipeline.eval_schema import (CORRUPTION_HEADLINE, GATE_METRICS, METRIC_KEYS, TOLERANCE_RULE_NAMES,
                                  ZERO_SHOT_HEADLINE)

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
    crop_size: int | None = Field(None, ge=16)  # deeplabv3: train on random crops of this size


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
    # Limited supervision (lightweight-SAM study): a seeded subset of the train split.
    train_fraction: float | None = Field(None, gt=0.0, le=1.0)
    shots_per_dataset: int | None = Field(None, ge=1)
    dataset_pattern: str | None = None  # regex naming a training stem's source dataset (first group)

    @field_validator("img_size")
    @classmethod
    def _multiple_of_patch(cls, value: int) -> int:
        if value % 16:
            raise ValueError(f"must be a multiple of 16 (SAM's patch size), got {value}")
        return value

    @field_validator("dataset_pattern")
    @classmethod
    def _valid_pattern(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as error:
                raise ValueError(f"not a valid regular expression ({error})") from None
        return value

    @model_validator(mode="after")
    def _training_split_left(self) -> "DataParams":
        # Caught here, not as a traceback from the split: the sum leaves no image to train on.
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(f"data.val_fraction {self.val_fraction} + data.test_fraction {self.test_fraction} "
                             "must be below 1, leaving images to train on")
        return self

    @model_validator(mode="after")
    def _one_subset_rule(self) -> "DataParams":
        if self.train_fraction is not None and self.shots_per_dataset is not None:
            raise ValueError("set data.train_fraction or data.shots_per_dataset, not both")
        return self


# The one list of each extension point's names: the schema validates against it, and the builders'
# tables (pipeline/models/factory.py FAMILIES, pipeline/tuning/apply.py SAM_METHODS) are tested to
# name exactly these.
ModelFamily = Literal["sam", "sam_lite", "deeplabv3"]
TuningMethod = Literal["layernorm", "decoder", "lora", "adapter", "cracksam", "full"]
MODEL_FAMILIES: tuple[str, ...] = get_args(ModelFamily)
TUNING_METHODS: tuple[str, ...] = get_args(TuningMethod)
# The non-SAM families train everything or their head only; SAM's PEFT methods do not apply to them.
HEAD_FAMILY_METHODS = ("full", "decoder")


# model.student_stride of everything saved before the key existed: weights fit either stride, so
# loaders must not assume today's default for an old sam_lite student or model.
LEGACY_STUDENT_STRIDE = 32


class ModelParams(_Section):
    family: ModelFamily = "sam"
    variant: Literal["vit_tiny", "vit_b", "vit_l", "vit_h"] = "vit_tiny"  # SAM (family sam) only
    checkpoint: str | None = None  # sam: official SAM checkpoint; deeplabv3: torchvision state dict
    student_checkpoint: str | None = "outputs/distill/student.safetensors"  # sam_lite: distilled student
    # sam_lite: TinyViT's output stride. 16 is MobileSAM's student (last stage not downsampled: SAM's
    # grid, no resampling when data.img_size is the teacher's); 32 is timm's TinyViT as published.
    student_stride: Literal[16, 32] = 16
    # SAM only (pipeline/models/mask_heads.py): SAM's pretrained mask token with a sigmoid, or
    # CrackSAM's two new class tokens (background, crack) with a 2-class softmax.
    mask_head: Literal["sam_token", "class_tokens"] = "sam_token"
    # What the network sees: the family's own pixel normalisation (``family``: SAM's mean/std for
    # sam, ImageNet's for deeplabv3) or the [0, 1] pixels as they are (``none``: CrackSAM's code,
    # the DeepLabV3 study). sam_lite keeps ``family``: its student mimics a SAM teacher's input.
    input_norm: Literal["family", "none"] = "family"

    @model_validator(mode="after")
    def _settings_fit_family(self) -> "ModelParams":
        if self.family != "sam" and self.mask_head != "sam_token":
            raise ValueError(f"model.mask_head {self.mask_head!r} applies to model.family sam only, "
                             f"not {self.family!r} (leave it 'sam_token')")
        if self.family == "sam_lite" and self.input_norm != "family":
            raise ValueError("model.input_norm 'none' does not apply to model.family sam_lite: its student "
                             "is distilled from a SAM teacher that sees SAM's normalisation (leave it 'family')")
        return self


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
    method: TuningMethod = "full"
    lora: LoraParams = LoraParams()
    adapter: AdapterParams = AdapterParams()
    cracksam: CrackSamParams = CrackSamParams()


class TrainParams(_Section):
    epochs: int = Field(8, ge=1)
    batch_size: int = Field(4, ge=1)
    lr: float = Field(3e-4, gt=0.0)
    weight_decay: float = Field(5e-5, ge=0.0)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    schedule: Literal["cosine", "poly", "multistep", "plateau", "constant"] = "cosine"
    warmup_iters: int = Field(0, ge=0)
    poly_power: float = Field(6.0, gt=0.0)
    milestones: list[int] = [30, 60]
    gamma: float = Field(0.1, gt=0.0, le=1.0)
    plateau_patience: int = Field(3, ge=0)
    plateau_metric: Literal["val_f1", "val_loss"] = "val_f1"  # what `plateau` watches (DeepLabV3 study: val_loss)
    early_stopping_patience: int | None = Field(None, ge=1)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    grad_clip: float | None = Field(None, gt=0.0)
    num_threads: int | None = Field(None, ge=1)
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$")  # auto: the first GPU if any, else the CPU
    seed: int = 0
    out_dir: str = "outputs/train"


class LossParams(_Section):
    kind: Literal["lambda_bce_dice", "bce_lambda_dice", "dice", "focal", "sigmoid_focal", "ce_class_dice"] = (
        "bce_lambda_dice")
    lambda_: float = Field(0.65, alias="lambda", ge=0.0)
    dice: Literal["squared", "smooth"] = "squared"
    focal_alpha: float = Field(3.0, gt=0.0)  # focal: weight of the non-crack term (DeepLabV3 study's Eq. 2)
    focal_gamma: float = Field(2.0, ge=0.0)  # focal and sigmoid_focal: focusing exponent
    sigmoid_focal_alpha: float = Field(0.25, ge=0.0, le=1.0)  # sigmoid_focal: torchvision's crack-term weight
    ce_weight: float = Field(0.2, ge=0.0, le=1.0)  # ce_class_dice: CrackSAM's ce_weight·CE + (1-ce_weight)·Dice

    @model_validator(mode="after")
    def _lambda_range(self) -> "LossParams":
        if self.kind == "lambda_bce_dice" and self.lambda_ > 1.0:
            raise ValueError(f"lambda must be in [0, 1] for lambda_bce_dice, got {self.lambda_}")
        return self


class EvalParams(_Section):
    threshold: float = Field(0.5, gt=0.0, lt=1.0)
    tolerance: int = Field(2, ge=0)
    # ODS/OIS/AP rule (pipeline/metrics/tolerance.py): the DeepLabV3 study's square kernel, or BSDS matching
    tolerance_rule: Literal[TOLERANCE_RULE_NAMES] = "square"
    n_thresholds: int = Field(99, ge=2)
    batch_size: int = Field(4, ge=1)
    blur_kernels: list[int] = [1, 5, 9, 13, 17, 21]
    zero_shot: list[str] = ["synthetic-masonry"]
    n_overlays: int = Field(4, ge=0)
    out_dir: str = "outputs/eval"

    @field_validator("blur_kernels")
    @classmethod
    def _odd_kernels(cls, value: list[int]) -> list[int]:
        bad = [k for k in value if k < 1 or (k > 1 and k % 2 == 0)]
        if bad:
            raise ValueError(f"blur kernels must be 1 (no blur) or odd sizes >= 3, got {bad}")
        return value


class DistillParams(_Section):
    """Lightweight SAM: the frozen SAM teacher, the image set and the student's MSE training."""

    teacher_variant: Literal["vit_tiny", "vit_b", "vit_l", "vit_h"] = "vit_tiny"
    teacher_checkpoint: str | None = None
    teacher_img_size: int | None = Field(None, ge=32)  # None: data.img_size (the study: 1024)
    images: str | None = None  # None: the prepared train split; else a folder of images (no masks)
    epochs: int = Field(4, ge=1)
    batch_size: int = Field(4, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    seed: int = 0
    shard_size: int = Field(64, ge=1)  # embeddings per safetensors shard
    out_dir: str = "outputs/distill"

    @field_validator("teacher_img_size")
    @classmethod
    def _multiple_of_patch(cls, value: int | None) -> int | None:
        if value is not None and value % 16:
            raise ValueError(f"must be a multiple of 16 (SAM's patch size), got {value}")
        return value


class MlflowParams(_Section):
    enabled: bool = True
    tracking_uri: str | None = None
    experiment: str = "crackops"
    registered_model: str = "crack-segmenter"


class RayParams(_Section):
    cpus_per_trial: float = Field(1.0, gt=0.0)
    gpus_per_trial: float = Field(0.0, ge=0.0)
    max_concurrent_trials: int = Field(2, ge=1)
    storage_path: str = "sweeps/ray"  # a folder (on a cluster: one every node mounts) or s3://, gs://, ... URI
    max_failures: int = Field(2, ge=0)  # retries of a trial whose worker or node died, from its last checkpoint


class OptunaWorkerParams(_Section):
    # Each worker's running trial beats every heartbeat_interval seconds; a trial silent for
    # grace_period seconds is taken as dead (its worker killed or its host lost) and run again.
    heartbeat_interval: int = Field(10, ge=1)
    grace_period: int = Field(60, ge=1)
    # A trial whose worker died (preempted, killed, its host lost) is run again this many times;
    # at the next death its grid point is given up, named in the summary, and the sweep exits non-zero.
    # Trials that fail on their own (NaN loss, an invalid combination) are never run again; ones
    # stopped with the sweep (Ctrl-C, an error) are always run again on resume and count nothing.
    max_interrupted_retries: int = Field(2, ge=0)

    @model_validator(mode="after")
    def _grace_exceeds_interval(self) -> "OptunaWorkerParams":
        if self.grace_period <= self.heartbeat_interval:
            raise ValueError(f"sweep.optuna.grace_period ({self.grace_period}) must exceed "
                             f"heartbeat_interval ({self.heartbeat_interval}), or healthy trials look dead")
        return self


class SweepParams(_Section):
    optuna: OptunaWorkerParams = OptunaWorkerParams()
    ray: RayParams = RayParams()


# Pooled scores, their per-image means (CrackSAM's test numbers) and the tolerance rule's scores
# (pipeline/eval_schema.py); built from the schema, so a new metric needs no edit here.
MetricKey = Literal[GATE_METRICS]


class PromoteParams(_Section):
    """The promotion gate of ``crackops promote`` (registry/gate.py)."""

    # <set>.<metric> in metrics.json: test.f1 (pooled), test.f1_image_mean (CrackSAM's per-image mean),
    # test.iou, zero_shot.mean.iou, ...
    primary_metric: str = "test.f1"
    margin: float = 0.0  # the candidate's primary score must reach the champion's + margin
    tolerance: float = Field(0.02, ge=0.0)  # largest allowed drop on any corruption or zero-shot set
    floor: float = 0.0  # the first champion needs at least this primary score
    zero_shot_metric: MetricKey = ZERO_SHOT_HEADLINE  # IoU, as the SAC study reports zero-shot sets
    corruption_metric: MetricKey = CORRUPTION_HEADLINE  # F1, as CrackSAM reports its corruption sets

    @field_validator("primary_metric")
    @classmethod
    def _dotted(cls, value: str) -> str:
        if "." not in value.strip("."):
            raise ValueError(f"must name a set and a metric, like test.f1, got {value!r}")
        # Set names are open (zero-shot folders), metric names are not: a typo fails here, not at promote.
        if value.rsplit(".", 1)[1] not in METRIC_KEYS:
            raise ValueError(f"must end in a metric of metrics.json ({', '.join(METRIC_KEYS)}), got {value!r}")
        return value


class Params(_Section):
    data: DataParams = DataParams()
    model: ModelParams = ModelParams()
    tuning: TuningParams = TuningParams()
    train: TrainParams = TrainParams()
    loss: LossParams = LossParams()
    eval: EvalParams = EvalParams()
    distill: DistillParams = DistillParams()
    mlflow: MlflowParams = MlflowParams()
    sweep: SweepParams = SweepParams()
    promote: PromoteParams = PromoteParams()

    @model_validator(mode="after")
    def _crop_fits_family(self) -> "Params":
        crop = self.data.augment.crop_size
        if crop is not None and self.model.family != "deeplabv3":
            raise ValueError(f"data.augment.crop_size: model.family {self.model.family!r} takes whole "
                             "data.img_size inputs; random crops need a fully convolutional model (deeplabv3)")
        if crop is not None and crop > self.data.img_size:
            raise ValueError(f"data.augment.crop_size {crop} is larger than data.img_size {self.data.img_size}")
        return self

    @model_validator(mode="after")
    def _tuning_fits_family(self) -> "Params":
        family, method = self.model.family, self.tuning.method
        if family != "sam" and method not in HEAD_FAMILY_METHODS:
            raise ValueError(f"tuning.method {method!r} is a SAM method; model.family {family!r} takes "
                             "tuning.method full (everything) or decoder (the head only)")
        return self

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


def format_value(value: Any) -> str:
    """A value as YAML text that ``-S`` (ours and DVC's) parses back to the same value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        text = repr(value)
        # YAML 1.1 (PyYAML) reads "1e-05" as a string: the mantissa needs a dot.
        if "e" in text and "." not in text.split("e")[0]:
            mantissa, exponent = text.split("e")
            text = f"{mantissa}.0e{exponent}"
        return text
    if isinstance(value, list):
        return "[" + ",".join(format_value(item) for item in value) + "]"
    return str(value)


def overrides(values: dict[str, Any]) -> list[str]:
    """``key=value`` per dotted key, shell-quoted where needed (``'tuning.lora.targets=[q,v]'``)."""
    return [shlex.quote(f"{key}={format_value(value)}") for key, value in values.items()]


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``tree`` with each ``key=value`` override set at its dotted path."""
    return set_values(tree, dict(parse_override(text) for text in overrides))


def set_values(tree: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of ``tree`` with each dotted key set to its (already parsed) value."""
    tree = copy.deepcopy(tree)
    defaults = Params().to_dict()
    for key, value in values.items():
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


def _legacy_defaults(tree: Any) -> Any:
    """Keys added since a model was saved, set to what that model ran with, not today's default.

    ``model.student_stride`` changes no weight shape, so a sam_lite model saved before the key
    existed (all at stride 32) would otherwise load at the default 16 and silently compute garbage.
    """
    model = tree.get("model") if isinstance(tree, dict) else None
    if isinstance(model, dict) and model.get("family") == "sam_lite" and "student_stride" not in model:
        model["student_stride"] = LEGACY_STUDENT_STRIDE
    return tree


def load_model_params(path: Path) -> Params:
    """The params saved with a trained model (or its export): what the model ran with."""
    return validate(_legacy_defaults(yaml.safe_load(Path(path).read_text())), str(path))


def load_params(path: str | Path = DEFAULT_PARAMS_FILE, overrides: list[str] | None = None) -> Params:
    """Read ``path``, apply ``-S`` overrides and validate."""
    tree = apply_overrides(read_params_file(path), overrides or [])
    source = f"{path}" + (" with overrides " + " ".join(overrides) if overrides else "")
    return validate(tree, source)
