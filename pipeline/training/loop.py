"""The one training loop. ``dvc repro``'s train stage and every sweep trial run this function."""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from pipeline.metrics import SegmentationMeter
from pipeline.training.callbacks import Callback, EpochResult, FitResult
from pipeline.training.checkpointing import cpu_state_dict, load_state, save_state
from pipeline.training.batches import logit_batches
from pipeline.training.precision import autocast, autocast_dtype
from pipeline.training.schedules import LrSchedule
from pipeline.training.seeding import seed_epoch


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run cannot recover from here."""


@dataclass
class LoopConfig:
    epochs: int
    seed: int = 0
    threshold: float = 0.5
    early_stopping_patience: int | None = None
    precision: str = "auto"
    grad_clip: float | None = None
    work_dir: Path | None = None  # holds last.pt (resume) and best.pt; None keeps state in memory only
    progress: bool = True
    # The validation score that picks the best epoch (a key of the epoch's validation dict: f1, iou,
    # loss, ...) and whether higher is better; sweeps pass the metric they score trials by.
    selection_metric: str = "f1"
    selection_mode: str = "max"

    def __post_init__(self) -> None:
        if self.selection_mode not in ("max", "min"):
            raise ValueError(f"selection_mode must be 'max' or 'min', got {self.selection_mode!r}")


def fit(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: LrSchedule,
    config: LoopConfig,
    callbacks: Sequence[Callback] = (),
    device: torch.device | None = None,
) -> FitResult:
    """Train, validate every epoch, keep the weights of the best epoch (``config.selection_metric``) in ``model``.

    Callbacks stop training by setting the :class:`TrainerControl` they are handed; the loop then
    ends after that epoch as after its last one.
    """
    device = device or next(model.parameters()).device
    amp_dtype = autocast_dtype(config.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    trainable = [p for p in model.parameters() if p.requires_grad]
    result = FitResult()
    control = result.control
    best_state = cpu_state_dict(model)
    start_epoch = 0

    last_path = config.work_dir / "last.pt" if config.work_dir else None
    best_path = config.work_dir / "best.pt" if config.work_dir else None
    resumed = load_state(last_path) if last_path else None
    saved_best = load_state(best_path) if resumed is not None else None
    if resumed is not None and saved_best is None:
        # best.pt was unreadable (load_state said so): without it the state is incomplete, so start over.
        last_path.unlink()
        resumed = None
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        schedule.load_state_dict(resumed["schedule"])
        scaler.load_state_dict(resumed["scaler"])
        result.history = [EpochResult(**item) for item in resumed["history"]]
        result.best_epoch, result.best_val = resumed["best_epoch"], resumed["best_val"]
        best_state = saved_best
        start_epoch = resumed["epoch"] + 1
        result.stopped_early = bool(resumed.get("stopped_early", False))
        if result.stopped_early or start_epoch >= config.epochs:
            # Killed after its last epoch (while writing outputs or logging): nothing left to train.
            start_epoch = config.epochs
            print(f"training in {last_path} had finished; reusing it", flush=True)
        else:
            print(f"resuming from {last_path} at epoch {start_epoch + 1}", flush=True)

    for callback in callbacks:
        callback.on_train_start(config.epochs)
    if resumed is not None:
        for callback in callbacks:
            callback.on_resume(result.history)

    for epoch in range(start_epoch, config.epochs):
        seed_epoch(config.seed, epoch, train_loader)
        model.train()
        started, seen, loss_sum = time.perf_counter(), 0, 0.0
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False, disable=not config.progress)
        for images, masks in bar:
            images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
            with autocast(device, amp_dtype):
                loss = loss_fn(model(images), masks)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(f"loss is {loss.item()} at epoch {epoch + 1}; lower train.lr or check the data")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if config.grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            schedule.step_iteration()
            seen += images.shape[0]
            loss_sum += loss.item() * images.shape[0]
            bar.set_postfix(loss=f"{loss.item():.4f}")
        train_seconds = time.perf_counter() - started

        meter = SegmentationMeter(threshold=config.threshold, with_tolerance=False)
        val_seen, val_loss_sum = 0, 0.0
        # logit_batches runs without autograd, so its logits carry no graph into the loss below.
        for logits, masks in logit_batches(model, val_loader, device, amp_dtype):
            # The training loss on held-out data: what the DeepLabV3 study's plateau schedule watches.
            val_loss_sum += loss_fn(logits, masks.to(device)).item() * masks.shape[0]
            val_seen += masks.shape[0]
            meter.update(torch.sigmoid(logits).cpu(), masks)
        val = {**meter.compute(), "loss": val_loss_sum / max(val_seen, 1)}
        schedule.step_epoch(val)

        is_best = result.best_epoch < 0 or _better(val, result.best_val, config)
        if is_best:
            result.best_epoch, result.best_val = epoch, val
            best_state = cpu_state_dict(model)
            if best_path:
                save_state(best_path, best_state)
        epoch_result = EpochResult(
            epoch=epoch,
            train_loss=loss_sum / max(seen, 1),
            val=val,
            lr=optimizer.param_groups[0]["lr"],
            seconds=time.perf_counter() - started,
            images_per_second=seen / train_seconds if train_seconds > 0 else math.nan,
            is_best=is_best,
        )
        result.history.append(epoch_result)
        patience = config.early_stopping_patience
        # Decided before saving, so a run killed after an early stop does not train on when resumed.
        result.stopped_early = bool(patience and epoch - result.best_epoch >= patience)
        if last_path:
            save_state(last_path, {
                "epoch": epoch, "model": cpu_state_dict(model), "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(), "scaler": scaler.state_dict(),
                "history": [asdict(item) for item in result.history],
                "best_epoch": result.best_epoch, "best_val": result.best_val,
                "stopped_early": result.stopped_early,
            })
        for callback in callbacks:
            callback.on_epoch_end(epoch_result, control)
        if result.stopped_early or control.should_stop:
            break

    model.load_state_dict(best_state)
    for callback in callbacks:
        callback.on_train_end(result)
    return result


def _better(val: dict[str, float], best: dict[str, float], config: LoopConfig) -> bool:
    """Whether this epoch's validation beats the best so far on the selection metric (ties keep the earlier)."""
    name = config.selection_metric
    if name not in val:
        raise KeyError(f"selection metric {name!r} is not a validation score; choose one of {', '.join(sorted(val))}")
    value, best_value = val[name], best.get(name, math.nan)
    if math.isnan(best_value):
        return not math.isnan(value)
    return value > best_value if config.selection_mode == "max" else value < best_value
