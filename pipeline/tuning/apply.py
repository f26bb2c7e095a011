"""Apply a ``tuning.method`` to a prompt-free SAM: freeze everything, then open what it tunes."""
from __future__ import annotations

from typing import Callable

from pipeline.models.prompt_free_sam import PromptFreeSam
from pipeline.params import TUNING_METHODS, TuningParams
from pipeline.tuning.adapters import apply_adapters
from pipeline.tuning.layernorm_tuning import apply_layernorm_tuning
from pipeline.tuning.lora import apply_lora

MethodApply = Callable[[PromptFreeSam, TuningParams], PromptFreeSam]


def _full(model: PromptFreeSam, tuning: TuningParams) -> PromptFreeSam:
    return model.requires_grad_(True)


def _layernorm(model: PromptFreeSam, tuning: TuningParams) -> PromptFreeSam:
    return apply_layernorm_tuning(model)


def _decoder(model: PromptFreeSam, tuning: TuningParams) -> PromptFreeSam:
    model.sam.mask_decoder.requires_grad_(True)
    return model


def _lora(model: PromptFreeSam, tuning: TuningParams) -> PromptFreeSam:
    return apply_lora(model, tuning.lora)


def _adapter(model: PromptFreeSam, tuning: TuningParams) -> PromptFreeSam:
    return apply_adapters(model, tuning.adapter)


def _cracksam(model: PromptFreeSam, tuning: TuningParams) -> PromptFreeSam:
    # LoRA first: adapters wrap the attention module, which would move LoRA's target names.
    if "lora" in tuning.cracksam.parts:
        apply_lora(model, tuning.lora)
    if "adapter" in tuning.cracksam.parts:
        apply_adapters(model, tuning.adapter)
    model.sam.mask_decoder.requires_grad_(True)
    model.sam.prompt_encoder.requires_grad_(True)
    return model


# tuning.method -> what it opens, applied to a fully frozen model; the names are params.TuningMethod's.
SAM_METHODS: dict[str, MethodApply] = {
    "layernorm": _layernorm,
    "decoder": _decoder,
    "lora": _lora,
    "adapter": _adapter,
    "cracksam": _cracksam,
    "full": _full,
}


def apply_tuning(model: PromptFreeSam, tuning: TuningParams) -> PromptFreeSam:
    """Mutate ``model`` so that exactly the parameters of ``tuning.method`` require gradients."""
    method = SAM_METHODS.get(tuning.method)
    if method is None:
        raise ValueError(f"unknown tuning.method {tuning.method!r}; choose from {TUNING_METHODS}")
    model.requires_grad_(False)
    return method(model, tuning)
