"""Encoder sizes of the SAM variants and where their official checkpoints come from."""
from __future__ import annotations

from dataclasses import dataclass

CHECKPOINT_BASE_URL = "https://dl.fbaipublicfiles.com/segment_anything/"


@dataclass(frozen=True)
class SamVariant:
    """ViT image-encoder hyperparameters of one SAM size; decoder and prompt encoder are shared."""

    name: str
    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    checkpoint_file: str | None

    @property
    def checkpoint_url(self) -> str | None:
        return CHECKPOINT_BASE_URL + self.checkpoint_file if self.checkpoint_file else None


SAM_VARIANTS: dict[str, SamVariant] = {
    "vit_h": SamVariant("vit_h", 1280, 32, 16, (7, 15, 23, 31), "sam_vit_h_4b8939.pth"),
    "vit_l": SamVariant("vit_l", 1024, 24, 16, (5, 11, 17, 23), "sam_vit_l_0b3195.pth"),
    "vit_b": SamVariant("vit_b", 768, 12, 12, (2, 5, 8, 11), "sam_vit_b_01ec64.pth"),
    # Not an official size: the same architecture shrunk so that tests and demos train on a CPU.
    "vit_tiny": SamVariant("vit_tiny", 192, 4, 3, (1, 3), None),
}
