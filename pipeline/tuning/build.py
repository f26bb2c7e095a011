"""The model ``params`` describe: its family's architecture with ``tuning.method`` applied.

Here, above models and tuning, because it needs both: models build architectures, tuning decides
which of their parameters train.
"""
from __future__ import annotations

from torch import nn

from pipeline.models.factory import build_architecture
from pipeline.params import Params
from pipeline.tuning.apply import apply_tuning
from pipeline.tuning.head import apply_head_tuning


def build_model(params: Params, load_weights: bool = True) -> nn.Module:
    """A crack segmenter taking (B, 3, S, S) images in [0, 1] and returning (B, 1, S, S) logits.

    ``load_weights=False`` skips the pretrained checkpoint, for rebuilding a trained model whose
    full state dict is loaded afterwards. ``model.family`` picks SAM (``sam``), the distilled
    lightweight SAM (``sam_lite``) or DeepLabV3-ResNet101 (``deeplabv3``); SAM takes every
    ``tuning.method``, the other families train everything or their head only.
    """
    model = build_architecture(params, load_weights)
    if params.model.family == "sam":
        return apply_tuning(model, params.tuning)
    return apply_head_tuning(model, model.head, params.tuning.method, params.model.family)
