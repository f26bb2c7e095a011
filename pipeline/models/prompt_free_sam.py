"""SAM as a prompt-free crack segmenter: images in, one crack logit map out."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from torch import nn


class PromptFreeSam(nn.Module):
    """Run SAM without points or boxes, as the SAC and CrackSAM studies do.

    The prompt encoder contributes only its learned "no prompt" embeddings, the mask decoder
    returns a single mask, and that low-resolution logit map is upsampled to the input size.
    """

    def __init__(self, sam: Sam) -> None:
        super().__init__()
        self.sam = sam

    @property
    def img_size(self) -> int:
        return self.sam.image_encoder.img_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``images``: (B, 3, S, S) RGB in [0, 1]; returns crack logits (B, 1, S, S)."""
        size = images.shape[-2:]
        if tuple(size) != (self.img_size, self.img_size):
            raise ValueError(f"expected {self.img_size}x{self.img_size} images, got {tuple(size)}")
        pixels = (images * 255.0 - self.sam.pixel_mean) / self.sam.pixel_std
        embeddings = self.sam.image_encoder(pixels)
        sparse, dense = self.sam.prompt_encoder(points=None, boxes=None, masks=None)
        image_pe = self.sam.prompt_encoder.get_dense_pe()
        # The decoder repeats image embeddings once per prompt, so a batch of images goes one at a time.
        low_res = torch.cat(
            [
                self.sam.mask_decoder(
                    image_embeddings=embedding.unsqueeze(0),
                    image_pe=image_pe,
                    sparse_prompt_embeddings=sparse,
                    dense_prompt_embeddings=dense,
                    multimask_output=False,
                )[0]
                for embedding in embeddings
            ]
        )
        return F.interpolate(low_res, size=size, mode="bilinear", align_corners=False)
