"""Score saved predictions: a folder of probability maps against a folder of masks (`crackops score`).

Predictions are grayscale images whose value / 255 (or / 65535 for 16-bit) is the crack
probability; masks follow the data loader's rule (:mod:`pipeline.data.folder`: 0/1 as is, else
>= 128 is crack). Files pair by stem. Scoring goes through the same meter as `crackops evaluate`
(:meth:`SegmentationMeter.from_params`), so a model scored here and there gets the same numbers.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.data.folder import IMAGE_EXTENSIONS, read_mask, read_raw_mask
from pipeline.errors import DatasetError
from pipeline.metrics import SegmentationMeter
from pipeline.params import EvalParams

SHOWN = 3  # stems named in a mismatch error


def _files_by_stem(folder: Path, what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise DatasetError(f"{what} folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise DatasetError(f"{what} folder {folder} holds no image files")
    by_stem: dict[str, Path] = {}
    for path in files:
        if path.stem in by_stem:
            raise DatasetError(f"{what} folder {folder}: {by_stem[path.stem].name} and {path.name} share a stem")
        by_stem[path.stem] = path
    return by_stem


def _few(stems: set[str]) -> str:
    names = sorted(stems)
    return ", ".join(names[:SHOWN]) + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")


def read_probability(path: Path) -> np.ndarray:
    """A prediction file as float32 HxW probabilities: stored value / full scale (255 or 65535)."""
    raw = read_raw_mask(path)
    return raw.astype(np.float32) / float(np.iinfo(raw.dtype).max)


def paired_files(predictions: Path, masks: Path) -> list[tuple[str, Path, Path]]:
    """``(stem, prediction, mask)`` sorted by stem; a one-line error when the stems differ."""
    preds, truth = _files_by_stem(Path(predictions), "predictions"), _files_by_stem(Path(masks), "masks")
    no_mask, no_pred = set(preds) - set(truth), set(truth) - set(preds)
    if no_mask or no_pred:
        parts = ([f"{len(no_mask)} predictions have no mask ({_few(no_mask)})"] if no_mask else []) + \
                ([f"{len(no_pred)} masks have no prediction ({_few(no_pred)})"] if no_pred else [])
        raise DatasetError(f"stems of {predictions} and {masks} do not match: " + "; ".join(parts))
    return [(stem, preds[stem], truth[stem]) for stem in sorted(preds)]


def score_folders(predictions: Path, masks: Path, eval_params: EvalParams) -> dict[str, float]:
    """Every score `crackops evaluate` gives a set, for saved probability maps and their masks."""
    meter = SegmentationMeter.from_params(eval_params)
    for stem, pred_path, mask_path in paired_files(predictions, masks):
        prob, mask = read_probability(pred_path), read_mask(mask_path)
        if prob.shape != mask.shape:
            raise DatasetError(f"{pred_path}: prediction is {prob.shape[1]}x{prob.shape[0]} but its mask "
                               f"{mask_path.name} is {mask.shape[1]}x{mask.shape[0]}")
        meter.update(torch.from_numpy(prob)[None, None], torch.from_numpy(mask.astype(np.float32))[None, None], [stem])
    return meter.compute()
