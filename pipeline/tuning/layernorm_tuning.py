"""SAC's method: train only the LayerNorm weights and biases, through peft's LN tuning."""
from __future__ import annotations

import warnings

from peft import LNTuningConfig, inject_adapter_in_model
from torch import nn

from pipeline.models.prompt_free_sam import PromptFreeSam


def layernorm_names(model: PromptFreeSam) -> list[str]:
    """Every ``nn.LayerNorm`` of the image encoder and mask decoder.

    SAM's ``LayerNorm2d`` (neck and upscaling convolutions) is a different class and stays
    frozen; that selection gives the 41,472 trainable parameters of SAC's Table 5 on ViT-B.
    """
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.LayerNorm) and name.startswith(("sam.image_encoder.", "sam.mask_decoder."))
    ]


def apply_layernorm_tuning(model: PromptFreeSam) -> PromptFreeSam:
    """Wrap each LayerNorm in a trainable peft copy; everything else stays frozen."""
    config = LNTuningConfig(target_modules=layernorm_names(model))
    with warnings.catch_warnings():
        # peft warns that it cannot read in/out features of a LayerNorm; LN tuning never needs them.
        warnings.filterwarnings("ignore", message="Unsupported layer type", category=UserWarning)
        return inject_adapter_in_model(config, model)
