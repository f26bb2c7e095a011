"""Seeding: each epoch reseeds from (seed, epoch), so a resumed run replays the same batches."""
from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import DataLoader


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_epoch(seed: int, epoch: int, loader: DataLoader) -> None:
    """Seed Python, NumPy, torch, the loader's shuffling and the dataset's augmentation."""
    epoch_seed = seed * 1000 + epoch
    seed_everything(epoch_seed)
    if loader.generator is not None:
        loader.generator.manual_seed(epoch_seed)
    transform = getattr(loader.dataset, "transform", None)
    if transform is not None and hasattr(transform, "set_random_seed"):
        transform.set_random_seed(epoch_seed)
