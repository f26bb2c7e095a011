"""DeepLabV3-ResNet101 with one crack logit (the DeepLabV3 focal-loss study), ImageNet-normalised inside
(or not: ``model.input_norm: none``, as the study trains)."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models.segmentation import DeepLabV3, deeplabv3_resnet101

from pipeline.errors import CheckpointError
from pipeline.models.frozen_batchnorm import freeze_frozen_batchnorm
from pipeline.params import Params

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LOGIT_LAYER = "classifier.4."  # DeepLabHead's last 1x1 conv: 21 classes in torchvision's weights
AUX_PREFIX = "aux_classifier."


class DeepLabV3Segmenter(nn.Module):
    """Images (B, 3, S, S) in [0, 1] -> crack logits (B, 1, S, S)."""

    def __init__(self, net: DeepLabV3, normalise: bool = True) -> None:
        super().__init__()
        self.net = net
        # ImageNet's mean/std (model.input_norm family) or the [0, 1] pixels (none: the DeepLabV3 study).
        self.normalise = normalise
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def head(self) -> nn.Module:
        return self.net.classifier

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pool_norm = self.net.classifier[0].convs[-1][2]
        if images.shape[0] < 2 and pool_norm.training:
            # ASPP's image-pooling branch batch-normalises a 1x1 map: one image has no batch statistics.
            raise ValueError("DeepLabV3 cannot train on a batch of one image (ASPP pooling uses BatchNorm); "
                             "use train.batch_size >= 2 and at least 2 training images")
        return self.net((images - self.mean) / self.std if self.normalise else images)["out"]

    def train(self, mode: bool = True) -> "DeepLabV3Segmenter":
        super().train(mode)
        if mode:
            freeze_frozen_batchnorm(self)
        return self


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(
            f"DeepLabV3 checkpoint not found: {path}. model.checkpoint takes a torchvision state dict, e.g. "
            "deeplabv3_resnet101_coco-586e9e4e.pth (whole model) or resnet101-63fe2227.pth (backbone); "
            "leave it empty to start from random weights")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or unsafe files
        raise CheckpointError(f"cannot read DeepLabV3 checkpoint {path}: {error}") from None
    for wrapper in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is not a state dict (expected a mapping of names to tensors)")
    return state


def _check_and_load(module: nn.Module, state: dict[str, torch.Tensor], path: Path, allowed_missing: str) -> None:
    expected = module.state_dict()
    missing = sorted(k for k in set(expected) - set(state) if not k.startswith(allowed_missing))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or mismatched:
        raise CheckpointError(f"{path} does not fit DeepLabV3-ResNet101: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}, wrong shape {mismatched[:5]}")
    module.load_state_dict(state, strict=False)


def load_deeplab_checkpoint(net: DeepLabV3, path: str | Path) -> DeepLabV3:
    """Load torchvision weights: a whole DeepLabV3-ResNet101 or an ImageNet ResNet-101 backbone.

    The auxiliary head is dropped and a logit layer of another class count (21 in torchvision's
    COCO/VOC weights) is left at its fresh one-logit initialisation.
    """
    path = Path(path)
    state = _read_state(path)
    if any(key.startswith("backbone.") for key in state):
        state = {k: v for k, v in state.items() if not k.startswith(AUX_PREFIX)}
        own = net.state_dict()
        if any(k.startswith(LOGIT_LAYER) and v.shape != own[k].shape for k, v in state.items() if k in own):
            state = {k: v for k, v in state.items() if not k.startswith(LOGIT_LAYER)}
        _check_and_load(net, state, path, allowed_missing=LOGIT_LAYER)
    elif "conv1.weight" in state and "layer4.0.conv1.weight" in state:
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}  # the ImageNet classifier
        _check_and_load(net.backbone, state, path, allowed_missing="\0")
    else:
        raise CheckpointError(f"{path} is neither a DeepLabV3 state dict (backbone.*, classifier.*) "
                              "nor a ResNet-101 one (conv1.*, layer1-4.*)")
    return net


def build_deeplabv3(params: Params, load_weights: bool = True) -> DeepLabV3Segmenter:
    """DeepLabV3-ResNet101 with a one-logit head, from random weights or ``model.checkpoint``;
    ``tuning.method`` is applied by :mod:`pipeline.tuning.build`, not here."""
    net = deeplabv3_resnet101(weights=None, weights_backbone=None, num_classes=1, aux_loss=False)
    if load_weights and params.model.checkpoint:
        load_deeplab_checkpoint(net, params.model.checkpoint)
    return DeepLabV3Segmenter(net, normalise=params.model.input_norm == "family")
