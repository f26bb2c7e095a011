"""SAM as a prompt-free crack segmenter: images in, one crack logit map out."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from torch import nn

from pipeline.models.mask_heads import MASK_HEADS, MaskHead

# model.input_norm: what the encoder sees. ``family``: SAM's pixel mean/std on 0-255 pixels, as
# SAM was pretrained; ``none``: the [0, 1] pixels as they are, as CrackSAM trains (mean 0, std 1).
INPUT_NORMS = ("family", "none")


class PromptFreeSam(nn.Module):
    """Run SAM without points or boxes, as the SAC and CrackSAM studies do.

    The prompt encoder contributes only its learned "no prompt" embeddings, the mask decoder's
    output becomes one crack logit map through ``head`` (``model.mask_head``), and that
    low-resolution map is upsampled to the input size.
    """

    def __init__(self, sam: Sam, head: MaskHead = MASK_HEADS["sam_token"], input_norm: str = "family") -> None:
        super().__init__()
        if input_norm not in INPUT_NORMS:
            raise ValueError(f"unknown model.input_norm {input_norm!r}; choose from {', '.join(INPUT_NORMS)}")
        self.sam = sam
        self.head = head
        self.input_norm = input_norm

    @property
    def img_size(self) -> int:
        return self.sam.image_encoder.img_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``images``: (B, 3, S, S) RGB in [0, 1]; returns crack logits (B, 1, S, S)."""
        size = images.shape[-2:]
        if tuple(size) != (self.img_size, self.img_size):
            raise ValueError(f"expected {self.img_size}x{self.img_size} images, got {tuple(size)}")
        if self.input_norm == "family":
            pixels = (images * 255.0 - self.sam.pixel_mean) / self.sam.pixel_std
        else:
            pixels = images
        embeddings = self.sam.image_encoder(pixels)
        sparse, dense = self.sam.prompt_encoder(points=None, boxes=None, masks=None)
        image_pe = self.sam.prompt_encoder.get_dense_pe()
        # The decoder repeats image embeddings once per prompt, so a batch of images goes one at a time.
        low_res = torch.cat(
            [
                self.head.logits(
                    self.sam.mask_decoder,
                    image_embeddings=embedding.unsqueeze(0),
                    image_pe=image_pe,
                    sparse_prompt_embeddings=sparse,
                    dense_prompt_embeddings=dense,
                )
                for embedding in embeddings
            ]
        )
        return F.interpolate(low_res, size=size, mode="bilinear", align_corners=False)
