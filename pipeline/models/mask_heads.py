"""How SAM's mask decoder turns into one crack logit map: ``model.mask_head``.

Each head says how many mask tokens the decoder is built with, which keys of an official SAM
checkpoint it starts afresh, and how the decoder's output becomes the single crack logit map the
rest of crackops (losses, metrics, tiling, pyfunc, serving) reads through a sigmoid.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from segment_anything.modeling import MaskDecoder


@dataclass(frozen=True)
class MaskHead:
    """One ``model.mask_head``.

    ``num_multimask_outputs`` is segment-anything's MaskDecoder argument (mask tokens = it + 1).
    ``fresh_prefixes`` name the state-dict keys left out of an official checkpoint and kept at
    their random initialisation, because the head gives those modules a new meaning or shape.
    ``logits`` maps ``(decoder, decoder inputs of one image)`` to its (1, 1, h, w) crack logits.
    """

    name: str
    num_multimask_outputs: int
    fresh_prefixes: tuple[str, ...]
    logits: Callable[..., torch.Tensor]


def _sam_token_logits(decoder: MaskDecoder, **inputs: torch.Tensor) -> torch.Tensor:
    # SAM's single-mask output: its pretrained mask token 0, read through a sigmoid.
    return decoder(**inputs, multimask_output=False)[0]


def _class_token_logits(decoder: MaskDecoder, **inputs: torch.Tensor) -> torch.Tensor:
    # Token 0 scores background, token 1 crack, under a 2-class softmax. For two classes
    # softmax(z)[crack] = sigmoid(z_crack - z_bg), so the difference is the crack logit: BCE on it
    # equals 2-class cross-entropy on (z_bg, z_crack), and thresholding sigmoid at 0.5 is argmax.
    masks, _ = decoder.predict_masks(**inputs)
    return masks[:, 1:2] - masks[:, 0:1]


MASK_HEADS: dict[str, MaskHead] = {
    # Today's behaviour: SAM's decoder as pretrained, four mask tokens, token 0 used.
    "sam_token": MaskHead("sam_token", 3, (), _sam_token_logits),
    # CrackSAM (a SAMed fork): two new class tokens (background, crack), each with a new
    # hypernetwork MLP, and a new 2-output IoU head. CrackSAM keeps that IoU head although its
    # output is unused (no gradient reaches it); it is kept here too, so the decoder is CrackSAM's
    # (3,777,698 parameters) and the trainable counts are the paper's (9.1M adapter, 4.4M LoRA).
    # The IoU token stays pretrained: it is an input of the two-way transformer.
    "class_tokens": MaskHead(
        "class_tokens",
        1,
        ("mask_decoder.mask_tokens.", "mask_decoder.output_hypernetworks_mlps.", "mask_decoder.iou_prediction_head."),
        _class_token_logits,
    ),
}
MASK_HEAD_NAMES = tuple(MASK_HEADS)


def get_mask_head(name: str) -> MaskHead:
    """The registered head ``name``; the error lists the choices."""
    head = MASK_HEADS.get(name)
    if head is None:
        raise ValueError(f"unknown model.mask_head {name!r}; choose from {', '.join(MASK_HEAD_NAMES)}")
    return head
