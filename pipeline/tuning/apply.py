"""Apply a ``tuning.method`` to a prompt-free SAM: freeze everything, then open what it tunes."""
from __future__ import annotations

from pipeline.models.prompt_free_sam import PromptFreeSam
from pipeline.params import TuningParams
from pipeline.tuning.adapters import apply_adapters
from pipeline.tuning.layernorm_tuning import apply_layernorm_tuning
from pipeline.tuning.lora import apply_lora

TUNING_METHODS = ("layernorm", "decoder", "lora", "adapter", "cracksam", "full")


def apply_tuning(model: PromptFreeSam, tuning: TuningParams) -> PromptFreeSam:
    """Mutate ``model`` so that exactly the parameters of ``tuning.method`` require gradients."""
    method = tuning.method
    if method == "full":
        model.requires_grad_(True)
        return model
    model.requires_grad_(False)
    if method == "layernorm":
        return apply_layernorm_tuning(model)
    if method == "decoder":
        model.sam.mask_decoder.requires_grad_(True)
        return model
    if method == "lora":
        return apply_lora(model, tuning.lora)
    if method == "adapter":
        return apply_adapters(model, tuning.adapter)
    if method == "cracksam":
        # LoRA first: adapters wrap the attention module, which would move LoRA's target names.
        if "lora" in tuning.cracksam.parts:
            apply_lora(model, tuning.lora)
        if "adapter" in tuning.cracksam.parts:
            apply_adapters(model, tuning.adapter)
        model.sam.mask_decoder.requires_grad_(True)
        model.sam.prompt_encoder.requires_grad_(True)
        return model
    raise ValueError(f"unknown tuning.method {method!r}; choose from {TUNING_METHODS}")
