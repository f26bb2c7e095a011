"""Insert CrackSAM adapters into every encoder block."""
from __future__ import annotations

from pipeline.models.adapter import ParallelAdapterMlp, SequentialAdapterAttention
from pipeline.models.prompt_free_sam import PromptFreeSam
from pipeline.params import AdapterParams


def apply_adapters(model: PromptFreeSam, adapter: AdapterParams) -> PromptFreeSam:
    """Sequential adapter after each attention, parallel adapter (scaled) beside each MLP."""
    for block in model.sam.image_encoder.blocks:
        embed_dim = block.norm1.normalized_shape[0]
        if not isinstance(block.attn, SequentialAdapterAttention):
            block.attn = SequentialAdapterAttention(block.attn, embed_dim, adapter.dim)
            block.mlp = ParallelAdapterMlp(block.mlp, embed_dim, adapter.dim, adapter.scale)
    for name, param in model.named_parameters():
        if ".adapter." in name:
            param.requires_grad_(True)
    return model
