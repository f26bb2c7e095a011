"""Torch dataset over one prepared split folder (``images/`` and ``masks/`` PNGs)."""
from __future__ import annotations

from pathlib import Path

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.data.folder import discover_pairs, read_image, read_mask
from pipeline.errors import DatasetError


class CrackDataset(Dataset):
    """All samples of a split, held in memory as uint8 (prepared images are small).

    Items are ``(image, mask)``: float32 3xHxW in [0, 1] and float32 1xHxW in {0, 1}. ``transform``
    runs on the uint8 arrays first; ``stems`` restricts and orders the samples (few-shot subsets).
    """

    def __init__(
        self,
        split_dir: Path,
        transform: A.Compose | None = None,
        stems: list[str] | None = None,
    ) -> None:
        self.split_dir = Path(split_dir)
        self.transform = transform
        if not (self.split_dir / "images").is_dir():
            raise DatasetError(f"split folder {self.split_dir} has no images/: run `crackops prepare` first")
        found = discover_pairs(self.split_dir)
        if set(found) != {None}:
            raise DatasetError(f"{self.split_dir} is a whole dataset, not one split folder (train/, val/ or test/)")
        pairs = {p.stem: p for p in found[None]}
        if not pairs:
            raise DatasetError(f"split folder {self.split_dir} holds no image/mask pairs")
        if stems is not None:
            unknown = [s for s in stems if s not in pairs]
            if unknown:
                raise DatasetError(f"stems not found in {self.split_dir}: {', '.join(unknown[:20])}")
            if not stems:
                raise DatasetError(f"empty stem list for {self.split_dir}")
        self.stems: list[str] = list(stems) if stems is not None else sorted(pairs)
        self.images = [read_image(pairs[s].image) for s in self.stems]
        self.masks = [read_mask(pairs[s].mask) for s in self.stems]

    def __len__(self) -> int:
        return len(self.stems)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.images[index], self.masks[index]
        if self.transform is not None:
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        # A custom transform may already have produced floats in [0, 1] (e.g. A.ToFloat).
        scale = 255.0 if image.dtype == np.uint8 else 1.0
        image_t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(scale)
        # > 0 keeps the target strictly binary whatever interpolation a custom transform used.
        mask_t = torch.from_numpy(np.ascontiguousarray(mask > 0)).float().unsqueeze(0)
        return image_t, mask_t
