"""Build the model that ``params`` describe, with weights loaded and tuning applied."""
from __future__ import annotations

from torch import nn

from pipeline.models.mask_heads import get_mask_head
from pipeline.models.prompt_free_sam import PromptFreeSam
from pipeline.models.sam_builder import build_sam
from pipeline.models.sam_checkpoint import load_sam_checkpoint
from pipeline.params import Params
from pipeline.tuning import apply_tuning


def build_model(params: Params, load_weights: bool = True) -> nn.Module:
    """A crack segmenter taking (B, 3, S, S) images in [0, 1] and returning (B, 1, S, S) logits.

    ``load_weights=False`` skips the pretrained checkpoint, for rebuilding a trained model whose
    full state dict is loaded afterwards. ``model.family`` picks SAM (``sam``), the distilled
    lightweight SAM (``sam_lite``) or DeepLabV3-ResNet101 (``deeplabv3``); for SAM,
    ``model.mask_head`` picks the decoder's output head and ``model.input_norm`` the pixel scaling.
    """
    if params.model.family == "sam_lite":
        from pipeline.models.sam_lite import build_sam_lite

        return build_sam_lite(params, load_weights)
    if params.model.family == "deeplabv3":
        from pipeline.models.deeplab import build_deeplabv3

        return build_deeplabv3(params, load_weights)
    head = get_mask_head(params.model.mask_head)
    sam = build_sam(params.model.variant, params.data.img_size, head.num_multimask_outputs)
    if load_weights and params.model.checkpoint:
        load_sam_checkpoint(sam, params.model.checkpoint, params.model.variant, head.fresh_prefixes)
    return apply_tuning(PromptFreeSam(sam, head, params.model.input_norm), params.tuning)


def model_label(params: Params) -> str:
    """``family/architecture`` for logs: ``sam/vit_b``, ``sam_lite/tiny_vit_5m``, ``deeplabv3/resnet101``."""
    family = params.model.family
    if family == "sam_lite":
        return "sam_lite/tiny_vit_5m"
    if family == "deeplabv3":
        return "deeplabv3/resnet101"
    return f"{family}/{params.model.variant}"
