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
from pipeline.losses import build_loss
from pipeline.models.factory import build_model
from pipeline.models.trained import save_trained_model
from pipeline.params import Params
from pipeline.training.callbacks import Callback, FitResult, PrintCallback
from pipeline.training.loop import LoopConfig, fit
from pipeline.training.precision import enable_tf32, pick_device
from pipeline.training.schedules import LrSchedule, build_optimizer
from pipeline.training.seeding import seed_everything
from pipeline.tuning import ParameterCount, count_parameters

HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"


@dataclass
class TrainOutcome:
    fit: FitResult
    model: nn.Module
    parameters: ParameterCount
    seconds: float
    out_dir: Path | None


def build_loaders(params: Params) -> tuple[DataLoader, DataLoader]:
    """Train loader (augmented, shuffled with a seeded generator) and validation loader."""
    prepared = Path(params.data.prepared_dir)
    load_manifest(prepared)  # fails early, naming the folder, if prepare has not run
    aug = params.data.augment
    train_set = CrackDataset(prepared / "train", transform=build_train_augmentation(aug.flip, aug.rotate, aug.color_blur))
    val_set = CrackDataset(prepared / "val")
    generator = torch.Generator().manual_seed(params.train.seed)
    common = {"batch_size": params.train.batch_size, "num_workers": params.data.num_workers}
    train_loader = DataLoader(train_set, shuffle=True, drop_last=len(train_set) > params.train.batch_size,
                              generator=generator, **common)
    return train_loader, DataLoader(val_set, shuffle=False, **common)


def params_digest(params: Params) -> str:
    return hashlib.sha256(json.dumps(params.to_dict(), sort_keys=True).encode()).hexdigest()


def _history_csv(result: FitResult) -> str:
    rows = [{"epoch": item.epoch + 1, **item.metrics()} for item in result.history]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _work_dir(out_dir: Path, params: Params) -> Path:
    """Resume state lives beside the outputs; it is dropped when the params changed."""
    work = out_dir.with_name(out_dir.name + ".partial")
    digest_file = work / "params.sha256"
    digest = params_digest(params)
    if work.exists() and (not digest_file.is_file() or digest_file.read_text() != digest):
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    digest_file.write_text(digest)
    return work


def train_from_params(
    params: Params, callbacks: Sequence[Callback] = (), out_dir: Path | None = None, progress: bool = True
) -> TrainOutcome:
    """Train the model ``params`` describe; write model, metrics and history to ``out_dir`` if given."""
    if params.train.num_threads:
        torch.set_num_threads(params.train.num_threads)
    enable_tf32()
    seed_everything(params.train.seed)
    device = pick_device()
    train_loader, val_loader = build_loaders(params)
    model = build_model(params).to(device)
    parameters = count_parameters(model)
    print(f"model {params.model.family}/{params.model.variant} tuning={params.tuning.method}: "
          f"{parameters.trainable:,} trainable of {parameters.total:,} parameters "
          f"({parameters.trainable_percent:.3f}%) on {device}", flush=True)
    optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], params.train)
    schedule = LrSchedule(optimizer, params.train, steps_per_epoch=len(train_loader))
    loss = params.loss
    loss_fn = build_loss(loss.kind, loss.lambda_, loss.dice, loss.focal_alpha, loss.focal_gamma)
    work = _work_dir(out_dir, params) if out_dir else None
    config = LoopConfig(
        epochs=params.train.epochs, seed=params.train.seed, threshold=params.eval.threshold,
        early_stopping_patience=params.train.early_stopping_patience, precision=params.train.precision,
        grad_clip=params.train.grad_clip, work_dir=work, progress=progress,
    )
    started = time.perf_counter()
    result = fit(model, train_loader, val_loader, loss_fn, optimizer, schedule, config,
                 [PrintCallback(), *callbacks], device)
    seconds = time.perf_counter() - started
    if out_dir:
        with atomic_dir(out_dir) as tmp:
            save_trained_model(model, params, tmp)
            (tmp / HISTORY_FILE).write_text(_history_csv(result))
            write_json(tmp / METRICS_FILE, {
                "best_epoch": result.best_epoch + 1, "epochs_run": len(result.history),
                "val": result.best_val, "trainable_params": parameters.trainable,
                "total_params": parameters.total, "train_seconds": round(seconds, 2),
            })
        shutil.rmtree(work, ignore_errors=True)
    return TrainOutcome(result, model, parameters, seconds, out_dir)
