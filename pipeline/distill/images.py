"""The distillation image set: the prepared train split by default, or any folder of images."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from pipeline.data.folder import IMAGE_EXTENSIONS, read_image
from pipeline.errors import DatasetError
from pipeline.params import Params


@dataclass(frozen=True)
class DistillImage:
    key: str  # unique name within the set (path relative to the set's folder, without suffix)
    path: Path
    sha256: str


def file_sha256(path: Path, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def image_folder(params: Params) -> Path:
    """``distill.images``, or the prepared train split's ``images/`` folder."""
    if params.distill.images:
        return Path(params.distill.images)
    return Path(params.data.prepared_dir) / "train" / "images"


def distill_image_set(params: Params) -> list[DistillImage]:
    """Every image under the set's folder (recursively), sorted by key; masks are not needed."""
    folder = image_folder(params)
    if not folder.is_dir():
        hint = "run `crackops prepare` first" if not params.distill.images else "check distill.images"
        raise DatasetError(f"distillation image folder {folder} does not exist: {hint}")
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise DatasetError(f"distillation image folder {folder} holds no images")
    return [DistillImage(p.relative_to(folder).with_suffix("").as_posix(), p, file_sha256(p)) for p in paths]


def load_resized(path: Path, size: int) -> torch.Tensor:
    """(3, size, size) float32 in [0, 1], resized as ``prepare`` does (area when shrinking)."""
    image = read_image(path)
    if image.shape[:2] != (size, size):
        shrinking = image.shape[0] > size or image.shape[1] > size
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0)
