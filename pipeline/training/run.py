"""Train from ``params``: wire data, model, loss and schedule into the loop, write the outputs.

``crackops train`` (the DVC train stage) and every sweep trial call :func:`train_from_params`.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from pipeline.atomic import atomic_dir, write_json
from pipeline.data import CrackDataset, build_train_augmentation, load_manifest
from pipeline.data.limited import is_limited, limited_training_stems
from pipeline.losses import build_loss
from pipeline.models.factory import model_label
from pipeline.params import Params
from pipeline.training.callbacks import Callback, FitResult, PrintCallback
from pipeline.training.loop import LoopConfig, fit
from pipeline.training.precision import enable_tf32, pick_device
from pipeline.training.schedules import LrSchedule, build_optimizer
from pipeline.training.seeding import seed_everything
from pipeline.training.trained import save_trained_model
from pipeline.tuning import ParameterCount, count_parameters
from pipeline.tuning.build import build_model

HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
SUBSET_FILE = "train_stems.json"  # the limited-supervision training set, when one is selected


@dataclass
class TrainOutcome:
    fit: FitResult
    model: nn.Module
    parameters: ParameterCount
    seconds: float
    out_dir: Path | None
    subset: dict | None = None  # the limited-supervision training set, when one was selected


@dataclass(frozen=True)
class Selection:
    """Which validation score picks the best epoch (a key of the validation dict) and its direction."""

    metric: str = "f1"
    mode: str = "max"

    @classmethod
    def for_sweep_metric(cls, name: str, direction: str) -> "Selection":
        """A sweep's metric (``val_iou``, ``val_loss``) as the selection; others keep F1."""
        if not name.startswith("val_"):
            return cls()
        return cls(name[len("val_"):], "max" if direction == "maximize" else "min")


def build_loaders(params: Params) -> tuple[DataLoader, DataLoader]:
    """Train loader (augmented, shuffled with a seeded generator) and validation loader."""
    prepared = Path(params.data.prepared_dir)
    manifest = load_manifest(prepared)  # fails early, naming the folder, if prepare has not run
    data, aug = params.data, params.data.augment
    # data.train_fraction / data.shots_per_dataset: the seeded few-shot subset (None = every image).
    stems = limited_training_stems(list(manifest["splits"].get("train", [])), data.train_fraction,
                                   data.shots_per_dataset, data.seed, data.dataset_pattern)
    train_set = CrackDataset(prepared / "train", transform=build_train_augmentation(
        aug.flip, aug.rotate, aug.color_blur, crop_size=aug.crop_size), stems=stems)
    val_set = CrackDataset(prepared / "val")
    generator = torch.Generator().manual_seed(params.train.seed)
    common = {"batch_size": params.train.batch_size, "num_workers": params.data.num_workers}
    train_loader = DataLoader(train_set, shuffle=True, drop_last=len(train_set) > params.train.batch_size,
                              generator=generator, **common)
    return train_loader, DataLoader(val_set, shuffle=False, **common)


def _training_subset(params: Params, train_loader: DataLoader) -> dict | None:
    """Record of the few-shot training set (None when training on the whole split), so that a
    1%-shot or one-shot result names the images it learnt from (tracking logs it too)."""
    data = params.data
    if not is_limited(data.train_fraction, data.shots_per_dataset):
        return None
    stems = list(train_loader.dataset.stems)
    subset = {"train_fraction": data.train_fraction, "shots_per_dataset": data.shots_per_dataset,
              "seed": data.seed, "dataset_pattern": data.dataset_pattern, "count": len(stems), "stems": stems}
    print(f"limited supervision: training on {len(stems)} images: {', '.join(stems[:10])}"
          + (" ..." if len(stems) > 10 else ""), flush=True)
    return subset


def params_digest(params: Params) -> str:
    return hashlib.sha256(json.dumps(params.to_dict(), sort_keys=True).encode()).hexdigest()


def history_csv(result: FitResult) -> str:
    """Per-epoch metrics as CSV (header plus one row per epoch; empty for no epochs)."""
    rows = [{"epoch": item.epoch + 1, **item.metrics()} for item in result.history]
    buffer = io.StringIO()
    if rows:
        # Union of columns: a run resumed from an older checkpoint may lack a newer metric early on.
        fieldnames = list(dict.fromkeys(name for row in rows for name in row))
        writer = csv.DictWriter(buffer, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)
    return buffer.getvalue()


def partial_dir(out_dir: Path) -> Path:
    """Where the training that writes ``out_dir`` keeps its resume state until it has finished."""
    out_dir = Path(out_dir)
    return out_dir.with_name(out_dir.name + ".partial")


def work_dir(out_dir: Path | None, params: Params, work: Path | None = None) -> Path | None:
    """The resume folder: ``work`` when given (a sweep trial's), else beside ``out_dir``; None keeps
    the state in memory only. State written for other params is dropped."""
    if work is None:
        if out_dir is None:
            return None
        work = partial_dir(out_dir)
    work = Path(work)
    digest_file = work / "params.sha256"
    digest = params_digest(params)
    if work.exists() and (not digest_file.is_file() or digest_file.read_text() != digest):
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    digest_file.write_text(digest)
    return work


def train_from_params(
    params: Params, callbacks: Sequence[Callback] = (), out_dir: Path | None = None, progress: bool = True,
    keep_resume_state: bool = False, work: Path | None = None, selection: Selection = Selection(),
) -> TrainOutcome:
    """Train the model ``params`` describe; write model, metrics and history to ``out_dir`` if given.

    Resume state lives in ``work`` when given (its owner deletes it), else beside ``out_dir``
    (:func:`partial_dir`), deleted once the outputs are written unless ``keep_resume_state``: then
    the caller deletes it after its own last step (tracked training logs to MLflow first, so a
    kill while logging reruns nothing but the logging). ``selection`` picks the best epoch.
    """
    if params.train.num_threads:
        torch.set_num_threads(params.train.num_threads)
    enable_tf32()
    seed_everything(params.train.seed)
    device = pick_device(params.train.device)
    train_loader, val_loader = build_loaders(params)
    model = build_model(params).to(device)
    parameters = count_parameters(model)
    subset = _training_subset(params, train_loader)
    print(f"model {model_label(params)} tuning={params.tuning.method}: "
          f"{parameters.trainable:,} trainable of {parameters.total:,} parameters "
          f"({parameters.trainable_percent:.3f}%) on {device}", flush=True)
    optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], params.train)
    schedule = LrSchedule(optimizer, params.train, steps_per_epoch=len(train_loader))
    loss = params.loss
    loss_fn = build_loss(loss.kind, loss.lambda_, loss.dice, loss.focal_alpha, loss.focal_gamma,
                         sigmoid_focal_alpha=loss.sigmoid_focal_alpha, ce_weight=loss.ce_weight)
    work = work_dir(out_dir, params, work)
    config = LoopConfig(
        epochs=params.train.epochs, seed=params.train.seed, threshold=params.eval.threshold,
        early_stopping_patience=params.train.early_stopping_patience, precision=params.train.precision,
        grad_clip=params.train.grad_clip, work_dir=work, progress=progress,
        selection_metric=selection.metric, selection_mode=selection.mode,
    )
    started = time.perf_counter()
    result = fit(model, train_loader, val_loader, loss_fn, optimizer, schedule, config,
                 [PrintCallback(), *callbacks], device)
    seconds = time.perf_counter() - started
    if out_dir:
        with atomic_dir(out_dir) as tmp:
            save_trained_model(model, params, tmp)
            if subset is not None:
                write_json(tmp / SUBSET_FILE, subset)
            (tmp / HISTORY_FILE).write_text(history_csv(result))
            write_json(tmp / METRICS_FILE, {
                "best_epoch": result.best_epoch + 1, "epochs_run": len(result.history),
                "val": result.best_val, "trainable_params": parameters.trainable,
                "total_params": parameters.total, "train_seconds": round(seconds, 2),
            })
        if not keep_resume_state and work == partial_dir(out_dir):
            shutil.rmtree(work, ignore_errors=True)
    return TrainOutcome(result, model, parameters, seconds, out_dir, subset)
