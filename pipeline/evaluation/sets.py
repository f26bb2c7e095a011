"""The evaluation sets: the test split, its corrupted copies, a blur sweep and zero-shot domains."""
from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import albumentations as A
import numpy as np
from torch.utils.data import Dataset

from pipeline.data import CORRUPTIONS, CrackDataset, gaussian_blur, load_manifest
from pipeline.errors import DatasetError
from pipeline.eval_schema import CORRUPTION_NAMES, SUMMARY_KEYS, TEST

SetKind = Literal["test", "corruption", "blur", "zero_shot"]


@dataclass
class EvalSet:
    """One scored set; ``kernel`` is the Gaussian kernel of a blur-sweep point (1 = no blur)."""

    name: str
    dataset: Dataset
    kind: str
    kernel: int | None = None


class CorruptImage(A.ImageOnlyTransform):
    """Applies ``function`` (uint8 RGB HxWx3 -> same) to the image; masks pass through untouched."""

    def __init__(self, function: Callable[[np.ndarray], np.ndarray], p: float = 1.0) -> None:
        super().__init__(p=p)
        self.function = function

    def apply(self, img: np.ndarray, **params) -> np.ndarray:
        return self.function(img)


def image_only(function: Callable[[np.ndarray], np.ndarray]) -> A.Compose:
    """A transform for :class:`CrackDataset` that corrupts the image and never the mask."""
    return A.Compose([CorruptImage(function)])


def blur_set_name(kernel: int) -> str:
    return f"blur_k{kernel}"


def _view(base: CrackDataset, transform: A.Compose) -> CrackDataset:
    # A shallow copy shares the decoded images and masks, so the 2 corruption sets and the blur
    # sweep do not each read and hold their own copy of the test split.
    view = copy.copy(base)
    view.transform = transform
    return view


def _zero_shot_dataset(name: str, folder: Path) -> CrackDataset:
    split = Path(folder) / TEST
    if not split.is_dir():
        raise DatasetError(f"zero-shot set {name!r}: {folder} has no {TEST}/ folder: "
                           "run `crackops prepare` (it prepares every eval.zero_shot entry)")
    return CrackDataset(split)


def build_eval_sets(prepared_dir: Path, zero_shot: dict[str, Path], blur_kernels: list[int]) -> list[EvalSet]:
    """Test split, CrackSAM corruption sets, one blur set per kernel (sorted), then zero-shot sets."""
    load_manifest(prepared_dir)  # fails early, naming the folder, if prepare has not run
    test = CrackDataset(Path(prepared_dir) / TEST)
    sets = [EvalSet(TEST, test, "test")]
    # The schema names the sets and their order; CORRUPTIONS holds how each is made.
    sets += [EvalSet(name, _view(test, image_only(CORRUPTIONS[name])), "corruption") for name in CORRUPTION_NAMES]
    for kernel in sorted(set(blur_kernels)):
        # Kernel 1 is the clean split itself: no transform, so it scores exactly like the test set.
        dataset = test if kernel == 1 else _view(test, image_only(functools.partial(gaussian_blur, kernel=kernel)))
        sets.append(EvalSet(blur_set_name(kernel), dataset, "blur", kernel=kernel))

    # A zero-shot set named like the summary (mean, std) would hide it in metrics.json.
    taken = {s.name for s in sets} | set(SUMMARY_KEYS)
    for name, folder in zero_shot.items():
        if name in taken:
            raise DatasetError(f"zero-shot set name {name!r} clashes with a built-in set or summary key "
                               f"({', '.join(sorted(taken))}); rename its folder")
        sets.append(EvalSet(name, _zero_shot_dataset(name, folder), "zero_shot"))
    return sets
