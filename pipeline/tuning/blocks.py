"""Locating SAM's image-encoder blocks by position."""
from __future__ import annotations

from torch import nn

from pipeline.errors import ParamsError
from pipeline.models.prompt_free_sam import PromptFreeSam

ENCODER_BLOCKS = "sam.image_encoder.blocks"


def selected_block_indexes(model: PromptFreeSam, last_blocks: int) -> list[int]:
    """Indexes of the last ``last_blocks`` encoder blocks (0 selects all)."""
    depth = len(model.sam.image_encoder.blocks)
    if last_blocks > depth:
        # A ParamsError, so a sweep records the combination as a failed trial and goes on.
        raise ParamsError(f"tuning.lora.last_blocks={last_blocks} but the encoder has only {depth} blocks")
    start = depth - last_blocks if last_blocks else 0
    return list(range(start, depth))


def encoder_block(model: PromptFreeSam, index: int) -> nn.Module:
    return model.sam.image_encoder.blocks[index]
