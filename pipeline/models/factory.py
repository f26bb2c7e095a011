"""The model families: each ``model.family`` name maps to its architecture builder and label."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from pipeline.models.mask_heads import get_mask_head
from pipeline.models.prompt_free_sam import PromptFreeSam
from pipeline.models.sam_builder import build_sam
from pipeline.models.sam_checkpoint import load_sam_checkpoint
from pipeline.params import Params

Builder = Callable[[Params, bool], nn.Module]


@dataclass(frozen=True)
class Family:
    """How one ``model.family`` is built (``load_weights``: the pretrained checkpoint) and named in logs."""

    build: Builder
    label: Callable[[Params], str]


def _build_sam(params: Params, load_weights: bool) -> nn.Module:
    head = get_mask_head(params.model.mask_head)
    sam = build_sam(params.model.variant, params.data.img_size, head.num_multimask_outputs)
    if load_weights and params.model.checkpoint:
        load_sam_checkpoint(sam, params.model.checkpoint, params.model.variant, head.fresh_prefixes)
    return PromptFreeSam(sam, head, params.model.input_norm)


# The other families are imported when built: a SAM run never loads torchvision's DeepLab or TinyViT.
def _build_sam_lite(params: Params, load_weights: bool) -> nn.Module:
    from pipeline.models.sam_lite import build_sam_lite

    return build_sam_lite(params, load_weights)


def _build_deeplabv3(params: Params, load_weights: bool) -> nn.Module:
    from pipeline.models.deeplab import build_deeplabv3

    return build_deeplabv3(params, load_weights)


# model.family -> its family; the names are params.ModelFamily's (tests/test_families.py checks).
FAMILIES: dict[str, Family] = {
    "sam": Family(_build_sam, lambda params: f"sam/{params.model.variant}"),
    "sam_lite": Family(_build_sam_lite, lambda params: "sam_lite/tiny_vit_5m"),
    "deeplabv3": Family(_build_deeplabv3, lambda params: "deeplabv3/resnet101"),
}


def build_architecture(params: Params, load_weights: bool = True) -> nn.Module:
    """The untuned crack segmenter of ``model.family``: (B, 3, S, S) images in [0, 1] to (B, 1, S, S) logits.

    ``load_weights=False`` skips the pretrained checkpoint, for rebuilding a trained model whose
    full state dict is loaded afterwards. For SAM, ``model.mask_head`` picks the decoder's output
    head and ``model.input_norm`` the pixel scaling. :func:`pipeline.tuning.build.build_model`
    adds ``tuning.method``.
    """
    return FAMILIES[params.model.family].build(params, load_weights)


def model_label(params: Params) -> str:
    """``family/architecture`` for logs: ``sam/vit_b``, ``sam_lite/tiny_vit_5m``, ``deeplabv3/resnet101``."""
    return FAMILIES[params.model.family].label(params)
