"""LoRA on SAM's encoder through peft, with q/k/v as slices of the fused qkv projection."""
from __future__ import annotations

from peft import LoraConfig, inject_adapter_in_model

from pipeline.models.prompt_free_sam import PromptFreeSam
from pipeline.models.split_qkv import SplitQkv
from pipeline.params import LoraParams
from pipeline.tuning.blocks import ENCODER_BLOCKS, encoder_block, selected_block_indexes

TARGET_PATHS = {
    "qkv": "attn.qkv",
    "q": "attn.qkv.q",
    "k": "attn.qkv.k",
    "v": "attn.qkv.v",
    "proj": "attn.proj",
    "lin1": "mlp.lin1",
    "lin2": "mlp.lin2",
}
SLICES = {"q", "k", "v"}


def lora_target_names(model: PromptFreeSam, lora: LoraParams) -> list[str]:
    """Full module names LoRA wraps; splits the fused qkv where a slice is targeted."""
    names = []
    for index in selected_block_indexes(model, lora.last_blocks):
        attn = encoder_block(model, index).attn
        if SLICES & set(lora.targets) and not isinstance(attn.qkv, SplitQkv):
            attn.qkv = SplitQkv(attn.qkv)
        names += [f"{ENCODER_BLOCKS}.{index}.{TARGET_PATHS[target]}" for target in lora.targets]
    return names


def apply_lora(model: PromptFreeSam, lora: LoraParams) -> PromptFreeSam:
    """Inject LoRA of rank ``lora.rank``; alpha defaults to the rank (scaling 1)."""
    config = LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha if lora.alpha is not None else lora.rank,
        lora_dropout=lora.dropout,
        target_modules=lora_target_names(model, lora),
        bias="none",
    )
    return inject_adapter_in_model(config, model)
