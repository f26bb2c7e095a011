"""Build a SAM model of any variant for any input size from segment-anything's own modules."""
from __future__ import annotations

from functools import partial

import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from pipeline.models.sam_variants import SAM_VARIANTS

PATCH_SIZE = 16
PROMPT_EMBED_DIM = 256


def build_sam(variant: str, img_size: int = 1024, num_multimask_outputs: int = 3) -> Sam:
    """Randomly initialised SAM ``variant`` for square inputs of ``img_size`` pixels.

    Mirrors ``segment_anything.build_sam._build_sam`` except that the input size is a parameter,
    so that 256x256 training (SAC) gets position embeddings of the right size instead of
    padding every image to 1024, and so is the decoder's number of mask tokens (minus one), which
    ``model.mask_head`` sets: 3 for SAM's own, 1 for CrackSAM's two class tokens.
    """
    if variant not in SAM_VARIANTS:
        raise ValueError(f"unknown SAM variant {variant!r}; choose from {sorted(SAM_VARIANTS)}")
    if img_size % PATCH_SIZE:
        raise ValueError(f"img_size must be a multiple of {PATCH_SIZE}, got {img_size}")
    spec = SAM_VARIANTS[variant]
    embedding_size = img_size // PATCH_SIZE
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=spec.depth,
            embed_dim=spec.embed_dim,
            img_size=img_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=spec.num_heads,
            patch_size=PATCH_SIZE,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=spec.global_attn_indexes,
            window_size=14,
            out_chans=PROMPT_EMBED_DIM,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=PROMPT_EMBED_DIM,
            image_embedding_size=(embedding_size, embedding_size),
            input_image_size=(img_size, img_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=num_multimask_outputs,
            transformer=TwoWayTransformer(depth=2, embedding_dim=PROMPT_EMBED_DIM, mlp_dim=2048, num_heads=8),
            transformer_dim=PROMPT_EMBED_DIM,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
