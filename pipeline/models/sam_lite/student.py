"""The distillation student: timm's TinyViT-5M giving SAM-shaped image embeddings, as MobileSAM does."""
from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.sam_lite.layers import LayerNorm2d

TIMM_MODEL = "tiny_vit_5m_224"
EMBED_CHANNELS = 256  # SAM's image-embedding width, what the teacher's neck outputs
SAM_PATCH = 16  # SAM's embedding grid is the input size over 16
STUDENT_STRIDES = (16, 32)  # model.student_stride: MobileSAM's TinyViT, timm's
# SAM's own pixel statistics (0-255 scale): the student sees images exactly as the teacher does.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


def set_last_stage_stride(backbone: nn.Module, stride: int) -> None:
    """Make timm's TinyViT run at ``stride`` 16 (MobileSAM's) or 32 (timm's) by setting the last
    stage's downsampling stride in place; no weight changes shape, only the grid the stage sees.

    timm puts each stage's PatchMerging at the stage's start, its depthwise 3x3 ``conv2`` the only
    strided layer, so stride 1 there is MobileSAM's ``stride_c = 1`` for the 320-channel stage.
    """
    if stride not in STUDENT_STRIDES:
        raise ValueError(f"model.student_stride must be one of {STUDENT_STRIDES}, got {stride}")
    conv = backbone.stages[-1].downsample.conv2.conv
    conv.stride = (2, 2) if stride == 32 else (1, 1)


class SamLiteStudent(nn.Module):
    """Images (B, 3, S, S) in [0, 1] -> embeddings (B, 256, G, G) on the teacher's grid G.

    TinyViT's four stages (classifier dropped), then SAM's neck (1x1 conv, LayerNorm2d, 3x3 conv,
    LayerNorm2d) to 256 channels as in MobileSAM. With ``stride`` 16 (MobileSAM's student: the last
    stage does not downsample) the native grid is S/16, SAM's own, so a student at the teacher's
    input size needs no resampling; with 32 (timm's TinyViT as published) it is S/32. Whenever the
    native grid differs from the teacher's ``embed_grid`` (e.g. 64x64 for a teacher at 1024 and a
    student at 256), the embeddings are resampled bilinearly to it.

    timm's TinyViT is resolution-free (windowed attention with padding, per-window position
    biases), so neither ``img_size`` nor the stride changes a weight; ``img_size`` is kept here to
    check inputs and derive the native grid.
    """

    def __init__(self, img_size: int, embed_grid: int | None = None, stride: int = 16) -> None:
        super().__init__()
        if img_size % SAM_PATCH:
            raise ValueError(f"img_size must be a multiple of {SAM_PATCH}, got {img_size}")
        self.img_size = img_size
        self.stride = stride
        self.embed_grid = embed_grid or img_size // SAM_PATCH
        backbone = timm.create_model(TIMM_MODEL, pretrained=False, num_classes=0)
        set_last_stage_stride(backbone, stride)
        self.patch_embed = backbone.patch_embed
        self.stages = backbone.stages
        width = backbone.num_features
        self.neck = nn.Sequential(
            nn.Conv2d(width, EMBED_CHANNELS, kernel_size=1, bias=False),
            LayerNorm2d(EMBED_CHANNELS),
            nn.Conv2d(EMBED_CHANNELS, EMBED_CHANNELS, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(EMBED_CHANNELS),
        )
        # Not persistent: constants of the method, not weights to ship.
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), persistent=False)
        # Channels-last: TinyViT's attention stages work on (B, H, W, C), so its permutes become
        # free views, and oneDNN's CPU convolutions are faster in this layout.
        self.to(memory_format=torch.channels_last)

    @property
    def native_grid(self) -> int:
        """Side of the map TinyViT and the neck produce, before any resampling (ceil: padded convs)."""
        return -(-self.img_size // self.stride)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        size = tuple(images.shape[-2:])
        if size != (self.img_size, self.img_size):
            raise ValueError(f"expected {self.img_size}x{self.img_size} images, got {size}")
        x = (images * 255.0 - self.pixel_mean) / self.pixel_std
        x = self.stages(self.patch_embed(x.contiguous(memory_format=torch.channels_last)))
        x = self.neck(x)
        if x.shape[-1] != self.embed_grid or x.shape[-2] != self.embed_grid:
            x = F.interpolate(x, size=(self.embed_grid, self.embed_grid), mode="bilinear", align_corners=False)
        return x
